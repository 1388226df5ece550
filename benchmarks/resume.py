"""Training that goes on after a kill: the benchmarks' shared runs and finetunes are long (a
128-epoch slimming run takes about 40 minutes on one thread) and a sitting can end inside one.

:func:`fit` runs :meth:`Trainer.fit <earlybird.training.trainer.Trainer.fit>` and, after every
epoch, saves the Trainer's state (weights, optimizer, position, random state), the epochs'
seconds and accuracies so far and the caller's own state (a pruner's recorded masks) to one
file, atomically. A call that finds the file loads it and trains only what is left, so a run
stopped between epochs ends exactly as an uninterrupted one; a run stopped inside an epoch
redoes that epoch. The file holds tensors and numbers only (``torch.load(weights_only=True)``).
It also names the CPU model and the torch threads it was computed with (the thread count picks
the input layout, and results are not bit-identical across CPUs); a checkpoint from another is
set aside, and the run starts over. Exact only where the run itself is reproducible: the 8-bit
(q8) runs are not, since qtorch's stochastic rounding draws from an unseeded generator.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from earlybird.run import io
from earlybird.training.trainer import Trainer

CHECKPOINT = "benchmarks.train-checkpoint/1"
log = logging.getLogger(__name__)
State = tuple[Callable[[], dict], Callable[[dict], None]]


def fit(trainer: Trainer, last: int, checkpoint: Path, eval_every_epoch: bool,
        after_epoch: Optional[Callable[[int], None]], state: Optional[State],
        where: dict[str, Any]) -> dict[str, Any]:
    """``trainer.fit(last)`` that keeps its progress in ``checkpoint`` (``state``: the caller's
    ``(get, restore)``; ``where``: the CPU model and threads, which a checkpoint must match);
    returns what an uninterrupted ``fit`` returns, the seconds of the epochs trained before
    the interruption included."""
    done: dict[str, Any] = {"epoch_s": [], "accs": [], "images": 0}
    saved = io.safe_load(checkpoint, CHECKPOINT) if checkpoint.exists() else None
    if saved is not None and saved.get("where") != where:
        log.warning("%s was computed on %s; this run is on %s: starting over", checkpoint,
                    saved.get("where"), where)
        saved = None
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        done = {"epoch_s": saved["epoch_s"].tolist(), "accs": saved["accs"].tolist(),
                "images": int(saved["images"])}
        if state is not None:
            state[1](saved["state"])

    def after(record: dict[str, Any]) -> None:
        if after_epoch is not None:
            after_epoch(record["epoch"])
        done["epoch_s"].append(record["train_s"])
        if "test_acc" in record:
            done["accs"].append(record["test_acc"])
        done["images"] = int(record["samples"])
        io.atomic_save({"format": CHECKPOINT, "trainer": trainer.state_dict(),
                        "epoch_s": torch.tensor(done["epoch_s"], dtype=torch.float64),
                        "accs": torch.tensor(done["accs"], dtype=torch.float64),
                        "images": done["images"], "where": where,
                        "state": {} if state is None else state[0]()},
                       checkpoint)

    result = trainer.fit(last, eval_every_epoch=eval_every_epoch, after_epoch=after)
    return {**result, "epoch_s": done["epoch_s"], "train_s": sum(done["epoch_s"]),
            # without eval_every_epoch only the last epoch is evaluated, as uninterrupted
            "accs": done["accs"] if eval_every_epoch or not done["epoch_s"]
            else [result["test_acc"]],
            "images_per_epoch": done["images"]}
