"""EB Train as stages that share one run folder: search -> prune -> retrain, plus a dense baseline.

Each stage checkpoints after every epoch (atomically) and, with ``resume=True``, continues from
its last checkpoint or is skipped when already done. Under ``torchrun`` every rank trains its
shard of each batch, every rank draws the same ticket (checked), and only rank 0 writes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, Optional, cast

import torch
import torch.distributed as dist
from torch import nn

from ..training import distributed
from ..errors import CheckpointError, NoTicketError
from ..costs.flops import count_flops
from ..graph import replay_history
from ..run.io import PRUNED_FORMAT, load_pruned, safe_load, save_pruned
from ..search.pruner import EarlyBirdPruner
from ..run.runs import RunDir
from ..faults import maybe_kill
from ..training.trainer import Progress
from .config import RunConfig
from .env import RunEnv, setup
from .stage import Stage

log = logging.getLogger(__name__)

__all__ = ["search", "prune", "retrain", "train_dense", "run", "MODES"]

MODES = ("finetune", "scratch")


def _same_on_all_ranks(env: RunEnv, pruner: EarlyBirdPruner) -> None:
    if env.dist.world == 1:
        return
    order = torch.arange(pruner.layout.num_channels, dtype=torch.float64)
    sig = torch.tensor(
        [float(len(pruner.tickets))]
        + [float(pruner.history(r)[-1].double() @ order) for r in pruner.config.ratios]
    )
    gathered = [torch.zeros_like(sig) for _ in range(env.dist.world)]
    dist.all_gather(gathered, sig)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("ranks drew different masks; the replicas' weights have diverged")


def search(
    cfg: RunConfig, *, resume: bool = False, progress: Optional[Progress] = None, env: Optional[RunEnv] = None
) -> dict[str, Any]:
    """Dense training with slimming and early-bird checks; stops once every ratio has a ticket
    (or at the schedule's end; ``cfg.full`` trains on to the end regardless)."""
    standalone, env = env is None, env or setup(cfg)
    stage = Stage(env, "search", resume)
    if stage.done:
        return _search_summary(env, cast(dict, stage.ckpt))
    model = env.model()
    pruner = _pruner(model, env)
    if stage.ckpt is not None:
        pruner.load_state_dict(stage.ckpt["pruner"])
    ratios = cfg.earlybird.ratios

    def check(iteration: int) -> bool:
        drawn = pruner.step(iteration=iteration)
        _same_on_all_ranks(env, pruner)
        step = iteration if cfg.check_every else iteration * env.steps_per_epoch
        stage.log(
            {
                "check": len(pruner.iterations) - 1,
                "iteration": iteration,
                "step": step,
                "drawn": drawn,
                "distances": {
                    f"{r:g}": (pruner.distances(r) or [None])[-1]  # type: ignore[list-item]
                    for r in ratios
                },
            }
        )
        return len(pruner.tickets) == len(ratios) and not cfg.full

    record = stage.fit(
        model,
        0,
        cfg.precision.search_precision,
        pruner.regularize if cfg.sparsity_regularization else None,
        None if cfg.check_every else check,
        check if cfg.check_every else None,
        lambda: {"pruner": pruner.state_dict()},
        progress,
    )
    if standalone:
        _write_ledger(env)
    return _search_summary(env, record)


def _pruner(model: nn.Module, env: RunEnv) -> EarlyBirdPruner:
    """The search's pruner; its schedule (``total``) in the counter the checks pass: epochs, or
    optimizer steps with ``check_every``."""
    cfg = env.cfg
    total = cfg.earlybird.total or cfg.recipe.epochs * (env.steps_per_epoch if cfg.check_every else 1)
    return EarlyBirdPruner(model, env.example(), config=replace(cfg.earlybird, total=total))


def _regularizer(model: nn.Module, env: RunEnv) -> Optional[Any]:
    """The slimming penalty of a model trained outside the search (``sparsity_regularization``)."""
    if not env.cfg.sparsity_regularization:
        return None
    return EarlyBirdPruner(model, env.example(), [0.5], sparsity=env.cfg.earlybird.sparsity).regularize


def _draw_epoch(env: RunEnv, iteration: int) -> float:
    return iteration / env.steps_per_epoch if env.cfg.check_every else float(iteration)


def _search_summary(env: RunEnv, record: dict[str, Any]) -> dict[str, Any]:
    tickets = {}
    iterations = record["pruner"]["iterations"].tolist()
    for r, t in record["pruner"]["tickets"].items():
        it = iterations[int(t["check"])]
        tickets[r] = {"check": int(t["check"]), "iteration": it, "draw_epoch": _draw_epoch(env, it)}
    return {
        "epochs": int(record["epoch"]),
        "steps": int(record["step"]),
        "test_acc": float(record["test_acc"]),
        "tickets": tickets,
    }


def _load_search(env: RunEnv) -> tuple[nn.Module, EarlyBirdPruner, dict]:
    ckpt = env.dir.load_checkpoint("search")
    if ckpt is None:
        raise FileNotFoundError(
            f"no search checkpoint in {env.dir.root}; run `earlybird search --save {env.dir.root}` first"
        )
    model = env.model()
    pruner = _pruner(model, env)
    try:
        pruner.load_state_dict(ckpt["pruner"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{env.dir.checkpoint('search')} does not fit --arch "
            f"{env.cfg.arch} --depth {env.cfg.depth}: {exc}"
        ) from exc
    return model, pruner, ckpt


def prune(
    cfg: RunConfig, ratio: float, *, force: bool = False, env: Optional[RunEnv] = None
) -> dict[str, Any]:
    """Physically prune the search's ticket for ``ratio`` into ``pruned-<ratio>.pt``."""
    env = env or setup(cfg)
    model, pruner, ckpt = _load_search(env)
    ratio = float(ratio)
    if ratio not in pruner.tickets and not force:
        raise NoTicketError(
            f"the search in {env.dir.root} has no ticket for ratio {ratio} "
            f"(tickets: {sorted(pruner.tickets)}); pass --force to prune by the "
            "last mask"
        )
    small = pruner.prune(ratio, force=force)
    ticket = pruner.tickets.get(ratio)
    iteration = ticket.iteration if ticket else pruner.iterations[-1] if pruner.iterations else 0
    dense_cost, small_cost = count_flops(model, env.example()), count_flops(small, env.example())
    info = {
        "ratio": ratio,
        "draw_epoch": _draw_epoch(env, iteration),
        "forced": ticket is None,
        "params": small_cost.params,
        "flops": small_cost.flops,
        "dense_params": dense_cost.params,
        "dense_flops": dense_cost.flops,
    }
    maybe_kill("prune")
    if env.main:
        save_pruned(small, env.dir.pruned(ratio), **info)
    distributed.barrier()
    return info


def _pruned_info(env: RunEnv, ratio: float) -> dict[str, Any]:
    path = env.dir.pruned(ratio)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; run `earlybird prune --ratio {ratio:g} --save {env.dir.root}` first"
        )
    return safe_load(path, PRUNED_FORMAT)


def retrain(
    cfg: RunConfig,
    ratio: float,
    mode: str = "finetune",
    *,
    resume: bool = False,
    start_epoch: Optional[int] = None,
    progress: Optional[Progress] = None,
    env: Optional[RunEnv] = None,
) -> dict[str, Any]:
    """Train the pruned model: ``finetune`` from the ticket's weights over the epochs left after
    its draw point, or ``scratch`` (re-initialised) over the full schedule."""
    if mode not in MODES:
        raise ValueError(f"unknown retrain mode {mode!r}; choose from {list(MODES)}")
    standalone, env = env is None, env or setup(cfg)
    ratio, epochs = float(ratio), cfg.recipe.epochs
    saved = _pruned_info(env, ratio)
    stage = Stage(env, RunDir.retrain_stage(ratio, mode), resume)
    if mode == "finetune":
        small = load_pruned(env.dir.pruned(ratio), env.model())
        first = int(math.floor(saved["extra"]["draw_epoch"])) if start_epoch is None else start_epoch
    else:
        small = replay_history(env.model(seed_offset=1), env.example(), saved["history"])
        first = 0 if start_epoch is None else start_epoch
    if mode == "finetune" and start_epoch is None and first >= epochs:
        raise ValueError(
            f"the ticket for ratio {ratio:g} was drawn at the end of the schedule "
            f"(epoch {first} of {epochs}): nothing is left to finetune; use "
            "--mode scratch, --start-epoch, or a longer schedule"
        )
    if not 0 <= first < epochs:
        raise ValueError(f"--start-epoch must be in [0, {epochs}), got {first}")
    if stage.done:
        ckpt = cast(dict, stage.ckpt)
        small.load_state_dict(ckpt["model"])
    else:
        ckpt = stage.fit(
            small, first, cfg.precision.retrain_precision, _regularizer(small, env), progress=progress
        )
    if standalone:
        _write_ledger(env)
    cost = count_flops(small, env.example())
    return {
        "ratio": ratio,
        "mode": mode,
        "start_epoch": first,
        "test_acc": float(ckpt["test_acc"]),
        "best_acc": float(ckpt["best_acc"]),
        "params": cost.params,
        "flops": cost.flops,
        "draw_epoch": saved["extra"]["draw_epoch"],
    }


def train_dense(
    cfg: RunConfig, *, resume: bool = False, progress: Optional[Progress] = None, env: Optional[RunEnv] = None
) -> dict[str, Any]:
    """The unpruned baseline: the full schedule, slimming only if asked."""
    standalone, env = env is None, env or setup(cfg)
    stage = Stage(env, "train", resume)
    model = env.model()
    ckpt = (
        cast(dict, stage.ckpt)
        if stage.done
        else stage.fit(model, 0, cfg.precision.search_precision, _regularizer(model, env), progress=progress)
    )
    if standalone:
        _write_ledger(env)
    cost = count_flops(model, env.example())
    return {
        "test_acc": float(ckpt["test_acc"]),
        "best_acc": float(ckpt["best_acc"]),
        "params": cost.params,
        "flops": cost.flops,
        "epochs": int(ckpt["epoch"]),
    }


def run(
    cfg: RunConfig, mode: str = "finetune", *, resume: bool = False, progress: Optional[Progress] = None
) -> dict[str, Any]:
    """search -> prune -> retrain for every ratio that drew a ticket; writes ``summary.json``."""
    if mode not in MODES:
        raise ValueError(f"unknown retrain mode {mode!r}; choose from {list(MODES)}")
    env = setup(cfg)
    found = search(cfg, resume=resume, progress=progress, env=env)
    rows, late = [], []
    for key in sorted(found["tickets"], key=float):
        ratio = float(key)
        if not (resume and env.dir.pruned(ratio).exists()):
            info = prune(cfg, ratio, env=env)
        else:
            info = _pruned_info(env, ratio)["extra"]
        if mode == "finetune" and math.floor(info["draw_epoch"]) >= cfg.recipe.epochs:
            log.warning(
                "the ticket for ratio %g was drawn at the end of the schedule: nothing "
                "is left to finetune, not retrained",
                ratio,
            )
            late.append(ratio)
            continue
        rows.append(retrain(cfg, ratio, mode, resume=resume, progress=progress, env=env))
    dense, _, _ = _load_search(env)
    dense_cost = count_flops(dense, env.example())
    summary = {
        "search": found,
        "dense": {"params": dense_cost.params, "flops": dense_cost.flops, "test_acc": found["test_acc"]},
        "retrain": rows,
        "missing": [r for r in cfg.earlybird.ratios if f"{r}" not in found["tickets"]],
        "drawn_at_the_end": late,
    }
    if env.main:
        env.dir.write_json(env.dir.summary, summary)
    _write_ledger(env)
    return summary


def _write_ledger(env: RunEnv) -> None:
    if env.main:
        from ..costs.ledger import write_ledger

        write_ledger(env.dir.root)
