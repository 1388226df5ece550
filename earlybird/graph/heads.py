"""Embeddings tied to attention heads: pruned so that every head keeps the same width.

Many attention layers compute their head width from the width of their input:
``qkv(x).reshape(B, N, 3, num_heads, C // num_heads)`` (timm's CaiT, CoaT, DaViT, PVT,
torchvision's Swin) or ``(attn @ v).transpose(1, 2).reshape(B, N, C)`` (BEiT, EVA). Pruning
such an embedding alone breaks the model. :func:`find_ties` finds, for an embedding group
whose pruning broke the model, the attention layers reading it (a module with an integer
``num_heads`` whose child linear layers read the group: ``qkv``, or ``q`` and ``kv``, or ``q``,
``k`` and ``v``). The group is then pruned in units of ``num_heads`` channels (the same position
in each ``C // num_heads`` slice, as ``nn.MultiheadAttention``'s embedding is), and for every unit
removed, :func:`prune_heads` removes one head dimension from every head of those layers: the
same position in every head, the one whose query, key and value weights have the smallest
norm, with torch-pruning's layer pruners on the producers' outputs and ``proj``'s inputs.
torch-pruning's own group of a ``qkv`` layer cannot be used: through ``qkv[0], qkv[1], qkv[2]``
(Swin) or a talking-heads mix (CaiT) it maps the cut onto relative-position tables and onto
``proj`` three times over. These cuts enter the pruning history as ``[name, "heads", spec]``
entries, replayed in order (:func:`replay_heads`). Heads keep equal sizes and
``heads x head_dim`` stays the embedding width; a ``head_dim`` attribute is updated.

The logits keep their scale. An attention that keeps a float ``scale`` (timm's, set to
``head_dim ** -0.5``) multiplies ``q @ k`` by it on one path and, on its fused path,
``F.scaled_dot_product_attention`` uses ``1 / sqrt`` of the width it is given: after a cut,
the pruned ``head_dim``. :func:`cut_head_dims` sets ``scale`` to the new ``head_dim ** -0.5``
and multiplies the queries' weights by the old scale over the new one, so both paths compute
what the dense attention computed with the cut dimensions silenced (the spec records the new
scale, and :func:`replay_heads` sets it; histories without it replay as before).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, cast

import torch
import torch_pruning as tp
from torch import Tensor, nn

__all__ = ["Tie", "find_ties", "tied_units", "prune_heads", "replay_heads", "cut_head_dims"]

Tie = dict  # {"heads": int, "width": int, "attentions": {attention name: [producer names]}}


def find_ties(model: nn.Module, graph: Any, group: Any, names: Mapping[nn.Module, str]) -> Optional[Tie]:
    """The attention layers reading the embedding ``group`` (torch-pruning's group of all its
    channels), or None when none does or their head counts differ. A producer is a child linear
    layer of the attention that reads the group and makes a whole number (1 to 3) of
    embedding-wide projections: ``qkv``; ``q`` and ``kv``; ``q``, ``k`` and ``v``."""
    size = len(group[0].idxs)
    found: dict[str, list[str]] = {}
    heads = set()
    for item in group:
        layer = item.dep.target.module
        if not isinstance(layer, nn.Linear) or graph.is_out_channel_pruning_fn(item.dep.handler):
            continue
        parent_name, _, child = names[layer].rpartition(".")
        parent = model.get_submodule(parent_name)
        count = getattr(parent, "num_heads", None)
        if (
            isinstance(parent, nn.MultiheadAttention)
            or not isinstance(count, int)
            or count < 1
            or size % count
            or layer.in_features != size
            or layer.out_features % size
            or layer.out_features // size > 3
        ):
            continue
        found.setdefault(parent_name, []).append(child)
        heads.add(count)
    if not found or len(heads) != 1:
        return None
    return {"heads": heads.pop(), "width": size, "attentions": found}


def tied_units(tie: Tie) -> list[int]:
    """Per channel of a tied embedding, the first channel of its unit: the same position in
    each of the ``heads`` slices."""
    block = tie["width"] // tie["heads"]
    return [i % block for i in range(tie["width"])]


def _weakest_dims(layers: Sequence[nn.Linear], width: int, heads: int, count: int) -> list[int]:
    """The ``count`` head dimensions with the smallest row norm summed over the heads and the
    producers' projections (the same positions in every head, so a norm shared by the heads
    still fits)."""
    head_dim = width // heads
    norm = torch.zeros(head_dim, dtype=torch.float64)
    for layer in layers:
        rows = layer.weight.detach().double().reshape(-1, heads, head_dim, layer.in_features)
        norm += rows.norm(dim=-1).sum((0, 1)).cpu()
    return sorted(int(d) for d in norm.argsort(stable=True)[:count])


def _proj(attention: nn.Module, producers: Sequence[str], width: int) -> Optional[str]:
    """The layer reading the heads' output: ``proj``, else the one other ``width``-input
    linear child."""
    if isinstance(getattr(attention, "proj", None), nn.Linear):
        return "proj"
    others = [
        n
        for n, c in attention.named_children()
        if isinstance(c, nn.Linear) and n not in producers and c.in_features == width
    ]
    return others[0] if len(others) == 1 else None


def prune_heads(model: nn.Module, tie: Tie, removed: int) -> list[list]:
    """Remove ``removed // heads`` dimensions from every head of the attentions of ``tie``,
    after their embedding lost ``removed`` channels; returns the history entries
    (:func:`replay_heads`), one per attention: ``[name, "heads", spec]``."""
    heads, width = tie["heads"], tie["width"]
    count = removed // heads
    entries = []
    for name, producers in tie["attentions"].items() if count else ():
        attention = model.get_submodule(name)
        proj = _proj(attention, producers, width)
        if proj is None:
            raise ValueError(f"{name!r} has no single layer reading its heads' output")
        layers = [cast(nn.Linear, attention.get_submodule(p)) for p in producers]
        dims = _weakest_dims(layers, width, heads, count)
        spec = {"width": width, "heads": heads, "producers": list(producers), "proj": proj, "dims": dims}
        entries.append([name, "heads", cut_head_dims(model, name, spec)])
    return entries


def _queries(attention: nn.Module, spec: Mapping[str, Any]) -> Optional[list[tuple[Tensor, int]]]:
    """The tensors that make the queries of ``attention`` after the cut, each with how many of
    its leading rows do (all of a ``q`` layer's, the first third of a ``qkv``'s, a ``q_bias``);
    None where that is not known or a norm over the queries would undo a rescale."""
    q_norm = getattr(attention, "q_norm", None)
    if q_norm is not None and not isinstance(q_norm, nn.Identity):
        return None
    width = spec["heads"] * (spec["width"] // spec["heads"] - len(spec["dims"]))
    producers = list(spec["producers"])
    layers = [cast(nn.Linear, attention.get_submodule(p)) for p in producers]
    if "q" in producers:
        layer = layers[producers.index("q")]
    elif len(layers) == 1 and layers[0].out_features == 3 * width:
        layer = layers[0]
    else:
        return None
    found: list[tuple[Tensor, int]] = [(layer.weight, width)]
    if layer.bias is not None:
        found.append((layer.bias, width))
    q_bias = vars(attention)["_parameters"].get("q_bias")
    if q_bias is not None and q_bias.shape == (width,):
        found.append((q_bias, width))
    return found


@torch.no_grad()
def cut_head_dims(model: nn.Module, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`replay_heads` on a trained model, keeping its logits: where the attention keeps a
    float ``scale`` and its queries are found, the spec gains the new scale and the queries'
    weights are multiplied by the old scale over it; returns the spec the history records."""
    attention = model.get_submodule(name)
    old = getattr(attention, "scale", None)
    spec = dict(spec)
    if isinstance(old, float):
        spec["scale"] = (spec["width"] // spec["heads"] - len(spec["dims"])) ** -0.5
    replay_heads(model, name, spec)
    queries = _queries(attention, spec) if "scale" in spec else None
    if queries is None:
        if "scale" in spec:  # not found: the scale stays as trained, as before
            setattr(attention, "scale", old)
            del spec["scale"]
        return spec
    for tensor, rows in queries:
        tensor[:rows] *= old / spec["scale"]
    return spec


def replay_heads(model: nn.Module, name: str, spec: Mapping[str, Any]) -> None:
    """Cut head dimensions ``spec["dims"]`` from every head of attention ``name``: the
    producers' output channels, the biases the attention keeps for them (``q_bias``,
    ``v_bias``, ``k_bias``), and ``proj``'s input channels, with torch-pruning's layer pruners;
    ``head_dim``, where the attention keeps one, follows."""
    attention = model.get_submodule(name)
    width, heads, dims = spec["width"], spec["heads"], spec["dims"]
    head_dim = width // heads
    inner = [k * head_dim + d for k in range(heads) for d in dims]
    for p in spec["producers"]:
        layer = attention.get_submodule(p)
        idxs = [s * width + i for s in range(layer.out_features // width) for i in inner]
        tp.prune_linear_out_channels(layer, idxs)
    keep = sorted(set(range(width)) - set(inner))
    for key, value in list(vars(attention)["_parameters"].items()) + list(
        vars(attention)["_buffers"].items()
    ):
        if value is not None and value.dim() == 1 and value.shape[0] == width:
            pruned = value.detach()[keep].clone()
            setattr(
                attention,
                key,
                nn.Parameter(pruned, value.requires_grad) if isinstance(value, nn.Parameter) else pruned,
            )
    tp.prune_linear_in_channels(attention.get_submodule(spec["proj"]), inner)
    if isinstance(getattr(attention, "head_dim", None), int):
        attention.head_dim = head_dim - len(dims)
    if "scale" in spec and isinstance(getattr(attention, "scale", None), float):
        setattr(attention, "scale", float(spec["scale"]))  # queries carry the old (cut_head_dims)
    if isinstance(getattr(attention, "attn_dim", None), int):  # timm's Attention
        attention.attn_dim = heads * (head_dim - len(dims))
