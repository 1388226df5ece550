"""Tracing a model with torch-pruning: its dependency graph, and the layers the trace missed."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Mapping, Sequence, Union, cast

import torch
import torch_pruning as tp
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .tolerant import Graph, linear_calls

log = logging.getLogger(__name__)

__all__ = [
    "NORM_TYPES",
    "ROOT_TYPES",
    "kept_modes",
    "run_example",
    "run_inputs",
    "build_graph",
    "find_classifier",
    "unwrap_model",
    "resolve_layers",
    "all_trainable",
    "refuse_frozen_norms",
]

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[None]:
    """torch-pruning's tracing switches the model to eval mode; put every module back."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def run_example(model: nn.Module, example_inputs: Any) -> Any:
    """One eval-mode forward pass without gradients; a failure names the example inputs."""
    with kept_modes(model), torch.no_grad():
        model.eval()
        try:
            return run_inputs(model, example_inputs)
        except Exception as exc:  # noqa: BLE001 - any failure means the inputs do not fit
            raise UnsupportedModelError(
                f"example_inputs do not run through the model: {type(exc).__name__}: {exc}"
            ) from exc


@contextlib.contextmanager
def all_trainable(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad while inside (torch-pruning traces through autograd, so a
    frozen layer, ``requires_grad=False``, would be left out of the graph); put back after."""
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    for n in frozen:
        model.get_parameter(n).requires_grad_(True)
    try:
        yield
    finally:  # by name: pruning replaces the parameters inside
        params = dict(model.named_parameters())
        for n in frozen:
            if n in params:
                params[n].requires_grad_(False)


def build_graph(model: nn.Module, example_inputs: Any, strict: bool = False) -> tp.DependencyGraph:
    """Trace ``model`` once with ``example_inputs``; a failure names the model.

    The trace runs in eval mode. Layers that only run in training (Inception's and GoogLeNet's
    auxiliary classifiers) would be left out of the graph, and pruning would break them, so if
    such layers exist the model is traced again in training mode on the example batch doubled
    (BatchNorm needs two samples), its BatchNorm statistics restored. A model that uses a
    layer's weights without calling the layer (torchvision's Swin, timm's BEiT, EVA and
    Swin-V2: ``F.linear(x, qkv.weight, bias)``) is traced with those calls made through the
    layer (:func:`~.tolerant.linear_calls`), so torch-pruning sees which channels it connects;
    ``strict=True`` refuses such a model instead.
    Ignored layers are not passed to the tracer: a layer left out of the graph would also drop
    its input channels from the groups that feed it (e.g. the head from the last stage's group).
    Frozen layers are traced like the others (:func:`all_trainable`).
    """
    with all_trainable(model):
        return _build_graph(model, example_inputs, strict)


def _build_graph(model: nn.Module, example_inputs: Any, strict: bool) -> tp.DependencyGraph:
    graph = _trace(model, example_inputs, train=False)
    missed = _untraced(model, graph)
    if not missed:
        return graph
    called, functional = _probe(model, example_inputs, missed)
    if functional and strict:
        raise UnsupportedModelError(
            f"{type(model).__name__} uses the weights of {len(functional)} layer(s) through "
            f"plain functions instead of calling the modules (e.g. {', '.join(functional[:3])}); "
            "torch-pruning cannot follow their channels, so pruning would break them"
        )
    if called:
        log.debug("layers that run only in training mode, tracing in training mode: %s", called[:5])
    if functional:
        log.debug("layers used through F.linear, traced as calls: %s", functional[:5])
    if called or functional:
        graph = _trace(
            model, example_inputs, train=bool(called), through=[model.get_submodule(n) for n in functional]
        )
    return graph


def _probe(model: nn.Module, example_inputs: Any, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """One training-mode forward and backward pass on the doubled example batch, everything
    restored after it. Of the layers ``names`` (not reached by the eval-mode trace), returns
    those called as modules (they run only in training: auxiliary classifiers) and those never
    called whose weights still got a gradient (used as ``F.linear(x, layer.weight)`` or alike).
    Layers that never run at all are neither."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {p: p.grad for p in model.parameters()}
    layers = {n: model.get_submodule(n) for n in names}
    called: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: called.add(n)) for n, m in layers.items()]
    try:
        with kept_modes(model), torch.enable_grad():
            model.train()
            for p in model.parameters():
                p.grad = None
            out = run_inputs(model, _doubled(example_inputs))
            tensors = (
                [out]
                if isinstance(out, Tensor)
                else [
                    t
                    for t in (out.values() if isinstance(out, Mapping) else out)
                    if isinstance(t, Tensor) and t.requires_grad
                ]
            )
            if tensors:
                cast(Tensor, sum(t.float().sum() for t in tensors)).backward()
            functional = [
                n
                for n, m in layers.items()
                if n not in called and getattr(m, "weight", None) is not None and m.weight.grad is not None
            ]
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


def _trace(
    model: nn.Module, example_inputs: Any, train: bool, through: Sequence[nn.Module] = ()
) -> tp.DependencyGraph:
    forward = None
    if train:

        def forward(m: nn.Module, inputs: Any) -> Any:
            m.train()
            return run_inputs(m, _doubled(inputs))

    buffers = (
        {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches_tracked" in k}
        if train
        else {}
    )
    with kept_modes(model), torch.enable_grad(), linear_calls(through):
        try:
            return Graph().build_dependency(model, example_inputs, forward_fn=forward, verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"torch-pruning could not trace {type(model).__name__}: {type(exc).__name__}: {exc}"
            ) from exc
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
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, kinds)
        and m not in graph.module2node
        and not any(name.startswith(t + ".") for t in traced if t)
    ]


def run_inputs(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``, with a tuple/list spread as arguments and a dict as keywords."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def find_classifier(model: nn.Module, output: Any) -> list[nn.Module]:
    """The output layer: timm's ``get_classifier()``, else the last conv/linear layer whose
    output width is the width of ``output`` (the model's output on the example inputs)."""
    if hasattr(model, "get_classifier"):
        head = getattr(model, "get_classifier")()
        if isinstance(head, nn.Module) and any(isinstance(m, ROOT_TYPES) for m in head.modules()):
            return [m for m in head.modules() if isinstance(m, ROOT_TYPES)]
    if not isinstance(output, Tensor) or output.dim() < 2:
        return []
    layers = [m for m in model.modules() if isinstance(m, ROOT_TYPES)]
    for m in reversed(layers):
        if getattr(m, "out_features", getattr(m, "out_channels", None)) == output.shape[1]:
            return [m]
    return []


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module to trace: refuses DataParallel/DDP wrappers, reads through torch.compile."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise UnsupportedModelError(
            f"got a {type(model).__name__}; pass the wrapped model (`model.module`) and wrap the "
            "pruned model again after pruning"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return getattr(model, "_orig_mod", model)  # torch.compile keeps the module here


def resolve_layers(model: nn.Module, layers: Sequence[Union[nn.Module, str]]) -> list[nn.Module]:
    """Modules or qualified names of ``model`` as modules; a wrong one is named."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    out = []
    for layer in layers:
        if isinstance(layer, str):
            try:
                layer = model.get_submodule(layer)
            except AttributeError:
                raise ValueError(f"ignored_layers: the model has no module named {layer!r}") from None
        if not isinstance(layer, nn.Module):
            raise TypeError(f"ignored_layers takes modules or qualified names, got {layer!r}")
        out.append(layer)
    return out


def refuse_frozen_norms(model: nn.Module) -> None:
    """Refuse torchvision's FrozenBatchNorm2d, naming why: its fixed scales are buffers."""
    frozen = [n for n, m in model.named_modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    if frozen:
        raise UnsupportedModelError(
            f"{type(model).__name__} normalises with FrozenBatchNorm2d ({len(frozen)} layers, "
            f"e.g. {frozen[0]!r}): its fixed scales are buffers that torch-pruning does not "
            "prune, so its channels cannot be removed; build the model with nn.BatchNorm2d and "
            "freeze those (requires_grad=False), which earlybird traces and leaves unchanged"
        )
