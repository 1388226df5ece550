"""Rounded tickets: every layer keeps a multiple of ``k`` units (``round_to``), so pruned widths
suit tensor cores and vector units (multiples of 8 or 16), under one global threshold over
blocks of ``k`` units."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # (masks imports this module)
    from .masks import ChannelLayout

__all__ = ["masks_by_block"]


def masks_by_block(
    scores: Tensor,
    layout: "ChannelLayout",
    budgets: Mapping[float, int],
    caps: Sequence[int],
    segment_caps: Optional[Sequence[int]],
    multiples: Sequence[int],
) -> dict[float, Tensor]:
    """Keep-masks (:func:`~earlybird.search.masks.keep_masks`) that prune at most ``budgets[ratio]``
    channels each, where each layer keeps a multiple of ``multiples[layer]`` units.

    Each layer (each segment, when the layout has segments) ranks its units by score and cuts
    them, lowest first, into *blocks*: first the ``count % k`` lowest (when ``k`` does not
    divide the count), then ``k`` at a time. A block's score is the mean of its units'
    scores; within a layer the blocks' scores rise in that order, so one global threshold over
    blocks prunes a tail of each layer and every layer keeps a multiple of ``k`` units (or all
    of them). Blocks are pruned lowest first while they fit in the budget and the floors
    (``caps``, ``segment_caps``); a block that does not fit closes its layer, the next ones
    are tried, so the count pruned is at most ``floor(N * p)`` and short of it by less than
    the blocks left allow. Runs on the host.

    >>> from earlybird.search.masks import ChannelLayout
    >>> layout = ChannelLayout(("a", "b"), (6, 4))
    >>> scores = torch.tensor([.9, .1, .8, .2, .7, .3, .6, .5, .4, .05])
    >>> mask = masks_by_block(scores, layout, {0.4: 4}, [5, 3], None, [2, 2])[0.4]
    >>> mask.tolist(), layout.counts(mask)
    ([True, False, True, False, True, True, True, True, False, False], [4, 2])
    """
    scores = scores.detach().to("cpu", torch.float64)
    layer = layout.layer_index
    unit_of = (
        torch.unique(layout.units, return_inverse=True)[1]
        if layout.units is not None
        else torch.arange(layout.num_channels)
    )  # units numbered 0..U-1
    n_units = int(unit_of.max()) + 1
    unit_size = torch.bincount(unit_of, minlength=n_units)
    summed = torch.zeros(n_units, dtype=torch.float64).index_add_(0, unit_of, scores)
    unit_score = (summed / unit_size).tolist()
    unit_layer = (
        torch.zeros(n_units, dtype=torch.long)
        .scatter_reduce_(0, unit_of, layer, "amax", include_self=False)
        .tolist()
    )
    part_of = (
        unit_layer
        if layout.segments is None
        else torch.zeros(n_units, dtype=torch.long)
        .scatter_reduce_(0, unit_of, layout.segments, "amax", include_self=False)
        .tolist()
    )
    sizes = unit_size.tolist()
    parts: dict[int, list[int]] = {}
    for u in sorted(range(n_units), key=lambda u: unit_score[u]):  # stable: earlier first
        parts.setdefault(part_of[u], []).append(u)
    blocks = []  # (score, part, units, channels, layer)
    for part, units in sorted(parts.items()):  # ties: earlier layer first
        k = multiples[unit_layer[units[0]]]
        first = len(units) % k or k
        rising = float("-inf")
        for start in [0] + list(range(first, len(units), k)):
            members = units[start : start + (first if start == 0 else k)]
            # the running maximum: a mean of tied scores can round below the next block's
            rising = max(rising, sum(unit_score[u] for u in members) / len(members))
            blocks.append((rising, part, members, sum(sizes[u] for u in members), unit_layer[members[0]]))
    blocks.sort(key=lambda b: b[0])  # stable: a layer's blocks keep order
    out = {}
    for ratio, budget in budgets.items():
        left = budget
        lost = [0] * len(caps)
        lost_part = {p: 0 for p in parts}
        closed: set[int] = set()
        pruned_unit = torch.zeros(n_units, dtype=torch.bool)
        for _, part, members, channels, lyr in blocks:
            if left == 0:
                break
            if part in closed:
                continue
            seg_ok = (
                segment_caps is None
                or layout.segments is None
                or (lost_part[part] + channels <= segment_caps[part])
            )
            if channels > left or lost[lyr] + channels > caps[lyr] or not seg_ok:
                closed.add(part)  # its later blocks rank above this one
                continue
            pruned_unit[members] = True
            lost[lyr] += channels
            lost_part[part] += channels
            left -= channels
        out[ratio] = ~pruned_unit[unit_of]
    return out
