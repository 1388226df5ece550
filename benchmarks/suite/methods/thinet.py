"""ThiNet (Luo et al., 2017): in each channel group, channels removed greedily so the next
layers' outputs change least (sampled), on the trained dense network, then finetuned a whole
schedule."""
from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import torch
from torch import Tensor, nn

import earlybird as eb
from benchmarks import common
from benchmarks.suite import costs
from benchmarks.suite.job import Job, take_images
from benchmarks.suite.registry import Method, register
from earlybird.graph import ChannelGraph

log = logging.getLogger(__name__)


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
    consumers: dict[nn.Module, list[tuple[str, list[tuple[int, int]]]]] = {}
    for name in pruner.layout.names:
        for module, pairs in graph.readers(name, lambda m: isinstance(m, nn.Linear) or (
                isinstance(m, nn.Conv2d) and m.groups == 1)).items():
            consumers.setdefault(module, []).append((name, pairs))
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
    columns: dict[str, list[Tensor]] = {name: [] for name in pruner.layout.names}
    sizes = dict(zip(pruner.layout.names, pruner.layout.sizes))
    for module, uses in consumers.items():
        contrib = _contributions(module, torch.cat(inputs[module]), samples, g)   # [samples, C_in]
        for name, pairs in uses:
            block = torch.zeros(contrib.shape[0], sizes[name], dtype=torch.float64)
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
                magnitude = weight_graph.layout.split(weight_graph.filter_scores(
                    lambda m: m.weight.abs().flatten(1).sum(1)))
            log.info("ThiNet: %s has no conv/linear consumer; pruned by filter magnitude", name)
            removed = torch.sort(magnitude[name], stable=True).indices[:n_prune].tolist()
        mask = torch.ones(size, dtype=torch.bool)
        mask[removed] = False
        keep[name] = mask
    return keep


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


def thinet(job: Job, shared: dict[str, dict]) -> dict:
    dense = shared["dense"]
    model = job.model(dense["final"])
    started = time.perf_counter()
    want = job.suite.thinet_images
    per_rank = job.st.batch_size // common.dist_env().world
    batches = take_images(job.first_batches(math.ceil(want / per_rank)), want)
    keep = common.from_rank0(thinet_masks(job.pruner(model), batches, job.ratio,
                                                  seed=job.seed))
    small = job.prune(model, keep)
    select_s = time.perf_counter() - started
    result = job.train(small, 0)
    return job.row("thinet", small, result, dense, before=[costs.part(dense, job.st.epochs)],
                   select_s=select_s)


register(Method("thinet", "ThiNet: greedy channel selection by next-layer reconstruction on the "
                "dense model, finetune", thinet, needs=("dense",), colour=13))
