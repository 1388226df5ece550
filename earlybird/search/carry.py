"""Carry an optimizer and its LR scheduler over to a pruned model, state sliced, not reset.

Any ``torch.optim`` optimizer carries over: the new one is the same class over the pruned
model's parameters, with the same parameter groups and every group's own hyper-parameters
(loaded from the old optimizer's ``state_dict()``). Each per-parameter state tensor that lines
up with its parameter (SGD's momentum, Adam's moments, Rprop's step sizes, or Adafactor's
factored row and column statistics, which broadcast to it) is pruned exactly like the
parameter: it is expanded to the parameter's shape, loaded into a copy of the dense model in
place of the weights, the same pruning history is replayed on that copy, and the broadcast
dimensions are taken back (a factored statistic is a mean over a dimension; where pruning
shrinks that dimension it keeps the dense mean until the optimizer updates it again).
Everything else (step counts) carries over unchanged. State that
does not line up with any one parameter (LBFGS keeps its history as flat vectors over all of
them) cannot be sliced: that parameter's state starts afresh, with a logged warning. Slimming
coefficients are folded into the weights at pruning; their own state is dropped with them.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

import torch
from torch import Tensor, nn

from ..graph import History, copy_model, replay_history
from ..graph.coefficients import detach_coefficients

__all__ = ["carry_optimizer", "carry_scheduler"]

log = logging.getLogger(__name__)


def _lines_up(value: Any, param: Tensor) -> bool:
    """A state tensor shaped like ``param`` up to broadcast (size-1) dimensions."""
    return (
        isinstance(value, Tensor)
        and value.dim() == param.dim()
        and value.dim() > 0
        and all(v in (1, p) for v, p in zip(value.shape, param.shape))
    )


def _sliceable(state: dict[str, Any], param: Tensor) -> bool:
    """Every tensor in a parameter's state lines up with it or is a scalar (a step count)."""
    for value in state.values():
        if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
            return False
        if isinstance(value, Tensor) and value.dim() > 0 and not _lines_up(value, param):
            return False
    return True


def _slice_state(
    dense: nn.Module,
    params: list[nn.Parameter],
    names: dict[int, str],
    values: dict[int, Tensor],
    example_inputs: Any,
    history: History,
) -> dict[str, Tensor]:
    """``{parameter name: pruned tensor}`` of one state key (``values``: param index -> value)."""
    holder = copy_model(dense)
    detach_coefficients(holder)  # values are loaded below; the hooks must go
    held = dict(holder.named_parameters())
    with torch.no_grad():
        for i, p in enumerate(params):
            target = held.get(names[id(p)])
            if target is None:  # a coefficient: not in the pruned model
                continue
            value = values.get(i)
            target.data = (
                value.detach().expand(p.shape).clone() if value is not None else torch.zeros_like(target)
            )
    replay_history(holder, example_inputs, history)
    return {n: p.detach().clone() for n, p in holder.named_parameters()}


def _construct(cls: type, groups: list[dict[str, Any]], defaults: dict[str, Any]) -> Any:
    """``cls(groups, **defaults)`` with only the defaults ``cls`` takes as arguments (AdamW keeps
    ``decoupled_weight_decay`` in its defaults but does not accept it)."""
    accepted = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    if any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        return cls(groups, **defaults)
    return cls(groups, **{k: v for k, v in defaults.items() if k in accepted})


def carry_optimizer(
    dense: nn.Module,
    pruned: nn.Module,
    optimizer: torch.optim.Optimizer,
    example_inputs: Any,
    history: History,
) -> torch.optim.Optimizer:
    """A new optimizer of the same class over ``pruned``'s parameters, with the same groups and
    hyper-parameters and every state tensor sliced to the kept channels."""
    names = {id(p): n for n, p in dense.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    foreign = [p for p in params if id(p) not in names]
    if foreign:
        raise ValueError(
            f"the optimizer holds {len(foreign)} parameters that are not the model's; "
            "carry over an optimizer built on the pruned model's parameters only"
        )
    new_params = dict(pruned.named_parameters())
    # slimming coefficients were folded into the weights: their state goes with them
    index = {i: j for j, i in enumerate(i for i, p in enumerate(params) if names[id(p)] in new_params)}
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [new_params[names[id(p)]] for p in g["params"] if names[id(p)] in new_params],
        }
        for g in optimizer.param_groups
    ]
    carried = _construct(type(optimizer), groups, optimizer.defaults)
    saved = optimizer.state_dict()  # state keyed by each parameter's index in the groups
    state: dict[int, dict[str, Any]] = {i: s for i, s in saved["state"].items() if i in index}
    saved["param_groups"] = [
        {**g, "params": [index[i] for i in g["params"] if i in index]} for g in saved["param_groups"]
    ]
    reset = [i for i, s in state.items() if not _sliceable(s, params[i])]
    if reset:
        log.warning(
            "%s keeps state that does not line up with single parameters (%s); it "
            "starts afresh for %d parameter(s) of the pruned model",
            type(optimizer).__name__,
            sorted({k for i in reset for k in state[i]}),
            len(reset),
        )
    keys = {k for i, s in state.items() if i not in reset for k, v in s.items() if _lines_up(v, params[i])}
    sliced = {
        k: _slice_state(
            dense,
            params,
            names,
            {i: s[k] for i, s in state.items() if i not in reset and _lines_up(s.get(k), params[i])},
            example_inputs,
            history,
        )
        for k in keys
    }
    new_state: dict[int, dict[str, Any]] = {}
    for i, s in state.items():
        if i in reset:
            continue
        name, entry = names[id(params[i])], {}
        for k, v in s.items():
            if k in sliced and _lines_up(v, params[i]):
                full = sliced[k][name]
                for d in range(v.dim()):  # dimensions the state broadcast along
                    if v.shape[d] == 1 and params[i].shape[d] > 1:
                        full = full.narrow(d, 0, 1)
                entry[k] = full.to(v.device, v.dtype).contiguous()
            else:
                entry[k] = v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)
        new_state[index[i]] = entry
    carried.load_state_dict({"state": new_state, "param_groups": saved["param_groups"]})
    carried.defaults = copy.deepcopy(optimizer.defaults)  # loading adds keys to some (LBFGS)
    return carried


def carry_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> Any:
    """The same LR scheduler, at the same step, driving ``optimizer``."""
    carried = copy.copy(scheduler)
    carried.__dict__.update(copy.deepcopy({k: v for k, v in scheduler.__dict__.items() if k != "optimizer"}))
    carried.optimizer = optimizer
    return carried
