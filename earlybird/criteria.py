"""Detection rules: when has a ticket stopped moving? Small pure functions of the distances.

A rule sees ``rows``: one row per check so far, oldest first. Row ``t`` holds the distances from
mask ``t`` to the masks drawn 1, 2, ..., up to ``window - 1`` checks before it (shorter for the
first checks). A rule returns True when the newest mask is a ticket.
"""
from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["Criterion", "reference_rule", "fifo_rule", "CRITERIA", "get_criterion"]

Criterion = Callable[[Sequence[Sequence[float]], int, float], bool]


def reference_rule(rows: Sequence[Sequence[float]], window: int, epsilon: float) -> bool:
    """The released code's rule: the newest mask is within ``epsilon`` of each earlier mask in a
    window of ``window`` masks.

    >>> reference_rule([[], [0.3], [0.05, 0.2], [0.02, 0.06, 0.09]], window=3, epsilon=0.1)
    True
    >>> reference_rule([[], [0.3], [0.05, 0.2]], window=3, epsilon=0.1)
    False
    """
    if not rows or len(rows[-1]) < window - 1:
        return False
    return all(d <= epsilon for d in rows[-1][: window - 1])


def fifo_rule(rows: Sequence[Sequence[float]], window: int, epsilon: float) -> bool:
    """The paper's Algorithm 1: the last ``window`` distances between consecutive masks are all
    within ``epsilon`` (this needs ``window + 1`` masks).

    >>> fifo_rule([[], [0.09], [0.08]], window=2, epsilon=0.1)
    True
    >>> fifo_rule([[], [0.2], [0.08]], window=2, epsilon=0.1)
    False
    """
    consecutive = [row[0] for row in rows if row]
    if len(consecutive) < window:
        return False
    return all(d <= epsilon for d in consecutive[-window:])


CRITERIA: dict[str, Criterion] = {"reference": reference_rule, "fifo": fifo_rule}


def get_criterion(name: str) -> Criterion:
    """Look a detection rule up by name.

    >>> get_criterion("fifo") is fifo_rule
    True
    """
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; choose from {sorted(CRITERIA)}") from None
