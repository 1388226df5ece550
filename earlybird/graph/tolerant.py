"""torch-pruning's dependency graph, made to survive the graphs it cannot map exactly.

torch-pruning 1.6 infers how channel indices travel through every concatenation, split and
reshape it traced. On some graphs that inference fails the whole trace (ShuffleNetV2's channel
shuffle, Swin's and TNT's concatenations), and on graphs with cycles of reshapes (window
partitions) one group search multiplies its index lists on every turn and runs for minutes.
:class:`Graph` is torch-pruning's ``DependencyGraph`` with local changes, active only inside
its own calls: each node's mapping is inferred on its own, a node it cannot size keeps
the identity mapping; a slice of the rows of a channels-last map keeps it too; a split of the
channels of a token tensor is mapped chunk by chunk (a gated MLP's); a flatten of
a channels-last tensor's trailing dimensions maps the channels as they lie; and indices no
tensor of the model can have are dropped. Groups through such a node may still
couple the wrong channels: :mod:`.exclusion` finds those and leaves them out.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F
from torch_pruning.dependency import index_mapping as _index_mapping
from torch_pruning.dependency import shape_infer as _shape_infer

log = logging.getLogger(__name__)

__all__ = ["Graph", "tolerant_index_mapping", "linear_calls", "out_params", "with_out_params"]

_UPDATES = {
    tp.ops.OPTYPE.CONCAT: _index_mapping.update_concat_index_mapping,
    tp.ops.OPTYPE.SPLIT: _index_mapping.update_split_index_mapping,
    tp.ops.OPTYPE.RESHAPE: _index_mapping.update_reshape_index_mapping,
    tp.ops.OPTYPE.UNBIND: _index_mapping.update_unbind_index_mapping,
    tp.ops.OPTYPE.EXPAND: _index_mapping.update_expand_index_mapping,
    tp.ops.OPTYPE.SLICE: _index_mapping.update_slice_index_mapping,
}


def _spatial_slice(graph: tp.DependencyGraph, node: Any) -> bool:
    """A slice of dimension 1 of a channels-last 4-D tensor (``x[:, 0::2]`` on the rows of a
    ``[B, H, W, C]`` map, as Swin's patch merging takes): torch-pruning takes dimension 1 for
    the channels and would map the channels through the slice; it selects rows, so channels
    pass unchanged. Channels-last: the last size is the input's inferred channel count and
    the second is not."""
    grad_fn = node.grad_fn
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if (
        node.type != tp.ops.OPTYPE.SLICE
        or sizes is None
        or len(sizes) != 4
        or getattr(grad_fn, "_saved_dim", None) != 1
    ):
        return False
    return any(_channels_last(graph, source, sizes) for source in node.inputs)


def _channels_last(graph: tp.DependencyGraph, source: Any, sizes: Any) -> Optional[int]:
    """The channel count of ``source`` if a tensor of ``sizes`` read from it is channels-last:
    its last size is the inferred count and its second is not; else None."""
    channels = _shape_infer.infer_out_channels_recursively(graph, source, [0])
    return channels if channels and int(sizes[-1]) == channels != int(sizes[1]) else None


class _Capped:
    """An index mapping that drops indices no tensor of the model can have: at or past
    ``bound``, the largest size of any of its parameters. A flatten mapping multiplies each
    index by its stride; through a cycle of reshapes (window partitions) torch-pruning
    multiplied them again on every turn (1 channel became 2 million indices in Swin-T).
    The order torch-pruning gives is kept: downstream mappings (SKNet's split attention) read
    indices by position, so sorting them, or recognising an operation by its set of indices,
    changed which channels are coupled."""

    def __init__(self, mapping: Callable, bound: int) -> None:
        self.mapping, self.bound = mapping, bound

    def __call__(self, idxs: Any) -> list:
        return [i for i in self.mapping(idxs) if i.idx < self.bound]


class _LastDimFlatten:
    """A flatten of the trailing dimensions of a channels-last tensor (``[..., 2, 2, C]`` to
    ``[..., 4 C]``, timm's Swin patch merging): channel ``i`` becomes ``k * C + i`` for every
    ``k < stride``, and back ``j`` becomes ``j % C``. torch-pruning's flatten maps channel ``i``
    to ``i * stride + k``, which holds only when the channels are the slowest dimension."""

    def __init__(self, stride: int, channels: int, reverse: bool) -> None:
        self.stride, self.channels, self.reverse = stride, channels, reverse

    def __call__(self, idxs: Any) -> list:
        hybrid: Any = type(idxs[0]) if idxs else None
        if self.reverse:
            return list(dict.fromkeys(hybrid(i.idx % self.channels, i.root_idx) for i in idxs))
        return [hybrid(k * self.channels + i.idx, i.root_idx) for k in range(self.stride) for i in idxs]


def _channels_last_flatten(graph: tp.DependencyGraph, node: Any) -> None:
    """Map reshape ``node`` with :class:`_LastDimFlatten` where it flattens a channels-last
    input (its last size is the input's inferred channel count ``C``, its second is not) into
    ``stride * C`` channels (the inferred input width of what reads it). torch-pruning maps
    such a flatten channel-major, or not at all."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if node.type != tp.ops.OPTYPE.RESHAPE or sizes is None or len(sizes) < 3:
        return
    out = None
    for reader in node.outputs:
        out = _shape_infer.infer_in_channels_recursively(graph, reader, [0])
        if out:
            break
    for source in node.inputs:
        channels = _channels_last(graph, source, sizes)
        if not (channels and out and out % channels == 0 and out > channels):
            continue
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _LastDimFlatten(out // channels, channels, reverse=False)
        for dep in node.dependencies:
            if dep.target is source:
                dep.index_mapping[0] = _LastDimFlatten(out // channels, channels, reverse=True)


def _feature_split(graph: tp.DependencyGraph, node: Any) -> bool:
    """Map split ``node`` chunk by chunk when it splits the channels of a channels-last tensor
    (a token tensor ``[B, N, C]``: a gated MLP's ``fc1(x).chunk(2, dim=-1)``); True when it
    did. torch-pruning maps splits of dimension 1 only, and turns off the mapping of every
    split downstream of a ViT's position embedding (meant for the token concatenation), so
    each chunk kept the identity mapping and the gated units were coupled wrongly."""
    grad_fn = node.grad_fn
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    dim = getattr(grad_fn, "_saved_dim", None)
    if node.type != tp.ops.OPTYPE.SPLIT or sizes is None or dim is None or len(sizes) < 3:
        return False
    dim = int(dim) - 2**64 if int(dim) >= 2**63 else int(dim)  # stored unsigned
    width = int(sizes[-1])
    if dim % len(sizes) != len(sizes) - 1:
        return False
    offsets = _split_offsets(grad_fn, width)
    if offsets is None or len(node.outputs) != len(offsets) - 1:
        return False
    if not any(_channels_last(graph, source, sizes) for source in node.inputs):
        return False
    forward: list = []
    backward: list = []
    for i, out in enumerate(node.outputs):  # one dependency per chunk, in order
        k = _chunk_of(node, out)
        chunk = offsets[i if k is None else k : (i if k is None else k) + 2]
        dep = next(
            (d for d in node.dependencies if d.target is out and not any(d is f for f in forward)), None
        )
        back = next(
            (d for d in out.dependencies if d.target is node and not any(d is b for b in backward)), None
        )
        if dep is not None:
            forward.append(dep)
            dep.index_mapping[0] = _index_mapping._SplitIndexMapping(offset=chunk, reverse=False)
        if back is not None:
            backward.append(back)
            back.index_mapping[0] = _index_mapping._SplitIndexMapping(offset=chunk, reverse=True)
    return True


def _chunk_of(node: Any, out: Any, depth: int = 8) -> Optional[int]:
    """Which chunk of split ``node`` its consumer ``out`` reads, from the autograd graph (the
    ``output_nr`` of the edge that reaches the split), or None. torch-pruning pairs a split's
    chunks with its consumers in the order it traced the consumers, which need not be the
    chunks' order (timm's MixedConv2d: the 5x5 branch came first, and took the 3x3's indices)."""
    frontier, seen = [getattr(out, "grad_fn", None)], set()
    for _ in range(depth):
        following = []
        for fn in frontier:
            for nxt, k in getattr(fn, "next_functions", ()) or ():
                if nxt is node.grad_fn:
                    return int(k)
                if nxt is not None and id(nxt) not in seen:
                    seen.add(id(nxt))
                    following.append(nxt)
        frontier = following
    return None


def _order_split(node: Any) -> None:
    """Give each consumer of split ``node`` the index mapping of the chunk it reads (see
    :func:`_chunk_of`), where torch-pruning mapped the chunks (``node.module.offsets``)."""
    offsets = getattr(node.module, "offsets", None)
    if node.type != tp.ops.OPTYPE.SPLIT or not offsets:
        return
    for out in node.outputs:
        k = _chunk_of(node, out)
        if k is None or k + 1 >= len(offsets):
            continue
        for dep, edge in [(d, False) for d in node.dependencies if d.target is out] + [
            (d, True) for d in out.dependencies if d.target is node
        ]:
            if isinstance(dep.index_mapping[0], _index_mapping._SplitIndexMapping):
                dep.index_mapping[0] = _index_mapping._SplitIndexMapping(
                    offset=offsets[k : k + 2], reverse=edge
                )


def _split_offsets(grad_fn: Any, width: int) -> Optional[list[int]]:
    """The chunk boundaries ``[0, ..., width]`` of a split of ``width`` channels, from the
    split's saved sizes (``torch.split``/``chunk``: one size; ``split`` with a list: each)."""
    sizes = getattr(grad_fn, "_saved_split_sizes", None)
    if sizes is None:
        size = getattr(grad_fn, "_saved_split_size", None)
        if not isinstance(size, int) or size < 1:
            return None
        sizes = [min(size, width - start) for start in range(0, width, size)]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + int(size))
    return offsets if offsets[-1] == width else None


def _update_each(graph: tp.DependencyGraph) -> None:
    """torch-pruning's ``update_index_mapping``, one node at a time: a node whose channel
    mapping it cannot infer keeps the identity mapping instead of failing the whole trace.
    Every mapping it sets is then :class:`_Capped`."""
    bound = getattr(graph, "index_bound", None)
    if bound is None:
        bound = graph.index_bound = max(
            (max(p.shape) for p in graph.model.parameters() if p.dim()), default=1
        )
    for node in list(graph.module2node.values()):
        update = _UPDATES.get(node.type)
        if update is not None and not _spatial_slice(graph, node) and not _feature_split(graph, node):
            try:
                update(graph, node)
                _order_split(node)
                _channels_last_flatten(graph, node)
            except (ZeroDivisionError, TypeError) as exc:
                log.debug("no channel mapping through %s (%s: %s)", node.name, type(exc).__name__, exc)
        for dep in node.dependencies:
            dep.index_mapping = [
                m if m is None or isinstance(m, _Capped) else _Capped(m, bound) for m in dep.index_mapping
            ]


@contextlib.contextmanager
def tolerant_index_mapping() -> Iterator[None]:
    """While inside, torch-pruning infers the channel mapping of each concatenation, split and
    reshape on its own (:func:`_update_each`). torch-pruning 1.6 fails the whole trace on one
    it cannot size: ShuffleNetV2's channel shuffle (``ZeroDivisionError``), Swin's and TNT's
    concatenations of unknown widths (``TypeError``). Groups through such a node may couple the
    wrong channels; the exclusion trials (:mod:`.exclusion`) find and leave out those."""
    saved = _index_mapping.update_index_mapping
    _index_mapping.update_index_mapping = _update_each
    try:
        yield
    finally:
        _index_mapping.update_index_mapping = saved


def out_params(layer: nn.Module) -> list[str]:
    """Parameters of a conv or linear layer besides ``weight`` and ``bias`` with one entry per
    output channel (timm's ``ScaledStdConv2d.gain``, shape ``[out, 1, 1, 1]``), which
    torch-pruning's own pruners leave unpruned."""
    width = getattr(layer, "out_channels", getattr(layer, "out_features", None))
    return [
        n
        for n, p in layer.named_parameters(recurse=False)
        if n not in ("weight", "bias") and p.dim() and p.shape[0] == width
    ]


def with_out_params(base: Any, names: Sequence[str]) -> Any:
    """torch-pruning's pruner ``base`` for one layer, that also prunes the parameters ``names``
    along their first dimension when it prunes the layer's output channels."""

    class Pruner(type(base)):  # type: ignore[misc]  # torch-pruning's pruner of that layer
        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(self.get_out_channels(layer))) - set(idxs))
            layer = super().prune_out_channels(layer, idxs)
            for name in names:
                setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), keep, 0))
            return layer

    return Pruner()


class Graph(tp.DependencyGraph):
    """torch-pruning's ``DependencyGraph``, its channel mappings inferred node by node
    (:func:`tolerant_index_mapping`) whenever it infers them: at the trace and before each
    group it builds; layers with per-channel parameters of their own (:func:`out_params`) get
    pruners that prune those too."""

    def build_dependency(self, model: nn.Module, *args: Any, **kwargs: Any) -> "Graph":
        extra = {
            type(m): (m, out_params(m))
            for m in model.modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        }
        pruners = {
            t: with_out_params(tp.pruner.function.PrunerBox[tp.ops.module2type(m)], names)
            for t, (m, names) in extra.items()
            if names
        }
        if pruners:
            kwargs["customized_pruners"] = {**pruners, **(kwargs.get("customized_pruners") or {})}
        with tolerant_index_mapping():
            return super().build_dependency(model, *args, **kwargs)

    def get_pruning_group(self, *args: Any, **kwargs: Any) -> Any:
        with tolerant_index_mapping():
            return super().get_pruning_group(*args, **kwargs)


@contextlib.contextmanager
def linear_calls(layers: Sequence[nn.Module]) -> Iterator[None]:
    """While inside, ``F.linear(x, layer.weight, bias)`` for one of ``layers`` is computed as
    ``layer(x)`` plus the difference of the biases (detached), so a trace records it as a call
    of the layer. Models that use a layer's weight with a bias of their own (timm's BEiT, EVA
    and Swin-V2 concatenate ``q_bias`` and ``v_bias``; torchvision's Swin passes the weights to
    a function) are then traced with the layer reading its input channels; the output is the
    same as without. Calls inside the layer's own ``forward`` pass through unchanged."""
    owners = {id(m.weight): m for m in layers if isinstance(m, nn.Linear)}
    if not owners:
        yield
        return
    original, active = F.linear, set()

    def linear(
        input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        layer = owners.get(id(weight))
        if layer is None or layer in active:
            return original(input, weight, bias)
        active.add(layer)
        try:
            out = layer(input)
        finally:
            active.discard(layer)
        own = layer.bias if layer.bias is not None else 0
        given = bias if bias is not None else 0
        if isinstance(given, torch.Tensor) or isinstance(own, torch.Tensor):
            out = out + (given - own).detach()
        return out

    F.linear = linear
    try:
        yield
    finally:
        F.linear = original
