"""Mask distance: the normalized Hamming distance between two tickets."""

from __future__ import annotations

import torch  # noqa: F401 - used by the doctests
from torch import Tensor

__all__ = ["mask_distance", "pairwise_distances", "max_distance"]


def mask_distance(a: Tensor, b: Tensor) -> float:
    """Fraction of channels on which two keep-masks disagree (Hamming distance / N).

    >>> mask_distance(torch.tensor([1, 0, 1, 1, 1, 0, 1]).bool(), torch.tensor([1, 0, 0, 1, 0, 0, 1]).bool())
    0.2857142857142857
    """
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("cannot measure the distance between empty masks")
    return (a.bool() != b.bool()).sum().item() / a.numel()


def pairwise_distances(masks: Tensor) -> Tensor:
    """The ``K x K`` matrix of mask distances between ``K`` masks stacked as ``[K, N]``.

    >>> pairwise_distances(torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]]).bool())
    tensor([[0.0000, 0.5000],
            [0.5000, 0.0000]])
    """
    if masks.dim() != 2 or masks.shape[1] == 0:
        raise ValueError(f"expected masks stacked as [K, N] with N > 0, got {tuple(masks.shape)}")
    m = masks.float()
    return (m @ (1 - m).T + (1 - m) @ m.T) / masks.shape[1]


def max_distance(ratio: float) -> float:
    """Largest distance two masks that each prune ``ratio`` of the channels can have.

    Two masks each keep ``(1-p)N`` channels; at most ``min(p, 1-p)N`` kept channels of one can be
    pruned channels of the other, so the distance is at most ``2 * min(p, 1-p)``.

    >>> max_distance(0.3), max_distance(0.5), max_distance(0.7)
    (0.6, 1.0, 0.6000000000000001)
    """
    return 2 * min(ratio, 1 - ratio)
