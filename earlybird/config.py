"""The validated, frozen settings of an :class:`~earlybird.EarlyBirdPruner`."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional, Sequence

from .criteria import CRITERIA

__all__ = ["EarlyBirdConfig", "PENALTIES", "SCORES"]

PENALTIES = ("l1", "group_lasso")
SCORES = ("auto", "norm", "weight")


@dataclass(frozen=True)
class EarlyBirdConfig:
    """Settings of the ticket search; every field is checked when the object is made.

    Args:
        ratios: pruning ratios to draw a ticket for, each in ``(0, 1)``, no duplicates.
        epsilon: the rule's threshold, in ``(0, 1]``: the largest mask distance that counts as
            "not moving" (reference, fifo), as a share of the largest reachable distance
            (normalized), or the largest change of the distance as a share of its early level
            (plateau).
        window: masks (reference, normalized) or consecutive distances (fifo) looked at, ``>= 2``;
            plateau: ``(window - 1) // 2`` checks make its span when ``span`` is None.
        criterion: detection rule, one of :data:`earlybird.criteria.CRITERIA`; ``"plateau"``
            by default (chosen from ``benchmarks/detection.py``: its tickets retrain better than
            the reference rule's later ones), ``"reference"`` for the released code's rule.
        sparsity: strength ``s`` of the slimming penalty added by ``regularize()``, ``>= 0``.
        penalty: ``"l1"`` (``s * sign(gamma)``) or ``"group_lasso"`` (over coupled channels).
        min_channels: channels every layer keeps, ``>= 1``.
        max_layer_ratio: optional largest share of one layer a ticket may prune, in ``(0, 1)``.
        keep_weights: keep a CPU copy of the weights at each ticket's detection point.
        score: what ranks channels: ``"norm"`` (mean ``|gamma|`` of the coupled BatchNorm/
            LayerNorm channels), ``"weight"`` (mean ``|w|`` of the coupled filters), or
            ``"auto"`` (norm scales; filters only for a model with no norm layer at all).
        span: plateau rule only: the span compared, in the counter passed to ``step()``
            (optimizer steps, recommended), ``>= 1``; None: the last ``(window - 1) // 2``
            checks.

    >>> EarlyBirdConfig(ratios=[0.5, 0.3]).ratios
    (0.5, 0.3)
    >>> EarlyBirdConfig(window=1)
    Traceback (most recent call last):
    ...
    ValueError: window must be an integer >= 2, got 1
    """

    ratios: Sequence[float] = (0.3, 0.5, 0.7)
    epsilon: float = 0.1
    window: int = 5
    criterion: str = "plateau"
    sparsity: float = 1e-4
    penalty: str = "l1"
    min_channels: int = 1
    max_layer_ratio: Optional[float] = None
    keep_weights: bool = True
    score: str = "auto"
    span: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.ratios, (Real, str)) or not isinstance(self.ratios, Sequence):
            raise ValueError(f"ratios must be a sequence of floats in (0, 1), got {self.ratios!r}")
        ratios = tuple(self.ratios)
        if not ratios:
            raise ValueError("ratios is empty; give at least one pruning ratio in (0, 1)")
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, Real) or not 0.0 < float(r) < 1.0:
                raise ValueError(f"every ratio must be a number in (0, 1), got {r!r}")
        if len(set(map(float, ratios))) != len(ratios):
            raise ValueError(f"ratios must not repeat, got {list(ratios)}")
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        _check(isinstance(self.epsilon, Real) and not isinstance(self.epsilon, bool)
               and 0.0 < self.epsilon <= 1.0, f"epsilon must be in (0, 1], got {self.epsilon!r}")
        _check(_is_int(self.window) and self.window >= 2,
               f"window must be an integer >= 2, got {self.window!r}")
        _check(self.criterion in CRITERIA,
               f"unknown criterion {self.criterion!r}; choose from {sorted(CRITERIA)}")
        _check(isinstance(self.sparsity, Real) and not isinstance(self.sparsity, bool)
               and self.sparsity >= 0, f"sparsity must be a number >= 0, got {self.sparsity!r}")
        _check(self.penalty in PENALTIES,
               f"unknown penalty {self.penalty!r}; choose from {list(PENALTIES)}")
        _check(_is_int(self.min_channels) and self.min_channels >= 1,
               f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        _check(self.max_layer_ratio is None or (isinstance(self.max_layer_ratio, Real)
                                                and 0.0 < self.max_layer_ratio < 1.0),
               f"max_layer_ratio must be None or in (0, 1), got {self.max_layer_ratio!r}")
        _check(self.span is None or (_is_int(self.span) and self.span >= 1),
               f"span must be None or an integer >= 1 (steps), got {self.span!r}")
        _check(self.span is None or self.criterion == "plateau",
               f"span is used by the plateau rule only, not by criterion={self.criterion!r}")
        _check(self.score in SCORES, f"unknown score {self.score!r}; choose from {list(SCORES)}")
        _check(isinstance(self.keep_weights, bool),
               f"keep_weights must be True or False, got {self.keep_weights!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
