"""torch-pruning's group search, bounded in time and failing one group at a time.

torch-pruning finds a group by walking the channel index mappings through every reshape and
permute it traced; through window partitions (Swin, MaxViT, CoAtNet) those index lists blow up
and one group can take many minutes or all memory. :func:`search_groups` walks the roots as
``DependencyGraph.get_all_groups`` does, but bounds each group's search and the whole search
(:data:`SEARCH_SECONDS`). Group searches come in two kinds: a normal one takes well under a
second (0.05-0.07 s for every group of torchvision's MaxViT-T on an Intel Xeon), one through
window partitions blows up (each of MaxViT-T's 22 others was still running at 15 s). A group
may therefore take :data:`GROUP_FACTOR` times the slowest group found so far, at least
:data:`GROUP_FLOOR` and at most :data:`GROUP_SECONDS` seconds. A group that runs past its
bound, runs out of memory or fails inside torch-pruning is left out with the reason (or, with
``strict``, refuses the model); a search past the whole bound refuses it, naming what it got
through.

The time bound uses ``SIGALRM``, so it holds on the main thread of a Unix process (scripts,
notebooks, the CLI); elsewhere the search runs unbounded, as torch-pruning's does.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any, Iterator, Mapping, Sequence

import torch_pruning as tp
from torch import nn

from ..errors import UnsupportedModelError

log = logging.getLogger(__name__)

__all__ = ["GROUP_SECONDS", "GROUP_FLOOR", "GROUP_FACTOR", "SEARCH_SECONDS", "SearchTimeout", "search_groups"]

GROUP_SECONDS = 15.0  # the most one group's search may take
GROUP_FLOOR = 3.0  # the least it is allowed
GROUP_FACTOR = 30.0  # a group may take this many times the slowest one found so far
SEARCH_SECONDS = 180.0  # the whole search (DenseNet-201 at 64 px, the slowest zoo pass: ~30 s)


class SearchTimeout(Exception):
    """A group's search ran past its time bound."""


@contextlib.contextmanager
def _bounded(seconds: float) -> Iterator[None]:
    """Raise :class:`SearchTimeout` inside the block after ``seconds`` (main thread only). A
    real-time timer already running (a caller's own ``signal.alarm``) is put back after, less
    the time spent; if it would fire first, it is left to fire alone."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    outer, interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < outer <= seconds:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SearchTimeout

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3), interval)


def search_groups(
    graph: tp.DependencyGraph,
    model: nn.Module,
    ignored: Sequence[nn.Module],
    root_types: tuple,
    strict: bool = False,
) -> tuple[list[Any], dict[str, str]]:
    """torch-pruning's groups of ``model`` (one per root layer not in ``ignored``), and
    ``{root layer: why}`` for the roots whose search failed or ran past its bound."""
    search_seconds, slowest = SEARCH_SECONDS, 0.0
    names: Mapping[nn.Module, str] = {m: n for n, m in model.named_modules()}
    ignored = list(ignored) + list(graph.IGNORED_LAYERS_IN_TRACING)
    visited: set[nn.Module] = set()
    groups: list[Any] = []
    failed: dict[str, str] = {}
    started = time.monotonic()
    for m in list(graph.module2node):
        if m in ignored or not isinstance(m, root_types) or m in visited:
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        left = search_seconds - (time.monotonic() - started)
        if left <= 0:
            raise UnsupportedModelError(
                f"torch-pruning's channel search of {type(model).__name__} ran past "
                f"{search_seconds:g} s after {len(groups)} groups ({len(failed)} left out); its "
                "reshapes and permutes (window partitions) make the search too slow to prune it"
            )
        bound = min(GROUP_SECONDS, max(GROUP_FLOOR, GROUP_FACTOR * slowest), left)
        began = time.monotonic()
        try:
            with _bounded(bound):
                group = graph.get_pruning_group(
                    m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m)))
                )
        except SearchTimeout:
            why = f"torch-pruning's search of its channels ran past {bound:.3g} s (reshapes and permutes)"
        except MemoryError:
            why = (
                "torch-pruning ran out of memory mapping its channels through reshapes and "
                "permutes (window partitions blow its index lists up)"
            )
        except Exception as exc:  # noqa: BLE001 - torch-pruning's internals, named once
            why = (
                f"torch-pruning could not group its channels: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:160]}"
            )
        else:
            slowest = max(slowest, time.monotonic() - began)
            modules = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
            visited.update(modules)
            if not any(x in ignored for x in modules):
                groups.append(group)
            continue
        if strict:
            raise UnsupportedModelError(f"{type(model).__name__}: layer {names[m]!r}: {why}")
        visited.add(m)
        failed[names[m]] = why
    return groups, failed
