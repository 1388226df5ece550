"""The validated, frozen settings of an :class:`~earlybird.EarlyBirdPruner`.

:class:`EarlyBirdConfig` is the one place these settings and their defaults are declared: the
pruner, :class:`~earlybird.pipeline.RunConfig` (which nests it), the ``earlybird`` CLI (whose
options and help come from these fields) and the Lightning callback all take it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Optional, Sequence

from .criteria import CRITERIA
from ..errors import ConfigError
from ..settings import document, option

__all__ = [
    "EarlyBirdConfig",
    "make_config",
    "PENALTIES",
    "SCORES",
    "HEAD_MODES",
    "RESIDUAL_MODES",
    "BUDGETS",
    "EARLIEST_SHARE",
]

PENALTIES = ("l1", "group_lasso")
SCORES = ("auto", "norm", "weight")
HEAD_MODES = ("whole", "dims", "off")
RESIDUAL_MODES = ("prune", "keep")
BUDGETS = ("global", "kind")
# the plateau rule's default span is half this share of the schedule, so it draws no earlier than
# 3/16 = 18.75 % of it (benchmarks/results/draw-point/converged: the earliest measured draw point
# whose tickets come within 0.3 points of network slimming at p = 0.3 and 0.5; at 12.5 % they
# miss by 0.42 at p = 0.3; nothing between was measured)
EARLIEST_SHARE = 3 / 16
NO_TOTAL = (
    "earlybird: the plateau rule has neither span nor total, so its span is (window - 1) // 2 "
    "checks and it may draw after about twice that many: the cheap end of the measured curve, "
    "1.5 points under network slimming at p = 0.3 in the converged benchmark. Pass total= (the "
    "schedule's epochs, or its steps when step() gets the optimizer step), or choose span="
)


@document
@dataclass(frozen=True)
class EarlyBirdConfig:
    """Settings of the ticket search; every field is checked when the object is made.

    >>> EarlyBirdConfig(ratios=[0.5, 0.3]).ratios
    (0.5, 0.3)
    >>> EarlyBirdConfig().criterion
    'plateau'
    >>> EarlyBirdConfig(window=1)
    Traceback (most recent call last):
    ...
    earlybird.errors.ConfigError: window must be an integer >= 2, got 1
    """

    ratios: Sequence[float] = option(
        (0.3, 0.5, 0.7), "pruning ratios to draw a ticket for, each in (0, 1), no duplicates"
    )
    epsilon: float = option(
        0.1,
        "the rule's threshold in (0, 1]: the largest mask distance that counts as not "
        "moving (reference, fifo), as a share of the largest reachable distance (normalized), "
        "the largest change of the distance as a share of its early level (plateau), or 1 "
        "minus the threshold on the early pruning indicator (epi)",
    )
    window: int = option(
        5,
        "masks (reference, normalized) or consecutive distances (fifo) looked at, >= 2; "
        "plateau: (window - 1) // 2 checks make its span when neither span nor total is given",
    )
    criterion: str = option(
        "plateau",
        "detection rule: plateau (chosen on the converged draw-point study, "
        "benchmarks/results/draw-point), reference (the released code's rule), fifo (the paper's "
        "Algorithm 1), normalized, or epi (When to Prune's early pruning indicator: how alike "
        "the kept channels per layer are)",
        choices=sorted(CRITERIA),
    )
    sparsity: float = option(
        1e-4, "strength s of the slimming penalty regularize() adds, >= 0", flags=("--s",)
    )
    penalty: str = option(
        "l1", "l1 (s * sign(gamma)) or group_lasso (over coupled channels)", choices=PENALTIES
    )
    min_channels: int = option(1, "channels every layer keeps, >= 1")
    max_layer_ratio: Optional[float] = option(
        None, "largest share of one layer a ticket may prune, in (0, 1); None: no limit"
    )
    round_to: int = option(
        1,
        "every layer keeps a multiple of this many channels (units: a gated MLP's pairs, "
        "a grouped conv's positions), or all of them, >= 1; attention heads and head dimensions "
        "are not rounded",
    )
    keep_weights: bool = option(True, "keep a CPU copy of the weights at each ticket's draw point")
    score: str = option(
        "auto",
        "what ranks channels: norm (mean |gamma| of the coupled BatchNorm/LayerNorm "
        "channels), weight (mean |w| of the coupled filters) or auto (norm scales; filters "
        "only for a model without norm layers)",
        choices=SCORES,
    )
    span: Optional[int] = option(
        None,
        "plateau rule only: the span compared, in the counter passed to step() "
        "(optimizer steps, recommended), >= 1; no ticket is drawn before 2 * span. None: "
        "3/32 of total when total is given (no draw before 18.75 % of the schedule), otherwise "
        "the last (window - 1) // 2 checks",
    )
    total: Optional[int] = option(
        None,
        "the length of the dense schedule, in the counter passed to step() (epochs when step() "
        "is called once an epoch without one, optimizer steps when it is passed them), >= 1; "
        "it sets the plateau rule's default span. The CLI and the Lightning callback fill it in",
    )
    coefficients: bool = option(
        True,
        "give every prunable unit without a norm scale (a transformer's MLP hidden units) "
        "a slimming coefficient, initialised to 1, that ranks it; the optimizer must train "
        "them (build it after the pruner). Models without any norm layer are scored by their "
        "filters instead",
    )
    heads: str = option(
        "whole",
        "attention heads (a module with num_heads, q/k/v producers and a proj): whole "
        "(one coefficient per head; a ticket removes whole heads, num_heads shrinks), dims "
        "(one per head dimension; the same dimensions leave every head, head_dim shrinks) or "
        "off (heads are not pruned)",
        choices=HEAD_MODES,
    )
    residual: str = option(
        "prune",
        "channel groups joined by an addition (a ResNet stage, a transformer's "
        "embedding/residual width): prune them too, or keep their width whole",
        choices=RESIDUAL_MODES,
    )
    budget: str = option(
        "kind",
        "kind (each kind of unit - norm-scaled channels, MLP units, heads - loses the ratio "
        "of its own units, under a threshold of its own; a kind with too few units above its "
        "floors loses what they allow) or global (one threshold over every kind). A model "
        "with one kind of unit (a CNN's channels) draws the same masks either way",
        choices=BUDGETS,
    )

    def __post_init__(self) -> None:
        value = ConfigError.value
        if isinstance(self.ratios, (Real, str)) or not isinstance(self.ratios, Sequence):
            raise ConfigError(
                "{} must be a sequence of floats in (0, 1), got " + value(self.ratios), "ratios"
            )
        ratios = tuple(self.ratios)
        _check(bool(ratios), "{} is empty; give at least one pruning ratio in (0, 1)", "ratios")
        for r in ratios:
            _check(
                not isinstance(r, bool) and isinstance(r, Real) and 0.0 < float(r) < 1.0,
                "every ratio must be a number in (0, 1), got " + value(r),
            )
        _check(
            len(set(map(float, ratios))) == len(ratios),
            "{} must not repeat, got " + value(list(ratios)),
            "ratios",
        )
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        _check(
            isinstance(self.epsilon, Real)
            and not isinstance(self.epsilon, bool)
            and 0.0 < self.epsilon <= 1.0,
            "{} must be in (0, 1], got " + value(self.epsilon),
            "epsilon",
        )
        _check(
            _is_int(self.window) and self.window >= 2,
            "{} must be an integer >= 2, got " + value(self.window),
            "window",
        )
        _check(
            self.criterion in CRITERIA,
            "unknown {} " + value(self.criterion) + "; choose from " + value(sorted(CRITERIA)),
            "criterion",
        )
        _check(
            isinstance(self.sparsity, Real) and not isinstance(self.sparsity, bool) and self.sparsity >= 0,
            "{} must be a number >= 0, got " + value(self.sparsity),
            "sparsity",
        )
        _check(
            self.penalty in PENALTIES,
            "unknown {} " + value(self.penalty) + "; choose from " + value(list(PENALTIES)),
            "penalty",
        )
        _check(
            _is_int(self.min_channels) and self.min_channels >= 1,
            "{} must be an integer >= 1, got " + value(self.min_channels),
            "min_channels",
        )
        _check(
            self.max_layer_ratio is None
            or (isinstance(self.max_layer_ratio, Real) and 0.0 < self.max_layer_ratio < 1.0),
            "{} must be None or in (0, 1), got " + value(self.max_layer_ratio),
            "max_layer_ratio",
        )
        _check(
            _is_int(self.round_to) and self.round_to >= 1,
            "{} must be an integer >= 1, got " + value(self.round_to),
            "round_to",
        )
        _check(
            self.span is None or (_is_int(self.span) and self.span >= 1),
            "{} must be None or an integer >= 1 (steps), got " + value(self.span),
            "span",
        )
        _check(
            self.span is None or self.criterion == "plateau",
            "{} is used by the plateau rule only, not by criterion=" + value(self.criterion),
            "span",
        )
        _check(
            self.total is None or (_is_int(self.total) and self.total >= 1),
            "{} must be None or an integer >= 1 (epochs or steps), got " + value(self.total),
            "total",
        )
        _check(
            self.score in SCORES,
            "unknown {} " + value(self.score) + "; choose from " + value(list(SCORES)),
            "score",
        )
        _check(
            isinstance(self.keep_weights, bool),
            "{} must be True or False, got " + value(self.keep_weights),
            "keep_weights",
        )
        _check(
            isinstance(self.coefficients, bool),
            "{} must be True or False, got " + value(self.coefficients),
            "coefficients",
        )
        _check(
            self.heads in HEAD_MODES,
            "unknown {} " + value(self.heads) + "; choose from " + value(list(HEAD_MODES)),
            "heads",
        )
        _check(
            self.residual in RESIDUAL_MODES,
            "unknown {} " + value(self.residual) + "; choose from " + value(list(RESIDUAL_MODES)),
            "residual",
        )
        _check(
            self.budget in BUDGETS,
            "unknown {} " + value(self.budget) + "; choose from " + value(list(BUDGETS)),
            "budget",
        )

    def plateau_span(self) -> Optional[int]:
        """The plateau rule's span in the counter passed to ``step()``: ``span``, else
        ``total * EARLIEST_SHARE / 2`` rounded up (at least 1), else None (the rule's last
        ``(window - 1) // 2`` checks).

        >>> EarlyBirdConfig(total=128).plateau_span(), EarlyBirdConfig(total=128, span=2).plateau_span()
        (12, 2)
        """
        if self.criterion != "plateau" or self.span is not None or self.total is None:
            return self.span
        return max(1, math.ceil(self.total * EARLIEST_SHARE / 2))


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check(ok: bool, template: str, *names: str) -> None:
    if not ok:
        raise ConfigError(template, *names)


def make_config(
    config: Optional[EarlyBirdConfig] = None, ratios: Optional[Sequence[float]] = None, **settings: Any
) -> EarlyBirdConfig:
    """``config`` (or the defaults) with ``ratios`` and any other fields replaced; an unknown
    name is a TypeError that lists the fields.

    >>> make_config(ratios=[0.5], window=3)
    EarlyBirdConfig(ratios=(0.5,), epsilon=0.1, window=3, criterion='plateau', sparsity=0.0001, \
penalty='l1', min_channels=1, max_layer_ratio=None, round_to=1, keep_weights=True, \
score='auto', span=None, total=None, coefficients=True, heads='whole', \
residual='prune', budget='kind')
    """
    if config is not None and not isinstance(config, EarlyBirdConfig):
        raise TypeError(f"config must be an EarlyBirdConfig, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(EarlyBirdConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"unknown settings {unknown}; EarlyBirdConfig has {sorted(fields)}")
    if ratios is not None:
        settings["ratios"] = ratios
    return dataclasses.replace(config or EarlyBirdConfig(), **settings)
