"""Detection rules replayed on recorded masks: when would each rule have drawn the ticket?

A search records the keep-mask of every ratio at regular optimizer steps; :func:`detect`
replays a rule of :data:`RULES` on them at its own check frequency, window, epsilon and span.
The detection experiment (``benchmarks/detection.py``) and the suite's EB methods share it.
"""
from __future__ import annotations

from typing import Optional

from earlybird.criteria import Checks, get_criterion

# name: (criterion, checks per epoch it sees, window, epsilon, span in epochs of steps or None)
RULES: dict[str, tuple[str, int, int, float, Optional[float]]] = {
    "reference": ("reference", 1, 5, 0.1, None),
    "fifo": ("fifo", 1, 5, 0.1, None),
    "normalized": ("normalized", 1, 5, 0.1, None),
    "plateau": ("plateau", 4, 5, 0.1, 2.0),
    "reference @4/epoch": ("reference", 4, 5, 0.1, None),
    "plateau @1/epoch": ("plateau", 1, 5, 0.1, 2.0),
}


def rule_spec(rule: str) -> tuple[str, int, int, float, Optional[float]]:
    """A rule of :data:`RULES`, or ``"<criterion> @<k>/epoch"``: that criterion seeing ``k``
    checks per epoch, window 5, epsilon 0.1 (the plateau rule: span 2 epochs of steps).

    >>> rule_spec("plateau @4/epoch"), rule_spec("reference")
    (('plateau', 4, 5, 0.1, 2.0), ('reference', 1, 5, 0.1, None))
    """
    if rule in RULES:
        return RULES[rule]
    criterion, _, every = rule.partition(" @")
    if not every.endswith("/epoch") or not every[:-6].isdigit() or criterion not in (
            "reference", "fifo", "normalized", "plateau"):
        raise ValueError(f"unknown rule {rule!r}; use one of {list(RULES)} or "
                         "'<criterion> @<k>/epoch'")
    return (criterion, int(every[:-6]), 5, 0.1, 2.0 if criterion == "plateau" else None)


def detect(record: dict, ratio: float, rule: str) -> Optional[int]:
    """The optimizer step at which ``rule`` draws the ticket of ``ratio``, or None."""
    criterion, per_epoch, window, epsilon, span_epochs = rule_spec(rule)
    spe = int(record["steps_per_epoch"])
    every = spe // per_epoch
    steps = [int(s) for s in record["steps"]]
    picked = [i for i, s in enumerate(steps) if s % every == 0]
    masks = record["masks"][f"{ratio:g}"][picked]
    steps = [steps[i] for i in picked]
    span = None if span_epochs is None else int(span_epochs * spe)
    fn = get_criterion(criterion)
    rows: list[list[float]] = []
    for t in range(len(steps)):
        rows.append([(masks[t] != masks[t - j]).double().mean().item()
                     for j in range(1, window) if t - j >= 0])
        if fn(Checks(rows, steps[:t + 1], ratio), window, epsilon, span):
            return steps[t]
    return None
