"""Fault injection for the tests: ``EARLYBIRD_KILL_AT=stage:epoch:where`` SIGKILLs the process
at that point of a run (mid-epoch at a batch, or at a named point of the pipeline), so that the
tests can check that a resumed run ends exactly like an uninterrupted one.

>>> kill_point() is None                  # not set: nothing is ever killed
True
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

__all__ = ["kill_point", "maybe_kill"]


def kill_point() -> Optional[tuple[str, int, str]]:
    """``EARLYBIRD_KILL_AT=stage:epoch:where``: SIGKILL this process there (fault tests).

    ``where`` is a batch index, or a named point of the pipeline (``checkpointed``).
    """
    spec = os.environ.get("EARLYBIRD_KILL_AT")
    if not spec:
        return None
    stage, epoch, where = spec.split(":")
    return stage, int(epoch), where


def maybe_kill(stage: str, epoch: int = 0, where: Any = 0) -> None:
    """SIGKILL this process if ``EARLYBIRD_KILL_AT`` names this point."""
    if kill_point() == (stage, epoch, str(where)):
        os.kill(os.getpid(), signal.SIGKILL)
