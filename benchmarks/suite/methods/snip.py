"""SNIP (Lee et al., 2019): connection sensitivity ``|g * w|`` at initialisation on a few
batches, per weight (unstructured) or summed per channel (channels physically pruned); the
ticket trains a whole schedule from its initialisation."""
from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import Tensor, nn

from benchmarks import common
from benchmarks.suite.job import Job
from benchmarks.suite.methods.lottery import global_magnitude_masks, prunable_weights, sparsity_of
from benchmarks.suite.registry import Method, register


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


def snip(job: Job, method: str) -> dict:
    """SNIP on ``snip_batches`` training batches (under torchrun: rank 0's, shared)."""
    model = job.model()
    batches = job.first_batches(job.suite.snip_batches)
    started = time.perf_counter()
    if method == "snip":
        saliency = snip_saliency(model, batches)
        masks = common.from_rank0(global_magnitude_masks(saliency, job.ratio))
        model = job.model()
        params = prunable_weights(model)
        select_s = time.perf_counter() - started
        dense = job.dense_cost(model)                    # masked: fvcore counts it dense
        result = job.train(model, 0, weight_masks={params[n]: m for n, m in masks.items()})
        return job.row(method, model, result, dense, select_s=select_s,
                       sparsity=sparsity_of(model))
    pruner = job.pruner(model, "weight")
    dense = job.dense_cost(model)
    accumulate_grads(model, batches)
    scores = pruner.graph.filter_scores(lambda m: (m.weight.grad * m.weight).abs()
                                        .flatten(1).sum(1))
    model.zero_grad(set_to_none=True)
    keep = common.from_rank0(pruner.keep_masks(scores, job.ratio))
    small = job.prune(job.model(), keep)
    select_s = time.perf_counter() - started
    result = job.train(small, 0)
    return job.row(method, small, result, dense, select_s=select_s)


register(Method("snip", "SNIP: unstructured connection sensitivity at initialisation, whole "
                "schedule", lambda job, shared: snip(job, "snip"), unstructured=True, colour=11))
register(Method("snip-channel", "SNIP summed per channel at initialisation, channels pruned, "
                "whole schedule", lambda job, shared: snip(job, "snip-channel"), colour=12))
