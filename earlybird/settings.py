"""Settings as frozen dataclasses: one declaration gives the defaults, the docs and the CLI.

Each field is declared with :func:`option`, which keeps its help text (and, for the CLI, its
choices and extra flag spellings) in the field's metadata. :func:`document` writes a class's
settings into its docstring, :func:`as_dict` / :func:`from_dict` turn nested settings into
plain dicts and back (``config.yaml``), and :func:`leaves` walks a nested settings class for
the CLI, which makes one option per leaf field.

>>> from dataclasses import dataclass
>>> @document
... @dataclass(frozen=True)
... class Demo:
...     '''A demo.'''
...     lr: float = option(0.1, "initial learning rate")
>>> print(Demo.__doc__.splitlines()[-1])
    lr: initial learning rate (default 0.1).
>>> from_dict(Demo, {"lr": 0.2}), as_dict(Demo())
(Demo(lr=0.2), {'lr': 0.1})
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

from .errors import ConfigError

__all__ = ["option", "document", "as_dict", "from_dict", "leaves", "Leaf", "markdown_table"]


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Optional[Sequence[Any]] = None,
    flags: Sequence[str] = (),
    default_factory: Any = dataclasses.MISSING,
    group: Optional[str] = None,
) -> Any:
    """A dataclass field with its help text, allowed values and extra CLI spellings.

    ``group`` titles a nested settings field's options in the CLI help.
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "flags": tuple(flags),
        "group": group,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def document(cls: type) -> type:
    """Append a ``Settings:`` section (each field's help and default) to ``cls.__doc__``."""
    lines = ["", "", "Settings:"]
    for f in dataclasses.fields(cls):
        default = _default(f)
        shown = type(default).__name__ + "()" if dataclasses.is_dataclass(default) else repr(default)
        lines += textwrap.wrap(
            f"{f.name}: {f.metadata.get('help', '')} (default {shown}).",
            96,
            initial_indent="    ",
            subsequent_indent="        ",
        )
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n".join(lines)
    return cls


def as_dict(obj: Any) -> dict[str, Any]:
    """Nested settings as plain data: dicts, lists, numbers, strings, None."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(obj)


def from_dict(cls: type, data: Mapping[str, Any], source: str = "settings") -> Any:
    """Build ``cls`` from a (nested) dict; an unknown key is refused with the allowed ones."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of settings, got {ConfigError.value(type(data).__name__)}"
        )
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown settings {ConfigError.value(unknown)}; allowed: "
            f"{ConfigError.value(sorted(known))}"
        )
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(value, Mapping):
            value = from_dict(kind, value, f"{source}.{name}")
        values[name] = value
    return cls(**values)


@dataclass(frozen=True)
class Leaf:
    """One leaf setting of a nested settings class, as the CLI sees it."""

    path: tuple[str, ...]  # field names from the outer class down, e.g. ("earlybird", "ratios")
    field: dataclasses.Field
    kind: type  # bool, int, float or str
    many: bool  # a sequence of ``kind``
    optional: bool  # None is allowed
    group: Optional[str]  # title of the nested settings it belongs to

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def default(self) -> Any:
        return _default(self.field)


def _unpack(kind: Any) -> tuple[Any, bool, bool]:
    """``(element type, is a sequence, allows None)`` of a field's annotation."""
    optional = False
    if typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = len(args) < len(typing.get_args(kind)), args[0]
    origin = typing.get_origin(kind)
    if origin in (tuple, list, AbcSequence):
        return typing.get_args(kind)[0], True, optional
    return kind, False, optional


def leaves(cls: type, path: tuple[str, ...] = (), group: Optional[str] = None) -> Iterator[Leaf]:
    """Every leaf field of a nested settings class, outer fields first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            yield from leaves(kind, (*path, f.name), f.metadata.get("group") or f.name)
            continue
        element, many, optional = _unpack(kind)
        yield Leaf((*path, f.name), f, element, many, optional, f.metadata.get("group") or group)


def markdown_table(cls: type, flag: Any = lambda name: "--" + name.replace("_", "-")) -> str:
    """A Markdown table of a settings class: each leaf's name, CLI option, default and help
    (the README's settings table is this text).

    >>> from earlybird.training.recipe import Recipe
    >>> print(markdown_table(Recipe).splitlines()[2])
    | `epochs` | `--epochs` | `160` | length of the schedule in epochs |
    """
    lines = ["| setting | CLI | default | meaning |", "| --- | --- | --- | --- |"]
    for leaf in leaves(cls):
        names = [flag(leaf.name), *leaf.field.metadata["flags"]]
        default = leaf.default
        if leaf.kind is bool and default:
            names.append(flag("no_" + leaf.name))
        spellings = ", ".join(f"`{f}`" for f in names)
        shown = list(default) if isinstance(default, tuple) else default
        lines.append(
            f"| `{leaf.name}` | {spellings} | `{shown!r}` | "
            f"{leaf.field.metadata['help'].replace('|', chr(92) + '|')} |"
        )
    return "\n".join(lines)
