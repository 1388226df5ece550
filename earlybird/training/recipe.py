"""The optimizer recipe: SGD with momentum and weight decay, the learning rate decayed in steps
(the reference's: lr 0.1, x0.1 at 50 % and 75 % of the epochs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, cast

import torch
from torch import nn

from ..errors import ConfigError
from ..settings import document, option

__all__ = ["Recipe", "lr_at", "default_schedule"]


def default_schedule(epochs: int) -> list[int]:
    """The reference decay points: 50 % and 75 % of the epochs (80 and 120 of 160).

    >>> default_schedule(160), default_schedule(3), default_schedule(1)
    ([80, 120], [1, 2], [])
    """
    return sorted({e for e in (epochs // 2, (epochs * 3) // 4) if 0 < e < epochs})


def lr_at(epoch: int, lr: float, schedule: Sequence[int], gamma: float = 0.1) -> float:
    """Step schedule: ``lr * gamma**k`` with ``k`` the decay points at or before ``epoch``.

    >>> [lr_at(e, 0.1, [2, 3]) for e in range(4)]
    [0.1, 0.1, 0.010000000000000002, 0.0010000000000000002]
    """
    return lr * gamma ** sum(epoch >= s for s in schedule)


@document
@dataclass(frozen=True)
class Recipe:
    """The optimizer recipe: SGD with momentum and weight decay, lr decayed in steps.

    >>> Recipe(epochs=160).schedule, Recipe(epochs=4, schedule=[3]).lr_at(3)
    ((80, 120), 0.010000000000000002)
    """

    epochs: int = option(160, "length of the schedule in epochs")
    schedule: Optional[Sequence[int]] = option(
        None, "epochs where the lr decays (None: 50 % and 75 % of the epochs)"
    )
    gamma: float = option(0.1, "lr decay factor")
    lr: float = option(0.1, "initial learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "SGD weight decay")

    def __post_init__(self) -> None:
        v = ConfigError.value
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError("{} must be >= 1, got " + v(self.epochs), "epochs")
        schedule = list(self.schedule) if self.schedule is not None else default_schedule(self.epochs)
        if not (all(0 < s < self.epochs for s in schedule) and schedule == sorted(schedule)):
            raise ConfigError(
                "{} must be increasing epochs inside (0, " + str(self.epochs) + "), got " + v(schedule),
                "schedule",
            )
        object.__setattr__(self, "schedule", tuple(int(s) for s in schedule))
        if not self.lr > 0:
            raise ConfigError("{} must be > 0", "lr")
        if not (self.momentum >= 0 and self.weight_decay >= 0 and self.gamma > 0):
            raise ConfigError("{} and {} must be >= 0, {} > 0", "momentum", "weight_decay", "gamma")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch``."""
        return lr_at(epoch, self.lr, cast(Sequence[int], self.schedule), self.gamma)

    def optimizer(self, model: nn.Module, epoch: int = 0) -> torch.optim.SGD:
        """SGD over ``model``'s parameters at the learning rate of ``epoch``."""
        return torch.optim.SGD(
            model.parameters(), lr=self.lr_at(epoch), momentum=self.momentum, weight_decay=self.weight_decay
        )
