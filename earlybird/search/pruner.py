"""``EarlyBirdPruner``: draw early-bird tickets in any training loop, then prune for real."""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .carry import carry_optimizer, carry_scheduler
from .config import NO_TOTAL, EarlyBirdConfig, make_config
from .criteria import COUNTING, Checks, get_criterion
from .distance import pairwise_distances
from ..errors import CheckpointError, NoTicketError
from ..graph.attention import heads_layer
from ..graph import (
    ChannelGraph,
    check_runs,
    copy_model,
    find_classifier,
    memory_format_of,
    prune_model,
    refuse_untrained,
    resolve_layers,
    run_example,
    strip_coefficients,
    unwrap_model,
)
from ..graph.coefficients import kind_shares, unit_kind
from ..run.io import attach_record, input_spec
from .budget import KindBudget
from .masks import keep_masks, layer_caps
from .offload import copy_to_cpu, fetch_check, plain_state
from .ticket import Ticket

__all__ = ["EarlyBirdPruner", "Ticket"]

log = logging.getLogger(__name__)
STATE_FORMAT = "earlybird.pruner/1"


class EarlyBirdPruner:
    """Watch a model's channel masks during training and draw early-bird tickets.

    Call :meth:`regularize` after ``loss.backward()`` and before ``optimizer.step()``, call
    :meth:`step` once per epoch (or every N optimizer steps); it returns the ratios whose ticket
    was drawn by that call. :meth:`prune` gives a physically smaller copy for a ticket.

    Args:
        model: any ``nn.Module`` (unwrap DataParallel/DDP); channels are ranked by their norm
            scales, or by their filters for a model without norm layers (see ``score``).
        example_inputs: inputs the model runs on (tensor, tuple or dict), used to trace it once.
        ratios: the ratios to track (default: the config's, ``(0.3, 0.5, 0.7)``).
        config: the search's settings, an :class:`~earlybird.EarlyBirdConfig` (default: its
            defaults, the plateau rule among them).
        **settings: any field of :class:`~earlybird.EarlyBirdConfig` (``epsilon=0.2``,
            ``criterion="reference"``, ...), applied over ``config``.
        ignored_layers: modules or qualified names never pruned (their output channels).
        prune_head: allow pruning the classifier's output (off: the head is kept whole).
        strict: refuse a model if pruning some channel group would break it. Off (default),
            such groups are found when the pruner is built (on copies, by group testing), left
            out with one warning, and listed in ``pruner.excluded`` (``{layer: reason}``).

    >>> import torch, torchvision, earlybird as eb
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> pruner = eb.EarlyBirdPruner(model, torch.randn(1, 3, 32, 32), ratios=(0.3, 0.5))
    >>> pruner.step()                    # first check: no window yet, nothing drawn
    []
    >>> small = pruner.prune(0.5, force=True)
    >>> small(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        ratios: Optional[Sequence[float]] = None,
        *,
        config: Optional[EarlyBirdConfig] = None,
        ignored_layers: Sequence[Union[nn.Module, str]] = (),
        prune_head: bool = False,
        strict: bool = False,
        **settings: Any,
    ) -> None:
        self.config = make_config(config, ratios, **settings)
        min_channels, max_layer_ratio = self.config.min_channels, self.config.max_layer_ratio
        self.model = unwrap_model(model)
        self.example_inputs = example_inputs
        self._spec = input_spec(example_inputs)
        ignored = resolve_layers(self.model, ignored_layers)
        output = run_example(self.model, example_inputs)
        if not prune_head:
            ignored += [m for m in find_classifier(self.model, output) if m not in ignored]
        self.graph = ChannelGraph(
            self.model,
            example_inputs,
            ignored,
            self.config.score,
            strict,
            self.config.coefficients,
            self.config.heads,
            self.config.residual == "prune",
        )
        self.layout, self.excluded = self.graph.layout, self.graph.excluded
        self._caps = layer_caps(self.layout.sizes, min_channels, max_layer_ratio)
        self._seg_caps = self.layout.segment_caps(min_channels)
        self._round = [1 if heads_layer(n) else self.config.round_to for n in self.layout.names]
        kinds = [unit_kind(n, set(self.graph.coefficients)) for n in self.layout.names]
        split = KindBudget(self.layout, kinds, self._caps, self._seg_caps, self._round)
        # a model with one kind of unit (a CNN's channels) draws the same masks either way
        per_kind = self.config.budget == "kind" and len(split.kinds) > 1
        limits = f"min_channels={min_channels} and max_layer_ratio={max_layer_ratio}"
        split.check_room(self.config.ratios, limits, warn=per_kind)
        self._split: Optional[KindBudget] = split if per_kind else None
        self._criterion = get_criterion(self.config.criterion)
        self._masks: dict[float, list[Tensor]] = {r: [] for r in self.config.ratios}
        self._recent: dict[float, Optional[list[Tensor]]] = {r: [] for r in self.config.ratios}
        self._rows: dict[float, list[list[float]]] = {r: [] for r in self.config.ratios}
        # kept channels per layer at each check, for the rules that compare them (epi)
        self._counts: Optional[dict[float, list[list[int]]]] = (
            {r: [] for r in self.config.ratios} if self.config.criterion in COUNTING else None
        )
        self.iterations: list[int] = []
        self.tickets: dict[float, Ticket] = {}
        self._trained = self._stripped = False  # coefficients seen moving; folded
        log.info(
            "earlybird: %d prunable channels in %d groups, ratios %s",
            self.layout.num_channels,
            len(self.layout.sizes),
            list(self.config.ratios),
        )

    # ----------------------------------------------------------------- the training-loop hooks
    def regularize(self) -> None:
        """Add the slimming penalty's gradient to the scored norm layers' ``weight.grad``.

        Call after ``loss.backward()`` and before ``optimizer.step()``; under AMP call
        ``scaler.unscale_(optimizer)`` first so the penalty is not scaled with the loss.
        """
        if self.config.sparsity > 0:
            self.graph.add_penalty_grad(self.config.sparsity, self.config.penalty)

    def step(self, iteration: Optional[int] = None) -> list[float]:
        """Draw one mask per ratio from the current scores, record it and test for a ticket.

        Args:
            iteration: a counter to record with this check, non-decreasing: the optimizer step
                (recommended; ``span`` of the plateau rule counts in it) or the epoch; the
                check index when omitted.

        Returns:
            The ratios whose ticket was drawn by this call (each ratio draws once).
        """
        self._trained = self._trained or refuse_untrained(
            list(self.graph.coefficients.values()), not self.iterations, self._stripped
        )
        span = self.config.plateau_span()  # the config may learn the schedule late (Lightning)
        if not self.iterations and span is None and self.config.criterion == "plateau":
            log.warning(NO_TOTAL)
        scores = self.graph.scores()  # on the model's device
        flat = self._flat_masks(scores, self.config.ratios)
        near = {r: self._distances_to_recent(r, m) for r, m in flat.items()}
        masks, rows, finite = fetch_check(flat, near, scores)  # the check's one transfer
        if not finite:
            self._scores()  # names the layers, and raises
        check = len(self.iterations)
        self.iterations.append(check if iteration is None else int(iteration))
        drawn = []
        for ratio, mask in masks.items():
            self._masks[ratio].append(mask)
            self._rows[ratio].append(rows[ratio])
            self._recent[ratio] = [flat[ratio], *(self._recent[ratio] or [])][: self.config.window - 1]
            counts = self._count(ratio, mask)
            if ratio not in self.tickets and self._criterion(
                Checks(self._rows[ratio], self.iterations, ratio, counts),
                self.config.window,
                self.config.epsilon,
                span,
            ):
                self.tickets[ratio] = self._draw(ratio, check)
                drawn.append(ratio)
        return drawn

    def coefficients(self) -> list[nn.Parameter]:
        """The slimming coefficients made for units without a norm scale and for heads; give
        them to the optimizer: ``optimizer.add_param_group({"params": pruner.coefficients()})``."""
        return [c.weight for c in self.graph.coefficients.values()]

    def remove_coefficients(self) -> dict[str, Tensor]:
        """Fold the coefficients into the layers they scale and take them off the model (a plain
        model again, the same function; no more tickets). Returns the values by group name."""
        self._stripped = True
        return strip_coefficients(self.model)

    @property
    def budget(self) -> str:
        """How the masks are drawn: ``"kind"`` (a threshold per kind of unit) or ``"global"``;
        a model with one kind of unit draws by one threshold whatever the setting says."""
        return "kind" if self._split is not None else "global"

    def shares(self, ratio: float) -> dict[str, float]:
        """The share of each kind of unit the ticket of ``ratio`` (or its current mask) prunes:
        ``channels`` (norm scales), ``units`` (MLP hidden units), ``heads``, ``head_dims``."""
        ratio = self._known(ratio)
        mask = self.tickets[ratio].mask if ratio in self.tickets else self.mask(ratio)
        return kind_shares(self.layout, mask, set(self.graph.coefficients))

    def _count(self, ratio: float, mask: Tensor) -> Optional[list[list[int]]]:
        """Record the kept channels per layer of a (CPU) mask where the rule reads them."""
        if self._counts is None:
            return None
        self._counts[ratio].append(self.layout.counts(mask))
        return self._counts[ratio]

    def _distances_to_recent(self, ratio: float, mask: Tensor) -> Tensor:
        """Distances of ``mask`` to the last ``window - 1`` masks, nearest first, computed where
        the mask is (the recent masks are kept there)."""
        recent = self._recent.get(ratio)
        if recent is None:  # after load_state_dict: from the history
            recent = self._masks[ratio][-(self.config.window - 1) :][::-1]
        if recent and recent[0].device != mask.device:
            recent = [m.to(mask.device) for m in recent]  # model moved
        self._recent[ratio] = recent
        if not recent:
            return torch.zeros(0, dtype=torch.float64, device=mask.device)
        return (torch.stack(recent) != mask).double().mean(1)

    def _scores(self) -> Tensor:
        scores = self.graph.scores().cpu()
        bad = ~torch.isfinite(scores)
        if bad.any():
            layers = [n for n, b in self.layout.split(bad).items() if b.any()]
            raise FloatingPointError(
                f"non-finite norm scales (NaN/inf) in {layers[:5]}"
                f"{' ...' if len(layers) > 5 else ''}; training diverged"
            )
        return scores

    def _record(self, ratio: float, mask: Tensor) -> None:
        """Record a (CPU) mask and its distances to the ones before it (state loading)."""
        history = self._masks[ratio]
        earlier = history[-(self.config.window - 1) :][::-1]
        row = (torch.stack(earlier) != mask).double().mean(1).tolist() if earlier else []
        history.append(mask)
        self._rows[ratio].append(row)
        self._recent[ratio] = None
        self._count(ratio, mask)

    def _draw(self, ratio: float, check: int) -> Ticket:
        mask = self._masks[ratio][check]
        state = copy_to_cpu(self.model.state_dict()) if self.config.keep_weights else None
        log.info(
            "early-bird ticket p=%g drawn at check %d (iteration %d), distances %s",
            ratio,
            check,
            self.iterations[check],
            [round(d, 4) for d in self._rows[ratio][check]],
        )
        return Ticket(ratio, check, self.iterations[check], mask, self.layout.split(mask), state)

    # ------------------------------------------------------------------------------- queries
    def mask(self, ratio: float) -> Tensor:
        """The flat keep-mask ``step()`` would record now (layers in ``layout.names`` order)."""
        self._known(ratio, allow_any=True)
        return self._flat_masks(self._scores(), [ratio])[ratio]

    def _flat_masks(self, scores: Tensor, ratios: Sequence[float]) -> dict[float, Tensor]:
        if self._split is not None:
            return self._split.keep_masks(scores, ratios)
        return keep_masks(scores, self.layout, ratios, self._caps, self._seg_caps, self._round)

    def keep_masks(self, scores: Tensor, ratio: float) -> dict[str, Tensor]:
        """Per-layer keep-masks for ``ratio`` from any one score per group channel (the
        lowest pruned), under this pruner's floors and limits: the rule tickets are drawn by,
        for scores of your own (filter norms, saliencies)."""
        flat = self._flat_masks(scores, [float(ratio)])
        return self.layout.split(flat[float(ratio)])

    def masks(self, ratio: float) -> dict[str, Tensor]:
        """:meth:`mask` per layer: ``{root module name: BoolTensor keep-mask}``."""
        return self.layout.split(self.mask(ratio))

    def distances(self, ratio: float) -> list[float]:
        """Distance of each recorded mask to the one before it (one fewer than the checks)."""
        return [row[0] for row in self._rows[self._known(ratio)] if row]

    def history(self, ratio: float) -> Tensor:
        """All recorded keep-masks of ``ratio`` stacked as a bool tensor ``[checks, N]``."""
        masks = self._masks[self._known(ratio)]
        if not masks:
            return torch.zeros(0, self.layout.num_channels, dtype=torch.bool)
        return torch.stack(masks)

    def pairwise_distances(self, ratio: float) -> Tensor:
        """``K x K`` distances between all ``K`` recorded masks of ``ratio`` (paper Figure 3)."""
        masks = self.history(ratio)
        return pairwise_distances(masks) if len(masks) else torch.zeros(0, 0)

    def _known(self, ratio: float, allow_any: bool = False) -> float:
        ratio = float(ratio)
        if ratio in self.config.ratios or (allow_any and 0.0 < ratio < 1.0):
            return ratio
        allowed = "a ratio in (0, 1)" if allow_any else f"one of {list(self.config.ratios)}"
        raise ValueError(f"ratio {ratio} is not tracked; use {allowed}")

    # ------------------------------------------------------------------------------- pruning
    def prune(
        self,
        ratio: float,
        *,
        force: bool = False,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Any = None,
    ) -> Any:
        """A physically pruned deep copy of the model for the ticket of ``ratio``.

        The copy starts from the ticket's own weights (when kept) and loses exactly the ticket's
        pruned channels; the wrapped model is not touched. ``force=True`` prunes a ratio that has
        no ticket yet by its current mask and current weights.

        With ``optimizer`` (to prune mid-training and keep going) the copy starts from the
        *current* weights, which the optimizer's state belongs to, and ``(model, optimizer)`` is
        returned: the same optimizer class, groups and hyper-parameters, with every per-parameter
        state tensor (momentum, Adam moments) sliced to the kept channels. With ``scheduler``
        too, ``(model, optimizer, scheduler)``, the scheduler continuing from the same step.
        """
        ratio = self._known(ratio, allow_any=force)
        ticket = self.tickets.get(ratio)
        if ticket is None and not force:
            raise NoTicketError(
                f"no early-bird ticket for ratio {ratio} yet after {len(self.iterations)} checks "
                f"(tickets so far: {sorted(self.tickets)}); keep training, or pass force=True to "
                "prune by the current mask"
            )
        if scheduler is not None and optimizer is None:
            raise ValueError("scheduler= needs optimizer= (the scheduler drives the optimizer)")
        keep = ticket.masks if ticket is not None else self.masks(ratio)
        small = copy_model(self.model)
        if ticket is not None and ticket.state is not None and optimizer is None:
            small.load_state_dict(ticket.state)
        history = prune_model(small, self.example_inputs, keep, self.graph.ties)
        small = small.to(memory_format=memory_format_of(self.model))  # channels_last stays
        check_runs(small, self.example_inputs, ratio, keep)
        attach_record(small, history, self._spec)
        if optimizer is None:
            return small
        opt = carry_optimizer(self.model, small, optimizer, self.example_inputs, history)
        if scheduler is None:
            return small, opt
        return small, opt, carry_scheduler(scheduler, opt)

    # --------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume detection: tensors, numbers and strings only."""
        return {
            "format": STATE_FORMAT,
            "names": list(self.layout.names),
            "sizes": list(self.layout.sizes),
            "ratios": list(self.config.ratios),
            "budget": self.budget,
            "iterations": torch.tensor(self.iterations, dtype=torch.long),
            "masks": {str(r): self.history(r) for r in self.config.ratios},
            "tickets": {
                str(r): {"check": t.check, **({"state": plain_state(t.state)} if t.state else {})}
                for r, t in self.tickets.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; detection then goes on as if never interrupted."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"not an EarlyBirdPruner state (expected format {STATE_FORMAT!r})")
        if state["names"] != list(self.layout.names) or state["sizes"] != list(self.layout.sizes):
            raise CheckpointError(
                "this pruner state was saved for a model with other layers or "
                "widths; build the pruner on the same architecture"
            )
        if [float(r) for r in state["ratios"]] != list(self.config.ratios):
            raise CheckpointError(
                f"state tracks ratios {state['ratios']}, this pruner {list(self.config.ratios)}"
            )
        if (budget := state.get("budget", "global")) != self.budget:  # masks of another kind
            raise CheckpointError(f"state drew masks with budget={budget!r}, this pruner {self.budget!r}")
        self.iterations = [int(i) for i in state["iterations"]]
        self.tickets = {}
        for ratio in self.config.ratios:
            self._masks[ratio], self._rows[ratio] = [], []
            if self._counts is not None:
                self._counts[ratio] = []
            for mask in state["masks"][str(ratio)]:
                self._record(ratio, mask.clone())
            saved = state["tickets"].get(str(ratio))
            if saved is not None:
                check, mask = int(saved["check"]), self._masks[ratio][int(saved["check"])]
                self.tickets[ratio] = Ticket(
                    ratio, check, self.iterations[check], mask, self.layout.split(mask), saved.get("state")
                )
