"""EB Train as stages that share one run folder: search -> prune -> retrain, plus a dense baseline.

Each stage checkpoints after every epoch (atomically) and, with ``resume=True``, continues from
its last checkpoint or is skipped when already done. Under ``torchrun`` every rank trains its
shard of each batch, every rank draws the same ticket (checked), and only rank 0 writes.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .config import EarlyBirdConfig
from .data import DATASETS, Batches, ImageSet, load_dataset
from .energy import EnergyMeter
from .errors import CheckpointError, NoTicketError
from .flops import count_flops
from .graph import replay_history
from .models import VGG_CFGS, preresnet_block
from .io import load_pruned, safe_load, save_pruned, PRUNED_FORMAT
from .precision import PRECISIONS, SWA, LowPrecision, unwrap_optimizer
from .pruner import EarlyBirdPruner
from .runs import RunDir
from .train import (ARCHS, Loop, Progress, build_model, default_schedule, evaluate, lr_at,
                    maybe_kill)

log = logging.getLogger(__name__)

__all__ = ["RunConfig", "search", "prune", "retrain", "train_dense", "run", "MODES"]

MODES = ("finetune", "scratch")
NUM_CLASSES = {"cifar10-subset": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; validated on creation, saved as ``config.yaml``."""

    save: str = "runs/eb"
    dataset: str = "cifar10-subset"
    data: Optional[str] = None
    download: bool = False
    train_images: Optional[int] = None
    test_images: Optional[int] = None
    arch: str = "vgg"
    depth: Optional[int] = 16
    width: float = 1.0
    num_classes: Optional[int] = None
    epochs: int = 160
    schedule: Optional[Sequence[int]] = None
    gamma: float = 0.1
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 256
    test_batch_size: int = 256
    sparsity_regularization: bool = False
    s: float = 1e-4
    seed: int = 0
    ratios: Sequence[float] = (0.3, 0.5, 0.7)
    epsilon: float = 0.1
    window: int = 5
    criterion: str = "plateau"
    span: Optional[int] = None
    check_every: Optional[int] = None
    full: bool = False
    workers: int = 2
    search_precision: str = "fp32"
    retrain_precision: str = "fp32"
    wl_weight: int = 8
    wl_grad: int = 8
    wl_activate: int = 8
    wl_error: int = 8
    wl_momentum: int = 8
    rounding: str = "stochastic"
    swa: bool = False
    swa_start: Optional[int] = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)
        need(self.dataset in DATASETS, f"unknown dataset {self.dataset!r}; choose from {list(DATASETS)}")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        schedule = list(self.schedule) if self.schedule is not None else default_schedule(self.epochs)
        need(all(0 < s < self.epochs for s in schedule) and schedule == sorted(schedule),
             f"--schedule must be increasing epochs inside (0, {self.epochs}), got {schedule}")
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "ratios", [float(r) for r in self.ratios])
        EarlyBirdConfig(self.ratios, self.epsilon, self.window, self.criterion, self.s,
                        span=self.span)
        for name in ("lr", "batch_size", "test_batch_size"):
            need(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be > 0")
        need(self.momentum >= 0 and self.weight_decay >= 0 and self.gamma > 0,
             "--momentum and --weight-decay must be >= 0, --gamma > 0")
        need(self.width > 0, f"--width must be > 0, got {self.width}")
        need(self.check_every is None or self.check_every >= 1,
             f"--check-every must be >= 1 optimizer steps, got {self.check_every}")
        for name in ("search_precision", "retrain_precision"):
            need(getattr(self, name) in PRECISIONS, f"--{name.replace('_', '-')} must be one of "
                 f"{list(PRECISIONS)}, got {getattr(self, name)!r}")
        self.low_precision()
        if self.swa_start is None:
            object.__setattr__(self, "swa_start", (self.epochs * 7) // 8)
        need(0 <= self.swa_start < self.epochs,
             f"--swa-start must be an epoch in [0, {self.epochs}), got {self.swa_start}")
        for name in ("train_images", "test_images"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1")
        if self.arch == "vgg":
            need(self.depth in VGG_CFGS,
                 f"VGG depth must be one of {sorted(VGG_CFGS)}, got {self.depth}")
        elif self.arch == "preresnet":
            preresnet_block(self.depth or 56)
        elif self.arch not in ARCHS:
            import timm
            need(timm.is_model(self.arch), f"unknown arch {self.arch!r}; choose from "
                 f"{list(ARCHS)} or any timm model name")
        if self.dataset in ("imagenet", "imagefolder"):
            need(self.data is not None, f"--data is required for {self.dataset}")
        if self.data is not None and self.dataset != "cifar10" and self.dataset != "cifar100":
            need(os.path.exists(self.data), f"--data {self.data!r} does not exist")

    def low_precision(self) -> LowPrecision:
        return LowPrecision(self.wl_weight, self.wl_grad, self.wl_activate, self.wl_error,
                            self.wl_momentum, self.rounding)

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in dataclasses.asdict(self).items()}


# ------------------------------------------------------------------------------ environment
@dataclass
class _Env:
    cfg: RunConfig
    train: Any
    test: Any
    size: int
    num_classes: int
    device: torch.device
    rank: int = 0
    world: int = 1
    dir: RunDir = field(init=False)

    def __post_init__(self) -> None:
        self.dir = RunDir(self.cfg.save)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def example(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.size, self.size, device=self.device)

    def model(self, seed_offset: int = 0) -> nn.Module:
        torch.manual_seed(self.cfg.seed + seed_offset)
        model = build_model(self.cfg.arch, self.cfg.depth, self.num_classes, self.cfg.width)
        return model.to(self.device)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup(cfg: RunConfig) -> _Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    train, test, info = load_dataset(cfg.dataset, cfg.data, cfg.download)
    num_classes = cfg.num_classes or NUM_CLASSES.get(cfg.dataset) or len(train.classes)
    train, test = _limit(train, cfg.train_images, cfg.seed), _limit(test, cfg.test_images, cfg.seed)
    per_rank = max(1, cfg.batch_size // world)
    if isinstance(train, ImageSet):
        train_b = Batches(train, per_rank, True, cfg.seed, info["mean"], info["std"],
                          rank=rank, world_size=world)
        test_b = Batches(test, cfg.test_batch_size, False, rank=rank, world_size=world)
    else:
        train_b, test_b = _loaders(train, test, cfg, per_rank, rank, world)
    return _Env(cfg, train_b, test_b, info["size"], num_classes, device, rank, world)


def _limit(data: Any, n: Optional[int], seed: int) -> Any:
    if n is None or n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(data, ImageSet):
        return ImageSet(data.images[idx], data.labels[idx], data.classes)
    return torch.utils.data.Subset(data, idx.tolist())


def _loaders(train: Any, test: Any, cfg: RunConfig, per_rank: int, rank: int, world: int):
    from torch.utils.data import DataLoader, DistributedSampler
    sampler = DistributedSampler(train, world, rank, seed=cfg.seed) if world > 1 else None
    train_l = DataLoader(train, per_rank, shuffle=sampler is None, sampler=sampler,
                         num_workers=cfg.workers, pin_memory=True, drop_last=True,
                         generator=torch.Generator().manual_seed(cfg.seed))
    test_s = DistributedSampler(test, world, rank, shuffle=False) if world > 1 else None
    test_l = DataLoader(test, cfg.test_batch_size, sampler=test_s, num_workers=cfg.workers)
    if sampler is not None:
        train_l.set_epoch = sampler.set_epoch  # type: ignore[attr-defined]
    return train_l, test_l


def _wrap(model: nn.Module, env: _Env) -> nn.Module:
    if env.world == 1:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _optimizer(model: nn.Module, cfg: RunConfig, epoch: int) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr_at(epoch, cfg.lr, cfg.schedule, cfg.gamma),
                           momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _set_lr(opt: torch.optim.Optimizer, cfg: RunConfig, epoch: int) -> float:
    lr = lr_at(epoch, cfg.lr, cfg.schedule, cfg.gamma)
    for group in unwrap_optimizer(opt).param_groups:
        group["lr"] = lr
    return lr


def _same_on_all_ranks(env: _Env, pruner: EarlyBirdPruner) -> None:
    if env.world == 1:
        return
    order = torch.arange(pruner.layout.num_channels, dtype=torch.float64)
    sig = torch.tensor([float(len(pruner.tickets))] + [
        float(pruner.history(r)[-1].double() @ order) for r in pruner.config.ratios])
    gathered = [torch.zeros_like(sig) for _ in range(env.world)]
    dist.all_gather(gathered, sig)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("ranks drew different masks; the replicas' weights have diverged")


# ------------------------------------------------------------------------------------ stages
def _start(env: _Env, stage: str, resume: bool) -> Optional[dict[str, Any]]:
    """The stage's checkpoint when resuming; refuse to overwrite a started stage or to mix
    settings in one run folder. Nothing is written here."""
    ckpt = env.dir.load_checkpoint(stage)
    if ckpt is not None and not resume:
        raise FileExistsError(f"{env.dir.checkpoint(stage)} exists; pass --resume to continue "
                              "that run or choose another --save folder")
    saved = env.dir.read_config()
    if saved is not None and saved != env.cfg.as_dict():
        diff = sorted(k for k in set(saved) | set(env.cfg.as_dict())
                      if saved.get(k) != env.cfg.as_dict().get(k))
        raise ValueError(f"{env.dir.config} was written with other settings ({', '.join(diff)}); "
                         "use the same settings or another --save folder")
    return ckpt


def _fit(env: _Env, stage: str, model: nn.Module, first_epoch: int, ckpt: Optional[dict],
         precision: str, regularize: Optional[Callable[[], None]] = None,
         before_epoch: Optional[Callable[[int], bool]] = None,
         on_check: Optional[Callable[[int], bool]] = None,
         extra: Callable[[], dict] = dict, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Train ``model`` from ``first_epoch`` to ``cfg.epochs`` at ``precision``, checkpointing
    each epoch.

    ``before_epoch(epoch) -> stop`` runs before each epoch (and once after the last);
    ``on_check(step) -> stop`` every ``check_every`` steps. Returns the final record.
    """
    cfg = env.cfg
    epoch, step, best = first_epoch, 0, 0.0
    opt = _optimizer(model, cfg, epoch)
    hooks: list = []
    if precision == "q8":
        opt = cfg.low_precision().optimizer(opt)
        hooks = cfg.low_precision().quantize_activations(model)
    swa = SWA(model) if cfg.swa else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        unwrap_optimizer(opt).load_state_dict(ckpt["optimizer"])
        epoch, step, best = int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt["best_acc"])
        torch.set_rng_state(ckpt["rng"])
        if swa is not None and "swa" in ckpt:
            swa.load_state_dict(ckpt["swa"])
    if env.main and env.dir.read_config() is None:
        env.dir.write_config(cfg.as_dict())
    wrapped = _wrap(model, env)
    meter = EnergyMeter()
    loop = Loop(wrapped, opt, env.train, stage, regularize, cfg.check_every, on_check, progress,
                env.device, precision)
    test_acc = float(ckpt["test_acc"]) if ckpt is not None else float("nan")

    def state(done: bool) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": unwrap_optimizer(opt).state_dict(),
                "epoch": epoch, "step": step, "best_acc": best, "test_acc": test_acc,
                "done": done, "rng": torch.get_rng_state(), "precision": precision,
                **({"swa": swa.state_dict()} if swa is not None else {}), **extra()}

    stop = False
    while True:
        if before_epoch is not None and before_epoch(epoch):
            break
        if epoch >= cfg.epochs or stop:
            break
        lr = _set_lr(opt, cfg, epoch)
        started, joules0 = time.perf_counter(), meter.read()
        stats, step, stop = loop.epoch(epoch, step)
        trained, joules1 = time.perf_counter(), meter.read()
        test_acc, eval_samples = evaluate(wrapped, env.test, env.device, precision)
        stats.update(train_s=trained - started, eval_s=time.perf_counter() - trained,
                     eval_samples=eval_samples, precision=precision)
        if joules0 is not None:
            stats.update(train_j=joules1 - joules0, eval_j=meter.read() - joules1,
                         energy_sources=meter.sources)
        best = max(best, test_acc)
        epoch += 1
        if swa is not None and epoch > cfg.swa_start:
            swa.update()
        if env.main:
            env.dir.append_log({"stage": stage, "epoch": epoch - 1, "step": step, "lr": lr,
                                "test_acc": test_acc, **stats})
            env.dir.save_checkpoint(stage, state(False))
        log.info("%s epoch %d: loss %.4f, train %.2f%%, test %.2f%%", stage, epoch - 1,
                 stats["loss"], stats["train_acc"], test_acc)
    if swa is not None and swa.count and epoch >= cfg.epochs:
        started = time.perf_counter()
        swa.apply(env.train)
        test_acc, eval_samples = evaluate(wrapped, env.test, env.device, precision)
        best = max(best, test_acc)
        if env.main:
            env.dir.append_log({"stage": stage, "swa": swa.count, "test_acc": test_acc,
                                "swa_s": time.perf_counter() - started})
    for handle in hooks:
        handle.remove()
    record = state(True)
    if env.main:
        env.dir.save_checkpoint(stage, record)
    env.barrier()
    return record


def _steps_per_epoch(env: _Env) -> int:
    return len(env.train)


def search(cfg: RunConfig, *, resume: bool = False, progress: Optional[Progress] = None,
           env: Optional[_Env] = None) -> dict[str, Any]:
    """Dense training with slimming and early-bird checks; stops once every ratio has a ticket
    (or at ``cfg.epochs``; ``cfg.full`` trains on to ``cfg.epochs`` regardless)."""
    standalone, env = env is None, env or _setup(cfg)
    ckpt = _start(env, "search", resume)
    if ckpt is not None and ckpt.get("done"):
        return _search_summary(env, ckpt)
    model = env.model()
    pruner = _pruner(model, env)
    if ckpt is not None:
        pruner.load_state_dict(ckpt["pruner"])
    all_drawn = lambda: len(pruner.tickets) == len(cfg.ratios) and not cfg.full  # noqa: E731

    def check(iteration: int) -> bool:
        drawn = pruner.step(iteration=iteration)
        _same_on_all_ranks(env, pruner)
        if env.main:
            step = iteration if cfg.check_every else iteration * _steps_per_epoch(env)
            env.dir.append_log({"stage": "search", "check": len(pruner.iterations) - 1,
                                "iteration": iteration, "step": step, "drawn": drawn,
                                "distances": {f"{r:g}": (pruner.distances(r) or [None])[-1]
                                              for r in cfg.ratios}})
        return all_drawn()

    before = None if cfg.check_every else check
    on_check = check if cfg.check_every else None
    record = _fit(env, "search", model, 0, ckpt, cfg.search_precision,
                  pruner.regularize if cfg.sparsity_regularization else None,
                  before, on_check, lambda: {"pruner": pruner.state_dict()}, progress)
    if standalone:
        _write_ledger(env)
    return _search_summary(env, record)


def _pruner(model: nn.Module, env: _Env) -> EarlyBirdPruner:
    cfg = env.cfg
    return EarlyBirdPruner(model, env.example(), cfg.ratios, epsilon=cfg.epsilon,
                           window=cfg.window, criterion=cfg.criterion, sparsity=cfg.s,
                           span=cfg.span)


def _draw_epoch(env: _Env, iteration: int) -> float:
    return iteration / _steps_per_epoch(env) if env.cfg.check_every else float(iteration)


def _search_summary(env: _Env, record: dict[str, Any]) -> dict[str, Any]:
    tickets = {}
    iterations = record["pruner"]["iterations"].tolist()
    for r, t in record["pruner"]["tickets"].items():
        it = iterations[int(t["check"])]
        tickets[r] = {"check": int(t["check"]), "iteration": it, "draw_epoch": _draw_epoch(env, it)}
    return {"epochs": int(record["epoch"]), "steps": int(record["step"]),
            "test_acc": float(record["test_acc"]), "tickets": tickets}


def _load_search(env: _Env) -> tuple[nn.Module, EarlyBirdPruner, dict]:
    ckpt = env.dir.load_checkpoint("search")
    if ckpt is None:
        raise FileNotFoundError(f"no search checkpoint in {env.dir.root}; run `earlybird search "
                                f"--save {env.dir.root}` first")
    model = env.model()
    pruner = _pruner(model, env)
    try:
        pruner.load_state_dict(ckpt["pruner"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{env.dir.checkpoint('search')} does not fit --arch "
                              f"{env.cfg.arch} --depth {env.cfg.depth}: {exc}") from exc
    return model, pruner, ckpt


def prune(cfg: RunConfig, ratio: float, *, force: bool = False,
          env: Optional[_Env] = None) -> dict[str, Any]:
    """Physically prune the search's ticket for ``ratio`` into ``pruned-<ratio>.pt``."""
    env = env or _setup(cfg)
    model, pruner, ckpt = _load_search(env)
    ratio = float(ratio)
    if ratio not in pruner.tickets and not force:
        raise NoTicketError(f"the search in {env.dir.root} has no ticket for ratio {ratio} "
                            f"(tickets: {sorted(pruner.tickets)}); pass --force to prune by the "
                            "last mask")
    small = pruner.prune(ratio, force=force)
    ticket = pruner.tickets.get(ratio)
    iteration = ticket.iteration if ticket else pruner.iterations[-1] if pruner.iterations else 0
    dense_cost, small_cost = count_flops(model, env.example()), count_flops(small, env.example())
    info = {"ratio": ratio, "draw_epoch": _draw_epoch(env, iteration), "forced": ticket is None,
            "params": small_cost.params, "flops": small_cost.flops,
            "dense_params": dense_cost.params, "dense_flops": dense_cost.flops}
    maybe_kill("prune")
    if env.main:
        save_pruned(small, env.dir.pruned(ratio), **info)
    env.barrier()
    return info


def _pruned_info(env: _Env, ratio: float) -> dict[str, Any]:
    path = env.dir.pruned(ratio)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `earlybird prune --ratio {ratio:g} "
                                f"--save {env.dir.root}` first")
    return safe_load(path, PRUNED_FORMAT)


def retrain(cfg: RunConfig, ratio: float, mode: str = "finetune", *, resume: bool = False,
            start_epoch: Optional[int] = None, progress: Optional[Progress] = None,
            env: Optional[_Env] = None) -> dict[str, Any]:
    """Train the pruned model: ``finetune`` from the ticket's weights over the epochs left after
    its draw point, or ``scratch`` (re-initialised) over the full schedule."""
    if mode not in MODES:
        raise ValueError(f"unknown retrain mode {mode!r}; choose from {list(MODES)}")
    standalone, env = env is None, env or _setup(cfg)
    ratio = float(ratio)
    saved = _pruned_info(env, ratio)
    stage = RunDir.retrain_stage(ratio, mode)
    ckpt = _start(env, stage, resume)
    if mode == "finetune":
        small = load_pruned(env.dir.pruned(ratio), env.model())
        first = int(math.floor(saved["extra"]["draw_epoch"])) if start_epoch is None else start_epoch
    else:
        small = replay_history(env.model(seed_offset=1), env.example(), saved["history"])
        first = 0 if start_epoch is None else start_epoch
    if mode == "finetune" and start_epoch is None and first >= cfg.epochs:
        raise ValueError(f"the ticket for ratio {ratio:g} was drawn at the end of the schedule "
                         f"(epoch {first} of {cfg.epochs}): nothing is left to finetune; use "
                         "--mode scratch, --start-epoch, or a longer schedule")
    if not 0 <= first < cfg.epochs:
        raise ValueError(f"--start-epoch must be in [0, {cfg.epochs}), got {first}")
    regularize = None
    if cfg.sparsity_regularization:
        regularize = EarlyBirdPruner(small, env.example(), [0.5], sparsity=cfg.s).regularize
    if ckpt is None or not ckpt.get("done"):
        ckpt = _fit(env, stage, small, first, ckpt, cfg.retrain_precision, regularize,
                    progress=progress)
    else:
        small.load_state_dict(ckpt["model"])
    if standalone:
        _write_ledger(env)
    cost = count_flops(small, env.example())
    return {"ratio": ratio, "mode": mode, "start_epoch": first, "test_acc": float(ckpt["test_acc"]),
            "best_acc": float(ckpt["best_acc"]), "params": cost.params, "flops": cost.flops,
            "draw_epoch": saved["extra"]["draw_epoch"]}


def train_dense(cfg: RunConfig, *, resume: bool = False, progress: Optional[Progress] = None,
                env: Optional[_Env] = None) -> dict[str, Any]:
    """The unpruned baseline: the full schedule, slimming only if asked."""
    standalone, env = env is None, env or _setup(cfg)
    ckpt = _start(env, "train", resume)
    model = env.model()
    regularize = None
    if cfg.sparsity_regularization:
        regularize = EarlyBirdPruner(model, env.example(), [0.5], sparsity=cfg.s).regularize
    if ckpt is None or not ckpt.get("done"):
        ckpt = _fit(env, "train", model, 0, ckpt, cfg.search_precision, regularize,
                    progress=progress)
    if standalone:
        _write_ledger(env)
    cost = count_flops(model, env.example())
    return {"test_acc": float(ckpt["test_acc"]), "best_acc": float(ckpt["best_acc"]),
            "params": cost.params, "flops": cost.flops, "epochs": int(ckpt["epoch"])}


def run(cfg: RunConfig, mode: str = "finetune", *, resume: bool = False,
        progress: Optional[Progress] = None) -> dict[str, Any]:
    """search -> prune -> retrain for every ratio that drew a ticket; writes ``summary.json``."""
    if mode not in MODES:
        raise ValueError(f"unknown retrain mode {mode!r}; choose from {list(MODES)}")
    env = _setup(cfg)
    found = search(cfg, resume=resume, progress=progress, env=env)
    rows, late = [], []
    for key in sorted(found["tickets"], key=float):
        ratio = float(key)
        if not (resume and env.dir.pruned(ratio).exists()):
            info = prune(cfg, ratio, env=env)
        else:
            info = _pruned_info(env, ratio)["extra"]
        if mode == "finetune" and math.floor(info["draw_epoch"]) >= cfg.epochs:
            log.warning("the ticket for ratio %g was drawn at the end of the schedule: nothing "
                        "is left to finetune, not retrained", ratio)
            late.append(ratio)
            continue
        rows.append(retrain(cfg, ratio, mode, resume=resume, progress=progress, env=env))
    dense, _, _ = _load_search(env)
    dense_cost = count_flops(dense, env.example())
    summary = {"search": found, "dense": {"params": dense_cost.params, "flops": dense_cost.flops,
                                          "test_acc": found["test_acc"]},
               "retrain": rows, "missing": [r for r in cfg.ratios if f"{r}" not in found["tickets"]],
               "drawn_at_the_end": late}
    if env.main:
        env.dir.write_json(env.dir.summary, summary)
    _write_ledger(env)
    return summary


def _write_ledger(env: _Env) -> None:
    if env.main:
        from .ledger import write_ledger
        write_ledger(env.dir.root)
