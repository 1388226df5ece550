"""Attention heads as pruning units: one coefficient per head, whole heads removed.

An attention layer (timm's ``Attention``, Swin's ``WindowAttention`` and their kind: a module
with an integer ``num_heads``, linear children that make the queries, keys and values from the
embedding, ``qkv`` or ``q``/``k``/``v`` or ``q``/``kv``, and a linear ``proj`` reading the heads'
output) gets one coefficient per head, multiplied into ``proj``'s input over that head's
dimensions (EarlyBERT's head coefficient, initialised to 1); with ``heads="dims"`` one per
head dimension instead, multiplied into the producers' queries, keys and values at that
dimension of every head (so 0 silences it exactly, as its removal does). Pruning a head removes its rows
from every producer, its columns from ``proj``, its slice of any per-head parameter (Swin's
relative position bias table) and lowers ``num_heads`` (and ``attn_dim``) so the layer runs
with fewer heads of the same width. Each cut enters the pruning history as
``[name, "drop-heads", spec]`` (:func:`drop_heads` replays it).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, cast

import torch
import torch_pruning as tp
from torch import nn

from .coefficients import Coefficients

__all__ = [
    "HEADS",
    "DIMS",
    "find_attentions",
    "head_coefficients",
    "drop_heads",
    "heads_layer",
    "attention_unit",
    "unit_width",
    "dims_spec",
]
# (:mod:`.headgroups` joins these units to a ChannelGraph: trials and coefficients)

HEADS = ":heads"  # a layout name ``<attention>:heads`` stands for an attention's heads
DIMS = ":dims"  # ``<attention>:dims``: the same head dimensions in every head


def attention_unit(name: str) -> Optional[tuple[str, str]]:
    """``(attention, "heads" or "dims")`` of a layout name ``<attention>:heads`` or
    ``<attention>:dims``, or None for a channel group.

    >>> attention_unit("blocks.0.attn:dims"), attention_unit("blocks.0.mlp.fc1")
    (('blocks.0.attn', 'dims'), None)
    """
    for suffix in (HEADS, DIMS):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix[1:]
    return None


def unit_width(layer: nn.Module, name: str) -> Optional[int]:
    """A layer's output channels, or an attention's heads (``:heads``) or head width
    (``:dims``), for the layout name ``name``."""
    unit = attention_unit(name)
    if unit is None:
        return getattr(layer, "out_channels", getattr(layer, "out_features", None))
    heads: int = getattr(layer, "num_heads")
    return heads if unit[1] == "heads" else getattr(layer, "proj").in_features // heads


def heads_layer(name: str) -> Optional[str]:
    """The attention of a layout name ``<attention>:heads`` or ``:dims``, or None.

    >>> heads_layer("blocks.0.attn:heads"), heads_layer("blocks.0.mlp.fc1")
    ('blocks.0.attn', None)
    """
    unit = attention_unit(name)
    return None if unit is None else unit[0]


def _out(attention: nn.Module, name: str) -> int:
    return int(cast(nn.Linear, attention.get_submodule(name)).out_features)


def _spec(attention: nn.Module) -> Optional[dict[str, Any]]:
    heads = getattr(attention, "num_heads", None)
    proj = getattr(attention, "proj", None)
    if (
        isinstance(attention, nn.MultiheadAttention)
        or not isinstance(heads, int)
        or heads < 2
        or not isinstance(proj, nn.Linear)
        or proj.in_features % heads
    ):
        return None
    width = proj.in_features
    producers = [
        n
        for n, c in attention.named_children()
        if isinstance(c, nn.Linear) and n != "proj" and c.out_features % width == 0
    ]
    made = sum(_out(attention, n) // width for n in producers)
    if made != 3:  # queries, keys and values, exactly
        return None
    norm = getattr(attention, "norm", None)
    if norm is not None and any(True for _ in norm.parameters()):
        return None  # a norm over the heads' output: not yet
    return {
        "heads": heads,
        "head_dim": width // heads,
        "producers": producers,
        "proj": "proj",
        "outputs": {n: _out(attention, n) // width for n in producers},
    }


def find_attentions(model: nn.Module, skip: Any = ()) -> dict[str, dict[str, Any]]:
    """``{attention name: spec}`` of the attention layers whose heads can be pruned whole
    (``spec``: heads, head_dim, producers, proj), except those named in ``skip``."""
    found = {}
    for name, module in model.named_modules():
        spec = _spec(module) if name not in skip else None
        if spec is not None:
            found[name] = spec
    return found


def head_coefficients(name: str, spec: Mapping[str, Any], mode: str = "whole") -> Coefficients:
    """``whole``: one coefficient per head, scaling ``proj``'s input over the head's
    dimensions; ``dims``: one per head dimension, scaling that dimension in every head."""
    hd = spec["head_dim"]
    width = spec["heads"] * hd
    if mode == "whole":
        return Coefficients(spec["heads"], [(f"{name}.{spec['proj']}", [i // hd for i in range(width)])])
    # a dimension scaled in the queries, keys and values alike: 0 silences it exactly
    return Coefficients(
        hd,
        [(f"{name}.{p}", [i % hd for i in range(outputs * width)]) for p, outputs in spec["outputs"].items()],
        outputs=True,
    )


@torch.no_grad()
def drop_heads(model: nn.Module, name: str, spec: Mapping[str, Any]) -> None:
    """Remove heads ``spec["drop"]`` of attention ``name`` (``spec`` as :func:`find_attentions`
    gives it, for the layer before the cut)."""
    attention = model.get_submodule(name)
    heads, hd, drop = spec["heads"], spec["head_dim"], sorted(spec["drop"])
    width = heads * hd
    inner = [h * hd + d for h in drop for d in range(hd)]
    for p in spec["producers"]:
        layer = attention.get_submodule(p)
        tp.prune_linear_out_channels(
            layer, [s * width + i for s in range(layer.out_features // width) for i in inner]
        )
    keep_heads = [h for h in range(heads) if h not in drop]
    keep = [h * hd + d for h in keep_heads for d in range(hd)]
    for key, value in list(vars(attention)["_parameters"].items()) + list(
        vars(attention)["_buffers"].items()
    ):
        if value is None:
            continue
        if value.dim() == 1 and value.shape[0] == width:  # q_bias, v_bias
            cut = value.detach()[keep].clone()
        elif value.dim() == 2 and value.shape[1] == heads:  # a bias table, heads last
            cut = value.detach()[:, keep_heads].clone()
        else:
            continue
        setattr(
            attention, key, nn.Parameter(cut, value.requires_grad) if isinstance(value, nn.Parameter) else cut
        )
    tp.prune_linear_in_channels(attention.get_submodule(spec["proj"]), inner)
    setattr(attention, "num_heads", len(keep_heads))
    if isinstance(getattr(attention, "attn_dim", None), int):
        attention.attn_dim = len(keep_heads) * hd


def dims_spec(spec: Mapping[str, Any], dims: list[int]) -> dict[str, Any]:
    """The ``"heads"`` history entry's spec (:func:`~.heads.replay_heads`) that cuts ``dims``
    from every head of an attention ``spec`` describes."""
    return {
        "width": spec["heads"] * spec["head_dim"],
        "heads": spec["heads"],
        "producers": list(spec["producers"]),
        "proj": spec["proj"],
        "dims": sorted(dims),
    }
