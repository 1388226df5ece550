"""Carry an optimizer and its LR scheduler over to a pruned model, state sliced, not reset.

Each per-parameter state tensor shaped like its parameter (SGD's momentum, Adam's moments) is
pruned exactly like the parameter: it is loaded into a copy of the dense model in place of the
weights and the same pruning history is replayed on that copy. Everything else in the state
(step counts) and every hyper-parameter carries over unchanged.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .graph import History, copy_model, replay_history

__all__ = ["carry_optimizer", "carry_scheduler"]


def _slice_state(dense: nn.Module, names: dict[int, str], optimizer: torch.optim.Optimizer,
                 key: str, example_inputs: Any, history: History) -> dict[str, torch.Tensor]:
    holder = copy_model(dense)
    params = dict(holder.named_parameters())
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                value = optimizer.state.get(p, {}).get(key)
                target = params[names[id(p)]]
                target.copy_(value if isinstance(value, torch.Tensor) and value.shape == p.shape
                             else torch.zeros_like(target))
    replay_history(holder, example_inputs, history)
    return {n: p.detach().clone() for n, p in holder.named_parameters()}


def carry_optimizer(dense: nn.Module, pruned: nn.Module, optimizer: torch.optim.Optimizer,
                    example_inputs: Any, history: History) -> torch.optim.Optimizer:
    """A new optimizer of the same class over ``pruned``'s parameters, with the same groups and
    hyper-parameters and every state tensor sliced to the kept channels."""
    names = {id(p): n for n, p in dense.named_parameters()}
    foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in names]
    if foreign:
        raise ValueError(f"the optimizer holds {len(foreign)} parameters that are not the model's; "
                         "carry over an optimizer built on the pruned model's parameters only")
    new_params = dict(pruned.named_parameters())
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [new_params[names[id(p)]] for p in g["params"]]}
              for g in optimizer.param_groups]
    carried = type(optimizer)(groups, **optimizer.defaults)
    keys = {k for state in optimizer.state.values() for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.dim() > 0}
    sliced = {k: _slice_state(dense, names, optimizer, k, example_inputs, history) for k in keys}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p not in optimizer.state:
                continue
            name = names[id(p)]
            state = {}
            for k, v in optimizer.state[p].items():
                if k in sliced and isinstance(v, torch.Tensor) and v.shape == p.shape:
                    state[k] = sliced[k][name].to(v.device, v.dtype)
                else:
                    state[k] = v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            carried.state[new_params[name]] = state
    return carried


def carry_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> Any:
    """The same LR scheduler, at the same step, driving ``optimizer``."""
    carried = copy.copy(scheduler)
    carried.__dict__.update(copy.deepcopy({k: v for k, v in scheduler.__dict__.items()
                                           if k != "optimizer"}))
    carried.optimizer = optimizer
    return carried
