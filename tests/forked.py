"""``python -m earlybird ...`` in a child process that starts with earlybird already imported.

The fault tests SIGKILL a run and resume it in another process. A fresh interpreter spends
about 2.5 s importing torch, timm and torch-pruning before a tiny run's own second; these
children are forked from a forkserver that imported ``earlybird.cli`` once and computed nothing
(so no OpenMP thread pool is inherited). Each child is still its own process: a SIGKILL ends it
where it stands, and it shares no memory with the test or with the other children. Unlike a
fresh interpreter, a child runs no ``atexit`` handlers (earlybird registers none), inherits the
forkserver's import-time environment (earlybird reads its variables at call time), and uses
one thread unless ``OMP_NUM_THREADS`` in ``env`` says otherwise.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

_CONTEXT: Optional[multiprocessing.context.ForkServerContext] = None


def _context() -> multiprocessing.context.ForkServerContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["earlybird.cli", "forked"])
    return _CONTEXT


def _child(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    import torch

    from earlybird.cli import main
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    for fd, path in ((1, out), (2, err)):       # C++ and Python output alike, as a pipe would
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    sys.argv = ["earlybird", *args]
    sys.exit(main(args))


def run_cli(args: list[str], env: dict[str, str], check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """What ``subprocess.run([python, "-m", "earlybird", *args], env=env, capture_output=True,
    text=True, check=check, timeout=timeout)`` returns, from a forked child."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        child = _context().Process(target=_child, args=(list(args), dict(env), os.getcwd(),
                                                        str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["earlybird", *args], timeout, out.read_text(),
                                            err.read_text())
        done = subprocess.CompletedProcess(["earlybird", *args], child.exitcode,
                                           out.read_text(), err.read_text())
    if check:
        done.check_returncode()
    return done
