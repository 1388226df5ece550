"""One (method, ratio, seed) job: its data, models, pruning, training and its row."""
from __future__ import annotations

import functools
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

import torch
from torch import nn

import earlybird as eb
from benchmarks import common
from benchmarks.rules import detect
from benchmarks.suite import costs
from benchmarks.suite.stages import SEARCHES, WEIGHTS
from earlybird.costs.flops import count_flops
from earlybird.graph import copy_model, prune_model
from earlybird.graph.coefficients import kind_shares
from earlybird.search.masks import ChannelLayout
from earlybird.run.io import safe_load

if TYPE_CHECKING:                                  # pragma: no cover
    from benchmarks.suite.config import Suite


class Structure(NamedTuple):
    """What a pruner works out from the network's architecture alone."""

    layout: ChannelLayout
    ties: Any
    coefficients: frozenset


_STRUCTURES: dict[tuple[str, str], Structure] = {}      # per process: (setting, tag) -> it


class Job:
    """What every method's runner works with: the setting, the seed, the ratio (None for a
    per-seed method), the seed's cache folder, and helpers that every method trains through."""

    def __init__(self, suite: "Suite", seed: int, ratio: Optional[float], folder: Path,
                 checkpoint: Optional[Path] = None) -> None:
        self.suite, self.seed, self.ratio, self.folder = suite, seed, ratio, folder
        self.st = suite.setting
        self.example = common.example(self.st)
        # with a checkpoint stem (the row's path without ".json"), the n-th train() call keeps
        # its progress in "<stem>.ckpt-train<n>" after every epoch: a job killed and run again
        # redoes its deterministic steps and goes on from there (checkpoints() lists them)
        self.checkpoint, self._trains = checkpoint, 0

    @functools.cached_property
    def data(self) -> common.Data:
        return common.load_data(self.st, self.seed)

    def model(self, state: Optional[dict] = None, seed_offset: int = 0,
              tag: str = "slim") -> nn.Module:
        """A fresh model of the setting; with ``state``, those weights (the slimming
        coefficients a search trained included: a pruner with the settings of the shared run
        ``tag`` is built first to hold them)."""
        model = common.build(self.st, self.seed + seed_offset)
        if state is not None:
            if any(k.startswith("eb_coefficients.") for k in state):
                eb.EarlyBirdPruner(model, self.example, self.suite.ratios, keep_weights=False,
                                   **SEARCHES[tag])
            model.load_state_dict(state)
        return model

    def pruner(self, model: nn.Module, score: str = "auto",
               tag: str = "slim") -> eb.EarlyBirdPruner:
        """A pruner of this job's ratio with the settings of the shared run ``tag``."""
        return eb.EarlyBirdPruner(model, self.example, [self.ratio], keep_weights=False,
                                  score=score, **SEARCHES[tag])

    def structure(self, tag: str = "slim") -> Structure:
        """The layout, head ties and coefficient groups of a pruner with ``tag``'s settings on
        the setting's network, as its shared run searched it (from initialisation). They
        depend on the architecture only, so each process works them out once: building a
        pruner traces the network, a third of a dry run's time."""
        key = (repr(self.st), tag)
        if key not in _STRUCTURES:
            pruner = eb.EarlyBirdPruner(common.build(self.st, self.seed), self.example,
                                        self.suite.ratios, keep_weights=False, **SEARCHES[tag])
            _STRUCTURES[key] = Structure(pruner.layout, pruner.graph.ties,
                                         frozenset(pruner.graph.coefficients))
        return _STRUCTURES[key]

    def split(self, slim: dict, tag: str = "slim", at: int = -1) -> dict[str, torch.Tensor]:
        """The keep-masks per layer of this job's ratio at check ``at`` of the shared run
        ``slim`` (made with ``tag``'s settings); refuses masks recorded on another layout."""
        layout = self.structure(tag).layout
        if list(layout.sizes) != [int(s) for s in slim["sizes"]]:
            raise ValueError(f"{self.suite.name} seed {self.seed}: the {tag} run recorded its "
                             "masks on another layout of the network")
        return layout.split(slim["masks"][f"{self.ratio:g}"][at])

    def prune(self, model: nn.Module, keep: dict[str, torch.Tensor],
              tag: str = "slim") -> nn.Module:
        """A pruned copy of ``model``; embeddings tied to attention heads lose whole head
        dimensions (the ties of ``tag``'s pruner)."""
        small = copy_model(model)
        prune_model(small, self.example, keep, self.structure(tag).ties)
        return small

    def kind_shares(self, keep: dict[str, torch.Tensor], tag: str = "slim") -> dict[str, float]:
        """The share of each kind of unit (channels, MLP units, heads, head dimensions) the
        keep-masks ``keep`` prune, under ``tag``'s pruner settings."""
        layout = self.structure(tag).layout
        mask = torch.cat([keep[name] for name in layout.names])
        return kind_shares(layout, mask, set(self.structure(tag).coefficients))

    def weights(self, tag: str, epoch: int) -> dict[str, torch.Tensor]:
        """The weights a shared run kept at an epoch boundary (``slim-e<t>.pt``)."""
        return safe_load(self.folder / f"{tag}-e{epoch}.pt", WEIGHTS)["state"]

    def train(self, model: nn.Module, first: int, precision: Optional[str] = None,
              weight_masks: Optional[dict] = None, data: Optional[common.Data] = None,
              last: Optional[int] = None) -> dict:
        """Train from epoch ``first`` to ``last`` (default: the schedule's end) at ``precision``
        (default: the setting's)."""
        torch.manual_seed(self.seed * 7919 + first)
        self._trains += 1
        path = None if self.checkpoint is None else self.checkpoint.with_name(
            f"{self.checkpoint.name}.ckpt-train{self._trains}")
        return common.train(model, self.st, data or self.data, first,
                            self.st.epochs if last is None else last,
                            precision=precision, weight_masks=weight_masks, checkpoint=path)

    def checkpoints(self) -> list[Path]:
        """The checkpoints of this job's train() calls (removed once its row is kept)."""
        if self.checkpoint is None:
            return []
        return sorted(self.checkpoint.parent.glob(f"{self.checkpoint.name}.ckpt-train*"))

    def row(self, method: str, model: nn.Module, result: dict, dense: dict, *,
            before: Sequence[dict] = (), precision: Optional[str] = None, select_s: float = 0.0,
            **extra: Any) -> dict:
        """The row of a method whose final ``model`` trained as ``result``: its cost is the
        ``before`` parts (shared runs, earlier rounds) plus its own training (at the final
        model's FLOPs) plus ``select_s`` seconds spent choosing the ticket."""
        final = count_flops(model.cpu(), self.example)
        cost = costs.total(*before, costs.own(final.flops, result, precision or self.st.precision))
        cost["wall_s"] += select_s
        return {"method": method, "ratio": self.ratio, "seed": self.seed,
                "test_acc": float(result["test_acc"]), **cost,
                "params": final.params, "flops": final.flops,
                "dense_params": int(dense["params"]), "dense_flops": int(dense["flops"]),
                "epochs_trained": len(result["epoch_s"]),
                "epoch_s": statistics.mean(result["epoch_s"]) if result["epoch_s"] else None,
                **extra}

    def ticket(self, slim: dict, tag: str, rule: str) -> tuple[int, bool, nn.Module, dict]:
        """``(epoch, drawn, dense model at that epoch, keep-masks)`` of ``rule``'s ticket in a
        shared slimming run. A ticket drawn inside an epoch (several checks per epoch) is
        pruned at the next epoch boundary, where the weights are kept; undrawn: the mask and
        weights of the last epoch boundary before the end."""
        spe, epochs = int(slim["steps_per_epoch"]), self.st.epochs
        step = detect(slim, self.ratio, rule, epochs)
        t = -(-step // spe) if step is not None else epochs           # ceil
        drawn = t < epochs
        if not drawn:
            t, step = epochs - 1, (epochs - 1) * spe
        return (t, drawn, *self.ticket_at(slim, tag, t, step))

    def ticket_at(self, slim: dict, tag: str, epoch: int,
                  step: Optional[int] = None) -> tuple[nn.Module, dict]:
        """``(dense model, keep-masks)``: the weights a shared slimming run kept at the boundary
        before epoch ``epoch`` and its mask at optimizer step ``step`` (default: that boundary)."""
        dense_model = self.model(self.weights(tag, epoch), tag=tag)
        step = epoch * int(slim["steps_per_epoch"]) if step is None else step
        at = [int(s) for s in slim["steps"]].index(step)
        keep = self.split(slim, tag, at)
        return dense_model, keep

    def draw_step(self, slim: dict, rule: str) -> Optional[float]:
        """Where ``rule`` drew the ticket, in epochs (a fraction inside one), or None."""
        step = detect(slim, self.ratio, rule, self.st.epochs)
        return None if step is None else step / int(slim["steps_per_epoch"])

    def first_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` training batches of epoch 0."""
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(0)
        out = []
        for x, y in self.data.train:
            out.append((x, y))
            if len(out) == n:
                break
        return out

    def dense_cost(self, model: nn.Module) -> dict:
        """FLOPs and parameters of the dense ``model`` (before any training)."""
        cost = count_flops(model, self.example)
        return {"flops": cost.flops, "params": cost.params}


def take_images(batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                images: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` examples of ``batches``, the last batch cut to fit."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in batches:
        take = min(len(x), images - sum(len(b) for b, _ in out))
        if take <= 0:
            break
        out.append((x[:take], y[:take]))
    return out
