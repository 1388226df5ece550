"""Inference FLOPs and parameters through fvcore (one multiply-add counts as one FLOP)."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["FlopCount", "count_flops", "BACKWARD_FACTOR", "training_flops"]

# A training sample costs this many forward passes: the forward, and a backward that computes
# both the weight and the input gradients (each about one forward's multiply-adds).
BACKWARD_FACTOR = 3.0


def training_flops(forward_flops: float, samples: float, backward_factor: float = BACKWARD_FACTOR) -> float:
    """Training FLOPs of ``samples`` images at ``forward_flops`` each.

    >>> training_flops(1000, 100)
    300000.0
    """
    return backward_factor * forward_flops * samples


@dataclass(frozen=True)
class FlopCount:
    """fvcore's count of one forward pass: ``flops`` multiply-adds, ``params`` parameters, and
    the ops fvcore could not count with how often they ran (``{op name: calls}``)."""

    flops: int
    params: int
    uncounted: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def _unfused_attention(model: nn.Module) -> Iterator[None]:
    """fvcore skips ``scaled_dot_product_attention``: make timm's attention modules (which read
    the setting once, into ``fused_attn``) use explicit matmuls while counting."""
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
    for m in fused:
        setattr(m, "fused_attn", False)
    try:
        yield
    finally:
        for m in fused:
            setattr(m, "fused_attn", True)


def count_flops(model: nn.Module, inputs: Any) -> FlopCount:
    """Count one forward pass of ``model`` on ``inputs`` (eval mode, no gradients).

    >>> import torch
    >>> count_flops(torch.nn.Conv2d(3, 8, 3, bias=False), torch.zeros(1, 3, 10, 10)).flops
    13824
    """
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        from fvcore.nn import FlopCountAnalysis
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _unfused_attention(model):
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            flops = int(analysis.total())
            uncounted = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    if uncounted:
        log.info("fvcore could not count: %s", uncounted)
    return FlopCount(flops, sum(p.numel() for p in model.parameters()), uncounted)
