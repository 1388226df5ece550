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
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

if __package__ in (None, ""):                      # imported from a script in benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from earlybird.data import Batches, ImageSet, load_packed  # noqa: E402
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


def load_data(setting: Setting, seed: int) -> Data:
    """Training batches shuffled and augmented by ``seed``; the test set in order."""
    sets = load_packed(setting.data)
    train = _subset(sets["train"], setting.train_images)
    test = _subset(sets["test"], setting.test_images)
    return Data(Batches(train, setting.batch_size, True, seed, drop_last=True),
                Batches(test, 500, False))


def _subset(images: ImageSet, n: Optional[int]) -> ImageSet:
    """``n`` images drawn at random (always the same ones; the packed file is sorted by class)."""
    if n is None or n >= len(images):
        return images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return ImageSet(images.images[idx], images.labels[idx], images.classes)


def build(setting: Setting, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(setting.arch, setting.depth, 10, setting.width)


def example() -> torch.Tensor:
    return torch.zeros(1, 3, 32, 32)


def train(model: nn.Module, setting: Setting, data: Data, first: int, last: int, *,
          regularize: Optional[Callable[[], None]] = None, check_every: Optional[int] = None,
          on_check: Optional[Callable[[int], bool]] = None,
          after_epoch: Optional[Callable[[int], None]] = None,
          eval_every_epoch: bool = False) -> dict[str, Any]:
    """SGD epochs ``first .. last - 1`` of the setting's schedule; returns the final test
    accuracy (and each epoch's with ``eval_every_epoch``) and the training time.

    ``on_check(step)`` runs every ``check_every`` optimizer steps (global step count), and
    ``after_epoch(epoch)`` after each epoch.
    """
    opt = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=setting.momentum,
                          weight_decay=setting.weight_decay)
    loop = Loop(model, opt, data.train, "train", regularize, check_every, on_check)
    step, acc, train_s = first * data.steps_per_epoch, float("nan"), 0.0
    accs = []
    for epoch in range(first, last):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, setting.lr, setting.schedule)
        started = time.perf_counter()
        _, step, _ = loop.epoch(epoch, step)
        train_s += time.perf_counter() - started
        if eval_every_epoch or epoch == last - 1:
            acc, _ = evaluate(model, data.test)
            accs.append(acc)
        if after_epoch is not None:
            after_epoch(epoch)
    return {"test_acc": acc, "accs": accs, "train_s": train_s}


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def machine(jobs: int) -> str:
    try:
        with open("/proc/meminfo") as f:
            ram = f", {int(f.readline().split()[1]) / 2 ** 20:.0f} GiB RAM"
    except OSError:
        ram = ""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return (f"{os.cpu_count()} CPU cores{ram}, no GPU, {jobs} worker process(es) with {threads} "
            f"torch thread(s) each, {platform.system()} {platform.machine()}, "
            f"torch {torch.__version__}")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def init_worker(threads: int) -> None:
    """Process-pool initializer: a fixed number of torch threads per worker."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
