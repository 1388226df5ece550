"""A run's environment: its settings, data, device, place under torchrun and run folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..training import distributed
from ..data.datasets import Batches, ImageSet, folder_loaders, load_dataset, subset
from ..data.models import build_model
from ..run.runs import RunDir
from .config import NUM_CLASSES, RunConfig

__all__ = ["RunEnv", "setup"]


@dataclass
class RunEnv:
    """What every stage of one run shares."""

    cfg: RunConfig
    train: Any
    test: Any
    size: int
    num_classes: int
    device: torch.device
    dist: distributed.Dist = field(default_factory=distributed.Dist)
    dir: RunDir = field(init=False)

    def __post_init__(self) -> None:
        self.dir = RunDir(self.cfg.save)

    @property
    def main(self) -> bool:
        return self.dist.main

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train)

    def example(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.size, self.size, device=self.device)

    def model(self, seed_offset: int = 0) -> nn.Module:
        """The untrained dense model of this run (seeded by the run's seed + ``seed_offset``)."""
        torch.manual_seed(self.cfg.seed + seed_offset)
        model = build_model(self.cfg.arch, self.cfg.depth, self.num_classes, self.cfg.width)
        return model.to(self.device)


def setup(cfg: RunConfig) -> RunEnv:
    """Device and process group (:func:`earlybird.training.distributed.setup`), data and batches."""
    cfg.check_paths()
    env, device = distributed.setup()
    train, test, info = load_dataset(cfg.dataset, cfg.data, cfg.download)
    num_classes = cfg.num_classes or NUM_CLASSES.get(cfg.dataset) or len(train.classes)
    train, test = subset(train, cfg.train_images, cfg.seed), subset(test, cfg.test_images, cfg.seed)
    per_rank = max(1, cfg.batch_size // env.world)
    if isinstance(train, ImageSet):
        train_b = Batches(
            train,
            per_rank,
            True,
            cfg.seed,
            info["mean"],
            info["std"],
            rank=env.rank,
            world_size=env.world,
            device=device,
        )
        test_b = Batches(test, cfg.test_batch_size, False, rank=env.rank, world_size=env.world, device=device)
    else:
        train_b, test_b = folder_loaders(
            train, test, per_rank, cfg.test_batch_size, cfg.seed, cfg.workers, env.rank, env.world
        )
    return RunEnv(cfg, train_b, test_b, info["size"], num_classes, device, env)
