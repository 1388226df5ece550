"""The shared runs: trained once per seed, cached, and started from by several methods.

- ``dense``: the unpruned baseline, ``epochs`` epochs without slimming; it keeps the weights at
  initialisation, at ``rewind_epoch`` and at the end (lottery tickets and ThiNet start there);
- ``slim``: the same schedule with the slimming penalty ``s`` on the BatchNorm scales, one
  keep-mask per ratio drawn at every epoch boundary and the weights kept at each; EB Train
  stops it at its ticket, network slimming runs it to the end. The two share it because up to
  the draw epoch they compute exactly the same thing;
- ``slim-q8``: the same at 8-bit block floating point (qtorch), for EB Train LF/LL;
- ``slim-dims``, ``slim-keep``, ``slim-kind``: the same with other pruner settings for a
  transformer's units (``SEARCHES``): heads cut by dimension, the residual width kept whole, a
  budget per kind of unit; EB Train's variants that chose those defaults (``slim`` itself
  searches with one global threshold, the setting they were compared against).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

import earlybird as eb
from benchmarks import common
from earlybird.costs.flops import count_flops
from earlybird.run.io import atomic_save, safe_load

if TYPE_CHECKING:                                  # pragma: no cover
    from benchmarks.suite.config import Suite

DENSE, SLIM, WEIGHTS = "benchmarks.suite-dense/1", "benchmarks.suite-slim/1", "benchmarks.weights/1"
# the pruner settings (EarlyBirdConfig fields) each shared slimming run searches with: slim
# keeps the settings the vit-cifar study compared its variants against (one threshold over
# every kind; budget="kind" is the library's default since that study). A CNN, with channels
# only, draws the same masks under both budgets.
BASE = {"heads": "whole", "residual": "prune", "budget": "global"}
SEARCHES: dict[str, dict[str, str]] = {
    "slim": BASE, "slim-q8": BASE, "slim-dims": {**BASE, "heads": "dims"},
    "slim-keep": {**BASE, "residual": "keep"}, "slim-kind": {**BASE, "budget": "kind"}}


def save(obj: dict, path: Path) -> None:
    """Rank 0 writes (atomically); every rank waits until the file is there."""
    if common.dist_env().main:
        atomic_save(obj, path)
    common.barrier()


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def stage_dense(suite: "Suite", seed: int, folder: Path) -> dict:
    """The unpruned baseline; keeps the weights at init, at ``rewind_epoch`` and at the end."""
    path = folder / "dense.pt"
    if path.exists():
        (folder / "dense.ckpt").unlink(missing_ok=True)     # a kill after the save left it
        return safe_load(path, DENSE)
    st = suite.setting
    data = common.load_data(st, seed)
    model = common.build(st, seed)
    kept = {"init": cpu_state(model)}
    if suite.rewind_epoch == 0:
        kept["rewind"] = kept["init"]

    def after(epoch: int) -> None:
        if epoch + 1 == suite.rewind_epoch:
            kept["rewind"] = cpu_state(model)

    result = common.train(model, st, data, 0, st.epochs, after_epoch=after,
                          checkpoint=folder / "dense.ckpt",
                          state=(lambda: kept, lambda saved: kept.update(saved)))
    cost = count_flops(model.cpu(), common.example(st))
    save({"format": DENSE, **kept, "final": cpu_state(model), "test_acc": result["test_acc"],
          "epoch_s": torch.tensor(result["epoch_s"]),
          "images_per_epoch": result["images_per_epoch"],
          "flops": cost.flops, "params": cost.params, "host": common.host()}, path)
    (folder / "dense.ckpt").unlink(missing_ok=True)
    return safe_load(path, DENSE)


def stage_slim(suite: "Suite", seed: int, folder: Path, precision: str = "fp32",
               tag: Optional[str] = None) -> dict:
    """Dense training with slimming; a keep-mask per ratio at every epoch boundary (or
    ``checks_per_epoch`` times per epoch) and the weights at every epoch boundary
    (``<tag>-e<t>.pt``); the pruner searches with ``SEARCHES[tag]``. The tag defaults to
    ``slim`` at fp32 and ``slim-<precision>`` otherwise."""
    tag = tag or ("slim" if precision == "fp32" else f"slim-{precision}")
    path = folder / f"{tag}.pt"
    if path.exists():
        (folder / f"{tag}.ckpt").unlink(missing_ok=True)
        return safe_load(path, SLIM)
    st = suite.setting
    data = common.load_data(st, seed)
    spe = data.steps_per_epoch
    model = common.build(st, seed)
    # step() gets the optimizer step; ``total`` only sets the plateau rule's span, which the
    # recorded masks do not depend on (the rules are replayed on them afterwards)
    pruner = eb.EarlyBirdPruner(model, common.example(st), suite.ratios, sparsity=st.s,
                                keep_weights=False, total=st.epochs * spe, **SEARCHES[tag])
    k = suite.checks_per_epoch
    if spe % k:
        raise ValueError(f"{suite.name}: {spe} steps per epoch do not split into "
                         f"checks_per_epoch={k} checks")
    pruner.step(iteration=0)
    save({"format": WEIGHTS, "state": cpu_state(model)}, folder / f"{tag}-e0.pt")

    def check(step: int) -> bool:
        pruner.step(iteration=step)
        return False

    def after(epoch: int) -> None:
        if k == 1:
            pruner.step(iteration=(epoch + 1) * spe)
        save({"format": WEIGHTS, "state": cpu_state(model)}, folder / f"{tag}-e{epoch + 1}.pt")

    result = common.train(model, st, data, 0, st.epochs, regularize=pruner.regularize,
                          after_epoch=after, precision=None if precision == "fp32" else precision,
                          check_every=spe // k if k > 1 else None, on_check=check,
                          checkpoint=folder / f"{tag}.ckpt",
                          state=(pruner.state_dict, pruner.load_state_dict))
    cost = count_flops(model.cpu(), common.example(st))
    masks = {f"{r:g}": pruner.history(r) for r in suite.ratios}
    theirs = common.from_rank0(masks)                   # under torchrun: rank 0's tickets
    if any(not torch.equal(masks[r], theirs[r]) for r in masks):
        raise RuntimeError("the ranks drew different tickets: their networks have diverged")
    save({"format": SLIM, "steps": torch.tensor(pruner.iterations), "steps_per_epoch": spe,
          "masks": masks, "sizes": torch.tensor(pruner.layout.sizes),
          "test_acc": result["test_acc"], "epoch_s": torch.tensor(result["epoch_s"]),
          "images_per_epoch": result["images_per_epoch"],
          "precision": st.precision if precision == "fp32" else precision,
          "flops": cost.flops, "params": cost.params, "host": common.host()}, path)
    (folder / f"{tag}.ckpt").unlink(missing_ok=True)
    return safe_load(path, SLIM)


STAGES: dict[str, Callable[["Suite", int, Path], dict]] = {
    "dense": stage_dense, "slim": stage_slim,
    "slim-q8": lambda suite, seed, folder: stage_slim(suite, seed, folder, "q8"),
    **{tag: (lambda suite, seed, folder, tag=tag: stage_slim(suite, seed, folder, tag=tag))
       for tag in SEARCHES if tag not in ("slim", "slim-q8")},
}
