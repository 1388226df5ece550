"""Automatic exclusion: the channel groups whose pruning would break a model, found up front.

Some groups cannot be pruned although torch-pruning groups them: the model computes with a
channel count kept outside its layers (a split size, a reshape constant, a head count), uses a
layer's weights through a plain function, or torch-pruning maps the group's channels past the
end of a layer. Rather than refuse the whole model, :func:`breaking_groups` finds those groups
when the pruner is built, on copies of the model, by *group testing*: one unit is pruned in many
groups at once and the copy run on the example inputs; a set that breaks is halved until each
culprit stands alone. With one bad group among ``g`` that costs ``2 + 2 log2(g)`` trial prunes
(10 for 16 groups) instead of ``g``, about ``2 b log2(g)`` with ``b`` bad ones, and one when
nothing breaks.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Sequence, cast

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .surgery import copy_model, prune_model
from .trace import run_example

log = logging.getLogger(__name__)

__all__ = [
    "MIN_PRUNABLE",
    "out_width",
    "out_of_memory",
    "trial_cuts",
    "trial",
    "breaking_groups",
    "past_the_end",
    "describe",
    "exclusions",
    "report",
    "refuse_past_the_end",
]

MIN_PRUNABLE = 0.1  # a model with less of its scored channels left prunable is refused

Cuts = Mapping[str, Sequence[int]]  # {group root name: local channels to prune}


def trial_cuts(
    names: Sequence[str], sizes: Sequence[int], units: Sequence[int], segments: Sequence[int]
) -> dict[str, list[int]]:
    """The units to try cutting in each group: the first and the last unit of the group's
    largest segment (channel maps that go wrong past a split go wrong at one end), or the first
    alone where cutting both would empty the segment; none where even one would (groups that
    cannot lose a unit are never pruned, so they need no trial).

    >>> trial_cuts(["a", "b", "c"], [3, 1, 4], [0, 1, 2, 3, 4, 4, 5, 5], [0, 0, 0, 1, 2, 2, 2, 2])
    {'a': [0, 2], 'c': [0, 1]}
    """
    cuts, offset = {}, 0
    for name, size in zip(names, sizes):
        seg = list(segments[offset : offset + size])
        unit = list(units[offset : offset + size])
        largest = max(set(seg), key=lambda s: (seg.count(s), -seg.index(s)))
        members = [i for i in range(size) if seg[i] == largest]
        for ends in ({unit[members[0]], unit[members[-1]]}, {unit[members[0]]}):
            cut = [i for i in range(size) if unit[i] in ends]
            if len(members) > sum(seg[i] == largest for i in cut):
                cuts[name] = cut
                break
        offset += size
    return cuts


def out_width(layer: nn.Module) -> int:
    """A conv's ``out_channels`` or a linear's ``out_features``."""
    return int(getattr(layer, "out_channels", getattr(layer, "out_features", 0)))


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {' '.join(str(cause).split())[:160]}"


Zeros = Mapping[str, Sequence[int]]  # {layer: output channels to set to zero}


def out_of_memory(exc: BaseException) -> bool:
    """A failure to allocate memory (``MemoryError``, the CPU allocator's or CUDA's error)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and ("DefaultCPUAllocator" in text or "alloc_cpu" in text or "out of memory" in text)
    )


def trial(
    model: nn.Module,
    example_inputs: Any,
    cuts: Cuts,
    zeros: Optional[Zeros] = None,
    ties: Optional[Mapping] = None,
) -> Optional[str]:
    """Why pruning ``cuts`` from a copy of ``model`` breaks it, or None: it cannot be pruned, a
    root does not shrink by its cut, or the copy no longer runs on the inputs. With ``zeros``
    (the filters and BatchNorm channels that make the cut channels zero, with their biases,
    set to zero first) pruning must also leave the copy's output unchanged: a channel that
    contributes nothing is removed, so any change means torch-pruning cut other channels than
    it reported (e.g. on the wrong side of a split by a stored size). ``ties``: embeddings
    pruned with their attention heads (:mod:`.heads`). Running out of memory is raised, not
    taken for a breaking group."""
    small = copy_model(model)
    keep = {}
    for name, idxs in cuts.items():
        mask = torch.ones(out_width(small.get_submodule(name)), dtype=torch.bool)
        mask[list(idxs)] = False
        keep[name] = mask
    try:
        before = _silenced(small, zeros, example_inputs) if zeros else None
        prune_model(small, example_inputs, keep, ties)
        for name, mask in keep.items():
            width = out_width(small.get_submodule(name))
            if width != int(mask.sum()):
                return f"pruning left {width} channels where {int(mask.sum())} were kept"
        after = run_example(small, example_inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the pruned copy breaks the group
        cause = exc.__cause__ or exc
        if out_of_memory(cause):
            raise cause from None  # the machine's limit, not the group's
        return _why(exc)
    finally:
        del small
    return None if before is None else _changed(before, after)


@torch.no_grad()
def _silenced(model: nn.Module, zeros: Zeros, example_inputs: Any) -> list[torch.Tensor]:
    for name, channels in zeros.items():
        layer = model.get_submodule(name)
        cast(torch.Tensor, layer.weight)[list(channels)] = 0
        if getattr(layer, "bias", None) is not None:
            cast(torch.Tensor, layer.bias)[list(channels)] = 0
    return _tensors(run_example(model, example_inputs))


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.float()]
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else []
    return [t for v in values for t in _tensors(v)]


def _changed(before: Sequence[torch.Tensor], after: Any) -> Optional[str]:
    after = _tensors(after)
    if not all(bool(torch.isfinite(t).all()) for t in before):
        return None  # a diverged model's output cannot tell: running must do
    if [t.shape for t in before] != [t.shape for t in after]:
        return (
            f"pruning changed the output's shapes from {[tuple(t.shape) for t in before]} to "
            f"{[tuple(t.shape) for t in after]}"
        )
    for b, a in zip(before, after):
        scale = float(b.abs().max()) if b.numel() else 0.0
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * max(scale, 1e-6)):
            return (
                "removing a silenced channel changed the output (by up to "
                f"{float((a - b).abs().max()):.3g} of {scale:.3g}): torch-pruning cut other "
                "channels than it reported"
            )
    return None


def breaking_groups(
    model: nn.Module, example_inputs: Any, cuts: Cuts, test: Optional[Callable[[Cuts], Optional[str]]] = None
) -> dict[str, str]:
    """``{group root name: why}`` for the groups of ``cuts`` whose pruning breaks the model.

    ``test`` (default :func:`trial`) says why a set of cuts breaks a copy, or None. A set that
    breaks is halved and each half that breaks searched on. When neither half breaks alone, the
    break needs both: the second half is searched with all of the first pruned beside it, so a
    pair split across halves costs one of its two groups, not the set. The groups left over are
    tested together once more, until they pass.
    """
    test = test or (lambda some: trial(model, example_inputs, some))
    calls = [0]

    def run(names: Sequence[str]) -> Optional[str]:
        calls[0] += 1
        return test({n: cuts[n] for n in names})

    def search(names: Sequence[str], reason: str, beside: Sequence[str] = ()) -> dict[str, str]:
        """Culprits among ``names``, which break (``reason``) with ``beside`` pruned too,
        while ``beside`` alone does not."""
        if len(names) == 1:
            return {names[0]: reason}
        found: dict[str, str] = {}
        first, second = names[: len(names) // 2], names[len(names) // 2 :]
        for half in (first, second):
            why = run([*beside, *half])
            if why is not None:
                found.update(search(half, why, beside))
        return found or search(second, reason, [*beside, *first])

    bad: dict[str, str] = {}
    left = list(cuts)
    while left:
        why = run(left)
        if why is None:
            break
        bad.update(search(left, why))
        left = [n for n in left if n not in bad]
    log.debug("group testing: %d trial prunes over %d groups, %d break", calls[0], len(cuts), len(bad))
    return bad


def past_the_end(
    norms: Sequence[Any], sizes: Sequence[int], names: Sequence[str], layer_names: Mapping[nn.Module, str]
) -> dict[str, str]:
    """Groups whose channels torch-pruning maps past the end of a scored layer (it walked a
    dual-path block's slices and concatenations into wrong indices): ``{group: why}``."""
    starts = torch.tensor([0, *sizes]).cumsum(0)
    bad: dict[str, str] = {}
    for norm in norms:
        width = len(norm.values())
        for src, dst in zip(norm.src, norm.dst):
            if src >= width:
                group = names[int(torch.searchsorted(starts, dst, right=True)) - 1]
                bad.setdefault(
                    group,
                    f"torch-pruning maps its channels past the end of "
                    f"{layer_names[norm.module]!r} (channel {src} of {width})",
                )
    return bad


def describe(excluded: Mapping[str, str], limit: int = 3) -> str:
    """``'a' (why), 'b' (why) and 2 more`` for a log line or an error."""
    shown = [f"{name!r} ({why})" for name, why in list(excluded.items())[:limit]]
    more = len(excluded) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def exclusions(
    model: nn.Module, example_inputs: Any, found: tuple, names: Mapping[nn.Module, str], graph: Any
) -> dict[str, str]:
    """The groups of ``found`` (a :class:`~.groups.ChannelGraph`'s collected groups: names,
    sizes, units, segments, scored layers) whose pruning would break ``model``: ``{root: why}``,
    in layout order. ``graph`` is torch-pruning's graph of ``model``.

    A group whose channels are made by conv/linear filters and normalised by BatchNorms only is
    held to an unchanged output (:func:`trial` with its filters and norm channels zeroed); one
    coupled to a LayerNorm or GroupNorm only to running, as removing a channel changes the
    statistics such a norm takes over the others."""
    layer_names, sizes, units, segments, norms = found
    bad = past_the_end(list(norms.values()), sizes, layer_names, names)
    cuts = {n: c for n, c in trial_cuts(layer_names, sizes, units, segments).items() if n not in bad}
    zeros = {name: _silencers(model, graph, name, cut, names) for name, cut in cuts.items()}

    def merged(some: Cuts) -> dict[str, list[int]]:
        out: dict[str, set] = {}
        for name in some:
            for layer, channels in cast(dict[str, list[int]], zeros[name]).items():
                out.setdefault(layer, set()).update(channels)
        return {layer: sorted(channels) for layer, channels in out.items()}

    exact = {n: cuts[n] for n in cuts if zeros[n] is not None}
    bad.update(
        breaking_groups(
            model, example_inputs, exact, lambda some: trial(model, example_inputs, some, merged(some))
        )
    )
    bad.update(breaking_groups(model, example_inputs, {n: c for n, c in cuts.items() if n not in exact}))
    return {n: bad[n] for n in layer_names if n in bad}


def _silencers(
    model: nn.Module, graph: Any, name: str, cut: Sequence[int], names: Mapping[nn.Module, str]
) -> Optional[dict[str, list[int]]]:
    """The filters and BatchNorm channels that make the cut channels of group ``name`` zero
    everywhere (``{layer: channels}``), or None when a norm in the group takes statistics over
    channels (LayerNorm, GroupNorm) or has no scale to zero."""
    root = model.get_submodule(name)
    group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(cut))
    out: dict[str, list[int]] = {}
    for item in group:
        module = item.dep.target.module
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention)):
            return None
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.weight is None:
                return None
            out.setdefault(names[module], []).extend(int(i) for i in item.idxs)
        elif isinstance(
            module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
        ) and graph.is_out_channel_pruning_fn(item.dep.handler):
            out.setdefault(names[module], []).extend(int(i) for i in item.idxs)
    return out


def report(model: nn.Module, excluded: Mapping[str, str], kept: int, scored: int) -> None:
    """One warning naming the left-out groups; refuse a model left with almost nothing."""
    what = (
        f"{type(model).__name__}: {len(excluded)} channel group(s) left out, pruning them "
        f"would break the model: {describe(excluded)}"
    )
    if kept < MIN_PRUNABLE * scored:
        raise UnsupportedModelError(
            f"{what}; only {kept} of {scored} scored channels ({kept / scored:.0%}) would be left "
            f"to prune, under the {MIN_PRUNABLE:.0%} worth pruning"
        )
    log.warning(
        "%s; %d of %d scored channels (%.0f%%) remain prunable (pruner.excluded has every reason)",
        what,
        kept,
        scored,
        100 * kept / scored,
    )


def refuse_past_the_end(norms: Sequence[Any], names: Mapping[nn.Module, str], model: nn.Module) -> None:
    """Refuse a model whose groups name channels past the end of a scored layer: torch-pruning
    walked a dual-path block's slices and concatenations (timm's DPN) into wrong indices, and
    scoring or pruning by them would fail or cut the wrong channels."""
    bad = [(names[n.module], max(n.src), len(n.values())) for n in norms if max(n.src) >= len(n.values())]
    if bad:
        name, index, size = bad[0]
        raise UnsupportedModelError(
            f"torch-pruning maps channels of {type(model).__name__} past the end of {len(bad)} "
            f"layer(s) (e.g. channel {index} of {name!r}, which has {size}): its channel "
            "coupling does not fit this model's slicing and concatenation (dual-path blocks), "
            "so pruning would cut the wrong channels"
        )
