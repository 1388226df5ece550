"""``RunConfig``: every setting of an EB Train run, saved as the run folder's ``config.yaml``.

It nests the optimizer recipe (:class:`~earlybird.training.recipe.Recipe`), the ticket search
(:class:`~earlybird.EarlyBirdConfig`) and the precision settings
(:class:`~earlybird.training.precision.PrecisionConfig`); the CLI makes one option per leaf field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, cast

from torch import nn

from ..search.config import EarlyBirdConfig
from ..data.datasets import DATASETS
from ..errors import ConfigError
from ..data.models import ARCHS, build_model, check_arch
from ..training.precision import PrecisionConfig
from ..settings import as_dict, document, from_dict, option
from ..training.recipe import Recipe

__all__ = ["RunConfig", "NUM_CLASSES"]

NUM_CLASSES = {"cifar10-subset": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}
# where the keys of a flat config.yaml (earlybird before 0.2) live now
_LEGACY = {
    **{k: ("recipe", k) for k in ("epochs", "schedule", "gamma", "lr", "momentum", "weight_decay")},
    **{k: ("earlybird", k) for k in ("ratios", "epsilon", "window", "criterion", "span")},
    "s": ("earlybird", "sparsity"),
    **{k: ("precision", k) for k in ("search_precision", "retrain_precision", "swa", "swa_start")},
    **{
        k: ("precision", "q8", k)
        for k in ("wl_weight", "wl_grad", "wl_activate", "wl_error", "wl_momentum", "rounding")
    },
}


@document
@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; validated on creation, saved as ``config.yaml``.

    >>> cfg = RunConfig(recipe=Recipe(epochs=20))
    >>> cfg.recipe.schedule, cfg.earlybird.criterion, cfg.precision.swa_start
    ((10, 15), 'plateau', 17)
    """

    save: str = option("runs/eb", "run folder")
    dataset: str = option(
        "cifar10-subset",
        "cifar10-subset: the shipped 10,000/2,000-image "
        "CIFAR-10 subset; cifar10 | cifar100 (torchvision); imagenet | "
        "imagefolder (train/ and val/ folders)",
        choices=DATASETS,
        group="data",
    )
    data: Optional[str] = option(
        None,
        "dataset folder or archive (e.g. the full CIFAR-10 JPEG "
        ".tar.gz for cifar10-subset; train/ and val/ folders for "
        "imagenet)",
        group="data",
    )
    download: bool = option(False, "download CIFAR (online)", group="data")
    train_images: Optional[int] = option(
        None, "use this many training images (a random subset drawn with the seed)", group="data"
    )
    test_images: Optional[int] = option(None, "use this many test images", group="data")
    arch: str = option("vgg", f"{' | '.join(ARCHS)} | any timm model name", group="model")
    depth: Optional[int] = option(
        16, "VGG 11/13/16/19, PreResNet 6n+2 (basic) or 9n+2 (bottleneck)", group="model"
    )
    width: float = option(1.0, "channel multiplier of vgg/preresnet", group="model")
    num_classes: Optional[int] = option(None, "classes (default: the dataset's)", group="model")
    recipe: Recipe = option(default_factory=Recipe, group="training")
    batch_size: int = option(256, "global batch size", group="training")
    test_batch_size: int = option(256, "batch size of the evaluation", group="training")
    sparsity_regularization: bool = option(
        False, "L1 penalty on norm scales (network slimming), in every stage", group="training"
    )
    seed: int = option(0, "random seed (weights, data order, subsets)", group="training")
    workers: int = option(2, "DataLoader workers (ImageFolder)", group="training")
    check_every: Optional[int] = option(
        None, "check every N optimizer steps (None: once per epoch, before its training)", group="early-bird"
    )
    full: bool = option(
        False, "search: train the dense model to the end even after every ticket", group="early-bird"
    )
    earlybird: EarlyBirdConfig = option(default_factory=EarlyBirdConfig, group="early-bird")
    precision: PrecisionConfig = option(default_factory=PrecisionConfig, group="precision")

    def __post_init__(self) -> None:
        value = ConfigError.value
        if self.dataset not in DATASETS:
            raise ConfigError(
                "unknown {} " + value(self.dataset) + "; choose from " + value(list(DATASETS)), "dataset"
            )
        for name in ("batch_size", "test_batch_size"):
            if not getattr(self, name) > 0:
                raise ConfigError("{} must be > 0", name)
        if not self.width > 0:
            raise ConfigError("{} must be > 0, got " + value(self.width), "width")
        if self.check_every is not None and self.check_every < 1:
            raise ConfigError(
                "{} must be >= 1 optimizer steps, got " + value(self.check_every), "check_every"
            )
        epochs = self.recipe.epochs
        if self.precision.swa_start is None:
            object.__setattr__(
                self, "precision", dataclasses.replace(self.precision, swa_start=(epochs * 7) // 8)
            )
        if not 0 <= cast(int, self.precision.swa_start) < epochs:
            raise ConfigError(
                "{} must be an epoch in [0, " + str(epochs) + "), got " + value(self.precision.swa_start),
                "swa_start",
            )
        for name in ("train_images", "test_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError("{} must be >= 1", name)
        check_arch(self.arch, self.depth)
        if self.dataset in ("imagenet", "imagefolder") and self.data is None:
            raise ConfigError("{} is required for " + self.dataset, "data")

    def check_paths(self) -> None:
        """Refuse a ``data`` path that is not there (torchvision's CIFAR may download it)."""
        if (
            self.data is not None
            and self.dataset not in ("cifar10", "cifar100")
            and not os.path.exists(self.data)
        ):
            raise ConfigError("{} " + ConfigError.value(self.data) + " does not exist", "data")

    @property
    def image_size(self) -> int:
        """Side of the (square) input images: 32 for CIFAR, 224 otherwise."""
        return 32 if self.dataset.startswith("cifar") else 224

    @property
    def classes(self) -> int:
        """``num_classes``, or the dataset's (10 where the data alone would tell)."""
        return self.num_classes or NUM_CLASSES.get(self.dataset, 10)

    def dense_model(self) -> nn.Module:
        """The untrained dense model of these settings (as seeded by the caller)."""
        return build_model(self.arch, self.depth, self.classes, self.width)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain nested data (what ``config.yaml`` holds)."""
        return as_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config.yaml") -> "RunConfig":
        """Build from :meth:`as_dict`'s output; a flat file of earlybird 0.1 also loads."""
        nested: dict[str, Any] = {}
        for key, value in data.items():
            path = _LEGACY.get(key, (key,))
            into = nested
            for part in path[:-1]:
                into = into.setdefault(part, {})
            into[path[-1]] = value
        return from_dict(cls, nested, source)
