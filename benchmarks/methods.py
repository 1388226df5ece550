"""The pruning methods the suite compares, as small functions over a model and its data.

Ticket selection only; training lives in :mod:`benchmarks.suite`. Every function is
deterministic for a given model state and data, and returns plain masks:

- unstructured masks ``{parameter name: 0/1 tensor}`` (lottery tickets, SNIP), applied by
  zeroing weights and their gradients during training;
- channel keep-masks ``{group root name: bool tensor}`` over earlybird's channel groups, which
  ``earlybird.graph.prune_model`` removes physically (network slimming, EB, ThiNet, SNIP and LT
  channel variants, random tickets).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

import earlybird as eb
from earlybird.graph import ROOT_TYPES, ChannelGraph, _coupled
from earlybird.masks import ChannelLayout, keep_masks

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- unstructured
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
    keep[torch.sort(flat, stable=True).indices[:k]] = 0
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start:start + s.numel()].view_as(s).float()
        start += s.numel()
    return out


def snip_saliency(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]],
                  device: torch.device = torch.device("cpu")) -> dict[str, Tensor]:
    """Connection sensitivity ``|dL/dw * w|`` of every prunable weight (Lee et al., 2019),
    summed over ``batches``, the model in training mode (BatchNorm on batch statistics)."""
    weights = prunable_weights(model)
    accumulate_grads(model, batches, device)
    out = {name: (w.grad * w).detach().abs().cpu() for name, w in weights.items()}
    model.zero_grad(set_to_none=True)
    return out


def accumulate_grads(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]],
                     device: torch.device = torch.device("cpu")) -> None:
    """Fresh gradients of the cross-entropy summed over ``batches``, in training mode."""
    model.to(device).train()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()


def sparsity_of(model: nn.Module) -> float:
    """Share of exactly-zero entries over the prunable weights."""
    weights = prunable_weights(model).values()
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


# ----------------------------------------------------------------------------- channels
def channel_masks(pruner: eb.EarlyBirdPruner, scores: Tensor, ratio: float) -> dict[str, Tensor]:
    """Keep-masks for ``ratio`` from one score per group channel, with the pruner's per-layer
    and per-segment floors (the same global-threshold rule EB tickets use)."""
    flat = keep_masks(scores, pruner.layout, [ratio], pruner._caps, pruner._seg_caps)[ratio]
    return pruner.layout.split(flat)


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


def filter_scores(graph: ChannelGraph, per_filter: Callable[[nn.Module], Tensor]) -> Tensor:
    """One score per group channel: ``per_filter(layer)`` (one value per output filter) summed
    over every conv/linear filter coupled to the channel. ``graph`` must score filters
    (``score="weight"``)."""
    if graph.score != "weight":
        raise ValueError("filter_scores needs a ChannelGraph built with score='weight'")
    flat = torch.cat([per_filter(n.module).detach().double().cpu() for n in graph.norms])
    total = torch.zeros(graph.layout.num_channels, dtype=torch.float64)
    return total.index_add_(0, graph._dst, flat[graph._src])


def random_widths(keep: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Per layer as many channels as ``keep`` keeps, chosen uniformly at random."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in keep.items():
        chosen = torch.randperm(mask.numel(), generator=g)[:int(mask.sum())]
        out[name] = torch.zeros_like(mask, dtype=torch.bool).index_fill_(0, chosen, True)
    return out


# ----------------------------------------------------------------------------- ThiNet
def thinet_masks(pruner: eb.EarlyBirdPruner, batches: Sequence[tuple[Tensor, Tensor]],
                 ratio: float, samples: int = 2048, seed: int = 0) -> dict[str, Tensor]:
    """ThiNet (Luo et al., 2017): in every channel group prune ``ratio`` of the channels,
    chosen greedily so that the next layers' outputs change least.

    For each group, the consumers (conv with ``groups == 1`` or linear layers that read the
    group's channels) are hooked on ``batches``; at ``samples`` random output entries per
    consumer the contribution of each input channel is recorded, and channels are removed one
    at a time, always the one whose removal adds the least squared error to the removed set's
    summed contribution (the paper's greedy rule). Every group keeps at least one channel;
    groups without such a consumer fall back to filter magnitude.
    """
    model, graph = pruner.model, pruner.graph
    if pruner.layout.units is not None:
        raise eb.UnsupportedModelError("ThiNet here prunes channel by channel; grouped "
                                       "convolutions (pruning units) are not supported")
    groups = _groups_by_root(pruner)
    consumers: dict[nn.Module, list[tuple[str, list[tuple[int, int]]]]] = {}
    for name, group in groups.items():
        size = len(group[0].idxs)
        found = _coupled(group, size, lambda item, m: (
            (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
            and not graph.graph.is_out_channel_pruning_fn(item.dep.handler)))
        for module, pairs in (found or {}).items():
            consumers.setdefault(module, []).append((name, sorted(pairs)))
    inputs: dict[nn.Module, list[Tensor]] = {m: [] for m in consumers}
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs[mod].append(args[0].detach()))
             for m in consumers]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    g = torch.Generator().manual_seed(seed)
    columns: dict[str, list[Tensor]] = {name: [] for name in groups}
    for module, uses in consumers.items():
        contrib = _contributions(module, torch.cat(inputs[module]), samples, g)   # [samples, C_in]
        for name, pairs in uses:
            size = len(groups[name][0].idxs)
            block = torch.zeros(contrib.shape[0], size, dtype=torch.float64)
            for idx, root in pairs:
                block[:, root] += contrib[:, idx]
            columns[name].append(block)
    magnitude = None
    keep: dict[str, Tensor] = {}
    for name, size in zip(pruner.layout.names, pruner.layout.sizes):
        n_prune = min(int(round(ratio * size)), size - max(1, pruner.config.min_channels))
        if columns[name]:
            removed = greedy_removal(torch.cat(columns[name]), n_prune)
        else:
            if magnitude is None:
                weight_graph = ChannelGraph(model, pruner.example_inputs, score="weight")
                magnitude = weight_graph.layout.split(filter_scores(
                    weight_graph, lambda m: m.weight.abs().flatten(1).sum(1)))
            log.info("ThiNet: %s has no conv/linear consumer; pruned by filter magnitude", name)
            removed = torch.sort(magnitude[name], stable=True).indices[:n_prune].tolist()
        mask = torch.ones(size, dtype=torch.bool)
        mask[removed] = False
        keep[name] = mask
    return keep


def _groups_by_root(pruner: eb.EarlyBirdPruner) -> dict[str, object]:
    model, graph = pruner.model, pruner.graph.graph
    out = {}
    for name in pruner.layout.names:
        root = model.get_submodule(name)
        size = graph.get_pruner_of_module(root).get_out_channels(root)
        out[name] = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                            list(range(size)))
    return out


def _contributions(module: nn.Module, x: Tensor, samples: int, g: torch.Generator) -> Tensor:
    """``[samples, C_in]``: at random output entries of ``module`` on input ``x``, each input
    channel's share of the pre-bias output (the output is their sum)."""
    w = module.weight.detach().double()
    x = x.double()
    if isinstance(module, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
        n = torch.randint(0, x.shape[0], (samples,), generator=g)
        o = torch.randint(0, w.shape[0], (samples,), generator=g)
        return x[n] * w[o]
    cols = nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding,
                                module.stride)                      # [N, C*k*k, L]
    n = torch.randint(0, cols.shape[0], (samples,), generator=g)
    loc = torch.randint(0, cols.shape[2], (samples,), generator=g)
    o = torch.randint(0, w.shape[0], (samples,), generator=g)
    patches = cols[n, :, loc].view(samples, w.shape[1], -1)        # [S, C, k*k]
    return (patches * w[o].flatten(2)).sum(2)


def greedy_removal(contrib: Tensor, n_prune: int) -> list[int]:
    """ThiNet's greedy channel selection: ``n_prune`` column indices of ``contrib`` ``[S, C]``
    chosen one at a time to keep ``||sum of the removed columns||^2`` smallest.

    >>> c = torch.tensor([[1., -1., 5.], [2., -2., 5.]])
    >>> greedy_removal(c, 2)          # columns 0 and 1 cancel: removing both changes nothing
    [0, 1]
    """
    # ||t + x_c||^2 = ||t||^2 + 2 t.x_c + ||x_c||^2: with the Gram matrix G = X^T X, t.x_c is
    # kept up to date in O(C) per pick (t grows by one column at a time) instead of O(S*C)
    gram = contrib.double().T @ contrib.double()
    cross = torch.zeros(contrib.shape[1], dtype=torch.float64)      # t . x_c for every c
    norms = gram.diagonal().clone()
    alive = torch.ones(contrib.shape[1], dtype=torch.bool)
    removed: list[int] = []
    for _ in range(n_prune):
        err = 2 * cross + norms
        err[~alive] = float("inf")
        best = int(torch.argmin(err))
        removed.append(best)
        alive[best] = False
        cross += gram[:, best]
    return removed
