"""Pieces the benchmark scripts share: the packed CIFAR-10 data, a setting, training, a cache.

The benchmarks train on ``benchmarks/data/cifar10-25k.npz``: 25,000 training images (2,500 per
class) and the full 10,000-image CIFAR-10 test set, packed from the CIFAR-10 JPEG archive by
``earlybird.data.pack_images(archive, out, train_per_class=2500, test_per_class=1000, seed=0)``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

if __package__ in (None, ""):                      # imported from a script in benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from earlybird.data import Batches, ImageSet, load_dataset, load_packed  # noqa: E402
from earlybird.train import Loop, build_model, evaluate, lr_at  # noqa: E402

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "cifar10-25k.npz"


@dataclass(frozen=True)
class Setting:
    """A CPU-sized training setting: model, data and the step learning-rate schedule."""

    arch: str = "vgg"
    depth: int = 11
    width: float = 0.25
    epochs: int = 20
    schedule: tuple[int, ...] = (10, 15)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 125
    s: float = 1e-4
    data: str = str(DATA)
    train_images: Optional[int] = None
    test_images: Optional[int] = None
    dataset: str = "packed"        # packed (.npz), cifar10, cifar100, imagenet, synthetic
    num_classes: int = 10
    image_size: int = 32
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k != "data"}


@dataclass
class Data:
    train: Batches
    test: Batches
    steps_per_epoch: int = field(init=False)

    def __post_init__(self) -> None:
        self.steps_per_epoch = len(self.train)


DATASETS = ("packed", "cifar10", "cifar100", "imagenet", "synthetic")
WORKERS = min(8, os.cpu_count() or 1)          # DataLoader processes per rank (ImageNet)


@dataclass(frozen=True)
class Dist:
    """This process's place under ``torchrun`` (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> Dist:
    """Rank, world size and local rank from torchrun's environment variables."""
    return Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(setting: Setting) -> Dist:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU); a no-op for one process."""
    env = dist_env()
    if env.world > 1 and not torch.distributed.is_initialized():
        if setting.device == "cuda":
            torch.cuda.set_device(env.local_rank)
        torch.distributed.init_process_group("nccl" if setting.device == "cuda" else "gloo")
    return env


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if _distributed():
        torch.distributed.barrier()


def from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process)."""
    if not _distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def summed(n: int) -> int:
    """``n`` summed over ranks (``n`` in one process)."""
    if not _distributed():
        return n
    t = torch.tensor([n], dtype=torch.long)
    torch.distributed.all_reduce(t)
    return int(t)


def device_of(setting: Setting) -> torch.device:
    """The setting's device; under torchrun on CUDA, this rank's GPU."""
    if setting.device == "cuda":
        return torch.device("cuda", dist_env().local_rank)
    return torch.device(setting.device)


def load_data(setting: Setting, seed: int) -> Data:
    """Training batches shuffled and augmented by ``seed``; the test set in order.

    ``packed``: a file written by ``pack_images`` (the shipped data); ``cifar10``/``cifar100``:
    torchvision's sets under ``setting.data``; ``imagenet``: ``train/`` and ``val/`` folders
    under ``setting.data`` (DataLoaders with up to 8 worker processes); ``synthetic``: random images of
    ``image_size`` (``train_images``/``test_images`` of them) for dry runs.

    Under torchrun each rank gets ``batch_size / world`` images of every global batch (the
    epoch's one permutation, dealt out by rank) and every ``world``-th test image; losses and
    accuracies are summed over ranks by ``earlybird.train``.
    """
    env = dist_env()
    if setting.batch_size % env.world:
        raise ValueError(f"batch_size {setting.batch_size} must be a multiple of the number of "
                         f"processes ({env.world})")
    if setting.dataset == "imagenet":
        return _imagenet(setting, seed, env)
    if setting.dataset == "synthetic":
        g = torch.Generator().manual_seed(seed)
        size, k = setting.image_size, setting.num_classes

        def fake(n: int) -> ImageSet:
            return ImageSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                            torch.randint(0, k, (n,), generator=g), [str(i) for i in range(k)])
        sets = {"train": fake(setting.train_images or 8), "test": fake(setting.test_images or 8)}
    elif setting.dataset == "packed":
        sets = load_packed(setting.data)
    elif setting.dataset in ("cifar10", "cifar100"):
        train, test, _ = load_dataset(setting.dataset, setting.data)
        sets = {"train": train, "test": test}
    else:
        raise ValueError(f"unknown dataset {setting.dataset!r}; choose from {list(DATASETS)}")
    train = _subset(sets["train"], setting.train_images)
    test = _subset(sets["test"], setting.test_images)
    return Data(Batches(train, setting.batch_size // env.world, True, seed, drop_last=True,
                        rank=env.rank, world_size=env.world),
                Batches(test, 500, False, rank=env.rank, world_size=env.world))


def _imagenet(setting: Setting, seed: int, env: Dist) -> Data:
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    train, test, _ = load_dataset("imagenet", setting.data)
    per_rank = setting.batch_size // env.world
    if env.world == 1:
        train_l = DataLoader(train, per_rank, shuffle=True, num_workers=WORKERS, pin_memory=True,
                             drop_last=True, persistent_workers=True,
                             generator=torch.Generator().manual_seed(seed))
    else:
        sampler = DistributedSampler(train, env.world, env.rank, shuffle=True, seed=seed,
                                     drop_last=True)
        train_l = DataLoader(train, per_rank, sampler=sampler, num_workers=WORKERS, pin_memory=True,
                             drop_last=True, persistent_workers=True)
        train_l.set_epoch = sampler.set_epoch  # type: ignore[attr-defined]
    shard = Subset(test, range(env.rank, len(test), env.world))   # every image exactly once
    return Data(train_l, DataLoader(shard, 250, num_workers=WORKERS, pin_memory=True))


def _subset(images: ImageSet, n: Optional[int]) -> ImageSet:
    """``n`` images drawn at random (always the same ones; the packed file is sorted by class)."""
    if n is None or n >= len(images):
        return images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return ImageSet(images.images[idx], images.labels[idx], images.classes)


def build(setting: Setting, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(setting.arch, setting.depth, setting.num_classes, setting.width)


def example(setting: Optional[Setting] = None) -> torch.Tensor:
    size = 32 if setting is None else setting.image_size
    return torch.zeros(1, 3, size, size)


def train(model: nn.Module, setting: Setting, data: Data, first: int, last: int, *,
          regularize: Optional[Callable[[], None]] = None, check_every: Optional[int] = None,
          on_check: Optional[Callable[[int], bool]] = None,
          after_epoch: Optional[Callable[[int], None]] = None,
          eval_every_epoch: bool = False, precision: str = "fp32",
          weight_masks: Optional[dict[nn.Parameter, torch.Tensor]] = None) -> dict[str, Any]:
    """SGD epochs ``first .. last - 1`` of the setting's schedule; returns the final test
    accuracy (and each epoch's with ``eval_every_epoch``), the training time per epoch and the
    images trained on per epoch. With ``first == last`` it only evaluates.

    ``on_check(step)`` runs every ``check_every`` optimizer steps (global step count), and
    ``after_epoch(epoch)`` after each epoch. ``precision="q8"`` trains and evaluates with
    qtorch's 8-bit block floating point (weights, gradients, momentum, activations, errors).
    ``weight_masks`` ({parameter: 0/1 mask}) zeroes the masked weights once and their gradients
    at every step, so with SGD they stay exactly zero (unstructured tickets).

    Under torchrun the model trains inside ``DistributedDataParallel`` and after every epoch
    takes rank 0's BatchNorm statistics, so all ranks hold the same network; the images per
    epoch are summed over ranks.
    """
    device = device_of(setting)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=setting.momentum,
                          weight_decay=setting.weight_decay)
    env = dist_env()
    net = model
    if env.world > 1:               # gradients averaged over ranks; hooks stay on ``model``
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    hooks: list = []
    if precision == "q8":
        from earlybird.precision import LowPrecision
        opt = LowPrecision().optimizer(opt)
        hooks = LowPrecision().quantize_activations(model)
    masks = {p: m.to(device, p.dtype) for p, m in (weight_masks or {}).items()}
    with torch.no_grad():
        for p, m in masks.items():
            p.mul_(m)

    def masked() -> None:
        if regularize is not None:
            regularize()
        for p, m in masks.items():
            if p.grad is not None:
                p.grad.mul_(m)

    loop = Loop(net, opt, data.train, "train", masked if masks else regularize, check_every,
                on_check, device=device)
    step, acc = first * data.steps_per_epoch, float("nan")
    accs, epoch_s, images = [], [], 0
    for epoch in range(first, last):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, setting.lr, setting.schedule)
        started = time.perf_counter()
        stats, step, _ = loop.epoch(epoch, step)
        if env.world > 1:           # BatchNorm statistics as rank 0 has them, on every rank
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        epoch_s.append(time.perf_counter() - started)
        images = int(stats["samples"])
        if eval_every_epoch or epoch == last - 1:
            acc, _ = evaluate(model, data.test, device)
            accs.append(acc)
        if after_epoch is not None:
            after_epoch(epoch)
    if first >= last:
        acc, _ = evaluate(model, data.test, device)
    for h in hooks:
        h.remove()
    return {"test_acc": acc, "accs": accs, "train_s": sum(epoch_s), "epoch_s": epoch_s,
            "images_per_epoch": images}


def median_s(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"mean ± std"`` (sample std; 0 for one value), ``"-"`` for none."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def provenance(meta: dict[str, Any]) -> list[str]:
    """The footer of a results README: command, machine, wall-clock, date."""
    return ["", f"- command: `{meta['command']}`", f"- machine: {meta['machine']}",
            f"- wall-clock: {meta['wall_min']:.1f} min (this invocation; cached work excluded)",
            f"- date: {meta['date']}", ""]


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def machine(jobs: int, world: int = 1) -> str:
    try:
        with open("/proc/meminfo") as f:
            ram = f", {int(f.readline().split()[1]) / 2 ** 20:.0f} GiB RAM"
    except OSError:
        ram = ""
    gpus = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
            if torch.cuda.is_available() else "no GPU")
    if world > 1:
        workers = f"torchrun, {world} data-parallel processes"
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        workers = f"{jobs} worker process(es) with {threads} torch thread(s) each"
    return (f"{os.cpu_count()} CPU cores{ram}, {gpus}, {workers}, {platform.system()} "
            f"{platform.machine()}, torch {torch.__version__}")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def init_worker(threads: int) -> None:
    """Process-pool initializer: a fixed number of torch threads per worker."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
