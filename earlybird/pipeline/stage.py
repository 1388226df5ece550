"""One resumable training stage of a run: a :class:`~earlybird.training.trainer.Trainer` run epoch by
epoch, each epoch checkpointed, then logged.

The order is what makes a kill harmless: an epoch's log records (and the checks logged during
it) are held until the checkpoint that contains them is written, and only then appended to
``log.jsonl``. Killed before the checkpoint, the epoch is trained again and logged then; killed
after it, the resumed stage appends from the checkpoint what the log lacks. Either way every
epoch is logged, and counted by the ledger, exactly once.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional, cast

from torch import nn

from ..training import distributed
from ..training.precision import SWA
from ..settings import leaves
from ..faults import kill_point, maybe_kill
from ..training.trainer import Progress, Trainer
from .config import RunConfig
from .env import RunEnv

log = logging.getLogger(__name__)

__all__ = ["Stage"]


def _changed(saved: dict[str, Any], mine: RunConfig) -> list[str]:
    """Names of the settings in which a saved config differs from ``mine``."""
    theirs = RunConfig.from_dict(saved)
    out = []
    for leaf in leaves(RunConfig):
        a, b = theirs, mine
        for part in leaf.path:
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            out.append(leaf.name)
    return sorted(out)


class Stage:
    """A named stage of the run in ``env`` (``search``, ``train``, ``retrain-0.5-finetune``).

    Building it reads the stage's checkpoint when resuming and refuses to overwrite a started
    stage or to mix settings in one run folder; resuming, it completes the log from the
    checkpoint (what a kill right after the checkpoint kept out of it).
    """

    def __init__(self, env: RunEnv, name: str, resume: bool) -> None:
        self.env, self.name = env, name
        self.ckpt = env.dir.load_checkpoint(name)
        if self.ckpt is not None and not resume:
            raise FileExistsError(
                f"{env.dir.checkpoint(name)} exists; pass --resume to "
                "continue that run or choose another --save folder"
            )
        saved = env.dir.read_config()
        if saved is not None:
            diff = _changed(saved, env.cfg)
            if diff:
                raise ValueError(
                    f"{env.dir.config} was written with other settings "
                    f"({', '.join(diff)}); use the same settings or another "
                    "--save folder"
                )
        self._pending: list[dict[str, Any]] = []
        if self.ckpt is not None and env.main:  # a kill may have landed before its log lines
            env.dir.reconcile_log(self.ckpt.get("log", []))

    @property
    def done(self) -> bool:
        return self.ckpt is not None and bool(self.ckpt.get("done"))

    def log(self, record: dict[str, Any]) -> None:
        """Queue a log record; it is written with the stage's next checkpoint."""
        self._pending.append({"stage": self.name, **record})

    def _flush(self, state: dict[str, Any], epoch: int) -> None:
        """Checkpoint (holding the queued records), then append those records to the log."""
        env, records = self.env, self._pending
        self._pending = []
        if env.main:
            env.dir.save_checkpoint(self.name, {**state, "log": records})
            maybe_kill(self.name, epoch, "checkpointed")
            torn = kill_point() == (self.name, epoch, "torn")
            env.dir.append_log(records, torn=torn)
            maybe_kill(self.name, epoch, "torn")

    def fit(
        self,
        model: nn.Module,
        first_epoch: int,
        precision: str,
        regularize: Optional[Callable[[], None]] = None,
        before_epoch: Optional[Callable[[int], bool]] = None,
        on_check: Optional[Callable[[int], bool]] = None,
        extra: Callable[[], dict] = dict,
        progress: Optional[Progress] = None,
    ) -> dict[str, Any]:
        """Train ``model`` from ``first_epoch`` (or the checkpoint) to the recipe's end at
        ``precision``; ``before_epoch(epoch) -> stop`` runs before each epoch and once after
        the last, ``on_check(step) -> stop`` every ``check_every`` steps. Returns the final
        checkpoint's contents."""
        env, cfg, ckpt = self.env, self.env.cfg, self.ckpt
        trainer = Trainer(
            model,
            cfg.recipe,
            env.train,
            test=env.test,
            device=env.device,
            precision=precision,
            low_precision=cfg.precision.q8,
            regularize=regularize,
            check_every=cfg.check_every,
            on_check=on_check,
            progress=progress,
            stage=self.name,
            epoch=first_epoch,
            step=0,
        )
        swa = SWA(model) if cfg.precision.swa else None
        best, test_acc = 0.0, float("nan")
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
            best, test_acc = float(ckpt["best_acc"]), float(ckpt["test_acc"])
            if swa is not None and "swa" in ckpt:
                swa.load_state_dict(ckpt["swa"])
        if env.main and env.dir.read_config() is None:
            env.dir.write_config(cfg.as_dict())

        def state(done: bool) -> dict[str, Any]:
            return {
                **trainer.state_dict(),
                "best_acc": best,
                "test_acc": test_acc,
                "done": done,
                "precision": precision,
                **({"swa": swa.state_dict()} if swa is not None else {}),
                **extra(),
            }

        def after(record: dict[str, Any]) -> None:
            nonlocal best, test_acc
            test_acc = record["test_acc"]
            best = max(best, test_acc)
            if swa is not None and trainer.epoch > cast(int, cfg.precision.swa_start):
                swa.update()
            self.log(_epoch_record(record))
            self._flush(state(False), record["epoch"])
            log.info(
                "%s epoch %d: loss %.4f, train %.2f%%, test %.2f%%",
                self.name,
                record["epoch"],
                record["loss"],
                record["train_acc"],
                test_acc,
            )

        trainer.fit(before_epoch=before_epoch, after_epoch=after)
        if swa is not None and swa.count and trainer.epoch >= cfg.recipe.epochs:
            started = time.perf_counter()
            swa.apply(env.train)
            test_acc = trainer.evaluate()["test_acc"]
            best = max(best, test_acc)
            self.log({"swa": swa.count, "test_acc": test_acc, "swa_s": time.perf_counter() - started})
        trainer.close()
        record = state(True)
        self._flush(record, trainer.epoch)
        distributed.barrier()
        return record


def _epoch_record(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch's log line: the trainer's record with the keys the log has always had."""
    keep = (
        "epoch",
        "step",
        "lr",
        "test_acc",
        "loss",
        "train_acc",
        "samples",
        "train_s",
        "eval_s",
        "eval_samples",
        "precision",
        "train_j",
        "eval_j",
        "energy_sources",
    )
    return {k: record[k] for k in keep if k in record}
