"""Images held in memory, and the normalisation constants of the datasets (a module of its own
so that :mod:`.data` and :mod:`.batches` both build on it)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["ImageSet", "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """Images in memory: ``images`` uint8 ``[N, 3, H, W]``, ``labels`` long ``[N]``."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)
