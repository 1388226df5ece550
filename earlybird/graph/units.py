"""Pruning units: channels that must be pruned together inside one group."""
from __future__ import annotations

from typing import Any, Optional

import torch_pruning as tp
from torch import nn

__all__ = ["grouped_units", "joined_by_addition"]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def grouped_units(graph: tp.DependencyGraph, group: Any, size: int) -> Optional[list[int]]:
    """Per root channel, the smallest root channel it must be pruned with: the same position
    in every conv group of a grouped conv, and in every head of an ``nn.MultiheadAttention``
    whose embedding the group is (so every head keeps the same ``head_dim``)."""
    uf = None
    for item in group:
        conv = item.dep.target.module
        if isinstance(conv, nn.MultiheadAttention) and conv.num_heads > 1:
            block = conv.head_dim
        elif not isinstance(conv, nn.modules.conv._ConvNd) or conv.groups == 1:
            continue
        elif conv.groups == conv.in_channels == conv.out_channels:
            continue                                    # depthwise: channels stay independent
        else:
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            block = (conv.out_channels if out else conv.in_channels) // conv.groups
        first: dict[int, int] = {}
        uf = uf or _UnionFind(size)
        for idx, root in zip(item.idxs, item.root_idxs):
            pos = int(idx) % block
            if pos in first:
                uf.union(first[pos], int(root))
            else:
                first[pos] = int(root)
    return None if uf is None else [uf.find(i) for i in range(size)]


def joined_by_addition(group: Any) -> bool:
    """The group's channels meet in an addition (a residual stage, a transformer's embedding
    with its position embedding and every block's output)."""
    return any(type(getattr(item.dep.target, "grad_fn", None)).__name__.startswith("AddBackward")
               for item in group)
