"""Channel groups: torch-pruning's coupled channels, laid out flat, and their scores.

A *group* is torch-pruning's set of coupled channels rooted at a conv or linear layer;
earlybird scores each group channel by the mean ``|gamma|`` of the BatchNorm/LayerNorm channels
coupled to it (``score="norm"``). A model with no norm layer at all (AlexNet, VGG without BN,
SqueezeNet) can instead be scored by its filters (``score="weight"``): a group channel's score is
the mean ``|w|`` of the output filters of every conv/linear layer coupled to it. In a model
with norm layers, a group with no norm scale of its own (a transformer's MLP hidden units) is
ranked by slimming coefficients made for it (:mod:`.coefficients`, ``coefficients=True``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..search.masks import ChannelLayout
from . import penalty as _penalty
from .coefficients import Coefficients, attach_coefficients, detach_coefficients, group_coefficients
from .headgroups import add_heads, tie_excluded
from .heads import tied_units
from .scored import ScoredLayer
from .units import grouped_units, joined_by_addition, split_units
from .exclusion import exclusions, out_width, refuse_past_the_end, report
from .search import search_groups
from .trace import NORM_TYPES, ROOT_TYPES, build_graph, refuse_frozen_norms

log = logging.getLogger(__name__)

__all__ = ["ChannelGraph", "ScoredLayer", "coupled", "SCORES"]

SCORES = ("auto", "norm", "weight")


def coupled(group: Any, size: int, accept: Any) -> Optional[dict[nn.Module, set]]:
    """``{module: {(channel, root channel)}}`` over the group's items ``accept(item, module)``
    takes, or None when they do not cover every one of the ``size`` group channels."""
    found: dict[nn.Module, set] = {}
    for item in group:
        module = item.dep.target.module
        if accept(item, module):
            found.setdefault(module, set()).update(
                (int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)
            )
    covered = {r for pairs in found.values() for _, r in pairs}
    return found if found and len(covered) == size else None


class ChannelGraph:
    """Dependency groups of a model, cached, with the norm channels that score each of them.

    Build once; :meth:`scores` then costs one gather and one scatter per call.

    Attributes:
        graph: torch-pruning's ``DependencyGraph`` of the model.
        layout: the scored group channels laid out flat (:class:`~earlybird.ChannelLayout`).
        norms: the :class:`ScoredLayer` list (norm layers, or filters for ``score="weight"``).
        score: ``"norm"`` or ``"weight"``: what ranks the channels.
        excluded: ``{group root: why}``, the groups left out as their pruning would break the
            model (``strict=True`` refuses instead); ``prunable_share``: the share left.
        ties: ``{group root: tie}``, embeddings pruned with their attention heads
            (:mod:`.heads`), for :func:`~.surgery.prune_model`.
        coefficients: ``{group root: Coefficients}`` made for the groups with no norm scale
            and for attention heads (``<attention>:heads``, :mod:`.attention`); attached to
            the model at ``model.eb_coefficients``.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        ignored: Sequence[nn.Module] = (),
        score: str = "auto",
        strict: bool = False,
        coefficients: bool = True,
        heads: str = "whole",
        residual: bool = True,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose from {list(SCORES)}")
        self.model = model
        refuse_frozen_norms(model)
        self._earlier = detach_coefficients(model)  # a second pruner reuses them
        self._made: dict[str, Coefficients] = {}
        self._use_coefficients, self._residual = False, True
        self.graph = build_graph(model, example_inputs, strict=strict)
        names = {m: n for n, m in model.named_modules()}
        order = {m: i for i, m in enumerate(names)}
        groups, failed = search_groups(self.graph, model, ignored, ROOT_TYPES, strict)
        groups = [self._rooted_first(g, order) for g in groups]
        groups.sort(key=lambda g: order[g[0].dep.target.module])
        self.score = "weight" if score == "weight" else "norm"
        self.ties: dict[str, Any] = {}  # found after exclusion, below
        found = self._collect(groups, names)  # (every group, residual or not)
        self._use_coefficients = coefficients and score != "weight" and bool(found[1])
        self._residual = residual  # a model with norms: units without
        if self._use_coefficients or not residual:  # one get coefficients
            found = self._collect(groups, names)
        if not found[1] and score == "auto":
            log.warning(
                "%s has no channel group coupled to a BatchNorm or LayerNorm scale; "
                "scoring channels by their filters' mean |w| instead (score='weight')",
                type(model).__name__,
            )
            self.score = "weight"
            found = self._collect(groups, names)
        self.excluded: dict[str, str] = (
            failed if strict else {**failed, **exclusions(model, example_inputs, found, names, self.graph)}
        )
        self.ties = (
            {} if strict else tie_excluded(model, example_inputs, self.graph, groups, self.excluded, names)
        )
        self.excluded = {n: why for n, why in self.excluded.items() if n not in self.ties}
        self.prunable_share = 1.0
        if self.excluded or self.ties:  # (ties change the units)
            scored = sum(found[1]) + sum(out_width(model.get_submodule(n)) for n in failed)
            found = self._collect(
                [g for g in groups if names[g[0].dep.target.module] not in self.excluded], names
            )
            if self.excluded:
                report(model, self.excluded, sum(found[1]), scored)
            self.prunable_share = sum(found[1]) / scored
        if self._use_coefficients and heads != "off" and not strict:  # attention heads
            found, made, left = add_heads(
                model,
                example_inputs,
                found,
                {a for tie in self.ties.values() for a in tie["attentions"]},
                self._earlier,
                heads,
            )
            self._made.update(made)
            self.excluded.update(left)
        layer_names, sizes, units, segments, norms = found
        if not sizes:
            what = (
                "is coupled to a BatchNorm or LayerNorm scale (pass score='weight' to score filters instead)"
                if self.score == "norm"
                else "has a conv or linear filter"
            )
            raise UnsupportedModelError(
                f"{type(model).__name__} has nothing earlybird can prune: no channel group outside "
                f"ignored_layers {what}"
            )
        offset = sum(sizes)
        unit_t = torch.tensor(units)
        grouped = bool((unit_t != torch.arange(offset)).any())
        seg_t = torch.tensor(segments)
        split = int(seg_t.max()) + 1 > len(sizes)
        self.layout = ChannelLayout(
            tuple(layer_names),
            tuple(sizes),
            torch.unique(unit_t, return_inverse=True)[1] if grouped else None,
            seg_t if split else None,
        )
        self.norms = list(norms.values())
        scored = {id(n.module) for n in self.norms}
        self.coefficients = {n: c for n, c in self._made.items() if id(c) in scored}
        if self.coefficients:
            attach_coefficients(model, self.coefficients)
        if strict:
            refuse_past_the_end(self.norms, names, model)
        self._filter_rows: dict[nn.Module, Tensor] = {}
        self._index_tensors()

    def _collect(self, groups: Sequence[Any], names: Mapping[nn.Module, str]) -> tuple:
        """``(layer names, sizes, pruning units, segments, scored layers)`` of the groups this
        score sees."""
        layer_names: list[str] = []
        sizes: list[int] = []
        units: list[int] = []
        segments: list[int] = []
        norms: dict[nn.Module, ScoredLayer] = {}
        offset = first = 0
        filters = self.score == "weight"
        for group in groups:
            root = group[0].dep.target.module
            size = len(group[0].idxs)
            if not self._residual and joined_by_addition(group):
                continue  # residual="keep"
            found = (self._filter_channels if filters else self._norm_channels)(group, size)
            if found is None and not filters and self._use_coefficients:
                found = self._coefficient_channels(group, size, names)
            if found is None:
                continue
            for module, pairs in found.items():
                entry = norms.setdefault(module, ScoredLayer(module, [], [], filters))
                for idx, root_idx in sorted(pairs):
                    entry.src.append(idx)
                    entry.dst.append(offset + root_idx)
            tie = self.ties.get(names[root])
            unit = (
                tied_units(tie)
                if tie
                else grouped_units(self.graph, group, size) or split_units(group, size) or list(range(size))
            )
            units.extend(offset + u for u in unit)
            local = self._segments(group, size)
            segments.extend(first + s for s in local)
            first += max(local) + 1
            layer_names.append(names[root])
            sizes.append(size)
            offset += size
        return layer_names, sizes, units, segments, norms

    def _segments(self, group: Any, size: int) -> list[int]:
        """Per group channel, its segment: channels fed by the same set of conv/linear layers
        (each branch of a concatenation that joins a residual stage is one). Pruning every
        channel of a segment would empty a layer, so each keeps its own floor."""
        sig: list[set] = [set() for _ in range(size)]
        for item in group:
            module = item.dep.target.module
            if isinstance(module, ROOT_TYPES) and self.graph.is_out_channel_pruning_fn(item.dep.handler):
                for r in item.root_idxs:
                    sig[int(r)].add(id(module))
        ids: dict[frozenset, int] = {}
        return [ids.setdefault(frozenset(s), len(ids)) for s in sig]

    def _filter_channels(self, group: Any, size: int) -> Optional[dict[nn.Module, set]]:
        """Conv/linear layers whose output filters are a group's channels:
        ``{module: {(filter, root channel)}}``, or None when some channel has no filter."""
        return coupled(
            group,
            size,
            lambda item, module: (
                isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
                and self.graph.is_out_channel_pruning_fn(item.dep.handler)
            ),
        )

    def _rooted_first(self, group: Any, order: Mapping[nn.Module, int]) -> Any:
        """The same group, rooted at its first conv/linear in module order, so that names and
        the concatenation order do not depend on how torch-pruning walked the graph."""
        size = len(group[0].idxs)
        members = [
            item.dep.target.module
            for item in group
            if isinstance(item.dep.target.module, ROOT_TYPES)
            and self.graph.is_out_channel_pruning_fn(item.dep.handler)
        ]
        first = min(members, key=order.__getitem__, default=group[0].dep.target.module)
        if first is group[0].dep.target.module:
            return group
        pruner = self.graph.get_pruner_of_module(first)
        if pruner.get_out_channels(first) != size:
            return group
        try:
            return self.graph.get_pruning_group(first, pruner.prune_out_channels, list(range(size)))
        except Exception:  # noqa: BLE001 - the group as torch-pruning rooted it still holds
            return group

    def _coefficient_channels(
        self, group: Any, size: int, names: Mapping[nn.Module, str]
    ) -> Optional[dict[nn.Module, set]]:
        name = names[group[0].dep.target.module]
        if name in self.ties or grouped_units(self.graph, group, size) is not None:
            return None  # units tie channels: not yet
        return group_coefficients(
            self.graph, group, size, names, self._made, self._earlier, split_units(group, size)
        )

    @staticmethod
    def _norm_channels(group: Any, size: int) -> Optional[dict[nn.Module, set]]:
        """Norm layers coupled to a group: ``{module: {(channel, root channel)}}``, or None
        when some group channel has no norm channel (such groups are not scored)."""
        return coupled(
            group,
            size,
            lambda item, module: (
                isinstance(module, NORM_TYPES)
                and getattr(module, "weight", None) is not None
                and not (isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1)
            ),
        )

    def _index_tensors(self) -> None:
        src: list[int] = []
        dst: list[int] = []
        base = 0
        for norm in self.norms:
            src.extend(base + i for i in norm.src)
            dst.extend(norm.dst)
            base += norm.module.weight.shape[0] if norm.filters else norm.module.weight.numel()
        self._src, self._dst = torch.tensor(src), torch.tensor(dst)
        self._count = torch.bincount(self._dst, minlength=self.layout.num_channels).double()
        self._devices: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def _indices_on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The gather/scatter indices and counts on ``device`` (copied there once)."""
        if device.type == "cpu":
            return self._src, self._dst, self._count
        if device not in self._devices:
            self._devices[device] = (self._src.to(device), self._dst.to(device), self._count.to(device))
        return self._devices[device]

    def _flat_weights(self) -> Tensor:
        return torch.cat([n.values() for n in self.norms])

    def add_penalty_grad(self, strength: float, penalty: str) -> None:
        """Add the slimming penalty's gradient to the scored layers (see :mod:`.penalty`)."""
        _penalty.add_penalty_grad(self, strength, penalty)

    def group(self, name: str) -> Any:
        """torch-pruning's group of all channels of the layer ``name`` (a ``layout`` name)."""
        root = self.model.get_submodule(name)
        pruner = self.graph.get_pruner_of_module(root)
        return self.graph.get_pruning_group(
            root, pruner.prune_out_channels, list(range(pruner.get_out_channels(root)))
        )

    def readers(self, name: str, accept: Callable[[nn.Module], bool]) -> dict[nn.Module, list]:
        """The layers ``accept`` takes that read the channels of group ``name`` as inputs:
        ``{module: sorted [(input channel, group channel)]}``."""
        group = self.group(name)
        found = coupled(
            group,
            len(group[0].idxs),
            lambda item, m: accept(m) and not self.graph.is_out_channel_pruning_fn(item.dep.handler),
        )
        return {m: sorted(pairs) for m, pairs in (found or {}).items()}

    def filter_scores(self, per_filter: Callable[[nn.Module], Tensor]) -> Tensor:
        """One score per group channel: ``per_filter(layer)`` (one value per output filter)
        summed over every conv/linear filter coupled to the channel; needs ``score="weight"``."""
        if self.score != "weight":
            raise ValueError("filter_scores needs a ChannelGraph built with score='weight'")
        flat = torch.cat([per_filter(n.module).detach().double().cpu() for n in self.norms])
        total = torch.zeros(self.layout.num_channels, dtype=torch.float64)
        return total.index_add_(0, self._dst, flat[self._src])

    def scores(self) -> Tensor:
        """Mean ``|gamma|`` (or filter mean ``|w|``) per group channel, float64 ``[N]``, on the
        device the weights are on (no transfer)."""
        flat = self._flat_weights()
        src, dst, count = self._indices_on(flat.device)
        total = torch.zeros(self.layout.num_channels, dtype=torch.float64, device=flat.device)
        return total.index_add_(0, dst, flat[src].abs().double()) / count
