"""Errors earlybird raises on purpose, each naming what is wrong and what is allowed."""

from __future__ import annotations

__all__ = ["EarlyBirdError", "UnsupportedModelError", "NoTicketError", "CheckpointError", "ConfigError"]


class EarlyBirdError(Exception):
    """Base class of earlybird's own errors."""


class UnsupportedModelError(EarlyBirdError, ValueError):
    """The model cannot be traced, has nothing prunable, or cannot be pruned as asked."""


class NoTicketError(EarlyBirdError, LookupError):
    """A ticket was asked for a ratio that has not drawn one yet."""


class CheckpointError(EarlyBirdError, ValueError):
    """A saved file is unreadable, truncated, of another format, or for another model."""


class ConfigError(EarlyBirdError, ValueError):
    """A setting has a wrong value, type or combination.

    The message names settings by their field names (``wl_weight must be ...``); a front end
    that spells them differently renders the same message with its own names (the CLI writes
    ``--wl-weight must be ...``).

    >>> err = ConfigError("{} and {} must be >= 0", "momentum", "weight_decay")
    >>> str(err), err.render(lambda name: "--" + name.replace("_", "-"))
    ('momentum and weight_decay must be >= 0', '--momentum and --weight-decay must be >= 0')
    """

    def __init__(self, template: str, *names: str) -> None:
        self.template, self.names = template, names
        super().__init__(self.render(str))

    @staticmethod
    def value(value: object) -> str:
        """``repr(value)`` made safe to embed in a template (braces doubled)."""
        return repr(value).replace("{", "{{").replace("}", "}}")

    def render(self, spell) -> str:
        """The message with each setting's name written by ``spell(name)``."""
        return self.template.format(*(spell(n) for n in self.names))
