"""Attention heads and tied embeddings joined to a :class:`~.groups.ChannelGraph`'s groups:
each prunable attention's heads (or head dimensions) become a scored layer with coefficients,
and embeddings left out as groups are kept when tied to their heads, each after a trial on a
copy of the model. (The head operations themselves live in :mod:`.attention` and
:mod:`.heads`; this module builds on them, on :mod:`.surgery` and on :mod:`.exclusion`.)"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from torch import nn

from .attention import DIMS, HEADS, dims_spec, drop_heads, find_attentions, head_coefficients
from .coefficients import Coefficients
from .exclusion import trial
from .heads import Tie, find_ties, replay_heads, tied_units
from .scored import ScoredLayer
from .surgery import copy_model
from .trace import run_example

__all__ = ["trial_heads", "add_heads", "tie_excluded"]


def trial_heads(
    model: nn.Module, example_inputs: Any, name: str, spec: Mapping[str, Any], mode: str = "whole"
) -> Optional[str]:
    """Why dropping one head (``mode="dims"``: one dimension of every head) of attention
    ``name`` on a copy breaks the model, or None."""
    small = copy_model(model)
    try:
        if mode == "whole":
            drop_heads(small, name, {**spec, "drop": [0]})
        elif spec["head_dim"] < 2:
            return "one dimension per head: none can go"
        else:
            replay_heads(small, name, dims_spec(spec, [0]))
        run_example(small, example_inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means: leave these heads alone
        cause = exc.__cause__ or exc
        return f"{type(cause).__name__}: {' '.join(str(cause).split())[:160]}"
    return None


def add_heads(
    model: nn.Module,
    example_inputs: Any,
    found: tuple,
    skip: Any,
    earlier: Mapping[str, Coefficients],
    mode: str = "whole",
) -> tuple[tuple, dict[str, Coefficients], dict[str, str]]:
    """``found`` (a ChannelGraph's collected groups) with every prunable attention's heads
    (``mode="whole"``) or head dimensions (``"dims"``) appended as a layer
    ``<attention>:heads`` (``:dims``) scored by coefficients (reused from ``earlier`` where a
    pruner made them before); the coefficients and the attentions left out, with the reason."""
    layer_names, sizes, units, segments, norms = found
    made, excluded = {}, {}
    suffix = HEADS if mode == "whole" else DIMS
    for name, spec in find_attentions(model, skip).items():
        why = trial_heads(model, example_inputs, name, spec, mode)
        if why is not None:
            excluded[name + suffix] = why
            continue
        key = name + suffix
        heads = spec["heads"] if mode == "whole" else spec["head_dim"]
        coefficients = head_coefficients(name, spec, mode)
        if key in earlier and earlier[key].weight.shape == coefficients.weight.shape:
            coefficients.weight = earlier[key].weight
        offset, first = sum(sizes), max(segments, default=-1) + 1
        norms[coefficients] = ScoredLayer(
            coefficients, list(range(heads)), [offset + h for h in range(heads)]
        )
        layer_names.append(key)
        sizes.append(heads)
        units.extend(offset + h for h in range(heads))
        segments.extend(first for _ in range(heads))
        made[key] = coefficients
    return (layer_names, sizes, units, segments, norms), made, excluded


def tie_excluded(
    model: nn.Module,
    example_inputs: Any,
    graph: Any,
    groups: Sequence[Any],
    excluded: Mapping[str, str],
    names: Mapping[nn.Module, str],
) -> dict[str, Tie]:
    """Of the ``excluded`` groups, those read by attention layers whose pruning works when tied
    to their heads (a trial cutting the first and last unit, one head dimension each):
    ``{group root: tie}``."""
    ties: dict[str, Tie] = {}
    for group in groups:
        name = names[group[0].dep.target.module]
        tie = find_ties(model, graph, group, names) if name in excluded else None
        if tie is None:
            continue
        block = tie["width"] // tie["heads"]
        ends = {0, block - 1} if block > 2 else {0}
        cut = [i for i, u in enumerate(tied_units(tie)) if u in ends] if block > 1 else []
        if cut and trial(model, example_inputs, {name: cut}, ties={name: tie}) is None:
            ties[name] = tie
    return ties
