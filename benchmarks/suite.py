"""Benchmark suite: EB Train against network slimming, lottery tickets with rewinding, SNIP,
ThiNet and random tickets, every method through the same data, schedule and training code.

A *setting* is one JSON file in ``benchmarks/configs/`` (``python -m benchmarks list``). For
each seed the suite trains at most three shared runs, each cached once:

- ``dense``: the unpruned baseline, ``epochs`` epochs without slimming; it keeps the weights at
  initialisation, at ``rewind_epoch`` and at the end (lottery tickets and ThiNet start there);
- ``slim``: the same schedule with the slimming penalty ``s`` on the BatchNorm scales, one
  keep-mask per ratio drawn at every epoch boundary and the weights kept at each; EB Train
  stops it at its ticket, network slimming runs it to the end. The two share it because up to
  the draw epoch they compute exactly the same thing;
- ``slim-q8``: the same at 8-bit block floating point (qtorch), for EB Train LF/LL.

Then every (method, ratio, seed) is one job, cached as JSON. Budget: every network is trained
to the end of the same ``epochs``-epoch schedule: EB Train finetunes its ticket from the draw
epoch to the end; NS and ThiNet finetune a whole schedule after their dense run (as their
papers do); lottery tickets retrain from the rewind epoch to the end (per round); SNIP, EB
re-init and the random ticket train a whole schedule from a new initialisation. Training FLOPs
count forward and backward as 3x the forward multiply-adds (fvcore, batch of one image) per
training image; evaluation is not counted. Wall-clock is the measured training time of the
parts a method uses (shared runs: only the epochs it needs).
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from benchmarks import common, methods
from benchmarks.common import Setting
from benchmarks.detection import detect
import earlybird as eb
from earlybird.energy import estimate_joules
from earlybird.flops import count_flops
from earlybird.graph import copy_model, prune_model
from earlybird.io import atomic_save, safe_load

log = logging.getLogger(__name__)

CONFIGS = common.ROOT / "configs"
RESULTS = common.ROOT / "results"
BACKWARD_FACTOR = 3.0
DENSE, SLIM, WEIGHTS = "benchmarks.suite-dense/1", "benchmarks.suite-slim/1", "benchmarks.weights/1"

METHODS: dict[str, str] = {
    "dense": "unpruned baseline, the whole schedule, no slimming",
    "eb": "EB Train: slimming until the reference rule draws the ticket, prune, finetune to the end",
    "eb-plateau": "EB Train with the plateau rule (span 2 epochs of steps)",
    "eb-reinit": "EB Train's ticket (reference rule) re-initialised, trained a whole schedule",
    "lf": "EB Train with an 8-bit search, fp32 finetune",
    "ll": "EB Train with an 8-bit search and an 8-bit finetune",
    "ns": "network slimming: the whole slimming run, prune by its final scales, finetune a whole schedule",
    "lt": "lottery ticket, one-shot unstructured magnitude pruning, rewind to rewind_epoch",
    "lt-iter": "lottery ticket, iterative (lt_rounds rounds) unstructured, rewind to rewind_epoch",
    "lt-channel": "lottery ticket, one-shot channel pruning by filter magnitude per layer, rewind",
    "lt-channel-iter": "lottery ticket, iterative channel pruning by filter magnitude per layer, "
                       "rewind",
    "snip": "SNIP: unstructured connection sensitivity at initialisation, whole schedule",
    "snip-channel": "SNIP summed per channel at initialisation, channels pruned, whole schedule",
    "thinet": "ThiNet: greedy channel selection by next-layer reconstruction on the dense model, finetune",
    "random": "random ticket: EB ticket's per-layer widths, random channels, new init, whole schedule",
    "stability": "LT-paper stability: the EB ticket and a random ticket of its widths, both cut "
                 "from the draw-epoch weights, each trained twice with two data orders; the "
                 "distance between the copies",
}
EB_METHODS = ("eb", "eb-plateau", "eb-reinit", "lf", "ll")
UNSTRUCTURED = ("lt", "lt-iter", "snip")      # weight masks: the network keeps its shape and FLOPs
RULE = {"eb": "reference", "eb-plateau": "plateau @1/epoch", "eb-reinit": "reference",
        "lf": "reference", "ll": "reference", "random": "reference", "stability": "reference"}


def _needs(method: str) -> tuple[str, ...]:
    if method in ("lf", "ll"):
        return ("slim-q8",)
    if method in ("eb", "eb-plateau", "eb-reinit", "ns", "random", "stability"):
        return ("slim",)
    if method in ("dense", "lt", "lt-iter", "lt-channel", "lt-channel-iter", "thinet"):
        return ("dense",)
    return ()


@dataclass(frozen=True)
class Suite:
    """One benchmark setting: the training setting plus what to compare."""

    name: str
    setting: Setting
    ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    description: str = ""
    gpu: bool = False
    rewind_epoch: int = 1
    lt_rounds: int = 3
    snip_batches: int = 1
    thinet_images: int = 256
    jobs: int = 2

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"{self.name}: unknown methods {bad}; choose from {list(METHODS)}")
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios):
            raise ValueError(f"{self.name}: ratios must be in (0, 1), got {list(self.ratios)}")
        if not self.seeds:
            raise ValueError(f"{self.name}: needs at least one seed")
        st = self.setting
        if st.epochs < 2 or not all(0 < e < st.epochs for e in st.schedule):
            raise ValueError(f"{self.name}: needs epochs >= 2 and lr decay epochs inside "
                             f"(0, {st.epochs}), got epochs={st.epochs} schedule={list(st.schedule)}")
        if not 0 <= self.rewind_epoch < st.epochs:
            raise ValueError(f"{self.name}: rewind_epoch must be in [0, {st.epochs}), "
                             f"got {self.rewind_epoch}")
        if self.lt_rounds < 1 or self.snip_batches < 1 or self.thinet_images < 1 or self.jobs < 1:
            raise ValueError(f"{self.name}: lt_rounds, snip_batches, thinet_images and jobs "
                             "must be >= 1")
        if st.dataset not in common.DATASETS:
            raise ValueError(f"{self.name}: unknown dataset {st.dataset!r}; choose from "
                             f"{list(common.DATASETS)}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "gpu": self.gpu,
                "ratios": list(self.ratios), "seeds": list(self.seeds),
                "methods": list(self.methods), "rewind_epoch": self.rewind_epoch,
                "lt_rounds": self.lt_rounds, "snip_batches": self.snip_batches,
                "thinet_images": self.thinet_images, **self.setting.as_dict(),
                "data": self.setting.data}


SUITE_KEYS = ("description", "gpu", "ratios", "seeds", "methods", "rewind_epoch", "lt_rounds",
              "snip_batches", "thinet_images", "jobs")


def settings() -> list[str]:
    """Names of the settings in ``benchmarks/configs``."""
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def load_suite(name: str) -> Suite:
    """Read ``benchmarks/configs/<name>.json`` (or a path to such a file); unknown keys, wrong
    types and bad values are refused with the allowed ones named."""
    path = Path(name)
    if path.suffix != ".json":
        path = CONFIGS / f"{name}.json"
    if not path.exists():
        raise ValueError(f"unknown setting {name!r}; choose from {settings()} or pass a .json path")
    return suite_from_dict(json.loads(path.read_text()), path.stem, path.name)


def suite_from_dict(raw: dict[str, Any], name: str, source: str = "config") -> Suite:
    """A :class:`Suite` from a config's keys (as :meth:`Suite.as_dict` writes them, ``name``
    aside); errors name ``source``."""
    raw = {k: v for k, v in raw.items() if k != "name"}
    allowed = set(SUITE_KEYS) | {f.name for f in fields(Setting)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    st = {k: v for k, v in raw.items() if k in {f.name for f in fields(Setting)}}
    if "schedule" in st:
        st["schedule"] = tuple(st["schedule"])
    if st.get("dataset", "packed") == "packed" and "data" in st:
        st["data"] = str((common.ROOT.parent / st["data"]).resolve())
    try:
        setting = Setting(**st)
    except TypeError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return Suite(name=name, setting=setting, ratios=tuple(float(r) for r in raw.get("ratios", (0.5,))),
                 seeds=tuple(int(s) for s in raw.get("seeds", (0,))),
                 methods=tuple(raw.get("methods", ("dense", "eb", "ns"))),
                 **{k: raw[k] for k in SUITE_KEYS
                    if k in raw and k not in ("ratios", "seeds", "methods")})


def dry_run(suite: Suite) -> Suite:
    """The same setting shrunk to one optimizer step per epoch on CPU: random 32 px images of
    the setting's classes, batch 4, 2 epochs, the first ratio, one seed, every method."""
    st = replace(suite.setting, dataset="synthetic", train_images=4, test_images=4,
                 batch_size=4, epochs=2, schedule=(1,), image_size=32, device="cpu")
    return replace(suite, setting=st, ratios=suite.ratios[:1], seeds=suite.seeds[:1],
                   rewind_epoch=min(suite.rewind_epoch, 1), lt_rounds=min(suite.lt_rounds, 2),
                   snip_batches=1, thinet_images=4, jobs=1)


# ----------------------------------------------------------------------------- shared runs
def _save(obj: dict, path: Path) -> None:
    """Rank 0 writes (atomically); every rank waits until the file is there."""
    if common.dist_env().main:
        atomic_save(obj, path)
    common.barrier()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def stage_dense(suite: Suite, seed: int, folder: Path) -> dict:
    """The unpruned baseline; keeps the weights at init, at ``rewind_epoch`` and at the end."""
    path = folder / "dense.pt"
    if path.exists():
        return safe_load(path, DENSE)
    st = suite.setting
    data = common.load_data(st, seed)
    model = common.build(st, seed)
    kept = {"init": _state(model)}
    if suite.rewind_epoch == 0:
        kept["rewind"] = kept["init"]

    def after(epoch: int) -> None:
        if epoch + 1 == suite.rewind_epoch:
            kept["rewind"] = _state(model)

    result = common.train(model, st, data, 0, st.epochs, after_epoch=after)
    cost = count_flops(model.cpu(), common.example(st))
    _save({"format": DENSE, **kept, "final": _state(model), "test_acc": result["test_acc"],
                 "epoch_s": torch.tensor(result["epoch_s"]),
                 "images_per_epoch": result["images_per_epoch"],
                 "flops": cost.flops, "params": cost.params}, path)
    return safe_load(path, DENSE)


def stage_slim(suite: Suite, seed: int, folder: Path, precision: str = "fp32") -> dict:
    """Dense training with slimming; a keep-mask per ratio and the weights at every epoch
    boundary (``slim-e<t>.pt``)."""
    tag = "slim" if precision == "fp32" else f"slim-{precision}"
    path = folder / f"{tag}.pt"
    if path.exists():
        return safe_load(path, SLIM)
    st = suite.setting
    data = common.load_data(st, seed)
    spe = data.steps_per_epoch
    model = common.build(st, seed)
    pruner = eb.EarlyBirdPruner(model, common.example(st), suite.ratios, sparsity=st.s,
                                keep_weights=False)
    pruner.step(iteration=0)
    _save({"format": WEIGHTS, "state": _state(model)}, folder / f"{tag}-e0.pt")

    def after(epoch: int) -> None:
        pruner.step(iteration=(epoch + 1) * spe)
        _save({"format": WEIGHTS, "state": _state(model)}, folder / f"{tag}-e{epoch + 1}.pt")

    result = common.train(model, st, data, 0, st.epochs, regularize=pruner.regularize,
                          after_epoch=after, precision=precision)
    cost = count_flops(model.cpu(), common.example(st))
    masks = {f"{r:g}": pruner.history(r) for r in suite.ratios}
    theirs = common.from_rank0(masks)                   # under torchrun: rank 0's tickets
    if any(not torch.equal(masks[r], theirs[r]) for r in masks):
        raise RuntimeError("the ranks drew different tickets: their networks have diverged")
    _save({"format": SLIM, "steps": torch.tensor(pruner.iterations), "steps_per_epoch": spe,
                 "masks": masks,
                 "test_acc": result["test_acc"], "epoch_s": torch.tensor(result["epoch_s"]),
                 "images_per_epoch": result["images_per_epoch"], "precision": precision,
                 "flops": cost.flops, "params": cost.params}, path)
    return safe_load(path, SLIM)


STAGES: dict[str, Callable[[Suite, int, Path], dict]] = {
    "dense": stage_dense, "slim": stage_slim,
    "slim-q8": lambda suite, seed, folder: stage_slim(suite, seed, folder, "q8"),
}


# ----------------------------------------------------------------------------- costs
def _part(record: dict, epochs: float, precision: str = "fp32") -> dict[str, float]:
    """Cost of ``epochs`` epochs of a shared run (its measured seconds for those epochs)."""
    flops = BACKWARD_FACTOR * float(record["flops"]) * int(record["images_per_epoch"]) * epochs
    secs = [float(s) for s in record["epoch_s"]]
    return {"train_flops": flops, "energy_j": estimate_joules(flops, precision),
            "wall_s": sum(secs[:int(epochs)])}


def _own(flops: int, result: dict, precision: str = "fp32") -> dict[str, float]:
    total = BACKWARD_FACTOR * flops * result["images_per_epoch"] * len(result["epoch_s"])
    return {"train_flops": total, "energy_j": estimate_joules(total, precision),
            "wall_s": result["train_s"]}


def _sum(*parts: dict[str, float]) -> dict[str, float]:
    return {k: sum(p[k] for p in parts) for k in ("train_flops", "energy_j", "wall_s")}


# ----------------------------------------------------------------------------- methods
class _Job:
    def __init__(self, suite: Suite, seed: int, ratio: float, folder: Path) -> None:
        self.suite, self.seed, self.ratio, self.folder = suite, seed, ratio, folder
        self.st = suite.setting
        self.example = common.example(self.st)
        self.data = common.load_data(self.st, seed)

    def model(self, state: Optional[dict] = None, seed_offset: int = 0) -> nn.Module:
        model = common.build(self.st, self.seed + seed_offset)
        if state is not None:
            model.load_state_dict(state)
        return model

    def pruner(self, model: nn.Module, score: str = "auto") -> eb.EarlyBirdPruner:
        return eb.EarlyBirdPruner(model, self.example, [self.ratio], keep_weights=False,
                                  score=score)

    def prune(self, model: nn.Module, keep: dict[str, torch.Tensor]) -> nn.Module:
        small = copy_model(model)
        prune_model(small, self.example, keep)
        return small

    def train(self, model: nn.Module, first: int, precision: str = "fp32",
              weight_masks: Optional[dict] = None, data: Optional[common.Data] = None) -> dict:
        torch.manual_seed(self.seed * 7919 + first)
        return common.train(model, self.st, data or self.data, first, self.st.epochs,
                            precision=precision, weight_masks=weight_masks)

    def row(self, method: str, model: nn.Module, result: dict, dense: dict, *,
            before: Sequence[dict] = (), precision: str = "fp32", select_s: float = 0.0,
            **extra: Any) -> dict:
        """The row of a method whose final ``model`` trained as ``result``: its cost is the
        ``before`` parts (shared runs, earlier rounds) plus its own training (at the final
        model's FLOPs) plus ``select_s`` seconds spent choosing the ticket."""
        final = count_flops(model.cpu(), self.example)
        cost = _sum(*before, _own(final.flops, result, precision))
        cost["wall_s"] += select_s
        return {"method": method, "ratio": self.ratio, "seed": self.seed,
                "test_acc": float(result["test_acc"]), **cost,
                "params": final.params, "flops": final.flops,
                "dense_params": int(dense["params"]), "dense_flops": int(dense["flops"]),
                "epochs_trained": len(result["epoch_s"]),
                "epoch_s": statistics.mean(result["epoch_s"]) if result["epoch_s"] else None,
                **extra}


def _ticket(job: _Job, slim: dict, tag: str, rule: str) -> tuple[int, bool, nn.Module, dict]:
    """``(draw epoch, drawn, dense model at that epoch, keep-masks)`` of ``rule``'s ticket in
    a shared slimming run; undrawn: the last epoch boundary before the end."""
    spe, epochs = int(slim["steps_per_epoch"]), job.st.epochs
    step = detect(slim, job.ratio, rule)
    drawn = step is not None and step // spe < epochs
    t = step // spe if drawn else epochs - 1
    dense_model = job.model(safe_load(job.folder / f"{tag}-e{t}.pt", WEIGHTS)["state"])
    keep = job.pruner(dense_model).layout.split(slim["masks"][f"{job.ratio:g}"][t])
    return t, drawn, dense_model, keep


def _eb(job: _Job, method: str, slim: dict, tag: str) -> dict:
    t, drawn, dense_model, keep = _ticket(job, slim, tag, RULE[method])
    precision = str(slim["precision"])
    search = _part(slim, t, precision)
    extra = {"draw_epoch": t, "drawn": drawn, "rule": RULE[method].split()[0]}
    if method == "random":
        keep = methods.random_widths(keep, job.seed)
        small = job.prune(job.model(seed_offset=1), keep)
        result = job.train(small, 0)
        return job.row(method, small, result, slim,
                       widths={k: int(v.sum()) for k, v in keep.items()}, **extra)
    if method == "eb-reinit":
        small = job.prune(job.model(seed_offset=1), keep)
        result = job.train(small, 0)
    else:
        small = job.prune(dense_model, keep)
        result = job.train(small, t, "q8" if method == "ll" else "fp32")
    return job.row(method, small, result, slim, before=[search],
                   precision="q8" if method == "ll" else "fp32", **extra)


def weight_distance(a: nn.Module, b: nn.Module) -> float:
    """``||w_a - w_b|| / ||w_a||`` over all parameters of two copies of one architecture."""
    wa = torch.cat([p.detach().flatten().double().cpu() for p in a.parameters()])
    wb = torch.cat([p.detach().flatten().double().cpu() for p in b.parameters()])
    return float((wa - wb).norm() / wa.norm())


def _stability(job: _Job, slim: dict) -> dict:
    """Stability to SGD noise (Frankle et al., 2019): train two copies of a ticket from the
    same weights with two data orders and measure how far apart they end. The EB ticket and a
    random ticket of the same per-layer widths are both cut from the weights at the draw epoch,
    so only the choice of channels differs."""
    epochs = job.st.epochs
    t, _, dense_model, keep = _ticket(job, slim, "slim", RULE["stability"])
    orders = (job.data, common.load_data(job.st, job.seed + 1000))
    row: dict[str, Any] = {"method": "stability", "ratio": job.ratio, "seed": job.seed,
                           "draw_epoch": t, "epochs_trained": epochs - t}
    for name, ticket in (("eb", keep), ("random", methods.random_widths(keep, job.seed))):
        start = job.prune(dense_model, ticket)
        copies = [copy_model(start) for _ in orders]
        accs = [job.train(c, t, data=d)["test_acc"] for c, d in zip(copies, orders)]
        row[f"{name}_distance"] = weight_distance(*copies)
        row[f"{name}_accs"] = [float(a) for a in accs]
    return row


def _ns(job: _Job, slim: dict) -> dict:
    epochs = job.st.epochs
    model = job.model(safe_load(job.folder / f"slim-e{epochs}.pt", WEIGHTS)["state"])
    keep = job.pruner(model).layout.split(slim["masks"][f"{job.ratio:g}"][epochs])
    small = job.prune(model, keep)
    result = job.train(small, 0)
    return job.row("ns", small, result, slim, before=[_part(slim, epochs)])


def _lt_unstructured(job: _Job, dense: dict, rounds: int, method: str) -> dict:
    k, masks, trained = job.suite.rewind_epoch, None, job.model(dense["final"])
    parts = [_part(dense, job.st.epochs)]
    for r in range(1, rounds + 1):
        target = 1 - (1 - job.ratio) ** (r / rounds)
        scores = {n: w.detach() for n, w in methods.prunable_weights(trained).items()}
        masks = methods.global_magnitude_masks(scores, target, already=masks)
        model = job.model(dense["rewind"])
        params = methods.prunable_weights(model)
        if r > 1:
            parts.append(_own(int(dense["flops"]), result))           # the round before
        result = job.train(model, k, weight_masks={params[n]: m for n, m in masks.items()})
        trained = model
    return job.row(method, trained, result, dense, before=parts,
                   sparsity=methods.sparsity_of(trained), rounds=rounds, rewind_epoch=k)


def _lt_channel(job: _Job, dense: dict, rounds: int, method: str) -> dict:
    """Channel lottery tickets: in every layer, rank channels by their filters' summed |w| on
    the trained network and prune the round's share of each layer (:func:`methods.layer_ranks`);
    keep the ticket's channels of the weights at ``rewind_epoch``, train from there.
    Iterative rounds rank the survivors of the last round (pruned ones stay pruned)."""
    k, epochs = job.suite.rewind_epoch, job.st.epochs
    rewound = job.model(dense["rewind"])
    full = job.pruner(rewound, "weight")
    layout = full.layout
    keep = {n: torch.ones(s, dtype=torch.bool) for n, s in zip(layout.names, layout.sizes)}
    trained = job.model(dense["final"])
    parts = [_part(dense, epochs)]
    for r in range(1, rounds + 1):
        target = 1 - (1 - job.ratio) ** (r / rounds)
        graph = job.pruner(trained, "weight").graph
        if list(graph.layout.names) != list(layout.names):
            raise eb.UnsupportedModelError("the pruned network's channel groups no longer match "
                                           "the dense network's; iterative channel LT cannot map them")
        small_scores = graph.layout.split(methods.filter_scores(
            graph, lambda m: m.weight.abs().flatten(1).sum(1)))
        dense_scores = torch.cat([
            torch.full((len(keep[n]),), -1.0, dtype=torch.float64).index_put_(
                (keep[n].nonzero().flatten(),), small_scores[n]) for n in layout.names])
        keep = methods.channel_masks(full, methods.layer_ranks(dense_scores, layout), target)
        if r > 1:                                                     # the round before
            parts.append(_own(count_flops(trained, job.example).flops, result))
        small = job.prune(rewound, keep)
        result = job.train(small, k)
        trained = small
    return job.row(method, trained, result, dense, before=parts, rounds=rounds, rewind_epoch=k)


def _first_batches(job: _Job, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(job.data.train, "set_epoch"):
        job.data.train.set_epoch(0)
    out = []
    for x, y in job.data.train:
        out.append((x, y))
        if len(out) == n:
            break
    return out


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


def _snip(job: _Job, method: str) -> dict:
    """SNIP on ``snip_batches`` training batches (under torchrun: rank 0's, shared)."""
    model = job.model()
    batches = _first_batches(job, job.suite.snip_batches)
    started = time.perf_counter()
    if method == "snip":
        saliency = methods.snip_saliency(model, batches)
        masks = common.from_rank0(methods.global_magnitude_masks(saliency, job.ratio))
        model = job.model()
        params = methods.prunable_weights(model)
        select_s = time.perf_counter() - started
        dense = _dense_cost(job, model)                    # masked: fvcore counts it dense
        result = job.train(model, 0, weight_masks={params[n]: m for n, m in masks.items()})
        return job.row(method, model, result, dense, select_s=select_s,
                       sparsity=methods.sparsity_of(model))
    pruner = job.pruner(model, "weight")
    dense = _dense_cost(job, model)
    methods.accumulate_grads(model, batches)
    scores = methods.filter_scores(pruner.graph, lambda m: (m.weight.grad * m.weight).abs()
                                   .flatten(1).sum(1))
    model.zero_grad(set_to_none=True)
    keep = common.from_rank0(methods.channel_masks(pruner, scores, job.ratio))
    small = job.prune(job.model(), keep)
    select_s = time.perf_counter() - started
    result = job.train(small, 0)
    return job.row(method, small, result, dense, select_s=select_s)


def _dense_cost(job: _Job, model: nn.Module) -> dict:
    """FLOPs and parameters of the dense ``model`` (before any training)."""
    cost = count_flops(model, job.example)
    return {"flops": cost.flops, "params": cost.params}


def _thinet(job: _Job, dense: dict) -> dict:
    model = job.model(dense["final"])
    started = time.perf_counter()
    want = job.suite.thinet_images
    per_rank = job.st.batch_size // common.dist_env().world
    batches = take_images(_first_batches(job, math.ceil(want / per_rank)), want)
    keep = common.from_rank0(methods.thinet_masks(job.pruner(model), batches, job.ratio,
                                                  seed=job.seed))
    small = job.prune(model, keep)
    select_s = time.perf_counter() - started
    result = job.train(small, 0)
    return job.row("thinet", small, result, dense, before=[_part(dense, job.st.epochs)],
                   select_s=select_s)


def run_method(suite: Suite, seed: int, method: str, ratio: Optional[float], folder: Path) -> dict:
    """One (method, ratio, seed) row, cached as JSON in ``folder``."""
    path = folder / (f"{method}.json" if ratio is None else f"{method}-p{ratio:g}.json")
    if path.exists():
        return json.loads(path.read_text())
    records = {s: STAGES[s](suite, seed, folder) for s in _needs(method)}
    if method == "dense":
        d = records["dense"]
        row = {"method": "dense", "ratio": None, "seed": seed, "test_acc": float(d["test_acc"]),
               **_part(d, suite.setting.epochs), "params": int(d["params"]),
               "flops": int(d["flops"]), "dense_params": int(d["params"]),
               "dense_flops": int(d["flops"]), "epochs_trained": suite.setting.epochs,
               "epoch_s": statistics.mean(float(s) for s in d["epoch_s"])}
    else:
        job = _Job(suite, seed, ratio, folder)
        if method == "stability":
            row = _stability(job, records["slim"])
        elif method in RULE:
            tag = "slim-q8" if method in ("lf", "ll") else "slim"
            row = _eb(job, method, records[tag], tag)
        elif method == "ns":
            row = _ns(job, records["slim"])
        elif method in ("lt", "lt-iter"):
            row = _lt_unstructured(job, records["dense"], suite.lt_rounds if method == "lt-iter"
                                   else 1, method)
        elif method in ("lt-channel", "lt-channel-iter"):
            row = _lt_channel(job, records["dense"], suite.lt_rounds if method.endswith("iter")
                              else 1, method)
        elif method in ("snip", "snip-channel"):
            row = _snip(job, method)
        else:
            row = _thinet(job, records["dense"])
    if common.dist_env().main:
        common.write_json(path, row)
    common.barrier()
    return row


# ----------------------------------------------------------------------------- running
def plan(suite: Suite) -> list[tuple[str, Optional[float], int]]:
    """Every (method, ratio, seed) job of a setting; the dense baseline once per seed."""
    jobs = []
    for seed in suite.seeds:
        for method in suite.methods:
            for ratio in ([None] if method == "dense" else suite.ratios):
                jobs.append((method, ratio, seed))
    return jobs


def _cache_dir(suite: Suite, cache: Path) -> Path:
    """The setting's cache folder; refuses a cache made with other settings."""
    root = cache / suite.name
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "setting.json"
    mine = {k: v for k, v in suite.as_dict().items() if k not in ("methods", "seeds", "ratios",
                                                                  "description", "jobs")}
    if stamp.exists():
        theirs = json.loads(stamp.read_text())
        if theirs != json.loads(json.dumps(mine)):
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise ValueError(f"the cache {root} was made with different settings ({diff}); pass "
                             "--fresh to start over or --cache for another folder")
    elif common.dist_env().main:
        common.write_json(stamp, mine)
    common.barrier()
    return root


def run(suite: Suite, cache: Path, jobs: int, progress: Callable[[str], None] = print) -> list[dict]:
    """Run (or read from the cache) every job of ``suite``; returns the rows.

    Under torchrun (``WORLD_SIZE`` > 1) every rank runs the jobs one after another, each
    network trained data-parallel across the ranks; rank 0 writes the cache and reports.
    """
    env = common.init_distributed(suite.setting)
    if env.world > 1:
        jobs = 1
        progress = progress if env.main else (lambda line: None)
    root = _cache_dir(suite, cache)
    folders = {s: root / f"seed{s}" for s in suite.seeds}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    todo = plan(suite)
    rows: list[dict] = []
    started = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // (jobs * env.world))
    if jobs == 1:
        common.init_worker(threads)
        for method, ratio, seed in todo:
            rows.append(run_method(suite, seed, method, ratio, folders[seed]))
            _report(progress, started, rows[-1], len(rows), len(todo))
        return rows
    # stages first (each once per seed, in parallel), then the methods as their stages finish
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                               initializer=common.init_worker, initargs=(threads,))
    stage_jobs: dict[tuple[str, int], Future] = {}
    for method, _, seed in todo:
        for stage in _needs(method):
            if (stage, seed) not in stage_jobs:
                stage_jobs[(stage, seed)] = pool.submit(_stage, stage, suite, seed, folders[seed])
    waiting = list(todo)
    pending: dict[Future, tuple] = {}
    try:
        while waiting or pending:
            ready = [j for j in waiting if all(stage_jobs[(s, j[2])].done() for s in _needs(j[0]))]
            for job in ready:
                waiting.remove(job)
                for s in _needs(job[0]):
                    stage_jobs[(s, job[2])].result()             # a failed stage fails here
                pending[pool.submit(run_method, suite, job[2], job[0], job[1],
                                    folders[job[2]])] = job
            if not pending:
                wait([f for f in stage_jobs.values() if not f.done()], return_when=FIRST_COMPLETED)
                continue
            done, _ = wait(list(pending) + [f for f in stage_jobs.values() if not f.done()],
                           return_when=FIRST_COMPLETED)
            for future in done:
                if future in pending:
                    pending.pop(future)
                    rows.append(future.result())
                    _report(progress, started, rows[-1], len(rows), len(todo))
    finally:
        pool.shutdown(cancel_futures=True)
    return rows


def _stage(stage: str, suite: Suite, seed: int, folder: Path) -> None:
    STAGES[stage](suite, seed, folder)


def _report(progress: Callable[[str], None], started: float, row: dict, done: int,
            total: int) -> None:
    ratio = "" if row["ratio"] is None else f" p={row['ratio']:g}"
    draw = f", drawn at epoch {row['draw_epoch']}" if "draw_epoch" in row else ""
    progress(f"[{(time.perf_counter() - started) / 60:5.1f} min] {done}/{total} "
             f"{row['method']}{ratio} seed {row['seed']}: {_outcome(row)}{draw}")


def _outcome(row: dict) -> str:
    if row["method"] == "stability":
        return (f"distance EB {row['eb_distance']:.4f}, random {row['random_distance']:.4f}")
    return f"{row['test_acc']:.2f} %"


# ----------------------------------------------------------------------------- reporting
def summarize(suite: Suite, rows: list[dict]) -> dict[str, Any]:
    """Per (method, ratio): accuracy mean/std over seeds and mean costs (for weight-masked
    methods also the nonzero parameters); the EB improvement over the best competitor and over
    the best channel-pruning competitor; the performance bar at ratio 0.5 (if run)."""
    groups: dict[tuple[str, Optional[float]], list[dict]] = {}
    stability: dict[float, list[dict]] = {}
    for r in rows:
        if r["method"] == "stability":
            stability.setdefault(r["ratio"], []).append(r)
        else:
            groups.setdefault((r["method"], r["ratio"]), []).append(r)
    table = []
    prunable: Optional[int] = None
    for (method, ratio), found in groups.items():
        entry = {"method": method, "ratio": ratio, "seeds": len(found),
                 "test_acc": [r["test_acc"] for r in found]}
        for k in ("train_flops", "energy_j", "wall_s", "params", "flops", "dense_flops",
                  "dense_params"):
            entry[k] = statistics.mean(r[k] for r in found)
        for k in ("draw_epoch", "sparsity", "epoch_s"):
            if all(r.get(k) is not None for r in found):
                entry[k] = statistics.mean(r[k] for r in found)
        if "sparsity" in entry:         # the masked weights' zeros counted out (ShrinkBench)
            if prunable is None:
                prunable = sum(w.numel() for w in methods.prunable_weights(
                    common.build(suite.setting, suite.seeds[0])).values())
            entry["nonzero_params"] = round(entry["params"] - entry["sparsity"] * prunable)
        table.append(entry)
    order = {m: i for i, m in enumerate(METHODS)}
    table.sort(key=lambda e: (e["ratio"] or 0, order[e["method"]]))
    improvement = {}
    for ratio in suite.ratios:
        ours = [e for e in table if e["ratio"] == ratio and e["method"] in ("eb", "eb-plateau")]
        theirs = [e for e in table if e["ratio"] == ratio and e["method"] not in EB_METHODS
                  and e["method"] != "random"]
        if ours and theirs:
            best = max(ours, key=lambda e: statistics.mean(e["test_acc"]))
            rival = max(theirs, key=lambda e: statistics.mean(e["test_acc"]))
            cheap = min(theirs, key=lambda e: e["train_flops"])
            acc = statistics.mean(best["test_acc"])
            improvement[f"{ratio:g}"] = {
                "eb_method": best["method"], "best_competitor": rival["method"],
                "acc_delta": acc - statistics.mean(rival["test_acc"]),
                "cheapest_competitor": cheap["method"],
                "train_flops_saving": cheap["train_flops"] / best["train_flops"],
                "energy_saving": cheap["energy_j"] / best["energy_j"]}
            channel = [e for e in theirs if e["method"] not in UNSTRUCTURED]
            if channel:
                rival = max(channel, key=lambda e: statistics.mean(e["test_acc"]))
                improvement[f"{ratio:g}"].update(
                    best_channel_competitor=rival["method"],
                    channel_acc_delta=acc - statistics.mean(rival["test_acc"]))
    out = {"table": table, "improvement": improvement, "bar": performance_bar(suite, table)}
    if stability:
        out["stability"] = [
            {"ratio": ratio, "seeds": len(found),
             "draw_epoch": statistics.mean(r["draw_epoch"] for r in found),
             **{f"{k}_distance": [r[f"{k}_distance"] for r in found] for k in ("eb", "random")},
             **{f"{k}_acc": [a for r in found for a in r[f"{k}_accs"]] for k in ("eb", "random")}}
            for ratio, found in sorted(stability.items())]
    return out


def performance_bar(suite: Suite, table: list[dict]) -> dict[str, dict[str, Any]]:
    """The issue's bar at ratio 0.5, per EB rule run (``eb``, ``eb-plateau``): EB vs NS training
    FLOPs (>= 2x) and wall-clock (>= 1.8x), accuracy within 0.5 points of NS, draw in the first
    20 % of the epochs, and the pruned model's measured epoch-time speedup >= 0.7 of its FLOPs
    reduction."""
    return {m: bar for m in ("eb", "eb-plateau")
            if (bar := _bar(suite, table, m)) is not None}


def _bar(suite: Suite, table: list[dict], method: str) -> Optional[dict[str, Any]]:
    def get(name: str) -> Optional[dict]:
        return next((e for e in table if e["method"] == name and e["ratio"] == 0.5), None)
    eb_row, ns_row = get(method), get("ns")
    dense = next((e for e in table if e["method"] == "dense"), None)
    if eb_row is None or ns_row is None:
        return None
    out: dict[str, Any] = {
        "flops_ratio": ns_row["train_flops"] / eb_row["train_flops"],
        "wall_ratio": ns_row["wall_s"] / eb_row["wall_s"],
        "acc_gap": statistics.mean(ns_row["test_acc"]) - statistics.mean(eb_row["test_acc"]),
        "draw_share": eb_row["draw_epoch"] / suite.setting.epochs}
    if dense is not None and ns_row.get("epoch_s") and dense.get("epoch_s"):
        flops_red = dense["flops"] / ns_row["flops"]
        out["flops_reduction"] = flops_red
        out["step_speedup"] = dense["epoch_s"] / ns_row["epoch_s"]
        out["speedup_share"] = out["step_speedup"] / flops_red
    out["pass"] = {"flops_ratio >= 2": out["flops_ratio"] >= 2,
                   "wall_ratio >= 1.8": out["wall_ratio"] >= 1.8,
                   "acc within 0.5 of NS": out["acc_gap"] <= 0.5,
                   "draw in first 20 %": out["draw_share"] <= 0.2}
    if "speedup_share" in out:
        out["pass"]["step speedup >= 0.7 x FLOPs reduction"] = out["speedup_share"] >= 0.7
    return out


def markdown(suite: Suite, summary: dict, meta: dict) -> str:
    st = suite.setting
    lines = [f"# Benchmark `{suite.name}`: accuracy and training cost per method", "",
             f"Generated by `python -m benchmarks run {suite.name}`; do not edit by hand. "
             f"{suite.description}", "",
             f"Setting: `{st.arch}{st.depth or ''}` width {st.width}, {st.dataset} "
             f"({meta['train_images']:,} training / {meta['test_images']:,} test images), "
             f"{st.epochs} epochs, lr {st.lr} x0.1 at {list(st.schedule)}, batch {st.batch_size}, "
             f"slimming s = {st.s:g}, seeds {list(suite.seeds)}, LT rewind to epoch "
             f"{suite.rewind_epoch}, {suite.lt_rounds} iterative rounds. Accuracy: mean ± std "
             "over seeds. Training FLOPs: 3 x forward multiply-adds per training image "
             "(fvcore); energy: that many MACs at 4.6 pJ (fp32) or 0.23 pJ (8-bit), Horowitz "
             "2014 (an estimate, not a measurement); wall-clock: measured training time of the "
             "parts each method uses.", "",
             "| ratio | method | test acc % | train PFLOPs | energy kJ (est.) | wall min | "
             "params | FLOPs | draw epoch | sparsity |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in summary["table"]:
        ratio = "-" if e["ratio"] is None else f"{e['ratio']:g}"
        draw = f"{e['draw_epoch']:.1f}" if "draw_epoch" in e else "-"
        sparsity = f"{100 * e['sparsity']:.1f} %" if "sparsity" in e else "-"
        params = e.get("nonzero_params", e["params"])
        nonzero = " nonzero" if "nonzero_params" in e else ""
        lines.append(
            f"| {ratio} | {e['method']} | {common.mean_std(e['test_acc'])} | {e['train_flops'] / 1e15:.3f} | "
            f"{e['energy_j'] / 1e3:.3f} | {e['wall_s'] / 60:.1f} | "
            f"{params / 1e6:.3f}M{nonzero} ({e['dense_params'] / params:.2f}x) | "
            f"{e['flops'] / 1e6:.1f}M ({e['dense_flops'] / e['flops']:.2f}x) | {draw} | {sparsity} |")
    if summary["improvement"]:
        lines += ["", "## EB Train vs the best competitor", "",
                  "The more accurate EB rule against the most accurate competitor, and against "
                  "the most accurate one that prunes channels (weight-masked tickets, "
                  f"{', '.join(UNSTRUCTURED)}, keep the dense network's shape and FLOPs).", "",
                  "| ratio | EB method | acc vs most accurate competitor | acc vs most accurate "
                  "channel-pruning competitor | training FLOPs saving vs the cheapest competitor "
                  "| energy saving |", "| ---: | --- | --- | --- | ---: | ---: |"]
        for ratio, imp in summary["improvement"].items():
            channel = (f"{imp['channel_acc_delta']:+.2f} ({imp['best_channel_competitor']})"
                       if "best_channel_competitor" in imp else "-")
            lines.append(f"| {ratio} | {imp['eb_method']} | {imp['acc_delta']:+.2f} "
                         f"({imp['best_competitor']}) | {channel} | {imp['train_flops_saving']:.2f}x "
                         f"({imp['cheapest_competitor']}) | {imp['energy_saving']:.2f}x |")
    if summary.get("stability"):
        lines += ["", "## Stability to SGD noise (EB ticket vs random ticket)", "",
                  "Two copies of each ticket trained from the same draw-epoch weights with two "
                  "data orders; distance = ||w1 - w2|| / ||w1|| at the end (smaller: more "
                  "stable), accuracy over both copies and all seeds.", "",
                  "| ratio | draw epoch | EB distance | random distance | EB acc % | random acc % |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for e in summary["stability"]:
            lines.append(f"| {e['ratio']:g} | {e['draw_epoch']:.1f} | "
                         f"{common.mean_std(e['eb_distance'], 4)} | "
                         f"{common.mean_std(e['random_distance'], 4)} | "
                         f"{common.mean_std(e['eb_acc'])} | {common.mean_std(e['random_acc'])} |")
    for method, bar in summary["bar"].items():
        lines += ["", f"## Performance bar at p = 0.5 ({method} vs NS)", "",
                  f"- training FLOPs NS / EB: {bar['flops_ratio']:.2f}x (target >= 2x)",
                  f"- wall-clock NS / EB: {bar['wall_ratio']:.2f}x (target >= 1.8x)",
                  f"- accuracy NS - EB: {bar['acc_gap']:+.2f} points (target <= 0.5)",
                  f"- draw point: {100 * bar['draw_share']:.0f} % of the epochs (target <= 20 %)"]
        if "speedup_share" in bar:
            lines.append(f"- pruned (NS p=0.5) epoch-time speedup {bar['step_speedup']:.2f}x for "
                         f"{bar['flops_reduction']:.2f}x fewer FLOPs: {bar['speedup_share']:.2f} "
                         "of it (target >= 0.7)")
        missed = [k for k, ok in bar["pass"].items() if not ok]
        lines.append("- **missed: " + "; ".join(missed) + "**" if missed else "- all met")
    lines += common.provenance(meta)
    return "\n".join(lines)


def plot(summary: dict, out: Path) -> None:
    """Accuracy vs training FLOPs, one panel per ratio, one marker per method (± std)."""
    plt = common.pyplot()
    ratios = sorted({e["ratio"] for e in summary["table"] if e["ratio"] is not None})
    dense = next((e for e in summary["table"] if e["method"] == "dense"), None)
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), 4.5), squeeze=False)
    palette = plt.get_cmap("tab20").colors        # one colour per method, the same in every panel
    for ax, ratio in zip(axes[0], ratios):
        for e in [e for e in summary["table"] if e["ratio"] == ratio] + ([dense] if dense else []):
            acc = e["test_acc"]
            ax.errorbar(e["train_flops"] / 1e15, statistics.mean(acc),
                        yerr=statistics.stdev(acc) if len(acc) > 1 else 0, capsize=3,
                        fmt="*" if e["method"] in EB_METHODS else "o", label=e["method"],
                        color=palette[list(METHODS).index(e["method"]) % len(palette)],
                        markersize=10 if e["method"] in EB_METHODS else 6)
        ax.set_xlabel("training PFLOPs (3 x forward MACs per image)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"p = {ratio:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)


def rewrite_results(out: Path) -> dict:
    """Render ``out/README.md``, the plot and the summary in ``out/results.json`` again from
    the rows, setting and meta stored in ``out/results.json`` (after a change to the report;
    nothing trains, the meta of the run that made the rows is kept)."""
    path = out / "results.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; run the setting first")
    stored = json.loads(path.read_text())
    missing = sorted({"meta", "suite", "rows"} - set(stored))
    if missing:
        raise ValueError(f"{path} has no {missing}: not written by `python -m benchmarks run`")
    suite = suite_from_dict(stored["suite"], stored["suite"]["name"], str(path))
    return write_results(suite, stored["rows"], out, stored["meta"])


def write_results(suite: Suite, rows: list[dict], out: Path, meta: dict) -> dict:
    """results.json (rows + summary + meta), README.md (the table) and accuracy_vs_flops.png."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(suite, rows)
    common.write_json(out / "results.json", {"meta": meta, "suite": suite.as_dict(),
                                             **summary, "rows": rows})
    text = markdown(suite, summary, meta)
    tmp = out / "README.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "README.md")
    if any(e["ratio"] is not None for e in summary["table"]):
        plot(summary, out / "accuracy_vs_flops.png")
    return summary
