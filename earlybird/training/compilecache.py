"""A private inductor cache per process: a kill while compiling cannot break the next run."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from typing import Optional

log = logging.getLogger(__name__)

_PREFIX = "earlybird-inductor-"
_private_cache: Optional[tuple[int, str]] = None  # (the process, its cache)


def private_compile_cache() -> Optional[str]:
    """Give this process an inductor cache of its own, removed when it exits; return its path,
    or ``None`` where ``TORCHINDUCTOR_CACHE_DIR`` names a cache the user chose.

    A process killed while inductor links a kernel leaves the truncated ``.so`` in inductor's
    shared cache (``/tmp/torchinductor_<user>``), and every later process that compiles the
    same kernel fails on it with ``ImportError: ... file too short`` (pytorch/pytorch#102539):
    a stopped benchmark could not be resumed. A private cache is never read by another process;
    the private caches of processes that were killed are removed here, by the next one. Each
    process compiles cold (pruned networks have shapes of their own, so little was shared).

    >>> import os
    >>> path = private_compile_cache()
    >>> path is None or (os.path.isdir(path) and os.environ["TORCHINDUCTOR_CACHE_DIR"] == path)
    True
    >>> private_compile_cache() == path          # once per process
    True
    """
    global _private_cache
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if _private_cache is not None and _private_cache[0] == os.getpid() and chosen == _private_cache[1]:
        return _private_cache[1]
    if chosen is not None and os.path.basename(os.path.normpath(chosen)).startswith(_PREFIX):
        chosen = None  # a parent's private cache (forked or spawned): not the user's
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if chosen is not None and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return None  # the user's own cache
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):  # left by killed processes
        if name.startswith(_PREFIX) and not _alive(name[len(_PREFIX) :].split("-")[0]):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    _private_cache = (os.getpid(), path)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    atexit.register(_remove, os.getpid(), path)
    log.debug("inductor compiles into %s (private to process %d)", path, os.getpid())
    return path


def _remove(owner: int, path: str) -> None:
    """At exit: the process's own cache only (a forked child inherits the handler)."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True
