"""Batches of an in-memory image set: shuffled and augmented reproducibly per epoch, on the CPU
or on the training device (the GPU fast path)."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from .images import CIFAR_MEAN, CIFAR_STD, ImageSet

__all__ = ["Batches"]


class Batches:
    """Batches of an :class:`ImageSet`, shuffled and augmented reproducibly per epoch.

    With ``device`` (a GPU) the uint8 images stay on that device and are cropped, flipped and
    normalised there: each epoch's order and augmentation are drawn on the CPU from the same
    per-(seed, epoch, batch) generators as without a device and moved over in one copy, so
    the batches are the same on every device and no step waits for the host.

    >>> s = ImageSet(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.arange(10), ["a"])
    >>> b = Batches(s, 4, train=True, seed=0)
    >>> [tuple(x.shape) for x, _ in b], len(b)
    ([(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)], 3)
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        train: bool,
        seed: int = 0,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        pad: int = 4,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: Union[str, torch.device, None] = None,
    ) -> None:
        self.data, self.batch_size, self.train, self.seed = data, batch_size, train, seed
        self.pad, self.drop_last = pad, drop_last
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device or "cpu")
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.mean = (torch.tensor(mean).view(1, 3, 1, 1) * 255).to(self.device)
        self.std = (torch.tensor(std).view(1, 3, 1, 1) * 255).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.data)
        if not self.train:
            idx = torch.arange(n)
        else:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = torch.randperm(n, generator=g)
        return idx[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _plan(self, batches: range, idx: Tensor) -> tuple[Tensor, ...]:
        """The epoch's image order and, for training, each image's crop offsets and flip,
        drawn on the CPU batch by batch (the generators of :meth:`_draws`), one copy over."""
        parts: list[list[Tensor]] = [[], [], [], []]
        for b in batches:
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            parts[0].append(sel)
            if self.train:
                for part, value in zip(parts[1:], self._draws(b, len(sel))):
                    part.append(value)
        out = tuple(torch.cat(p) for p in parts if p)
        if self.device.type == "cpu":
            return out
        return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in out)

    def _draws(self, b: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Vertical and horizontal crop offsets and flips of batch ``b``'s ``n`` images."""
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_000_003 + b)
        p = self.pad
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
        return dy, dx, torch.rand(n, generator=g) < 0.5

    def _make(self, plan: tuple[Tensor, ...], lo: int, hi: int) -> tuple[Tensor, Tensor]:
        sel = plan[0][lo:hi]
        x = self.images[sel]
        if self.train:
            x = self._augment(x, *(t[lo:hi] for t in plan[1:]))
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last), self.labels[sel]

    def batch(self, b: int, idx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Batch ``b`` of the current epoch."""
        idx = self._indices() if idx is None else idx
        plan = self._plan(range(b, b + 1), idx)
        return self._make(plan, 0, len(plan[0]))

    def _augment(self, x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor) -> Tensor:
        """Pad, crop back to size at ``(dy, dx)`` and flip where ``flip``, per image."""
        n, c, h, w = x.shape
        p = self.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        rows = dy.view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)
        out = padded.gather(2, rows.expand(n, c, h, w + 2 * p))
        cols = torch.arange(w, device=x.device).expand(n, w)
        cols = torch.where(flip.view(n, 1), w - 1 - cols, cols) + dx.view(n, 1)
        return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))

    def iterate(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of the current epoch from batch ``start`` on (to resume mid-epoch)."""
        batches = range(start, len(self))
        plan = self._plan(batches, self._indices())
        lo = 0
        for _ in batches:
            hi = min(lo + self.batch_size, len(plan[0]))
            yield self._make(plan, lo, hi)
            lo = hi

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate(0)
