"""Pruning units: channels that must be pruned together inside one group."""

from __future__ import annotations

from typing import Any, Optional

import torch_pruning as tp
from torch import nn

__all__ = ["grouped_units", "split_units", "joined_by_addition"]


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
            continue  # depthwise: channels stay independent
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


# torch-pruning's nodes that move channels around (not one to one)
_MOVERS = {"_ReshapeOp", "_ConcatOp", "_SplitOp", "_UnbindOp", "_ExpandOp", "_SliceOp"}


def _passes(module: Any) -> bool:
    """A node the channels pass through one to one: torch-pruning's elementwise op, or a
    module without parameters (an activation, dropout) that is not one of its reshaping ops."""
    name = type(module).__name__
    if name == "_ElementWiseOp":
        return True
    return (
        name not in _MOVERS and isinstance(module, nn.Module) and not any(True for _ in module.parameters())
    )


def _join(node: Any, limit: int = 8) -> Any:
    """The first node at or after ``node`` with several inputs, reached through one-to-one
    nodes with one output each; None when there is none within ``limit`` steps."""
    for _ in range(limit):
        if len(node.inputs) > 1:
            return node
        if len(node.outputs) != 1 or not _passes(node.module):
            return None
        node = node.outputs[0]
    return None


def split_units(group: Any, size: int) -> Optional[list[int]]:
    """Per root channel, the smallest root channel it must be pruned with when the group's
    channels are split into equal chunks that meet again in one elementwise op, as in a gated
    MLP (``a, b = fc1(x).chunk(2); fc2(act(a) * b)``: timm's ``GluMlp``, ``SwiGLUPacked``):
    position ``j`` of every chunk is one unit. None when the group has no such split."""
    uf = None
    paths: dict[Any, dict[Any, list[list[tuple[int, int]]]]] = {}
    for item in group:
        source = item.dep.source
        if type(source.module).__name__ != "_SplitOp":
            continue
        join = _join(item.dep.target)
        if join is None or type(join.module).__name__ != "_ElementWiseOp":
            continue  # chunks that meet in a product or sum
        paths.setdefault(source, {}).setdefault(join, []).append(
            list(zip((int(i) for i in item.idxs), (int(r) for r in item.root_idxs)))
        )
    for split, joins in paths.items():
        for chunks in joins.values():
            if len(chunks) < 2 or len(chunks) != len(split.outputs) or len({len(c) for c in chunks}) != 1:
                continue
            uf = uf or _UnionFind(size)
            first: dict[int, int] = {}
            for chunk in chunks:
                for pos, root in chunk:
                    uf.union(first.setdefault(pos, root), root)
    return None if uf is None else [uf.find(i) for i in range(size)]


def joined_by_addition(group: Any) -> bool:
    """The group's channels meet in an addition (a residual stage, a transformer's embedding
    with its position embedding and every block's output)."""
    return any(
        type(getattr(item.dep.target, "grad_fn", None)).__name__.startswith("AddBackward") for item in group
    )
