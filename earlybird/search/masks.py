"""Channel keep-masks drawn with one global threshold (pure functions, no model needed).

The unit of pruning is a *group channel*: one channel of a torch-pruning dependency group, which
may stand for several coupled norm-layer channels (a residual stage, a concatenation, a depthwise
conv). Every group channel has one score; a ticket for ratio ``p`` prunes the ``floor(N * p)``
lowest-scoring of the ``N`` group channels, with ties broken by position (earlier first), while
never leaving a group with fewer than ``min_channels`` channels or pruning more than
``max_layer_ratio`` of it.

Grouped convolutions add *units*: channels that must be pruned together (the same position in
every conv group). A unit's score is the mean of its channels' scores; a unit that does not fit
in what is left of the budget is passed over, so with units the count is at most ``floor(N * p)``
and equal to it whenever the remaining budget can be filled.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, cast

import torch
from torch import Tensor

from .blocks import masks_by_block

__all__ = [
    "ChannelLayout",
    "prune_budget",
    "layer_caps",
    "keep_masks",
    "global_masks",
    "check_room",
    "prune_room",
]


def prune_budget(num_channels: int, ratio: float) -> int:
    """Number of channels a ticket of ``ratio`` prunes: ``floor(num_channels * ratio)``.

    The product is rounded to 9 decimals first so that e.g. ``100 * 0.29`` gives 29, not 28.

    >>> prune_budget(10, 0.3), prune_budget(100, 0.29), prune_budget(7, 0.5)
    (3, 29, 3)
    """
    return math.floor(round(num_channels * ratio, 9))


def layer_caps(
    sizes: Sequence[int], min_channels: int = 1, max_layer_ratio: Optional[float] = None
) -> list[int]:
    """Most channels each layer may lose: it keeps ``min_channels`` and ``1 - max_layer_ratio``.

    >>> layer_caps([4, 10, 1], min_channels=2, max_layer_ratio=0.5)
    [2, 5, 0]
    """
    caps = []
    for size in sizes:
        keep = min_channels
        if max_layer_ratio is not None:
            keep = max(keep, size - prune_budget(size, max_layer_ratio))
        caps.append(max(0, size - keep))
    return caps


@dataclass(frozen=True)
class ChannelLayout:
    """How the ``N`` scored group channels split into layers and pruning units.

    Args:
        names: one name per layer (the group's root module), in the fixed concatenation order.
        sizes: channels per layer; ``sum(sizes) == N``.
        units: optional LongTensor ``[N]``; channels with the same value are pruned together.
            Values must be ordered like their first channel. ``None``: every channel alone.
        segments: optional LongTensor ``[N]``; parts of a layer that each feed a layer of
            their own (the branches of a concatenation that joins a residual stage), numbered
            ``0..S-1`` in order. Each segment keeps its own floor (see :func:`keep_masks`).

    >>> layout = ChannelLayout(("a", "b"), (2, 3))
    >>> layout.num_channels, layout.layer_index.tolist()
    (5, [0, 0, 1, 1, 1])
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    units: Optional[Tensor] = None
    segments: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if len(self.names) != len(self.sizes):
            raise ValueError(f"{len(self.names)} layer names for {len(self.sizes)} sizes")
        if any(s < 1 for s in self.sizes):
            raise ValueError(f"every layer needs at least one channel, got sizes {self.sizes}")
        for name in ("units", "segments"):
            value = getattr(self, name)
            if value is not None and value.shape != (self.num_channels,):
                raise ValueError(f"{name} must have shape ({self.num_channels},), got {tuple(value.shape)}")

    def segment_caps(self, min_channels: int = 1) -> Optional[list[int]]:
        """Most channels each segment may lose (it keeps ``min_channels``), or None."""
        if self.segments is None:
            return None
        sizes = torch.bincount(self.segments).tolist()
        return [max(0, size - min_channels) for size in sizes]

    @property
    def num_channels(self) -> int:
        return sum(self.sizes)

    @property
    def layer_index(self) -> Tensor:
        return torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))

    @property
    def segment_layer(self) -> Tensor:
        """The layer index of each segment of ``segments``."""
        segments = cast(Tensor, self.segments)
        n_seg = int(segments.max()) + 1
        return torch.zeros(n_seg, dtype=torch.long).scatter_reduce_(
            0, segments, self.layer_index, "amax", include_self=False
        )

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Cut a flat ``[N]`` tensor into one tensor per layer name."""
        return dict(zip(self.names, torch.split(flat, list(self.sizes))))

    def counts(self, mask: Tensor) -> list[int]:
        """The channels a flat ``[N]`` keep-mask keeps in each layer.

        >>> ChannelLayout(("a", "b"), (2, 3)).counts(torch.tensor([1, 0, 1, 1, 0]).bool())
        [1, 2]
        """
        return [int(part.sum()) for part in torch.split(mask, list(self.sizes))]


def _cumsum_within(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """Inclusive cumulative sum of non-negative ``values`` within each segment, in given order."""
    order = torch.sort(segment, stable=True).indices  # segments contiguous, order kept
    seg, vals = segment[order], values[order]
    inclusive = torch.cumsum(vals, 0)
    start = torch.zeros(num_segments, dtype=inclusive.dtype, device=values.device).scatter_reduce_(
        0, seg, inclusive - vals, "amin", include_self=False
    )
    out = torch.empty_like(inclusive)
    out[order] = inclusive - start[seg]
    return out


def keep_masks(
    scores: Tensor,
    layout: ChannelLayout,
    ratios: Sequence[float],
    caps: Sequence[int],
    segment_caps: Optional[Sequence[int]] = None,
    round_to: int | Sequence[int] = 1,
) -> dict[float, Tensor]:
    """Flat keep-masks ``[N]`` for several ratios from one ranking of ``scores``.

    Args:
        scores: float ``[N]``, one score per group channel (higher is more important).
        layout: layer sizes and pruning units of the ``N`` channels.
        ratios: pruning ratios in ``(0, 1)``.
        caps: most channels each layer may lose (see :func:`layer_caps`).
        segment_caps: most channels each of ``layout.segments`` may lose, if it has segments.
        round_to: every layer (each segment of a layer with segments) keeps a multiple of
            this many units, or all of them; one value, or one per layer. See
            :func:`~earlybird.search.blocks.masks_by_block`.

    >>> layout = ChannelLayout(("a", "b"), (3, 2))
    >>> m = keep_masks(torch.tensor([.5, .1, .5, .2, .3]), layout, [0.4], layer_caps(layout.sizes))
    >>> m[0.4].tolist()
    [True, False, True, False, True]
    """
    n = layout.num_channels
    if scores.shape != (n,):
        raise ValueError(f"expected {n} scores, got shape {tuple(scores.shape)}")
    multiples = [round_to] * len(layout.sizes) if isinstance(round_to, int) else list(round_to)
    if len(multiples) != len(layout.sizes) or any(
        not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in multiples
    ):
        raise ValueError(
            f"round_to must be an integer >= 1 or one per layer ({len(layout.sizes)}), got {round_to!r}"
        )
    if any(k > 1 for k in multiples):
        return masks_by_block(
            scores, layout, {r: prune_budget(n, r) for r in ratios}, caps, segment_caps, multiples
        )
    if layout.units is None:
        return _masks_by_channel(scores.detach().double(), layout, ratios, caps, segment_caps)
    scores = scores.detach().to("cpu", torch.float64)  # units need the host to fill a budget
    layer = layout.layer_index
    unit_of = layout.units
    n_units = int(unit_of.max()) + 1
    unit_size = torch.bincount(unit_of, minlength=n_units)
    unit_score = torch.zeros(n_units, dtype=torch.float64).index_add_(0, unit_of, scores)
    unit_score = unit_score / unit_size
    unit_layer = torch.zeros(n_units, dtype=torch.long).scatter_reduce_(
        0, unit_of, layer, "amax", include_self=False
    )
    order = torch.sort(unit_score, stable=True).indices  # ties: earlier position first
    if layout.segments is not None and segment_caps is not None:  # each segment's floor first
        unit_seg = torch.zeros(unit_size.numel(), dtype=torch.long).scatter_reduce_(
            0, unit_of, layout.segments, "amax", include_self=False
        )[order]
        within = _cumsum_within(unit_size[order], unit_seg, len(segment_caps))
        order = order[within <= torch.tensor(segment_caps, dtype=torch.long)[unit_seg]]
    size_sorted, layer_sorted = unit_size[order], unit_layer[order]
    eligible = _cumsum_within(size_sorted, layer_sorted, len(caps)) <= torch.tensor(caps)[layer_sorted]
    cand = order[eligible]
    cand_size = size_sorted[eligible]
    reach = torch.cumsum(cand_size, 0)
    out = {}
    for ratio in ratios:
        budget = prune_budget(n, ratio)
        take = int(torch.searchsorted(reach, budget, right=True))
        chosen = cand[:take].tolist()
        left = budget - (int(reach[take - 1]) if take else 0)
        for u, s in zip(cand[take:].tolist(), cand_size[take:].tolist()):
            if left == 0:
                break
            if s <= left:
                chosen.append(u)
                left -= s
        pruned_unit = torch.zeros(unit_size.numel(), dtype=torch.bool)
        pruned_unit[chosen] = True
        out[ratio] = ~pruned_unit[unit_of]
    return out


@functools.lru_cache(maxsize=64)
def _constants(
    layout: ChannelLayout,
    caps: tuple[int, ...],
    segment_caps: Optional[tuple[int, ...]],
    device: torch.device,
) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """The layout's layer index, segments and floors on ``device``, copied there once (a copy
    from host memory makes the host wait for the device)."""

    def there(values: Any) -> Optional[Tensor]:
        return None if values is None else torch.as_tensor(values, dtype=torch.long).to(device)

    return (
        cast(Tensor, there(layout.layer_index)),
        cast(Tensor, there(list(caps))),
        there(layout.segments),
        there(None if segment_caps is None else list(segment_caps)),
    )


def _masks_by_channel(
    scores: Tensor,
    layout: ChannelLayout,
    ratios: Sequence[float],
    caps: Sequence[int],
    segment_caps: Optional[Sequence[int]],
) -> dict[float, Tensor]:
    """:func:`keep_masks` without pruning units, on ``scores``' device and without a host
    synchronisation: channels the floors protect are moved behind the others instead of
    being dropped (a boolean index would wait for the device)."""
    device, n = scores.device, layout.num_channels
    layer, cap, segments, seg_cap = _constants(
        layout, tuple(caps), None if segment_caps is None else tuple(segment_caps), device
    )
    order = torch.sort(scores, stable=True).indices  # ties: earlier position first
    ok = torch.ones(n, dtype=torch.long, device=device)
    if segments is not None and seg_cap is not None:  # each segment's floor first
        seg = segments[order]
        within = _cumsum_within(ok, seg, len(seg_cap))
        ok = (within <= seg_cap[seg]).long()
    layer_sorted = layer[order]
    ok = ok * (_cumsum_within(ok, layer_sorted, len(caps)) <= cap[layer_sorted]).long()
    cand = order[torch.sort(1 - ok, stable=True).indices]  # eligible first, in pruning order
    position = torch.arange(n, device=device)
    eligible = ok.sum()
    out = {}
    for ratio in ratios:
        take = torch.clamp(eligible, max=prune_budget(n, ratio))
        pruned = torch.zeros(n, dtype=torch.bool, device=device)
        out[ratio] = ~pruned.scatter_(0, cand, position < take)
    return out


def prune_room(layout: ChannelLayout, caps: Sequence[int], segment_caps: Optional[Sequence[int]]) -> int:
    """How many channels of ``layout`` the floors leave prunable: the layers' ``caps``, each
    also bounded by its segments' ``segment_caps``.

    >>> prune_room(ChannelLayout(("a", "b"), (4, 3)), [3, 2], None)
    5
    """
    if segment_caps is None:
        return sum(caps)
    seg_room = torch.zeros(len(caps), dtype=torch.long).index_add_(  # a floor per segment too
        0, layout.segment_layer, torch.tensor(segment_caps, dtype=torch.long)
    )
    return sum(min(c, int(r)) for c, r in zip(caps, seg_room))


def check_room(
    layout: ChannelLayout,
    ratios: Sequence[float],
    caps: Sequence[int],
    segment_caps: Optional[Sequence[int]],
    limits: str,
) -> None:
    """Raise ValueError when some ratio prunes more channels than the floors (``caps``, and
    ``segment_caps`` per segment) leave prunable; ``limits`` names the settings behind them.

    >>> check_room(ChannelLayout(("a",), (4,)), [0.9], [2], None, "min_channels=2")
    Traceback (most recent call last):
    ...
    ValueError: ratio 0.9 prunes 3 of 4 channels, but min_channels=2 allow at most 2; lower \
the ratio or relax the per-layer limits
    """
    n, room = layout.num_channels, prune_room(layout, caps, segment_caps)
    for r in ratios:
        if prune_budget(n, r) > room:
            raise ValueError(
                f"ratio {r} prunes {prune_budget(n, r)} of {n} channels, but "
                f"{limits} allow at most {room}; lower the ratio or relax the "
                "per-layer limits"
            )


def global_masks(
    scores: Mapping[str, Tensor],
    ratio: float,
    *,
    min_channels: int = 1,
    max_layer_ratio: Optional[float] = None,
) -> dict[str, Tensor]:
    """Per-layer keep-masks for one ratio from per-layer scores, one global threshold.

    >>> masks = global_masks({"a": torch.tensor([.9, .1]), "b": torch.tensor([.2, .3, .4])}, 0.4)
    >>> {k: v.tolist() for k, v in masks.items()}
    {'a': [True, False], 'b': [False, True, True]}
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    layout = ChannelLayout(tuple(scores), tuple(len(v) for v in scores.values()))
    caps = layer_caps(layout.sizes, min_channels, max_layer_ratio)
    flat = torch.cat([torch.as_tensor(v).flatten() for v in scores.values()])
    return layout.split(keep_masks(flat, layout, [ratio], caps)[ratio])
