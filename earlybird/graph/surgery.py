"""Real pruning: channels removed from a model, and the pruning history that rebuilds it."""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Optional, TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention import attention_unit, dims_spec, drop_heads, find_attentions, heads_layer, unit_width
from .coefficients import strip_coefficients
from .heads import cut_head_dims, prune_heads, replay_heads
from .trace import all_trainable, build_graph, kept_modes, run_example

if TYPE_CHECKING:  # pragma: no cover
    from .groups import ChannelGraph

__all__ = [
    "History",
    "copy_model",
    "prune_model",
    "plain_history",
    "replay_history",
    "sync_attributes",
    "zero_pruned_channels",
    "check_runs",
    "memory_format_of",
]

History = list  # [[root name, is_out_channel_pruning, [channel indices]] or
#                  [attention name, "heads", {width, heads, producers, proj, dims}] or
#                  [attention name, "drop-heads", {heads, head_dim, producers, proj, drop}]]


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


def prune_model(
    model: nn.Module,
    example_inputs: Any,
    keep: Mapping[str, Tensor],
    ties: Optional[Mapping[str, Any]] = None,
) -> History:
    """Physically remove every channel whose keep-mask is False, group by group, in place.

    ``ties`` (a :class:`~.groups.ChannelGraph`'s ``ties``): embeddings whose attention layers
    lose one dimension per head for every unit they lose (:mod:`.heads`).
    Slimming coefficients (:mod:`.coefficients`) are folded into the layers that read their
    channels first, so the pruned model is a plain model.
    Returns torch-pruning's pruning history as plain lists (names, bools, ints).
    """
    strip_coefficients(model)
    whole = {n: m for n, m in keep.items() if heads_layer(n) is not None}
    with all_trainable(model):  # torch-pruning's new parameters keep frozen ones frozen
        graph = build_graph(model, example_inputs)
        heads = _prune_groups(model, graph, {n: m for n, m in keep.items() if n not in whole}, ties or {})
    sync_attributes(model)
    history = plain_history(graph.pruning_history())
    for at, entry in reversed(heads):
        history.insert(at, entry)
    for name, mask in whole.items():  # attention heads or head dimensions, last
        drop = (~mask.bool()).nonzero().flatten().tolist()
        if drop:
            attention, kind = cast(tuple[str, str], attention_unit(name))
            spec = find_attentions(model.get_submodule(attention))[""]
            if kind == "heads":
                spec = {**spec, "drop": drop}
                drop_heads(model, attention, spec)
            else:
                spec = cut_head_dims(model, attention, dims_spec(spec, drop))
            history.append([attention, "drop-heads" if kind == "heads" else "heads", spec])
    return history


def _prune_groups(
    model: nn.Module, graph: Any, keep: Mapping[str, Tensor], ties: Mapping[str, Any]
) -> list[tuple[int, list]]:
    """Prune each group of ``keep``; returns the head cuts of tied embeddings, each with the
    length of torch-pruning's history when it was made."""
    heads: list[tuple[int, list]] = []
    with kept_modes(model):
        for name, mask in keep.items():
            idxs = (~mask.bool()).nonzero().flatten().tolist()
            if not idxs:
                continue
            root = model.get_submodule(name)
            fn = graph.get_pruner_of_module(root).prune_out_channels
            group = graph.get_pruning_group(root, fn, idxs)
            if not graph.check_pruning_group(group):
                raise UnsupportedModelError(
                    f"pruning {len(idxs)} channels of {name!r} would empty a layer coupled to it"
                )
            group.prune()
            if name in ties:
                heads.extend(
                    (len(graph.pruning_history()), e) for e in prune_heads(model, ties[name], len(idxs))
                )
    return heads


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """``channels_last`` if the model's conv weights are laid out so, else contiguous."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    if all(w.is_contiguous(memory_format=torch.channels_last) for w in weights) and any(
        not w.is_contiguous() for w in weights
    ):  # (a 1x1 conv's weight is both)
        return torch.channels_last
    return torch.contiguous_format


def plain_history(history: Iterable) -> History:
    """torch-pruning's pruning history as plain lists: ``[[name, out?, [indices]], ...]``."""
    return [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in history]


def replay_history(model: nn.Module, example_inputs: Any, history: History) -> nn.Module:
    """Rebuild a pruned architecture on a fresh dense ``model`` from its pruning history."""
    with all_trainable(model), kept_modes(model):
        graph = build_graph(model, example_inputs)
        try:
            chunk: list = []
            for entry in [*history, None]:
                if entry is not None and entry[1] not in ("heads", "drop-heads"):
                    chunk.append(list(entry))
                    continue
                graph.load_pruning_history(chunk)
                chunk = []
                if entry is not None:
                    (replay_heads if entry[1] == "heads" else drop_heads)(model, entry[0], entry[2])
        except (AttributeError, ValueError, IndexError, AssertionError, KeyError, RuntimeError) as exc:
            raise UnsupportedModelError(
                f"the pruning history does not fit this model ({type(exc).__name__}: {exc}); "
                "build the model with the same constructor and arguments as the pruned one"
            ) from exc
    sync_attributes(model)
    return model


def sync_attributes(model: nn.Module) -> None:
    """Widths some models keep as plain attributes beside their layers, set to the pruned
    widths (torchvision's VisionTransformer reshapes its patches with ``hidden_dim``; timm's
    MetaFormer scales by ``scale.view(self.shape)``; timm's MixedConv2d splits its input into
    ``splits`` channels, one part per kernel size)."""
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        shape = getattr(m, "shape", None)  # timm's Scale: scale.view(self.shape)
        if (
            len(own) == 1
            and own[0].dim() == 1
            and isinstance(shape, tuple)
            and shape
            and all(isinstance(d, int) for d in shape)
            and set(shape[1:]) <= {1}
            and shape[0] != own[0].numel()
        ):
            setattr(m, "shape", (own[0].numel(), *shape[1:]))
        proj = getattr(m, "conv_proj", None)
        if isinstance(getattr(m, "hidden_dim", None), int) and isinstance(proj, nn.Conv2d):
            setattr(m, "hidden_dim", proj.out_channels)
        parts = list(m.values()) if isinstance(m, nn.ModuleDict) else []
        convs = [c for c in parts if isinstance(c, nn.Conv2d)]
        if isinstance(getattr(m, "splits", None), list) and convs and len(convs) == len(parts):
            splits = [c.in_channels for c in convs]  # timm's MixedConv2d: torch.split(x, self.splits)
            setattr(m, "splits", splits)
            setattr(m, "in_channels", sum(splits))
            setattr(m, "out_channels", sum(c.out_channels for c in convs))


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


def check_runs(
    small: nn.Module, example_inputs: Any, ratio: float, keep: Optional[Mapping[str, Tensor]] = None
) -> None:
    """The pruned copy must keep exactly the ticket's channels (``keep``, when given) and still
    run on the example inputs; say why not in one line."""
    for name, mask in (keep or {}).items():
        width = unit_width(small.get_submodule(heads_layer(name) or name), name)
        if width != int(mask.sum()):
            raise UnsupportedModelError(
                f"pruning left {name!r} with {width} channels where the ticket keeps {int(mask.sum())}"
            )
    try:
        run_example(small, example_inputs)
    except UnsupportedModelError as exc:
        cause = exc.__cause__ or exc
        raise UnsupportedModelError(
            f"{type(small).__name__} pruned at ratio {ratio:g} no longer runs "
            f"({type(cause).__name__}: {' '.join(str(cause).split())[:200]}): it computes with "
            "channel counts kept outside its layers (a split size, a reshape constant) that "
            "torch-pruning cannot update"
        ) from exc
