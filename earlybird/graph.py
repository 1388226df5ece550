"""The one adapter to torch-pruning: dependency groups, their scores, real pruning.

Everything torch-pruning specific lives here. A *group* is torch-pruning's set of coupled
channels rooted at a conv or linear layer; earlybird scores each group channel by the mean
``|gamma|`` of the BatchNorm/LayerNorm channels coupled to it (``score="norm"``). A model with no
norm layer at all (AlexNet, VGG without BN, SqueezeNet) can instead be scored by its filters
(``score="weight"``): a group channel's score is the mean ``|w|`` of the output filters of every
conv/linear layer coupled to it.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .errors import UnsupportedModelError
from .masks import ChannelLayout

log = logging.getLogger(__name__)

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
SCORES = ("auto", "norm", "weight")
History = list  # [[root name, is_out_channel_pruning, [channel indices]], ...]


@contextlib.contextmanager
def _kept_modes(model: nn.Module) -> Iterator[None]:
    """torch-pruning's tracing switches the model to eval mode; put every module back."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def run_example(model: nn.Module, example_inputs: Any) -> Any:
    """One eval-mode forward pass without gradients; a failure names the example inputs."""
    with _kept_modes(model), torch.no_grad():
        model.eval()
        try:
            return _run(model, example_inputs)
        except Exception as exc:  # noqa: BLE001 - any failure means the inputs do not fit
            raise UnsupportedModelError(
                f"example_inputs do not run through the model: {type(exc).__name__}: {exc}") from exc


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Trace ``model`` once with ``example_inputs``; a failure names the model.

    The trace runs in eval mode. Layers that only run in training (Inception's and GoogLeNet's
    auxiliary classifiers) would be left out of the graph, and pruning would break them, so if
    such layers exist the model is traced again in training mode on the example batch doubled
    (BatchNorm needs two samples), its BatchNorm statistics restored. A model that uses a
    layer's weights without calling the layer (torchvision's Swin: ``F.linear(x, qkv.weight)``)
    is refused: torch-pruning cannot see which channels that layer connects.
    Ignored layers are not passed to the tracer: a layer left out of the graph would also drop
    its input channels from the groups that feed it (e.g. the head from the last stage's group).
    """
    graph = _trace(model, example_inputs, train=False)
    missed = _untraced(model, graph)
    if not missed:
        return graph
    called, functional = _probe(model, example_inputs, missed)
    if functional:
        raise UnsupportedModelError(
            f"{type(model).__name__} uses the weights of {len(functional)} layer(s) through "
            f"plain functions instead of calling the modules (e.g. {', '.join(functional[:3])}); "
            "torch-pruning cannot follow their channels, so pruning would break them")
    if called:
        log.debug("layers that run only in training mode, tracing in training mode: %s",
                  called[:5])
        graph = _trace(model, example_inputs, train=True)
    return graph


def _probe(model: nn.Module, example_inputs: Any,
           names: Sequence[str]) -> tuple[list[str], list[str]]:
    """One training-mode forward and backward pass on the doubled example batch, everything
    restored after it. Of the layers ``names`` (not reached by the eval-mode trace), returns
    those called as modules (they run only in training: auxiliary classifiers) and those never
    called whose weights still got a gradient (used as ``F.linear(x, layer.weight)`` or alike).
    Layers that never run at all are neither."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {p: p.grad for p in model.parameters()}
    layers = {n: model.get_submodule(n) for n in names}
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: called.add(n))
             for n, m in layers.items()]
    try:
        with _kept_modes(model), torch.enable_grad():
            model.train()
            for p in model.parameters():
                p.grad = None
            out = _run(model, _doubled(example_inputs))
            tensors = [out] if isinstance(out, Tensor) else [
                t for t in (out.values() if isinstance(out, Mapping) else out)
                if isinstance(t, Tensor) and t.requires_grad]
            if tensors:
                sum(t.float().sum() for t in tensors).backward()
            functional = [n for n, m in layers.items() if n not in called
                          and getattr(m, "weight", None) is not None and m.weight.grad is not None]
    except Exception as exc:  # noqa: BLE001 - cannot tell: trace in training mode as before
        log.debug("training-mode probe failed: %s", exc)
        return list(names), []
    finally:
        for h in hooks:
            h.remove()
        for p, g in grads.items():
            p.grad = g
        model.load_state_dict(state)
    return [n for n in names if n in called], functional


def _trace(model: nn.Module, example_inputs: Any, train: bool) -> tp.DependencyGraph:
    forward = None
    if train:
        def forward(m: nn.Module, inputs: Any) -> Any:
            m.train()
            return _run(m, _doubled(inputs))
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k
               or "num_batches_tracked" in k} if train else {}
    with _kept_modes(model), torch.enable_grad():
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs, forward_fn=forward,
                                                         verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"torch-pruning could not trace {type(model).__name__}: "
                f"{type(exc).__name__}: {exc}") from exc
        finally:
            if buffers:
                model.load_state_dict(buffers, strict=False)


def _doubled(inputs: Any) -> Any:
    if isinstance(inputs, Tensor):
        return torch.cat([inputs, inputs])
    if isinstance(inputs, Mapping):
        return {k: _doubled(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_doubled(v) for v in inputs)
    return inputs


def _untraced(model: nn.Module, graph: tp.DependencyGraph) -> list[str]:
    """Layers with weights the trace did not reach, except those inside a traced module that
    torch-pruning prunes as a whole (``nn.MultiheadAttention`` and its ``out_proj``)."""
    kinds = ROOT_TYPES + NORM_TYPES
    traced = {name for name, m in model.named_modules() if m in graph.module2node}
    return [name for name, m in model.named_modules()
            if isinstance(m, kinds) and m not in graph.module2node
            and not any(name.startswith(t + ".") for t in traced if t)]


def _run(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def find_classifier(model: nn.Module, output: Any) -> list[nn.Module]:
    """The output layer: timm's ``get_classifier()``, else the last conv/linear layer whose
    output width is the width of ``output`` (the model's output on the example inputs)."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and any(isinstance(m, ROOT_TYPES) for m in head.modules()):
            return [m for m in head.modules() if isinstance(m, ROOT_TYPES)]
    if not isinstance(output, Tensor) or output.dim() < 2:
        return []
    layers = [m for m in model.modules() if isinstance(m, ROOT_TYPES)]
    for m in reversed(layers):
        if getattr(m, "out_features", getattr(m, "out_channels", None)) == output.shape[1]:
            return [m]
    return []


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _grouped_units(graph: tp.DependencyGraph, group: Any, size: int) -> Optional[list[int]]:
    """Per root channel, the smallest root channel it must be pruned with (grouped convs)."""
    uf = None
    for item in group:
        conv = item.dep.target.module
        if not isinstance(conv, nn.modules.conv._ConvNd) or conv.groups == 1:
            continue
        if conv.groups == conv.in_channels == conv.out_channels:
            continue                                    # depthwise: channels stay independent
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        block = (conv.out_channels if out else conv.in_channels) // conv.groups
        first: dict[int, int] = {}
        uf = uf or _UnionFind(size)
        for idx, root in zip(item.idxs, item.root_idxs):
            pos = int(idx) % block
            if pos in first:
                uf.union(first[pos], int(root))
            else:
                first[pos] = int(root)
    return None if uf is None else [uf.find(i) for i in range(size)]


def _coupled(group: Any, size: int, accept: Any) -> Optional[dict[nn.Module, set]]:
    """``{module: {(channel, root channel)}}`` over the group's items ``accept(item, module)``
    takes, or None when they do not cover every one of the ``size`` group channels."""
    found: dict[nn.Module, set] = {}
    for item in group:
        module = item.dep.target.module
        if accept(item, module):
            found.setdefault(module, set()).update(
                (int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs))
    covered = {r for pairs in found.values() for _, r in pairs}
    return found if found and len(covered) == size else None


@dataclass
class _Norm:
    module: nn.Module
    src: list[int]       # channel index in the norm layer (output filter of a weight-scored layer)
    dst: list[int]       # flat group-channel index it is coupled to
    filters: bool = False  # True: a conv/linear layer scored by its filters' mean |w|

    def values(self) -> Tensor:
        """One value per channel: ``gamma`` of a norm layer, mean ``|w|`` of each filter."""
        w = self.module.weight.detach()
        return w.abs().flatten(1).mean(1) if self.filters else w.reshape(-1)


class ChannelGraph:
    """Dependency groups of a model, cached, with the norm channels that score each of them.

    Build once; :meth:`scores` then costs one gather and one scatter per call.
    """

    def __init__(self, model: nn.Module, example_inputs: Any,
                 ignored: Sequence[nn.Module] = (), score: str = "auto") -> None:
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose from {list(SCORES)}")
        self.graph = build_graph(model, example_inputs)
        names = {m: n for n, m in model.named_modules()}
        order = {m: i for i, m in enumerate(names)}
        try:
            groups = [self._rooted_first(g, order) for g in self.graph.get_all_groups(
                ignored_layers=list(ignored), root_module_types=ROOT_TYPES)]
        except MemoryError:
            raise UnsupportedModelError(
                f"torch-pruning ran out of memory mapping the channels of {type(model).__name__} "
                "through its reshapes and permutes (window partitions blow its index lists "
                "up); this model cannot be pruned by channel groups") from None
        except Exception as exc:  # noqa: BLE001 - torch-pruning's internals, named once
            raise UnsupportedModelError(
                f"torch-pruning could not group the channels of {type(model).__name__}: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from exc
        groups.sort(key=lambda g: order[g[0].dep.target.module])
        self.score = "weight" if score == "weight" else "norm"
        found = self._collect(groups, names)
        if not found[1] and score == "auto":
            log.warning("%s has no channel group coupled to a BatchNorm or LayerNorm scale; "
                        "scoring channels by their filters' mean |w| instead (score='weight')",
                        type(model).__name__)
            self.score = "weight"
            found = self._collect(groups, names)
        layer_names, sizes, units, segments, norms = found
        if not sizes:
            what = ("is coupled to a BatchNorm or LayerNorm scale (pass score='weight' to score "
                    "filters instead)" if self.score == "norm" else "has a conv or linear filter")
            raise UnsupportedModelError(
                f"{type(model).__name__} has nothing earlybird can prune: no channel group outside "
                f"ignored_layers {what}")
        offset = sum(sizes)
        unit_t = torch.tensor(units)
        grouped = bool((unit_t != torch.arange(offset)).any())
        seg_t = torch.tensor(segments)
        split = int(seg_t.max()) + 1 > len(sizes)
        self.layout = ChannelLayout(tuple(layer_names), tuple(sizes),
                                    torch.unique(unit_t, return_inverse=True)[1] if grouped else None,
                                    seg_t if split else None)
        self.norms = list(norms.values())
        _check_indices(self.norms, names, model)
        self._filter_rows: dict[nn.Module, Tensor] = {}
        self._index_tensors()

    def _collect(self, groups: Sequence[Any], names: Mapping[nn.Module, str]) -> tuple:
        """``(layer names, sizes, pruning units, segments, scored layers)`` of the groups this
        score sees."""
        layer_names: list[str] = []
        sizes: list[int] = []
        units: list[int] = []
        segments: list[int] = []
        norms: dict[nn.Module, _Norm] = {}
        offset = first = 0
        filters = self.score == "weight"
        for group in groups:
            root = group[0].dep.target.module
            size = len(group[0].idxs)
            found = (self._filter_channels if filters else self._norm_channels)(group, size)
            if found is None:
                continue
            for module, pairs in found.items():
                entry = norms.setdefault(module, _Norm(module, [], [], filters))
                for idx, root_idx in sorted(pairs):
                    entry.src.append(idx)
                    entry.dst.append(offset + root_idx)
            unit = _grouped_units(self.graph, group, size) or list(range(size))
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
            if (isinstance(module, ROOT_TYPES)
                    and self.graph.is_out_channel_pruning_fn(item.dep.handler)):
                for r in item.root_idxs:
                    sig[int(r)].add(id(module))
        ids: dict[frozenset, int] = {}
        return [ids.setdefault(frozenset(s), len(ids)) for s in sig]

    def _filter_channels(self, group: Any, size: int) -> Optional[dict[nn.Module, set]]:
        """Conv/linear layers whose output filters are a group's channels:
        ``{module: {(filter, root channel)}}``, or None when some channel has no filter."""
        return _coupled(group, size, lambda item, module: isinstance(
            module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
            and self.graph.is_out_channel_pruning_fn(item.dep.handler))

    def _rooted_first(self, group: Any, order: Mapping[nn.Module, int]) -> Any:
        """The same group, rooted at its first conv/linear in module order, so that names and
        the concatenation order do not depend on how torch-pruning walked the graph."""
        size = len(group[0].idxs)
        members = [item.dep.target.module for item in group
                   if isinstance(item.dep.target.module, ROOT_TYPES)
                   and self.graph.is_out_channel_pruning_fn(item.dep.handler)]
        first = min(members, key=order.__getitem__, default=group[0].dep.target.module)
        if first is group[0].dep.target.module:
            return group
        pruner = self.graph.get_pruner_of_module(first)
        if pruner.get_out_channels(first) != size:
            return group
        return self.graph.get_pruning_group(first, pruner.prune_out_channels, list(range(size)))

    @staticmethod
    def _norm_channels(group: Any, size: int) -> Optional[dict[nn.Module, set]]:
        """Norm layers coupled to a group: ``{module: {(channel, root channel)}}``, or None
        when some group channel has no norm channel (such groups are not scored)."""
        return _coupled(group, size, lambda item, module: isinstance(module, NORM_TYPES)
                        and getattr(module, "weight", None) is not None
                        and not (isinstance(module, nn.LayerNorm)
                                 and len(module.normalized_shape) != 1))

    def _index_tensors(self) -> None:
        src, dst, base = [], [], 0
        for norm in self.norms:
            src.extend(base + i for i in norm.src)
            dst.extend(norm.dst)
            base += norm.module.weight.shape[0] if norm.filters else norm.module.weight.numel()
        self._src, self._dst = torch.tensor(src), torch.tensor(dst)
        self._count = torch.bincount(self._dst, minlength=self.layout.num_channels).double()

    def _flat_weights(self) -> Tensor:
        return torch.cat([n.values() for n in self.norms])

    def scores(self) -> Tensor:
        """Mean ``|gamma|`` (or filter mean ``|w|``) per group channel, float64 ``[N]``, CPU."""
        flat = self._flat_weights()
        gathered = flat[self._src.to(flat.device)].abs().double().cpu()
        total = torch.zeros(self.layout.num_channels, dtype=torch.float64)
        return total.index_add_(0, self._dst, gathered) / self._count

    @torch.no_grad()
    def add_penalty_grad(self, strength: float, penalty: str) -> None:
        """Add the sparsity penalty's gradient to the scored layers' ``weight.grad``.

        Norm scores: ``s * sign(gamma)`` (l1) or the group lasso over coupled scales. Filter
        scores: ``s * sign(w)`` on every scored filter (l1), or ``s * w / ||w||`` per filter.
        """
        if self.score == "weight":
            self._filter_penalty_grad(strength, penalty)
            return
        if penalty == "l1":
            for norm in self.norms:
                w = norm.module.weight
                if w.grad is not None:
                    w.grad.add_(torch.sign(w), alpha=strength)
            return
        flat = self._flat_weights()
        src, dst = self._src.to(flat.device), self._dst.to(flat.device)
        sq = torch.zeros(self.layout.num_channels, dtype=flat.dtype, device=flat.device)
        sq.index_add_(0, dst, flat[src] ** 2)
        grad = torch.zeros_like(flat)
        grad[src] = strength * flat[src] / sq[dst].sqrt().clamp_min(1e-12)
        for norm, g in zip(self.norms, torch.split(grad, [n.module.weight.numel() for n in self.norms])):
            w = norm.module.weight
            if w.grad is not None:
                w.grad.add_(g.view_as(w))


    def _filter_penalty_grad(self, strength: float, penalty: str) -> None:
        for norm in self.norms:
            w = norm.module.weight
            if w.grad is None:
                continue
            rows = self._filter_rows.get(norm.module)
            if rows is None or rows.device != w.device:
                rows = self._filter_rows[norm.module] = torch.tensor(norm.src, device=w.device)
            sel = w.detach()[rows]
            if penalty == "l1":
                grad = torch.sign(sel)
            else:
                flat = sel.flatten(1)
                grad = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(sel)
            w.grad.index_add_(0, rows, grad, alpha=strength)


def _check_indices(norms: Sequence[_Norm], names: Mapping[nn.Module, str],
                   model: nn.Module) -> None:
    """Refuse a model whose groups name channels past the end of a scored layer: torch-pruning
    walked a dual-path block's slices and concatenations (timm's DPN) into wrong indices, and
    scoring or pruning by them would fail or cut the wrong channels."""
    bad = [(names[n.module], max(n.src), len(n.values())) for n in norms
           if max(n.src) >= len(n.values())]
    if bad:
        name, index, size = bad[0]
        raise UnsupportedModelError(
            f"torch-pruning maps channels of {type(model).__name__} past the end of {len(bad)} "
            f"layer(s) (e.g. channel {index} of {name!r}, which has {size}): its channel "
            "coupling does not fit this model's slicing and concatenation (dual-path blocks), "
            "so pruning would cut the wrong channels")


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copes with tensors a model caches from its parameters (timm's
    LeViT/EfficientFormer keep attention biases computed in eval mode): those are copied
    detached instead of failing the copy."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for value in vars(m).values():
            items = value.values() if isinstance(value, dict) else [value]
            for t in items:
                if isinstance(t, Tensor) and t.grad_fn is not None:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def prune_model(model: nn.Module, example_inputs: Any, keep: Mapping[str, Tensor]) -> History:
    """Physically remove every channel whose keep-mask is False, group by group, in place.

    Returns torch-pruning's pruning history as plain lists (names, bools, ints).
    """
    graph = build_graph(model, example_inputs)
    with _kept_modes(model):
        for name, mask in keep.items():
            idxs = (~mask.bool()).nonzero().flatten().tolist()
            if not idxs:
                continue
            root = model.get_submodule(name)
            fn = graph.get_pruner_of_module(root).prune_out_channels
            group = graph.get_pruning_group(root, fn, idxs)
            if not graph.check_pruning_group(group):
                raise UnsupportedModelError(f"pruning {len(idxs)} channels of {name!r} would empty "
                                            "a layer coupled to it")
            group.prune()
    sync_attributes(model)
    return plain_history(graph.pruning_history())


def plain_history(history: Iterable) -> History:
    return [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in history]


def replay_history(model: nn.Module, example_inputs: Any, history: History) -> nn.Module:
    """Rebuild a pruned architecture on a fresh dense ``model`` from its pruning history."""
    graph = build_graph(model, example_inputs)
    with _kept_modes(model):
        try:
            graph.load_pruning_history([list(h) for h in history])
        except (AttributeError, ValueError, IndexError, AssertionError) as exc:
            raise UnsupportedModelError(
                f"the pruning history does not fit this model ({type(exc).__name__}: {exc}); "
                "build the model with the same constructor and arguments as the pruned one") from exc
    sync_attributes(model)
    return model


def sync_attributes(model: nn.Module) -> None:
    """Widths some models keep as plain attributes beside their layers, set to the pruned
    widths (torchvision's VisionTransformer reshapes its patches with ``hidden_dim``)."""
    for m in model.modules():
        proj = getattr(m, "conv_proj", None)
        if isinstance(getattr(m, "hidden_dim", None), int) and isinstance(proj, nn.Conv2d):
            m.hidden_dim = proj.out_channels


@torch.no_grad()
def zero_pruned_channels(channel_graph: ChannelGraph, keep: Tensor) -> None:
    """Set gamma and beta of every norm channel coupled to a pruned group channel to zero (the
    filter and its bias, for filter scores)."""
    pruned = ~keep.bool()
    for norm in channel_graph.norms:
        hit = [i for i, d in zip(norm.src, norm.dst) if pruned[d]]
        norm.module.weight[hit] = 0
        if getattr(norm.module, "bias", None) is not None:
            norm.module.bias[hit] = 0
