"""Lottery tickets with rewinding (Frankle et al., 2019/2020): prune the trained network,
rewind the kept weights to ``rewind_epoch`` and train from there, one-shot or in rounds;
unstructured (global weight magnitude, masks kept during training) or by whole channels
(filter magnitude ranked within each layer, physically pruned)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

import earlybird as eb
from benchmarks.suite import costs
from benchmarks.suite.job import Job
from benchmarks.suite.registry import Method, register
from earlybird.costs.flops import count_flops
from earlybird.graph import ROOT_TYPES
from earlybird.search.masks import ChannelLayout


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv and linear weights except the last such layer in module order (the classifier of
    the CIFAR VGG/PreResNet and torchvision ResNets, whose outputs must keep every class)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)]
    return {f"{name}.weight": m.weight for name, m in layers[:-1]}


def global_magnitude_masks(scores: dict[str, Tensor], sparsity: float,
                           already: Optional[dict[str, Tensor]] = None) -> dict[str, Tensor]:
    """0/1 masks that zero the ``round(sparsity * total)`` lowest scores over all tensors
    (one global threshold; ties broken by position). Weights pruned by ``already`` stay pruned
    and count towards the sparsity.

    >>> m = global_magnitude_masks({"a": torch.tensor([3., 1.]), "b": torch.tensor([2., 0.5])}, 0.5)
    >>> {k: v.tolist() for k, v in m.items()}
    {'a': [1.0, 0.0], 'b': [1.0, 0.0]}
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = torch.cat([s.detach().flatten().double().abs() for s in scores.values()])
    if already is not None:
        dead = torch.cat([(already[k].flatten() == 0) for k in scores])
        flat = torch.where(dead, torch.full_like(flat, -1.0), flat)
    k = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat)
    if k:                   # the k first of a stable sort, without sorting tens of millions
        threshold = torch.kthvalue(flat, k).values
        below = flat < threshold
        ties = (flat == threshold).nonzero().flatten()[:k - int(below.sum())]
        keep[below] = 0
        keep[ties] = 0
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start:start + s.numel()].view_as(s).float()
        start += s.numel()
    return out


def sparsity_of(model: nn.Module) -> float:
    """Share of exactly-zero entries over the prunable weights."""
    weights = prunable_weights(model).values()
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def layer_ranks(scores: Tensor, layout: ChannelLayout) -> Tensor:
    """Every channel's score replaced by its rank within its layer, scaled into (0, 1):
    ``(k + 0.5) / size`` for the ``k``-th lowest (ties: earlier position lower).

    A global threshold over these prunes the same share of every layer (up to one channel of
    rounding): the per-layer rule of magnitude filter pruning (Li et al., 2017). Raw filter
    norms cannot share one threshold: a filter's summed ``|w|`` grows with its fan-in, so a
    global cut empties the early, high-resolution layers first.

    >>> layout = ChannelLayout(("a", "b"), (2, 4))
    >>> layer_ranks(torch.tensor([5., 1., 40., 10., 30., 20.]), layout).tolist()
    [0.75, 0.25, 0.875, 0.125, 0.625, 0.375]
    """
    if scores.shape != (layout.num_channels,):
        raise ValueError(f"expected {layout.num_channels} scores, got shape {tuple(scores.shape)}")
    out = torch.empty(layout.num_channels, dtype=torch.float64)
    start = 0
    for size in layout.sizes:
        order = torch.sort(scores[start:start + size].double(), stable=True).indices
        out[start + order] = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        start += size
    return out


def lt_unstructured(job: Job, dense: dict, rounds: int, method: str) -> dict:
    k, masks, trained = job.suite.rewind_epoch, None, job.model(dense["final"])
    parts = [costs.part(dense, job.st.epochs)]
    for r in range(1, rounds + 1):
        target = 1 - (1 - job.ratio) ** (r / rounds)
        scores = {n: w.detach() for n, w in prunable_weights(trained).items()}
        masks = global_magnitude_masks(scores, target, already=masks)
        model = job.model(dense["rewind"])
        params = prunable_weights(model)
        if r > 1:
            parts.append(costs.own(int(dense["flops"]), result))           # the round before
        result = job.train(model, k, weight_masks={params[n]: m for n, m in masks.items()})
        trained = model
    return job.row(method, trained, result, dense, before=parts,
                   sparsity=sparsity_of(trained), rounds=rounds, rewind_epoch=k)


def lt_channel(job: Job, dense: dict, rounds: int, method: str) -> dict:
    """Channel lottery tickets: in every layer, rank channels by their filters' summed |w| on
    the trained network and prune the round's share of each layer (:func:`layer_ranks`);
    keep the ticket's channels of the weights at ``rewind_epoch``, train from there.
    Iterative rounds rank the survivors of the last round (pruned ones stay pruned)."""
    k, epochs = job.suite.rewind_epoch, job.st.epochs
    rewound = job.model(dense["rewind"])
    full = job.pruner(rewound, "weight")
    layout = full.layout
    keep = {n: torch.ones(s, dtype=torch.bool) for n, s in zip(layout.names, layout.sizes)}
    trained = job.model(dense["final"])
    parts = [costs.part(dense, epochs)]
    for r in range(1, rounds + 1):
        target = 1 - (1 - job.ratio) ** (r / rounds)
        graph = job.pruner(trained, "weight").graph
        if list(graph.layout.names) != list(layout.names):
            raise eb.UnsupportedModelError("the pruned network's channel groups no longer match "
                                           "the dense network's; iterative channel LT cannot map them")
        small_scores = graph.layout.split(graph.filter_scores(
            lambda m: m.weight.abs().flatten(1).sum(1)))
        dense_scores = torch.cat([
            torch.full((len(keep[n]),), -1.0, dtype=torch.float64).index_put_(
                (keep[n].nonzero().flatten(),), small_scores[n]) for n in layout.names])
        keep = full.keep_masks(layer_ranks(dense_scores, layout), target)
        if r > 1:                                                     # the round before
            parts.append(costs.own(count_flops(trained, job.example).flops, result))
        small = job.prune(rewound, keep)
        result = job.train(small, k)
        trained = small
    return job.row(method, trained, result, dense, before=parts, rounds=rounds, rewind_epoch=k)


def _lottery(name: str, description: str, rounds: Optional[int], channel: bool,
             colour: int) -> None:
    """``rounds``: None for the setting's ``lt_rounds`` (the iterative variants)."""
    def run(job: Job, shared: dict[str, dict]) -> dict:
        n = job.suite.lt_rounds if rounds is None else rounds
        return (lt_channel if channel else lt_unstructured)(job, shared["dense"], n, name)
    register(Method(name, description, run, needs=("dense",), unstructured=not channel,
                    colour=colour))


_lottery("lt", "lottery ticket, one-shot unstructured magnitude pruning, rewind to "
         "rewind_epoch", 1, False, 7)
_lottery("lt-iter", "lottery ticket, iterative (lt_rounds rounds) unstructured, rewind to "
         "rewind_epoch", None, False, 8)
_lottery("lt-channel", "lottery ticket, one-shot channel pruning by filter magnitude per "
         "layer, rewind", 1, True, 9)
_lottery("lt-channel-iter", "lottery ticket, iterative channel pruning by filter magnitude per "
         "layer, rewind", None, True, 10)
