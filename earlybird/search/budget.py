"""A budget per kind of unit (``budget="kind"``): channels, MLP units, heads and head
dimensions each lose the ratio ``p`` of their own units, under a threshold of their own.

One global threshold compares scores of different kinds with each other: a LayerNorm scale
against a slimming coefficient on an MLP unit against one on a head. They start equal (all 1)
and are trained by the same penalty, but nothing makes their scales comparable; EarlyBERT
(Chen et al., 2021) gives heads and FFN units budgets of their own for that reason. With a
budget per kind, each kind is a layout of its own and :func:`~earlybird.search.masks.keep_masks`
draws its mask; the masks are put back together in the full layout's order.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor

from .masks import ChannelLayout, check_room, keep_masks, prune_budget, prune_room

__all__ = ["KindBudget"]

log = logging.getLogger(__name__)


def _renumber(values: Tensor) -> tuple[Tensor, list[int]]:
    """``values`` renumbered ``0..K-1`` in increasing order, and the old value of each new."""
    old, new = torch.unique(values, sorted=True, return_inverse=True)
    return new, old.tolist()


class KindBudget:
    """Draw keep-masks with one budget per kind of layer.

    Args:
        layout: the full layout.
        kinds: one kind per layer of ``layout`` (``channels``, ``units``, ``heads``, ...).
        caps, segment_caps, round_to: the full layout's floors and roundings, one per layer
            (per segment), as :func:`~earlybird.search.masks.keep_masks` takes them.

    >>> layout = ChannelLayout(("ln", "fc1"), (2, 4))
    >>> split = KindBudget(layout, ["channels", "units"], [1, 3], None, [1, 1])
    >>> split.keep_masks(torch.tensor([.1, .9, 5., 6., 7., 8.]), [0.5])[0.5].tolist()
    [False, True, False, False, True, True]
    """

    def __init__(
        self,
        layout: ChannelLayout,
        kinds: Sequence[str],
        caps: Sequence[int],
        segment_caps: Optional[Sequence[int]],
        round_to: Sequence[int],
    ) -> None:
        if len(kinds) != len(layout.sizes):
            raise ValueError(f"{len(kinds)} kinds for {len(layout.sizes)} layers")
        self.layout, self.caps, self.segment_caps = layout, caps, segment_caps
        self._indices: dict[torch.device, list[Tensor]] = {}  # each kind's channels, per device
        layer = layout.layer_index
        self.parts: list[tuple[str, Tensor, ChannelLayout, list[int], Optional[list[int]], list[int]]] = []
        for kind in dict.fromkeys(kinds):  # in order of first appearance
            layers = [i for i, k in enumerate(kinds) if k == kind]
            index = torch.nonzero(torch.isin(layer, torch.tensor(layers))).flatten()
            units = segments = seg_caps = None
            if layout.units is not None:
                units = _renumber(layout.units[index])[0]
            if layout.segments is not None and segment_caps is not None:
                segments, old = _renumber(layout.segments[index])
                seg_caps = [segment_caps[s] for s in old]
            sub = ChannelLayout(
                tuple(layout.names[i] for i in layers),
                tuple(layout.sizes[i] for i in layers),
                units,
                segments,
            )
            self.parts.append(
                (kind, index, sub, [caps[i] for i in layers], seg_caps, [round_to[i] for i in layers])
            )

    @property
    def kinds(self) -> list[str]:
        """The kinds, in order of their first layer."""
        return [part[0] for part in self.parts]

    def keep_masks(self, scores: Tensor, ratios: Sequence[float]) -> dict[float, Tensor]:
        """Flat keep-masks ``[N]`` of the full layout: each kind pruned at every ratio, where
        :func:`~earlybird.search.masks.keep_masks` would compute them (on the host for a layout
        with units, else on ``scores``' device, with the kinds' indices copied there once)."""
        n = self.layout.num_channels
        if scores.shape != (n,):
            raise ValueError(f"expected {n} scores, got shape {tuple(scores.shape)}")
        if self.layout.units is not None:  # units need the host to fill a budget: one copy
            scores = scores.detach().cpu()
        device = scores.device
        if device not in self._indices:
            self._indices[device] = [part[1].to(device) for part in self.parts]
        out = {r: torch.ones(n, dtype=torch.bool, device=device) for r in ratios}
        for (_, _, sub, caps, seg_caps, round_to), index in zip(self.parts, self._indices[device]):
            masks = keep_masks(scores[index], sub, ratios, caps, seg_caps, round_to)
            for r in ratios:
                out[r][index] = masks[r].to(device)
        return out

    def check_room(
        self, ratios: Sequence[float], limits: str, warn: bool = False
    ) -> dict[str, dict[float, tuple[int, int]]]:
        """Raise ValueError (:func:`~earlybird.search.masks.check_room`) when a ratio prunes
        more of the whole layout than the floors (``limits`` names them) leave prunable; return
        the kinds that hold fewer prunable units than their own share, ``{kind: {ratio:
        (budget, room)}}``, and with ``warn`` log them. With a budget per kind such a kind
        loses all its floors allow (3 heads per layer keep 1 each), never all of its units.

        >>> layout = ChannelLayout(("ln", "heads"), (8, 4))
        >>> KindBudget(layout, ["channels", "heads"], [7, 2], None, [1, 1]).check_room([0.75], "")
        {'heads': {0.75: (3, 2)}}
        """
        check_room(self.layout, ratios, self.caps, self.segment_caps, limits)
        short: dict[str, dict[float, tuple[int, int]]] = {}
        for kind, _, sub, caps, seg_caps, _ in self.parts:
            room = prune_room(sub, caps, seg_caps)
            for r in ratios:
                budget = prune_budget(sub.num_channels, r)
                if budget > room:
                    short.setdefault(kind, {})[r] = (budget, room)
        if warn and short:
            asked = "; ".join(
                f"the {kind} can lose {room} of their units where ratio {r:g} asks {budget}"
                for kind, by_ratio in short.items()
                for r, (budget, room) in by_ratio.items()
            )
            log.warning(
                "budget='kind': %s; those kinds lose all that %s allow, the others their share",
                asked,
                limits,
            )
        return short
