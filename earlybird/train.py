"""A plain PyTorch training loop: SGD with a step schedule, slimming, early-bird checks."""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import timm
import torch
import torch.distributed as dist
from torch import nn

from . import models as _models  # noqa: F401 - registers the CIFAR models in timm
from .precision import autocast

log = logging.getLogger(__name__)

__all__ = ["ARCHS", "build_model", "lr_at", "default_schedule", "Loop", "evaluate"]

ARCHS = ("vgg", "preresnet", "resnet18", "resnet50")
Progress = Callable[[Iterable, str, int], Iterable]


def build_model(arch: str, depth: Optional[int], num_classes: int, width: float = 1.0,
                cifar: bool = True) -> nn.Module:
    """Build ``vgg``/``preresnet`` (CIFAR, with ``depth``), torchvision's ``resnet18``/``resnet50``,
    or any timm model name, untrained. timm's ``zero_init_last`` is turned off: zero gammas tie
    at 0 and ``sign(0) = 0``, so the slimming penalty could never move them and the first masks
    would be decided by position alone."""
    if arch == "vgg":
        return timm.create_model(f"cifar_vgg{depth or 16}_bn", num_classes=num_classes, width=width)
    if arch == "preresnet":
        return timm.create_model(f"cifar_preresnet{depth or 56}", num_classes=num_classes,
                                 width=width)
    if arch in ("resnet18", "resnet50"):
        import torchvision
        return getattr(torchvision.models, arch)(num_classes=num_classes)
    if not timm.is_model(arch):
        raise ValueError(f"unknown arch {arch!r}; choose from {list(ARCHS)} or any timm model "
                         f"name (e.g. {', '.join(timm.list_models('resnet*')[:3])}, ...)")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                 zero_init_last=False)
    except TypeError:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def default_schedule(epochs: int) -> list[int]:
    """The reference decay points: 50 % and 75 % of the epochs (80 and 120 of 160).

    >>> default_schedule(160), default_schedule(3), default_schedule(1)
    ([80, 120], [1, 2], [])
    """
    return sorted({e for e in (epochs // 2, (epochs * 3) // 4) if 0 < e < epochs})


def lr_at(epoch: int, lr: float, schedule: Sequence[int], gamma: float = 0.1) -> float:
    """Step schedule: ``lr * gamma**k`` with ``k`` the decay points at or before ``epoch``.

    >>> [lr_at(e, 0.1, [2, 3]) for e in range(4)]
    [0.1, 0.1, 0.010000000000000002, 0.0010000000000000002]
    """
    return lr * gamma ** sum(epoch >= s for s in schedule)


def maybe_kill(stage: str, epoch: int = 0, batch: int = 0) -> None:
    """SIGKILL this process if ``EARLYBIRD_KILL_AT`` names this point (fault tests)."""
    if _kill_point() == (stage, epoch, batch):
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_point() -> Optional[tuple[str, int, int]]:
    """``EARLYBIRD_KILL_AT=stage:epoch:batch``: SIGKILL the process there (fault tests)."""
    spec = os.environ.get("EARLYBIRD_KILL_AT")
    if not spec:
        return None
    stage, epoch, batch = spec.split(":")
    return stage, int(epoch), int(batch)


@dataclass
class Loop:
    """One stage's training loop over :class:`~earlybird.data.Batches` (or a DataLoader).

    ``on_check(step) -> bool`` is called every ``check_every`` optimizer steps (if set) and may
    stop the stage; ``regularize`` runs between ``backward()`` and ``optimizer.step()``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Any
    stage: str
    regularize: Optional[Callable[[], None]] = None
    check_every: Optional[int] = None
    on_check: Optional[Callable[[int], bool]] = None
    progress: Optional[Progress] = None
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    def epoch(self, epoch: int, step: int) -> tuple[dict[str, float], int, bool]:
        """Train one epoch; returns (loss/accuracy, global step after it, stop requested)."""
        self.model.train()
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)
        kill = _kill_point()
        # running sums stay on the device: no host sync per step (the bar reads them every 20)
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, stop = 0, False
        batches = self.batches if self.progress is None else self.progress(
            self.batches, f"{self.stage} epoch {epoch}", len(self.batches))
        for b, (x, y) in enumerate(batches):
            if kill and kill == (self.stage, epoch, b):
                os.kill(os.getpid(), signal.SIGKILL)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.precision, self.device):
                out = self.model(x)
                loss = nn.functional.cross_entropy(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.regularize is not None:
                self.regularize()
            self.optimizer.step()
            step += 1
            total_loss += loss.detach().double() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            if hasattr(batches, "set_postfix") and b % 20 == 0:
                batches.set_postfix(loss=f"{float(total_loss) / seen:.3f}",
                                    acc=f"{100 * int(correct) / seen:.1f}", refresh=False)
            if self.check_every and self.on_check and step % self.check_every == 0:
                if self.on_check(step):
                    stop = True
                    break
        stats = _reduce({"loss": float(total_loss), "correct": int(correct), "seen": seen})
        return {"loss": stats["loss"] / max(stats["seen"], 1),
                "train_acc": 100 * stats["correct"] / max(stats["seen"], 1),
                "samples": stats["seen"]}, step, stop


@torch.no_grad()
def evaluate(model: nn.Module, batches: Any, device: torch.device = torch.device("cpu"),
             precision: str = "fp32") -> tuple[float, int]:
    """Top-1 accuracy in percent and the number of images seen (summed over ranks)."""
    model.eval()
    correct, seen = 0, 0
    for x, y in batches:
        with autocast(precision, device):
            out = model(x.to(device))
        correct += int((out.argmax(1) == y.to(device)).sum())
        seen += len(y)
    stats = _reduce({"correct": correct, "seen": seen})
    return 100 * stats["correct"] / max(stats["seen"], 1), int(stats["seen"])


def _reduce(values: dict[str, float]) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


