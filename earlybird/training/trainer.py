"""The training layer: SGD over a step schedule, one epoch at a time, with the hooks EB Train
needs (the slimming penalty, checks every N steps, weight masks, 8-bit or bf16 precision, DDP).

The ``earlybird`` pipeline (:mod:`earlybird.pipeline`) and the benchmark suite both train
through :class:`Trainer`.

>>> import torch
>>> from earlybird.data.datasets import Batches, ImageSet
>>> data = ImageSet(torch.randint(0, 255, (8, 3, 8, 8), dtype=torch.uint8), torch.arange(8) % 2,
...                 ["a", "b"])
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
>>> _ = model(torch.zeros(1, 3, 8, 8))
>>> trainer = Trainer(model, Recipe(epochs=2), Batches(data, 4, True), test=Batches(data, 8, False))
>>> result = trainer.fit()
>>> trainer.epoch, trainer.step, len(result["epoch_s"]), result["images_per_epoch"]
(2, 4, 2, 8)
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable, Iterable, Mapping, Optional, cast

import torch
from torch import nn

from . import distributed
from ..costs.energy import EnergyMeter
from ..faults import kill_point
from .compilecache import private_compile_cache
from .precision import LowPrecision, autocast, unwrap_optimizer
from .recipe import Recipe, default_schedule, lr_at

log = logging.getLogger(__name__)
CPU = torch.device("cpu")

__all__ = ["Recipe", "Trainer", "evaluate", "lr_at", "default_schedule", "memory_format", "Progress"]

Progress = Callable[[Iterable, str, int], Iterable]


def memory_format(
    model: nn.Module, device: torch.device, threads: Optional[int] = None
) -> torch.memory_format:
    """The input layout a model trains fastest in: ``channels_last`` on CUDA; on the CPU with
    one thread (``threads``, default torch's) for any conv net, and with more threads when
    every conv layer's channel counts are multiples of 8; the contiguous layout otherwise.
    With several threads, pruning's odd widths (13, 27, 49, ...) run slower in the CPU's
    channels_last kernels than in the contiguous ones; with one thread channels_last was the
    faster for every set of widths measured (``python benchmarks/memory_format.py``).

    >>> memory_format(torch.nn.Conv2d(16, 32, 3), torch.device("cpu"), threads=2)
    torch.channels_last
    >>> memory_format(torch.nn.Conv2d(16, 27, 3), torch.device("cpu"), threads=2)
    torch.contiguous_format
    >>> memory_format(torch.nn.Conv2d(16, 27, 3), torch.device("cpu"), threads=1)
    torch.channels_last
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if device.type == "cuda" or (threads or torch.get_num_threads()) == 1:
        return torch.channels_last if convs else torch.contiguous_format
    even = all(
        c % 8 == 0
        for m in convs
        for c in (m.out_channels, m.in_channels)
        if not (m.in_channels == c and c <= 4)
    )  # the image's 1-4 channels
    return torch.channels_last if convs and even else torch.contiguous_format


class Trainer:
    """Trains one model epoch by epoch; the state to resume it is :meth:`state_dict`.

    Args:
        model: the network (on ``device`` after construction).
        recipe: the optimizer and its schedule; the optimizer starts at ``epoch``'s lr.
        batches: training batches (:class:`~earlybird.data.batches.Batches` or a DataLoader); a
            ``set_epoch(epoch)`` method is called before each epoch.
        test: batches to evaluate on.
        device: where to train (default: the model's device).
        precision: ``fp32``, ``bf16`` (autocast) or ``q8`` (qtorch, with ``low_precision``).
        regularize: called between ``backward()`` and ``optimizer.step()`` (the slimming
            penalty, e.g. ``EarlyBirdPruner.regularize``).
        weight_masks: ``{parameter: 0/1 mask}``; the masked weights are zeroed once and their
            gradients at every step, so under SGD they stay zero (unstructured tickets).
        check_every: call ``on_check`` every this many optimizer steps (global count).
        on_check: ``on_check(step) -> stop``; True stops training after that step.
        progress: ``progress(batches, description, total)`` wraps each epoch (a tqdm bar).
        stage: the name of this training run (progress bars, fault-test kill points).
        epoch: the epoch training starts at.
        step: the optimizer step it starts at (default ``epoch * len(batches)``).
        layout: the memory format inputs are given to the model in (default: the faster one
            for this model and device, :func:`memory_format`).
        compile: run the model through ``torch.compile`` (the model itself stays uncompiled:
            prune and save it as usual). Unless ``TORCHINDUCTOR_CACHE_DIR`` names a cache of
            your own, the process compiles into a private cache (:func:`private_compile_cache`),
            so that a run killed while compiling cannot break the next one.

    On CUDA the Trainer turns on cuDNN's autotuner (``torch.backends.cudnn.benchmark``).

    Under torchrun the model trains inside DistributedDataParallel (each rank its shard of
    every batch) and after each epoch every rank takes rank 0's buffers, so all ranks hold the
    same network; losses, accuracies and image counts are summed over ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        batches: Any,
        *,
        test: Any = None,
        device: Optional[torch.device] = None,
        precision: str = "fp32",
        low_precision: Optional[LowPrecision] = None,
        regularize: Optional[Callable[[], None]] = None,
        weight_masks: Optional[Mapping[nn.Parameter, torch.Tensor]] = None,
        check_every: Optional[int] = None,
        on_check: Optional[Callable[[int], bool]] = None,
        progress: Optional[Progress] = None,
        stage: str = "train",
        epoch: int = 0,
        step: Optional[int] = None,
        layout: Optional[torch.memory_format] = None,
        compile: bool = False,
    ) -> None:
        self.device = device or next(model.parameters()).device
        self.model = model.to(self.device)
        self.recipe, self.batches, self.test, self.precision = recipe, batches, test, precision
        self.check_every, self.on_check, self.progress, self.stage = (check_every, on_check, progress, stage)
        self.epoch = epoch
        self.step = epoch * len(batches) if step is None else step
        self.layout = layout or memory_format(model, self.device)
        if self.device.type == "cuda" and self.layout == torch.channels_last:
            model.to(memory_format=torch.channels_last)  # weights too: no re-layout per conv
        self.optimizer: torch.optim.Optimizer = recipe.optimizer(model, epoch)
        self._hooks: list = []
        if precision == "q8":
            low = low_precision or LowPrecision()
            self.optimizer = low.optimizer(self.optimizer)
            self._hooks = low.quantize_activations(model)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.net = distributed.wrap(model, self.device)
        if compile:
            private_compile_cache()
            self.net = cast(nn.Module, torch.compile(self.net))
        self.masks = {p: m.to(self.device, p.dtype) for p, m in (weight_masks or {}).items()}
        with torch.no_grad():
            for p, m in self.masks.items():
                p.mul_(m)
        self._regularize = regularize
        self.meter = EnergyMeter()

    # ------------------------------------------------------------------------------ a step
    def _before_step(self) -> None:
        if self._regularize is not None:
            self._regularize()
        for p, m in self.masks.items():
            if p.grad is not None:
                p.grad.mul_(m)

    def train_epoch(self) -> dict[str, Any]:
        """Train epoch ``self.epoch`` at its learning rate; returns its record (loss, train
        accuracy, images, seconds, ``stop``: an ``on_check`` asked to stop) and moves on."""
        lr = self.recipe.lr_at(self.epoch)
        for group in unwrap_optimizer(self.optimizer).param_groups:
            group["lr"] = lr
        started, joules = time.perf_counter(), self.meter.read()
        stats, stop = self._epoch(self.epoch)
        distributed.sync_buffers(self.model)
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "lr": lr,
            **stats,
            "train_s": time.perf_counter() - started,
            "precision": self.precision,
            "stop": stop,
        }
        if joules is not None:
            record.update(train_j=cast(float, self.meter.read()) - joules, energy_sources=self.meter.sources)
        self.epoch += 1
        return record

    def _epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        self.net.train()
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)
        kill = kill_point()
        # running sums stay on the device: no host sync per step (the bar reads them every 20)
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, stop = 0, False
        batches = (
            self.batches
            if self.progress is None
            else self.progress(self.batches, f"{self.stage} epoch {epoch}", len(self.batches))
        )
        for b, (x, y) in enumerate(batches):
            if kill and kill == (self.stage, epoch, str(b)):
                os.kill(os.getpid(), signal.SIGKILL)
            x = _laid_out(x.to(self.device, non_blocking=True), self.layout)
            y = y.to(self.device, non_blocking=True)
            with autocast(self.precision, self.device):
                out = self.net(x)
                loss = nn.functional.cross_entropy(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._before_step()
            self.optimizer.step()
            self.step += 1
            total_loss += loss.detach().double() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            if hasattr(batches, "set_postfix") and b % 20 == 0:
                batches.set_postfix(
                    loss=f"{float(total_loss) / seen:.3f}",
                    acc=f"{100 * int(correct) / seen:.1f}",
                    refresh=False,
                )
            if self.check_every and self.on_check and self.step % self.check_every == 0:
                if self.on_check(self.step):
                    stop = True
                    break
        stats = distributed.all_sum({"loss": float(total_loss), "correct": int(correct), "seen": seen})
        return {
            "loss": stats["loss"] / max(stats["seen"], 1),
            "train_acc": 100 * stats["correct"] / max(stats["seen"], 1),
            "samples": int(stats["seen"]),
        }, stop

    def evaluate(self) -> dict[str, Any]:
        """Top-1 test accuracy (%), the images it saw and the seconds it took."""
        started, joules = time.perf_counter(), self.meter.read()
        acc, seen = evaluate(self.model, self.test, self.device, self.precision, self.layout)
        out = {"test_acc": acc, "eval_samples": seen, "eval_s": time.perf_counter() - started}
        if joules is not None:
            out["eval_j"] = cast(float, self.meter.read()) - joules
        return out

    # ------------------------------------------------------------------------------ a run
    def fit(
        self,
        last_epoch: Optional[int] = None,
        *,
        before_epoch: Optional[Callable[[int], bool]] = None,
        after_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
        eval_every_epoch: bool = True,
    ) -> dict[str, Any]:
        """Train from ``self.epoch`` to ``last_epoch`` (default: the recipe's end).

        ``before_epoch(epoch) -> stop`` runs before each epoch and once after the last;
        ``after_epoch(record)`` gets each epoch's record (with ``test_acc`` when evaluated:
        every epoch, or only the last without ``eval_every_epoch``). With nothing left to
        train the model is only evaluated. Returns the final test accuracy, the evaluated
        accuracies, the seconds per epoch and the images of the last epoch.
        """
        last = self.recipe.epochs if last_epoch is None else last_epoch
        accs, epoch_s, images, stopped = [], [], 0, False
        test_acc = float("nan")
        trained = False
        while True:
            if before_epoch is not None and before_epoch(self.epoch):
                break
            if self.epoch >= last or stopped:
                break
            record = self.train_epoch()
            trained, stopped = True, record.pop("stop")
            epoch_s.append(record["train_s"])
            images = int(record["samples"])
            if self.test is not None and (eval_every_epoch or self.epoch >= last or stopped):
                record.update(self.evaluate())
                test_acc = record["test_acc"]
                accs.append(test_acc)
            if after_epoch is not None:
                after_epoch(record)
        if not trained and self.test is not None:
            test_acc = self.evaluate()["test_acc"]
        return {
            "test_acc": test_acc,
            "accs": accs,
            "train_s": sum(epoch_s),
            "epoch_s": epoch_s,
            "images_per_epoch": images,
            "stopped": stopped,
        }

    def close(self) -> None:
        """Remove the 8-bit activation hooks from the model."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # ---------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, position and the CPU random state: tensors and numbers only."""
        return {
            "model": self.model.state_dict(),
            "optimizer": unwrap_optimizer(self.optimizer).state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (as if never interrupted)."""
        self.model.load_state_dict(state["model"])
        unwrap_optimizer(self.optimizer).load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng"])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Any,
    device: torch.device = CPU,
    precision: str = "fp32",
    layout: torch.memory_format = torch.contiguous_format,
) -> tuple[float, int]:
    """Top-1 accuracy in percent and the number of images seen (summed over ranks)."""
    model.eval()
    correct, seen = 0, 0
    for x, y in batches:
        with autocast(precision, device):
            out = model(_laid_out(x.to(device), layout))
        correct += int((out.argmax(1) == y.to(device)).sum())
        seen += len(y)
    stats = distributed.all_sum({"correct": correct, "seen": seen})
    return 100 * stats["correct"] / max(stats["seen"], 1), int(stats["seen"])


def _laid_out(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``x`` in ``layout`` where that applies (channels_last: image batches, 4-D)."""
    return x.contiguous(memory_format=layout) if x.dim() == 4 else x
