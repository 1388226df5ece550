"""``Ticket``: what an :class:`~earlybird.EarlyBirdPruner` draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

__all__ = ["Ticket"]


@dataclass(frozen=True)
class Ticket:
    """An early-bird ticket: the mask that stopped moving, and the weights it was drawn from.

    Attributes:
        ratio: pruning ratio of the ticket.
        check: 0-based index of the ``step()`` call that drew it.
        iteration: the counter passed to that ``step()`` call (the check index if none was).
        mask: flat keep-mask over all scored group channels (see ``EarlyBirdPruner.mask``).
        masks: the same mask per layer, keyed by the group's root module name.
        state: CPU copy of the model's ``state_dict()`` at that point (None if not kept).
    """

    ratio: float
    check: int
    iteration: int
    mask: Tensor
    masks: dict[str, Tensor]
    state: Optional[dict[str, Tensor]]
