"""Detection rules replayed on recorded masks: when would each rule have drawn the ticket?

A search records the keep-mask of every ratio at regular optimizer steps; :func:`detect`
replays a rule of :data:`RULES` on them at its own check frequency, window, epsilon and span.
The detection experiment (``benchmarks/detection.py``) and the suite's EB methods share it.
"""
from __future__ import annotations

import math
from typing import Optional

from earlybird.search.config import EARLIEST_SHARE, EarlyBirdConfig
from earlybird.search.criteria import COUNTING, Checks, get_criterion
from earlybird.search.masks import ChannelLayout

# name: (criterion, checks per epoch it sees, window, epsilon, span in epochs of steps or None)
RULES: dict[str, tuple[str, int, int, float, Optional[float]]] = {
    "reference": ("reference", 1, 5, 0.1, None),
    "fifo": ("fifo", 1, 5, 0.1, None),
    "normalized": ("normalized", 1, 5, 0.1, None),
    "plateau": ("plateau", 4, 5, 0.1, 2.0),
    "reference @4/epoch": ("reference", 4, 5, 0.1, None),
    "plateau @1/epoch": ("plateau", 1, 5, 0.1, 2.0),
}


# the draw-point study's variants (benchmarks/suite/drawpoints.py), same layout; ``epi``'s
# epsilon is 1 - tau, its threshold on the indicator
VARIANTS: dict[str, tuple[str, int, int, float, Optional[float]]] = {
    "plateau eps=0.05": ("plateau", 4, 5, 0.05, 2.0),
    "plateau eps=0.02": ("plateau", 4, 5, 0.02, 2.0),
    "plateau span=4": ("plateau", 4, 5, 0.1, 4.0),
    "plateau span=8": ("plateau", 4, 5, 0.1, 8.0),
    "epi": ("epi", 1, 5, 0.02, None),
    "epi tau=0.99": ("epi", 1, 5, 0.01, None),
    # the reference rule a little looser: replayed on the converged setting's first two seeds it
    # draws p = 0.3 at epochs 16-18 (eps 0.12) and 12-13 (eps 0.15), where the curve peaks
    "reference eps=0.12": ("reference", 1, 5, 0.12, None),
    "reference eps=0.15": ("reference", 1, 5, 0.15, None),
}


# the library's default (EarlyBirdConfig, told the schedule: span = total * EARLIEST_SHARE / 2),
# checked as often as the suite's EB Train checks; its span is a share of the schedule, so its
# spec needs the setting's epochs
DEFAULT = "default"
DEFAULT_CHECKS_PER_EPOCH = 4


def rule_spec(rule: str, epochs: Optional[int] = None) -> tuple[str, int, int, float, Optional[float]]:
    """A rule of :data:`RULES`, or ``"<criterion> @<k>/epoch"``: that criterion seeing ``k``
    checks per epoch, window 5, epsilon 0.1 (the plateau rule: span 2 epochs of steps; the epi
    rule: epsilon 0.02), or :data:`DEFAULT` (``"default @<k>/epoch"``: checked ``k`` times per
    epoch) in a schedule of ``epochs``.

    >>> rule_spec("plateau @4/epoch"), rule_spec("reference"), rule_spec("default", 128)
    (('plateau', 4, 5, 0.1, 2.0), ('reference', 1, 5, 0.1, None), ('plateau', 4, 5, 0.1, 12.0))
    """
    name, _, every = rule.partition(" @")
    if name == DEFAULT and (not every or (every.endswith("/epoch") and every[:-6].isdigit())):
        if epochs is None:
            raise ValueError("the default rule's span is a share of the schedule: give its epochs")
        d, k = EarlyBirdConfig(), int(every[:-6]) if every else DEFAULT_CHECKS_PER_EPOCH
        return (d.criterion, k, d.window, d.epsilon, epochs * EARLIEST_SHARE / 2)
    if rule in RULES or rule in VARIANTS:
        return RULES.get(rule) or VARIANTS[rule]
    criterion, _, every = rule.partition(" @")
    if not every.endswith("/epoch") or not every[:-6].isdigit() or criterion not in (
            "reference", "fifo", "normalized", "plateau", "epi"):
        raise ValueError(f"unknown rule {rule!r}; use one of {[DEFAULT, *RULES, *VARIANTS]} or "
                         "'<criterion> @<k>/epoch'")
    return (criterion, int(every[:-6]), 5, 0.02 if criterion == "epi" else 0.1,
            2.0 if criterion == "plateau" else None)


def detect(record: dict, ratio: float, rule: str, epochs: Optional[int] = None) -> Optional[int]:
    """The optimizer step at which ``rule`` draws the ticket of ``ratio``, or None (the
    ``epi`` rule reads the record's layer ``sizes``; :data:`DEFAULT` needs the schedule's
    ``epochs``)."""
    criterion, per_epoch, window, epsilon, span_epochs = rule_spec(rule, epochs)
    spe = int(record["steps_per_epoch"])
    every = spe // per_epoch
    if every < 1 or spe % per_epoch:
        raise ValueError(f"rule {rule!r} checks {per_epoch} times per epoch, which does not "
                         f"divide the record's {spe} steps per epoch")
    steps = [int(s) for s in record["steps"]]
    picked = [i for i, s in enumerate(steps) if s % every == 0]
    masks = record["masks"][f"{ratio:g}"][picked]
    steps = [steps[i] for i in picked]
    # rounded up, as the pruner rounds the default's span (the studies' spans are whole epochs)
    span = None if span_epochs is None else math.ceil(span_epochs * spe)
    fn = get_criterion(criterion)
    counts = None
    if criterion in COUNTING:
        if "sizes" not in record:
            raise ValueError(f"rule {rule!r} needs the layer sizes of the record ('sizes')")
        layout = ChannelLayout(tuple(map(str, range(len(record["sizes"])))),
                               tuple(int(n) for n in record["sizes"]))
        counts = [layout.counts(m) for m in masks]
    rows: list[list[float]] = []
    for t in range(len(steps)):
        rows.append([(masks[t] != masks[t - j]).double().mean().item()
                     for j in range(1, window) if t - j >= 0])
        if fn(Checks(rows, steps[:t + 1], ratio, None if counts is None else counts[:t + 1]),
              window, epsilon, span):
            return steps[t]
    return None
