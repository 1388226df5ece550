"""Copying tensors off the GPU without stalling training: into pinned memory, asynchronously,
with one event per source device that the first read waits for.

>>> import torch
>>> state = copy_to_cpu({"w": torch.ones(2)})        # on the CPU: a plain copy
>>> type(state).__name__, plain_state(state)["w"].tolist()
('dict', [1.0, 1.0])
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["CopyingState", "copy_to_cpu", "plain_state", "fetch_check"]


class CopyingState(dict):
    """A state dict whose tensors are still being copied off the GPU: every read waits for the
    copies first (events recorded after them on each source device's stream), so the training
    step that follows the copy never does."""

    def __init__(self, tensors: Any = (), done: Optional[Sequence[Any]] = None) -> None:
        super().__init__(tensors)
        self._done = list(done or [])

    def wait(self) -> None:
        """Block until every copy has landed (once; later calls return at once)."""
        for event in self._done:
            event.synchronize()
        self._done = []

    def plain(self) -> dict[str, Tensor]:
        """An ordinary dict of the finished copy (what files store)."""
        self.wait()
        return dict(super().items())

    # every way of reading waits first
    def __getitem__(self, key: str) -> Tensor:
        self.wait()
        return super().__getitem__(key)

    def __iter__(self) -> Any:
        self.wait()
        return super().__iter__()

    def __repr__(self) -> str:
        self.wait()
        return super().__repr__()

    def __eq__(self, other: object) -> bool:
        self.wait()
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def items(self) -> Any:
        self.wait()
        return super().items()

    def values(self) -> Any:
        self.wait()
        return super().values()

    def get(self, key: str, default: Any = None) -> Any:
        self.wait()
        return super().get(key, default)

    def copy(self) -> dict[str, Tensor]:
        return self.plain()

    def pop(self, *args: Any) -> Any:
        self.wait()
        return super().pop(*args)

    def popitem(self) -> Any:
        self.wait()
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self.wait()
        return super().setdefault(*args)


def plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A plain dict of a :func:`copy_to_cpu` result (what files store), the copy finished."""
    return state.plain() if isinstance(state, CopyingState) else state


def copy_to_cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A CPU copy of a state dict; from GPUs into pinned memory without waiting for it."""
    devices = {v.device for v in state.values() if v.is_cuda}
    if not devices:
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
    out = {}
    for k, v in state.items():
        out[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
        out[k].copy_(v.detach(), non_blocking=True)
    done = []
    for device in devices:  # each copy ran on its source device's stream
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        done.append(event)
    return CopyingState(out, done)


def fetch_check(
    masks: dict[float, Tensor], rows: dict[float, Tensor], scores: Tensor
) -> tuple[dict[float, Tensor], dict[float, list[float]], bool]:
    """A pruner check's masks, distances and whether every score is finite, brought to the CPU
    in one copy (one synchronisation per check)."""
    device = next(iter(masks.values())).device  # where the masks were drawn
    parts = [torch.isfinite(scores).all().double().view(1).to(device)]
    parts += [masks[r].double() for r in masks]
    parts += [rows[r].to(device) for r in rows]
    packed = torch.cat(parts).cpu()
    finite, at = bool(packed[0]), 1
    host_masks, host_rows = {}, {}
    for r, m in masks.items():
        host_masks[r] = packed[at : at + m.numel()].bool()
        at += m.numel()
    for r, row in rows.items():
        host_rows[r] = packed[at : at + row.numel()].tolist()
        at += row.numel()
    return host_masks, host_rows, finite
