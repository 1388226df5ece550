"""Copying tensors off the GPU without stalling training: into pinned memory, asynchronously,
with an event that the first read waits for.

>>> import torch
>>> state = copy_to_cpu({"w": torch.ones(2)})        # on the CPU: a plain copy
>>> type(state).__name__, plain_state(state)["w"].tolist()
('dict', [1.0, 1.0])
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["CopyingState", "copy_to_cpu", "plain_state"]


def plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A plain dict of a :func:`copy_to_cpu` result (what files store), the copy finished."""
    return state.plain() if isinstance(state, CopyingState) else state


class CopyingState(dict):
    """A state dict whose tensors are still being copied off the GPU; reading it waits for the
    copy (an event recorded after it), so the training step that follows the draw never does."""

    def __init__(self, tensors: dict[str, Tensor], done: Any) -> None:
        super().__init__(tensors)
        self._done = done

    def _wait(self) -> None:
        if self._done is not None:
            self._done.synchronize()
            self._done = None

    def __getitem__(self, key: str) -> Tensor:
        self._wait()
        return super().__getitem__(key)

    def __iter__(self) -> Any:
        self._wait()
        return super().__iter__()

    def items(self) -> Any:
        self._wait()
        return super().items()

    def values(self) -> Any:
        self._wait()
        return super().values()

    def get(self, key: str, default: Any = None) -> Any:
        self._wait()
        return super().get(key, default)

    def plain(self) -> dict[str, Tensor]:
        """An ordinary dict of the finished copy (what files store)."""
        self._wait()
        return dict(super().items())


def copy_to_cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A CPU copy of a state dict; from a GPU into pinned memory without waiting for it."""
    if not any(v.is_cuda for v in state.values()):
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
    out = {}
    for k, v in state.items():
        out[k] = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
        out[k].copy_(v.detach(), non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return CopyingState(out, done)
