"""Errors earlybird raises on purpose, each naming what is wrong and what is allowed."""
from __future__ import annotations

__all__ = ["EarlyBirdError", "UnsupportedModelError", "NoTicketError", "CheckpointError"]


class EarlyBirdError(Exception):
    """Base class of earlybird's own errors."""


class UnsupportedModelError(EarlyBirdError, ValueError):
    """The model cannot be traced, has nothing prunable, or cannot be pruned as asked."""


class NoTicketError(EarlyBirdError, LookupError):
    """A ticket was asked for a ratio that has not drawn one yet."""


class CheckpointError(EarlyBirdError, ValueError):
    """A saved file is unreadable, truncated, of another format, or for another model."""
