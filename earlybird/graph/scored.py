"""A layer whose channels score group channels (a norm layer, a conv/linear layer's filters or
slimming coefficients), as :class:`~.groups.ChannelGraph` gathers them."""

from __future__ import annotations

from typing import cast

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["ScoredLayer"]


@dataclass
class ScoredLayer:
    """A layer whose channels score group channels: ``module``'s channel ``src[i]`` is coupled
    to flat group channel ``dst[i]``."""

    module: nn.Module
    src: list[int]  # channel index in the norm layer (output filter of a weight-scored layer)
    dst: list[int]  # flat group-channel index it is coupled to
    filters: bool = False  # True: a conv/linear layer scored by its filters' mean |w|

    def values(self) -> Tensor:
        """One value per channel: ``gamma`` of a norm layer, mean ``|w|`` of each filter."""
        w = cast(Tensor, self.module.weight).detach()
        return w.abs().flatten(1).mean(1) if self.filters else w.reshape(-1)
