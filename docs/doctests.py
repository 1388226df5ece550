"""griffe extension for the API reference: the ``>>>`` examples of a docstring (doctests, run
by the tests) are rendered as Python console code blocks instead of as Markdown text."""
from __future__ import annotations

from typing import Any

import griffe


def fence(text: str) -> str:
    r"""``text`` with each run of doctest lines (from a ``>>>`` line to the next blank line or
    dedent) inside a ``pycon`` code fence.

    >>> fence("Adds.\n\n>>> 1 + 1\n2\n\nDone.").split("\n")
    ['Adds.', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'Done.']
    """
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + "```pycon")
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                out.append(lines[i])
                i += 1
            out.append(indent + "```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence the doctests of every docstring griffe loads."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence(obj.docstring.value)
