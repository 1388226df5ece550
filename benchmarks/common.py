"""Pieces the benchmark scripts share: the packed CIFAR-10 data, a setting, training, a cache.

The benchmarks train on ``benchmarks/data/cifar10-25k.npz``: 25,000 training images (2,500 per
class) and the full 10,000-image CIFAR-10 test set, packed from the CIFAR-10 JPEG archive by
``earlybird.data.datasets.pack_images(archive, out, train_per_class=2500, test_per_class=1000, seed=0)``.
"""
from __future__ import annotations

import datetime
import functools
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

from earlybird.training import distributed  # noqa: E402
from earlybird.run import io  # noqa: E402
from earlybird.data.datasets import (Batches, ImageSet, folder_loaders, load_dataset,  # noqa: E402
                            load_packed, read_archive, subset)
from earlybird.training.distributed import Dist, barrier, dist_env, from_rank0  # noqa: E402,F401
from earlybird.data.models import build_model  # noqa: E402
from earlybird.training.recipe import Recipe  # noqa: E402
from earlybird.training.trainer import Trainer, memory_format  # noqa: E402
from benchmarks import resume  # noqa: E402

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
    lr: float = Recipe.lr
    momentum: float = Recipe.momentum
    weight_decay: float = Recipe.weight_decay
    batch_size: int = 125
    s: float = 1e-4
    data: str = str(DATA)
    train_images: Optional[int] = None
    test_images: Optional[int] = None
    dataset: str = "packed"        # packed (.npz), cifar10, cifar100, imagenet, synthetic
    num_classes: int = 10
    image_size: int = 32
    device: str = "cpu"
    precision: str = "fp32"        # fp32 | bf16 (autocast on CUDA)
    compile: bool = False          # torch.compile the training step
    peak_tflops: float = 0.0       # the chip's rate, for the report's throughput table
    # the input layout: auto (the Trainer's choice) or widths (channels_last only when every
    # conv width is a multiple of 8: the Trainer's rule for one thread too before 0aa8a92, which
    # the converged setting's rows were trained with)
    layout: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        """The setting as plain data; keys added after results were committed are left out at
        their defaults, so older results and caches still match."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k != "data" and not (k in LATER and v == LATER[k])}

    @property
    def recipe(self) -> Recipe:
        """The setting's SGD recipe (the library's; lr decays x0.1 at ``schedule``)."""
        return Recipe(self.epochs, self.schedule, Recipe.gamma, self.lr, self.momentum,
                      self.weight_decay)


@dataclass
class Data:
    train: Batches
    test: Batches
    steps_per_epoch: int = field(init=False)

    def __post_init__(self) -> None:
        self.steps_per_epoch = len(self.train)


DATASETS = ("packed", "cifar10", "cifar100", "imagenet", "synthetic", "archive")
LATER = {"precision": "fp32", "compile": False, "peak_tflops": 0.0, "layout": "auto"}
LAYOUTS = ("auto", "widths")
WORKERS = min(8, os.cpu_count() or 1)          # DataLoader processes per rank (ImageNet)


def init_distributed(setting: Setting) -> Dist:
    """Join torchrun's process group for the setting's device (a no-op for one process)."""
    return distributed.setup(setting.device)[0]


def leave_distributed() -> None:
    """Every rank waits for the others, then leaves torchrun's process group (a no-op for one
    process; :func:`earlybird.training.distributed.leave`)."""
    distributed.leave()


def summed(n: int) -> int:
    """``n`` summed over ranks (``n`` in one process)."""
    return int(distributed.all_sum({"n": n})["n"])


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
    accuracies are summed over ranks by ``earlybird.training.trainer``.
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
    elif setting.dataset in ("packed", "archive", "cifar10", "cifar100"):
        sets = _decoded(setting.dataset, setting.data)
    else:
        raise ValueError(f"unknown dataset {setting.dataset!r}; choose from {list(DATASETS)}")
    # always the same images (seed 0): the packed file is sorted by class
    train = subset(sets["train"], setting.train_images, 0)
    test = subset(sets["test"], setting.test_images, 0)
    device = device_of(setting)              # on a GPU the images stay there (earlybird.data.batches)
    return Data(Batches(train, setting.batch_size // env.world, True, seed, drop_last=True,
                        rank=env.rank, world_size=env.world, device=device),
                Batches(test, 500, False, rank=env.rank, world_size=env.world, device=device))


@functools.lru_cache(maxsize=2)
def _decoded(dataset: str, path: str) -> dict[str, ImageSet]:
    """The decoded images of a dataset file, once per process (every job of a setting reads
    the same; decoding the 60,000 JPEGs of CIFAR-10 takes seconds)."""
    if dataset == "packed":
        return load_packed(path)
    if dataset == "archive":                          # train/<class>/*.jpg + test/ (.tar.gz)
        return read_archive(path)
    train, test, _ = load_dataset(dataset, path)
    return {"train": train, "test": test}


def _imagenet(setting: Setting, seed: int, env: Dist) -> Data:
    train, test, _ = load_dataset("imagenet", setting.data)
    return Data(*folder_loaders(train, test, setting.batch_size // env.world, 250, seed, WORKERS,
                                env.rank, env.world))


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
          eval_every_epoch: bool = False, precision: Optional[str] = None,
          weight_masks: Optional[dict[nn.Parameter, torch.Tensor]] = None,
          checkpoint: Optional[Path] = None, state: Optional[resume.State] = None) -> dict[str, Any]:
    """Epochs ``first .. last - 1`` of the setting's schedule through the library's
    :class:`~earlybird.training.trainer.Trainer`; returns the final test accuracy (and each epoch's
    with ``eval_every_epoch``), the training time per epoch and the images trained on per
    epoch. With ``first == last`` it only evaluates. ``after_epoch(epoch)`` runs after each
    epoch; the rest is the Trainer's (``precision="q8"``: qtorch's 8-bit training;
    ``weight_masks``: unstructured tickets; under torchrun: data-parallel).

    With ``checkpoint``: progress kept every epoch, resumed (:func:`benchmarks.resume.fit`;
    ``state``: the caller's ``(get, restore)``); not under torchrun.
    """
    layout = None if setting.layout == "auto" else memory_format(model, device_of(setting), threads=2)
    trainer = Trainer(model, setting.recipe, data.train, test=data.test,
                      device=device_of(setting), precision=precision or setting.precision,
                      regularize=regularize, weight_masks=weight_masks, check_every=check_every,
                      on_check=on_check, epoch=first, compile=setting.compile, layout=layout)
    try:
        if checkpoint is not None and dist_env().world == 1:
            return resume.fit(trainer, last, checkpoint, eval_every_epoch, after_epoch, state,
                              {"cpu": cpu_model(), "threads": torch.get_num_threads()})
        return trainer.fit(last, eval_every_epoch=eval_every_epoch, after_epoch=None
                           if after_epoch is None else lambda record: after_epoch(record["epoch"]))
    finally:
        trainer.close()


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
    """Write JSON atomically, in the layout the committed results use (indent 1)."""
    io.write_json(path, payload, indent=1)


def usable_cores() -> int:
    """The CPU cores this process may run on (``taskset`` narrows them), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                         # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def machine(jobs: int, world: int = 1, threads: Optional[int] = None) -> str:
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
        threads = threads or max(1, usable_cores() // jobs)
        workers = f"{jobs} worker process(es) with {threads} torch thread(s) each"
    return (f"{os.cpu_count()} CPU cores ({cpu_model()}){ram}, {gpus}, {workers}, "
            f"{platform.system()} {platform.machine()}, torch {torch.__version__}")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host() -> dict[str, Any]:
    """Where a result is computed: the CPU model, torch's version and this process's torch
    threads (results are not bit-identical across CPU models)."""
    return {"cpu": cpu_model(), "torch": str(torch.__version__), "threads": torch.get_num_threads()}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def init_worker(threads: int) -> None:
    """Process-pool initializer: a fixed number of torch threads per worker."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
