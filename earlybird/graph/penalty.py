"""The slimming penalty: its gradient, added to the scored layers' ``weight.grad``."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["add_penalty_grad"]


@torch.no_grad()
def add_penalty_grad(graph: Any, strength: float, penalty: str) -> None:
    """Add the sparsity penalty's gradient to the scored layers' ``weight.grad``.

    Norm scores: ``s * sign(gamma)`` (l1) or the group lasso over coupled scales. Filter
    scores: ``s * sign(w)`` on every scored filter (l1), or ``s * w / ||w||`` per filter.
    """
    if graph.score == "weight":
        _filter_penalty_grad(graph, strength, penalty)
        return
    if penalty == "l1":
        for norm in graph.norms:
            w = norm.module.weight
            if w.grad is not None and w.requires_grad:  # frozen layers stay as they are
                w.grad.add_(torch.sign(w), alpha=strength)
        return
    flat = graph._flat_weights()
    src, dst = graph._src.to(flat.device), graph._dst.to(flat.device)
    sq = torch.zeros(graph.layout.num_channels, dtype=flat.dtype, device=flat.device)
    sq.index_add_(0, dst, flat[src] ** 2)
    grad = torch.zeros_like(flat)
    grad[src] = strength * flat[src] / sq[dst].sqrt().clamp_min(1e-12)
    for norm, g in zip(graph.norms, torch.split(grad, [n.module.weight.numel() for n in graph.norms])):
        w = norm.module.weight
        if w.grad is not None and w.requires_grad:
            w.grad.add_(g.view_as(w))


def _filter_penalty_grad(graph: Any, strength: float, penalty: str) -> None:
    for norm in graph.norms:
        w = norm.module.weight
        if w.grad is None or not w.requires_grad:
            continue
        rows = graph._filter_rows.get(norm.module)
        if rows is None or rows.device != w.device:
            rows = graph._filter_rows[norm.module] = torch.tensor(norm.src, device=w.device)
        sel = w.detach()[rows]
        if penalty == "l1":
            grad = torch.sign(sel)
        else:
            flat = sel.flatten(1)
            grad = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(sel)
        w.grad.index_add_(0, rows, grad, alpha=strength)
