"""The one place that sets up devices and process groups (``torchrun``), and the collectives
earlybird uses. In a single process every function is a no-op or returns its input.

>>> env, device = setup("cpu")
>>> env.rank, env.world, env.main, device.type
(0, 1, True, 'cpu')
>>> all_sum({"correct": 3, "seen": 4}), from_rank0("mask")
({'correct': 3, 'seen': 4}, 'mask')
>>> leave(); is_distributed()
False
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Dist",
    "dist_env",
    "setup",
    "is_distributed",
    "barrier",
    "leave",
    "from_rank0",
    "all_sum",
    "wrap",
    "sync_buffers",
]


@dataclass(frozen=True)
class Dist:
    """This process's place under ``torchrun`` (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0


def dist_env() -> Dist:
    """Rank, world size and local rank from torchrun's environment variables."""
    return Dist(
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup(device: Optional[str] = None) -> tuple[Dist, torch.device]:
    """Pick this rank's device and join torchrun's process group (NCCL on CUDA, gloo on CPU).

    ``device``: ``"cuda"`` (this rank's GPU, ``cuda:<LOCAL_RANK>``), ``"cpu"``, or None for a
    GPU when one is available and the CPU otherwise.
    """
    env = dist_env()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or None, got {device!r}")
    chosen = torch.device("cuda", env.local_rank) if device == "cuda" else torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if env.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return env, chosen


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        dist.barrier()


def leave() -> None:
    """Wait for every rank, then leave the process group (a no-op outside one).

    Call it once, at the end, on every rank: a rank that exits or destroys the group while a
    peer is still at work (rank 0 writing its files) can abort in gloo's teardown
    ("terminate called without an active exception").
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable value)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (returned as floats under torchrun)."""
    if not is_distributed():
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(values, t.tolist()))


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` inside DistributedDataParallel under torchrun, ``model`` itself otherwise."""
    if not is_distributed() or dist.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm statistics), so all replicas are equal."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
