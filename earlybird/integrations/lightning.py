"""Early-bird search inside a Lightning ``Trainer``.

Example (the README's Lightning snippet runs a complete one)::

    from earlybird.integrations.lightning import EarlyBirdCallback
    trainer = lightning.Trainer(callbacks=[EarlyBirdCallback(ratios=[0.5], on_detect="prune")])
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..extras import require

require("lightning", "EarlyBirdCallback")
import lightning.pytorch as pl  # noqa: E402 - after the check that names the extra

from ..search.config import EarlyBirdConfig, make_config
from ..graph import replay_history
from ..run.io import atomic_save, input_spec, make_inputs
from ..search.pruner import EarlyBirdPruner

log = logging.getLogger(__name__)

__all__ = ["EarlyBirdCallback"]
ON_DETECT = ("stop", "prune", "continue")


class EarlyBirdCallback(pl.Callback):
    """Regularize after backward, draw tickets at epoch end (or every N steps), act on them.

    Args:
        ratios: pruning ratios to track (default: the config's).
        config: the search's settings, an :class:`~earlybird.EarlyBirdConfig` (the same one
            the pruner, ``RunConfig`` and the CLI take); default: its defaults. Its ``total``
            (the schedule, which sets the plateau rule's span), when None, is filled in as
            training starts: the epochs (or, with ``every_n_steps``, the optimizer steps) that
            ``max_epochs`` and ``max_steps`` allow.
        example_inputs: inputs for tracing; default ``pl_module.example_input_array``.
        model_attr: attribute of the LightningModule holding the network (``"model"``); the
            LightningModule itself when it has no such attribute.
        every_n_steps: draw every N optimizer steps instead of at each epoch end (once per
            optimizer step, whatever ``accumulate_grad_batches`` is).
        on_detect: ``"stop"`` ends training once every ratio has its ticket (on every rank:
            the decision is reduced over the ranks, and taken only when all agree); ``"prune"`` replaces
            the network by the ``prune_ratio`` ticket's pruned copy as soon as it is drawn and
            reconfigures the optimizers (``configure_optimizers`` runs again); ``"continue"``
            only records.
        prune_ratio: the ratio ``"prune"`` acts on (default: the first of ``ratios``).
        save_dir: where ``tickets.pt`` (the pruner state) is written at each draw (rank 0).
        **settings: any field of :class:`~earlybird.EarlyBirdConfig` (epsilon, window, ...),
            applied over ``config``.
    """

    def __init__(
        self,
        ratios: Optional[Sequence[float]] = None,
        *,
        config: Optional[EarlyBirdConfig] = None,
        example_inputs: Any = None,
        model_attr: str = "model",
        every_n_steps: Optional[int] = None,
        on_detect: str = "stop",
        prune_ratio: Optional[float] = None,
        save_dir: Optional[str] = None,
        **settings: Any,
    ) -> None:
        if on_detect not in ON_DETECT:
            raise ValueError(f"on_detect must be one of {list(ON_DETECT)}, got {on_detect!r}")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.config = make_config(config, ratios, **settings)
        self.ratios = self.config.ratios
        self.prune_ratio = float(prune_ratio) if prune_ratio is not None else self.ratios[0]
        if self.prune_ratio not in self.ratios:
            raise ValueError(f"prune_ratio {self.prune_ratio} is not one of ratios {list(self.ratios)}")
        self.example_inputs, self.model_attr = example_inputs, model_attr
        self.every_n_steps, self.on_detect, self.save_dir = every_n_steps, on_detect, save_dir
        self._last_step = -1  # the optimizer step last checked
        self.pruner: Optional[EarlyBirdPruner] = None
        self.history: Optional[list] = None  # pruning history once pruned
        self._pending: Optional[dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ratios=self.ratios, model_attr=self.model_attr)

    # --------------------------------------------------------------------------- plumbing
    def _network(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, self.model_attr, pl_module)

    def _inputs(self, pl_module: pl.LightningModule) -> Any:
        inputs = self.example_inputs if self.example_inputs is not None else pl_module.example_input_array
        if inputs is None:
            raise ValueError(
                "EarlyBirdCallback needs example_inputs= or the LightningModule's example_input_array"
            )
        return inputs.to(pl_module.device) if isinstance(inputs, torch.Tensor) else inputs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.pruner is not None or self.history is not None:
            return
        self.pruner = EarlyBirdPruner(self._network(pl_module), self._inputs(pl_module), config=self.config)
        original = pl_module.on_load_checkpoint

        def rebuild_then_load(checkpoint: dict[str, Any]) -> None:
            # Lightning calls this before loading the weights: a network pruned in place by a
            # previous run is rebuilt from its pruning history so that its weights fit.
            saved = checkpoint.get("callbacks", {}).get(self.state_key) or {}
            if saved.get("history"):
                net = self._network(pl_module)
                replay_history(net, make_inputs(saved["inputs"], pl_module.device), saved["history"])
                self.history, self._spec, self.pruner = saved["history"], saved["inputs"], None
            original(checkpoint)

        pl_module.on_load_checkpoint = rebuild_then_load  # type: ignore[method-assign]

    def _total(self, trainer: pl.Trainer) -> Optional[int]:
        """The fit's length in the counter the checks pass (optimizer steps with
        ``every_n_steps``, else epochs), from Lightning's count of its optimizer steps, which
        ``max_epochs`` and ``max_steps`` both bound; None when it is unbounded."""
        steps = trainer.estimated_stepping_batches
        if not 0 < steps < math.inf:
            return None
        if self.every_n_steps:
            return int(steps)
        batches = trainer.num_training_batches
        if not 0 < batches < math.inf:
            return None
        return math.ceil(steps / math.ceil(batches / trainer.accumulate_grad_batches))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the schedule sets the plateau rule's span; the data is set up only now
        if self.pruner is not None and self.pruner.config.total is None:
            total = self._total(trainer)
            self.pruner.config = make_config(self.pruner.config, total=total)
            log.info("earlybird: the schedule is %s %s", total, "steps" if self.every_n_steps else "epochs")

    # ----------------------------------------------------------------------------- hooks
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.pruner is not None:  # gradients are unscaled here
            self.pruner.regularize()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step  # under gradient accumulation several batches share it
        if self.every_n_steps and step > 0 and step != self._last_step and step % self.every_n_steps == 0:
            self._last_step = step
            self._check(trainer, pl_module, step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.every_n_steps:
            self._check(trainer, pl_module, trainer.current_epoch)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, iteration: int) -> None:
        if self.pruner is None:
            return
        drawn = self.pruner.step(iteration=iteration)
        metrics = {f"earlybird/distance_{r:g}": d[-1] for r in self.ratios if (d := self.pruner.distances(r))}
        metrics["earlybird/tickets"] = float(len(self.pruner.tickets))
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if drawn:
            log.info("early-bird tickets drawn at %d: %s", iteration, drawn)
            if self.save_dir and trainer.is_global_zero:
                atomic_save(self.pruner.state_dict(), Path(self.save_dir) / "tickets.pt")
        # every rank calls the reduction at every check (a collective on some ranks only
        # would hang); each acts only when all ranks agree
        if self.on_detect == "stop":
            # every rank holds the same weights and draws the same tickets; act only together
            if trainer.strategy.reduce_boolean_decision(
                len(self.pruner.tickets) == len(self.ratios), all=True
            ):
                trainer.should_stop = True
        elif self.on_detect == "prune" and trainer.strategy.reduce_boolean_decision(
            self.prune_ratio in drawn, all=True
        ):
            self._prune_in_place(trainer, pl_module)

    def _prune_in_place(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.pruner is not None
        small = self.pruner.prune(self.prune_ratio)
        self.history = small._earlybird_pruning["history"]
        self._spec = input_spec(self.pruner.example_inputs)
        if hasattr(pl_module, self.model_attr):
            setattr(pl_module, self.model_attr, small)
        else:
            raise ValueError(f"on_detect='prune' needs the network in pl_module.{self.model_attr}")
        self.pruner = None
        trainer.strategy.setup_optimizers(trainer)  # configure_optimizers on the new model

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.history is not None:
            return {"history": self.history, "inputs": getattr(self, "_spec", None)}
        return {"pruner": self.pruner.state_dict() if self.pruner is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("pruner") is not None and self.pruner is not None:
            self.pruner.load_state_dict(state_dict["pruner"])
