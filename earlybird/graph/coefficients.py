"""Slimming coefficients: a learnable scale for every unit that has no norm scale of its own.

A group of coupled channels is ranked by its BatchNorm/LayerNorm scales. Some groups have none:
the hidden units of a transformer's MLP (``fc1 -> GELU -> fc2``), a conv branch without a norm.
Such a group gets one coefficient per channel, initialised to 1 and applied where the channels
enter the layers that read them (a forward pre-hook multiplies those layers' inputs), so the
model computes the same function when the coefficients are made. Trained with the rest of the
model under the slimming penalty, the coefficients rank the units like norm scales do
(EarlyBERT, ViT-Slim). Pruning *folds* them into the reading layers' weights
(``W[:, j] *= c[j]``) and removes them: the pruned model is a plain model.

All coefficients of a model live in one ``nn.ModuleDict`` at ``model.eb_coefficients`` (so they
are in ``model.parameters()`` and ``model.state_dict()``); :func:`strip_coefficients` folds and
removes them again.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping, Optional, cast

import torch
from torch import Tensor, nn

__all__ = [
    "Coefficients",
    "gather_map",
    "reading_layers",
    "attach_coefficients",
    "detach_coefficients",
    "strip_coefficients",
    "coefficient_modules",
    "refuse_untrained",
    "group_coefficients",
    "unit_kind",
    "kind_shares",
    "ATTRIBUTE",
]

log = logging.getLogger(__name__)
ATTRIBUTE = "eb_coefficients"
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Coefficients(nn.Module):
    """Coefficients (``weight``, initialised to 1) and the layers whose input (``outputs``:
    output) they scale: ``readers[k]`` is a layer's qualified name, buffer ``gather{k}`` gives
    for each of its input (output) channels the coefficient that scales it (-1: none). One
    coefficient may scale several channels (an attention head's dimensions)."""

    def __init__(self, size: int, readers: list[tuple[str, list[int]]], outputs: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.readers = [name for name, _ in readers]
        self.outputs = outputs  # True: the layers' outputs are scaled, not inputs
        for k, (_, gather) in enumerate(readers):
            self.register_buffer(f"gather{k}", torch.tensor(gather, dtype=torch.long), persistent=False)

    def gather(self, k: int) -> Tensor:
        """Per input channel of reader ``k``, the index of its coefficient (-1: none)."""
        return getattr(self, f"gather{k}")

    def scale_for(self, k: int, dtype: torch.dtype) -> Tensor:
        """Reader ``k``'s input scale: its coefficient on each channel, 1 where none is."""
        one = torch.ones(1, dtype=dtype, device=self.weight.device)
        return torch.cat([self.weight.to(dtype), one])[self.gather(k)]  # -1 picks the 1

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, readers={self.readers}"


def gather_map(channels: int, index: list[int]) -> list[int]:
    """A reader's ``gather`` list: coefficient ``j`` scales its input channel ``index[j]``.

    >>> gather_map(4, [2, 0])
    [1, -1, 0, -1]
    """
    out = [-1] * channels
    for j, i in enumerate(index):
        out[i] = j
    return out


def reading_layers(
    group: Any, size: int, is_out: Any, units: Optional[list[int]] = None
) -> Optional[list[tuple[nn.Module, list[int]]]]:
    """The conv/linear layers that read a group's channels: ``[(layer, input channel per group
    channel)]``; None when coefficients cannot stand in for the group's norm scale: a unit
    enters some reader twice or not at all, a grouped (not depthwise) conv reads it, or a
    module with parameters other than a conv/linear layer touches the group. ``units`` (per
    group channel, its unit's first channel; default: every channel its own unit) lets the
    channels of one unit share an input channel: the two halves of a gated MLP's unit meet in
    one product before ``fc2`` reads it."""
    unit = units or list(range(size))
    found: dict[nn.Module, dict[int, int]] = {}
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, LAYERS):
            if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
                return None  # a norm, an embedding, a layer scale
            continue  # activations, dropout, torch-pruning's ops
        if is_out(item.dep.handler):
            continue  # a layer that writes the channels
        if (
            isinstance(module, nn.modules.conv._ConvNd)
            and module.groups != 1
            and not (module.groups == module.in_channels == module.out_channels)
        ):
            return None
        seen = found.setdefault(module, {})
        for idx, root in zip(item.idxs, item.root_idxs):  # keyed by unit
            if seen.setdefault(unit[int(root)], int(idx)) != int(idx):
                return None
    firsts = sorted(set(unit))
    if not found or any(
        sorted(m) != firsts or len(set(m.values())) != len(firsts) or max(m.values()) >= _inputs(layer)
        for layer, m in found.items()
    ):
        return None
    return [(module, [m[unit[r]] for r in range(size)]) for module, m in found.items()]


def _inputs(layer: nn.Module) -> int:
    return int(layer.in_features if isinstance(layer, nn.Linear) else cast(int, layer.in_channels))


def _scale_input(coefficients: Coefficients, k: int, module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a reading layer: its input times the coefficients."""
    x = args[0]
    dim = -1 if isinstance(module, nn.Linear) else 1
    shape = [1] * x.dim()
    shape[dim] = -1
    return (x * coefficients.scale_for(k, x.dtype).view(shape), *args[1:])


def _scale_output(coefficients: Coefficients, k: int, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
    """Forward hook of a producing linear layer: its output times the coefficients."""
    return out * coefficients.scale_for(k, out.dtype)


def attach_coefficients(model: nn.Module, made: dict[str, Coefficients]) -> None:
    """Register ``made`` (``{group root name: Coefficients}``) at ``model.eb_coefficients`` and
    hook each reading layer. The model's output does not change (every coefficient is 1)."""
    holder = nn.ModuleDict({_key(name): c for name, c in made.items()})
    model.add_module(ATTRIBUTE, holder)
    log.info(
        "%d units in %d groups without a norm scale get slimming coefficients (model.%s); "
        "the optimizer must train them",
        sum(c.weight.numel() for c in made.values()),
        len(made),
        ATTRIBUTE,
    )
    for coefficients in made.values():
        coefficients.to(next(model.parameters()).device)
        for k, reader in enumerate(coefficients.readers):
            layer = model.get_submodule(reader)
            if coefficients.outputs:
                layer.register_forward_hook(functools.partial(_scale_output, coefficients, k))
            else:
                layer.register_forward_pre_hook(functools.partial(_scale_input, coefficients, k))


def coefficient_modules(model: nn.Module) -> dict[str, Coefficients]:
    """``{group root name: Coefficients}`` attached to ``model`` (empty when none are)."""
    holder = getattr(model, ATTRIBUTE, None)
    return {} if holder is None else {_name(k): c for k, c in holder.items()}


def _unhook(layer: nn.Module) -> None:
    for hooks in (layer._forward_pre_hooks, layer._forward_hooks):
        for hid, hook in list(hooks.items()):
            if isinstance(hook, functools.partial) and hook.func in (_scale_input, _scale_output):
                del hooks[hid]


def detach_coefficients(model: nn.Module) -> dict[str, Coefficients]:
    """Take the coefficients off ``model`` without folding them (hooks and
    ``model.eb_coefficients`` removed) and return them: a pruner built again on the model
    re-attaches them with their values."""
    made = coefficient_modules(model)
    for coefficients in made.values():
        for reader in coefficients.readers:
            _unhook(model.get_submodule(reader))
    if hasattr(model, ATTRIBUTE):
        delattr(model, ATTRIBUTE)
    return made


@torch.no_grad()
def strip_coefficients(model: nn.Module) -> dict[str, Tensor]:
    """Fold every coefficient into the weights of the layers that read its channel
    (``W[:, j] *= c[j]``; a depthwise conv's filter ``j``), remove the hooks and
    ``model.eb_coefficients``: the model computes the same function and is a plain model again.
    Returns the folded coefficients by group root name."""
    made = coefficient_modules(model)
    for coefficients in made.values():
        for k, reader in enumerate(coefficients.readers):
            layer = model.get_submodule(reader)
            w = cast(Tensor, layer.weight)
            scale = coefficients.scale_for(k, w.dtype).detach().to(w.device)
            if coefficients.outputs:  # rows (and bias) of a producer
                w *= scale.view(-1, 1)
                if layer.bias is not None:
                    cast(Tensor, layer.bias).mul_(scale)
            elif isinstance(layer, nn.Linear) or layer.groups == 1:
                w *= scale.view([1, -1] + [1] * (w.dim() - 2))
            else:  # depthwise: filter j reads channel j
                w *= scale.view([-1] + [1] * (w.dim() - 1))
    detach_coefficients(model)
    return {name: c.weight.detach().clone() for name, c in made.items()}


def _key(name: str) -> str:
    return name.replace(".", "/")  # ModuleDict keys may not contain dots


def _name(key: str) -> str:
    return key.replace("/", ".")


def refuse_untrained(made: list[Coefficients], first_check: bool, stripped: bool = False) -> bool:
    """True once some coefficient has moved from 1 (or there are none). A ticket must never be
    drawn from coefficients nothing trains: when none moved although the model trained (after
    the first check, or with gradients present), raise with what to do; also after
    ``remove_coefficients()`` (``stripped``), whose units can no longer be scored."""
    if stripped:
        raise RuntimeError(
            "remove_coefficients() was called: the units it folded can no "
            "longer be scored; build a new pruner to search again"
        )
    if not made or any(bool((c.weight.detach() != 1).any()) for c in made):
        return True
    if first_check and all(c.weight.grad is None for c in made):
        return False  # nothing trained yet: cannot tell
    raise RuntimeError(
        f"the {sum(c.weight.numel() for c in made)} slimming coefficients of {len(made)} "
        "group(s) without a norm scale (model.eb_coefficients) have not moved since the pruner "
        "was built: the optimizer does not train them. Build the optimizer after the pruner, "
        "or add them to it: optimizer.add_param_group({'params': pruner.coefficients()})"
    )


def group_coefficients(
    graph: Any,
    group: Any,
    size: int,
    names: Mapping[nn.Module, str],
    made: dict[str, Coefficients],
    earlier: Mapping[str, Coefficients],
    units: Optional[list[int]] = None,
) -> Optional[dict[nn.Module, set]]:
    """Coefficients for a group without a norm scale whose channels only conv/linear layers
    read: ``{Coefficients: {(coefficient, group channel)}}``, one coefficient per unit
    (``units`` as :func:`reading_layers` takes them; made once per group root into ``made``;
    the values of ``earlier``, a previous pruner's, are kept), or None when its readers do not
    allow them."""
    name = names[group[0].dep.target.module]
    unit = units or list(range(size))
    readers = reading_layers(group, size, graph.is_out_channel_pruning_fn, unit)
    if readers is None:
        return None
    firsts = sorted(set(unit))
    if name not in made:
        made[name] = Coefficients(
            len(firsts), [(names[m], gather_map(_inputs(m), [idx[f] for f in firsts])) for m, idx in readers]
        )
        if name in earlier and earlier[name].weight.shape == made[name].weight.shape:
            made[name].weight = earlier[name].weight  # trained values (and optimizer)
    position = {f: k for k, f in enumerate(firsts)}
    return {made[name]: {(position[unit[c]], c) for c in range(size)}}


def unit_kind(name: str, coefficient_names: set) -> str:
    """The kind of unit a layout group holds: ``heads`` or ``head_dims`` (attention, by their
    ``:heads``/``:dims`` suffix), ``units`` (scored by slimming coefficients) or ``channels``
    (by norm scales).

    >>> [unit_kind(n, {"fc1"}) for n in ("stem", "fc1", "attn:heads", "attn:dims")]
    ['channels', 'units', 'heads', 'head_dims']
    """
    if name.endswith(":heads"):
        return "heads"
    if name.endswith(":dims"):
        return "head_dims"
    return "units" if name in coefficient_names else "channels"


def kind_shares(layout: Any, mask: Tensor, coefficient_names: set) -> dict[str, float]:
    """The share of each kind of unit a flat keep-``mask`` prunes: ``channels`` (layers scored
    by norm scales), ``units`` (by coefficients), ``heads`` and ``head_dims``.

    >>> from earlybird.search.masks import ChannelLayout
    >>> layout = ChannelLayout(("stem", "fc1", "attn:heads"), (2, 4, 2))
    >>> kind_shares(layout, torch.tensor([1, 1, 1, 0, 0, 0, 1, 1]).bool(), {"fc1", "attn:heads"})
    {'channels': 0.0, 'units': 0.75, 'heads': 0.0}
    """
    pruned: dict[str, list[int]] = {}
    for name, part in layout.split(mask).items():
        counts = pruned.setdefault(unit_kind(name, coefficient_names), [0, 0])
        counts[0] += int((~part.bool()).sum())
        counts[1] += part.numel()
    return {kind: cut / total for kind, (cut, total) in pruned.items()}
