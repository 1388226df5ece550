"""Detection rules: when has a ticket stopped moving? Small pure functions of the distances.

A rule sees one ratio's :class:`Checks`, oldest check first: ``rows[t]`` holds the distances from
mask ``t`` to the masks drawn 1, 2, ..., up to ``window - 1`` checks before it (shorter for the
first checks; ``rows[t][0]`` is the distance to the previous mask), and ``steps[t]`` the counter
passed to that check (optimizer steps, or epochs when called once per epoch). A rule is called
as ``rule(checks, window, epsilon, span)`` and returns True when the newest mask is a ticket.

- ``reference``: the released code. The newest mask is within ``epsilon`` of each of the
  ``window - 1`` masks before it.
- ``fifo``: the paper's Algorithm 1. The last ``window`` consecutive distances are all within
  ``epsilon`` (this needs ``window + 1`` masks).
- ``normalized``: the reference rule on distances divided by the largest distance two masks of
  this ratio can have, ``2 * min(p, 1 - p)``, so ``epsilon`` means the same share at every ratio.
- ``plateau``: scale-free. The consecutive distance has stopped falling: its mean over the last
  ``span`` steps differs from its mean over the ``span`` steps before by at most ``epsilon``
  times its own early level (the largest such mean so far). Neither the distance's absolute
  size nor the number of steps per epoch enters; ``span`` is counted in the steps passed to
  ``step()`` (``None``: the last ``(window - 1) // 2`` checks; the pruner passes 3/32 of the
  schedule when it is told it, ``EarlyBirdConfig.total``).
- ``epi``: the early pruning indicator of "When to Prune" (Shen et al., CVPR 2022). It compares
  how many channels each layer keeps, not which: the similarity of two checks is
  ``1 - mean_l |n_l - m_l| / (n_l + m_l)`` over the layers, the indicator the mean similarity of
  the newest check to the ``window`` before it, and the ticket is drawn when the indicator is
  above ``1 - epsilon`` and above each of its ``window`` previous values. It needs the kept
  channels per layer (:attr:`Checks.counts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .distance import max_distance

__all__ = [
    "Checks",
    "Criterion",
    "reference_rule",
    "fifo_rule",
    "normalized_rule",
    "plateau_rule",
    "epi_rule",
    "layer_similarity",
    "CRITERIA",
    "COUNTING",
    "get_criterion",
]


@dataclass(frozen=True)
class Checks:
    """One ratio's detection history, oldest check first.

    Args:
        rows: per check, the distances to up to ``window - 1`` earlier masks, nearest first.
        steps: per check, the counter it was recorded with (non-decreasing).
        ratio: the pruning ratio of these masks.
        counts: per check, the channels each layer keeps (only the ``epi`` rule reads them).

    >>> Checks([[], [0.2]], [0, 10], 0.5).consecutive
    [0.2]
    """

    rows: Sequence[Sequence[float]]
    steps: Sequence[int]
    ratio: float = 0.5
    counts: Optional[Sequence[Sequence[int]]] = None

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.steps):
            raise ValueError(f"{len(self.rows)} rows of distances for {len(self.steps)} steps")
        if self.counts is not None and len(self.counts) != len(self.steps):
            raise ValueError(f"{len(self.counts)} rows of kept channels for {len(self.steps)} steps")

    @property
    def consecutive(self) -> list[float]:
        """Distance of each mask to the one before it (one fewer than the checks)."""
        return [row[0] for row in self.rows if row]


Criterion = Callable[[Checks, int, float, Optional[int]], bool]


def reference_rule(checks: Checks, window: int, epsilon: float, span: Optional[int] = None) -> bool:
    """The released code's rule: the newest mask is within ``epsilon`` of each earlier mask in a
    window of ``window`` masks.

    >>> reference_rule(Checks([[], [0.3], [0.05, 0.2], [0.02, 0.06, 0.09]], [0, 1, 2, 3]), 3, 0.1)
    True
    >>> reference_rule(Checks([[], [0.3], [0.05, 0.2]], [0, 1, 2]), 3, 0.1)
    False
    """
    rows = checks.rows
    if not rows or len(rows[-1]) < window - 1:
        return False
    return all(d <= epsilon for d in rows[-1][: window - 1])


def fifo_rule(checks: Checks, window: int, epsilon: float, span: Optional[int] = None) -> bool:
    """The paper's Algorithm 1: the last ``window`` distances between consecutive masks are all
    within ``epsilon`` (this needs ``window + 1`` masks).

    >>> fifo_rule(Checks([[], [0.09], [0.08]], [0, 1, 2]), 2, 0.1)
    True
    >>> fifo_rule(Checks([[], [0.2], [0.08]], [0, 1, 2]), 2, 0.1)
    False
    """
    consecutive = checks.consecutive
    if len(consecutive) < window:
        return False
    return all(d <= epsilon for d in consecutive[-window:])


def normalized_rule(checks: Checks, window: int, epsilon: float, span: Optional[int] = None) -> bool:
    """The reference rule on distances divided by :func:`~earlybird.max_distance` of the ratio.

    At ``p = 0.7`` two masks differ in at most 60 % of the channels, so 0.05 becomes 0.083:

    >>> normalized_rule(Checks([[], [0.05]], [0, 1], ratio=0.7), 2, 0.1)
    True
    >>> normalized_rule(Checks([[], [0.07]], [0, 1], ratio=0.7), 2, 0.1)
    False
    """
    scale = max_distance(checks.ratio)
    rows = [[d / scale for d in row] for row in checks.rows]
    return reference_rule(Checks(rows, checks.steps, checks.ratio), window, epsilon)


def _trailing_mean(values: Sequence[float], at: Sequence[int], end: float, span: float) -> float:
    """Mean of the values recorded at steps in ``(end - span, end]`` (nan when there are none)."""
    picked = [v for v, s in zip(values, at) if end - span < s <= end]
    return sum(picked) / len(picked) if picked else float("nan")


def plateau_rule(checks: Checks, window: int, epsilon: float, span: Optional[int] = None) -> bool:
    """The consecutive distance has stopped falling, relative to its own early level.

    With ``d`` the consecutive distances and ``m(t)`` their mean over the ``span`` steps up to
    step ``t``: the newest mask is a ticket when at least ``2 * span`` steps of distances are
    recorded and ``|m(T) - m(T - span)| <= epsilon * max(m)``, ``max(m)`` taken over every
    check so far. ``span=None`` uses the steps spanned by the last ``(window - 1) // 2``
    checks (2 at the default window of 5: two epochs when checking once per epoch, the
    setting measured in ``benchmarks/detection.py``).

    A distance falling from 0.4 to 0.1 and then flat at 0.1 (one check per 100 steps):

    >>> d = [0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]
    >>> steps = [100 * i for i in range(len(d) + 1)]
    >>> rows = [[]] + [[x] for x in d]
    >>> upto = lambda t: Checks(rows[:t + 1], steps[:t + 1])     # the first t + 1 checks
    >>> [plateau_rule(upto(t), 3, 0.1, span=200) for t in range(len(rows))]
    [False, False, False, False, False, False, False, True, True]
    """
    d, at = checks.consecutive, [s for row, s in zip(checks.rows, checks.steps) if row]
    if len(d) < 2:
        return False
    if span is None:
        k = max(1, (window - 1) // 2)
        if len(d) < 2 * k:
            return False
        span = at[-1] - at[-1 - k]  # the steps of the last k distances
    if span <= 0 or at[-1] - at[0] < 2 * span - _gap(at):
        return False
    now = _trailing_mean(d, at, at[-1], span)
    before = _trailing_mean(d, at, at[-1] - span, span)
    if before != before:  # no distance in the earlier span
        return False
    early = max(_trailing_mean(d, at, s, span) for s in at)
    return abs(now - before) <= epsilon * early


def _gap(steps: Sequence[int]) -> int:
    """Steps between the first two checks (the first distance stands for that interval)."""
    return steps[1] - steps[0] if len(steps) > 1 else 0


def layer_similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """``1 - mean_l |a_l - b_l| / (a_l + b_l)``: how alike two checks' kept channels per layer
    are (1 for the same counts; layers empty in both count as alike).

    >>> layer_similarity([4, 2], [4, 6])
    0.75
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"kept channels of {len(a)} and {len(b)} layers cannot be compared")
    return 1.0 - sum(abs(x - y) / (x + y) for x, y in zip(a, b) if x + y) / len(a)


def epi_rule(checks: Checks, window: int, epsilon: float, span: Optional[int] = None) -> bool:
    """The early pruning indicator ("When to Prune", Shen et al., CVPR 2022).

    ``EPI(t)`` is the mean :func:`layer_similarity` of check ``t``'s kept channels per layer to
    those of the ``window`` checks before it; the newest check draws the ticket when ``EPI``
    there is above ``1 - epsilon`` and above each of the ``window`` values before it (so it
    needs ``2 * window + 1`` checks). Layer counts that settle, window 2, epsilon 0.1: the
    indicator is 0.80, 0.90, 0.95, 0.98, 1.0, 1.0 from the third check on; it is true while it
    still rises above 0.9, and false once it stays level:

    >>> counts = [[2, 9], [4, 9], [6, 8], [7, 8], [8, 8], [8, 8], [8, 8], [8, 8]]
    >>> [epi_rule(Checks([[]] * (t + 1), list(range(t + 1)), counts=counts[:t + 1]), 2, 0.1)
    ...  for t in range(len(counts))]
    [False, False, False, False, True, True, True, False]
    """
    counts = checks.counts
    if counts is None:
        raise ValueError("the epi rule needs the kept channels per layer (Checks.counts)")
    newest = len(counts) - 1
    if newest < 2 * window:
        return False

    def epi(t: int) -> float:
        return sum(layer_similarity(counts[t], counts[t - j]) for j in range(1, window + 1)) / window

    now = epi(newest)
    return now > 1.0 - epsilon and all(now > epi(newest - j) for j in range(1, window + 1))


CRITERIA: dict[str, Criterion] = {
    "reference": reference_rule,
    "fifo": fifo_rule,
    "normalized": normalized_rule,
    "plateau": plateau_rule,
    "epi": epi_rule,
}
COUNTING = frozenset({"epi"})  # rules that read Checks.counts


def get_criterion(name: str) -> Criterion:
    """Look a detection rule up by name.

    >>> get_criterion("fifo") is fifo_rule
    True
    """
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; choose from {sorted(CRITERIA)}") from None
