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
import time
from pathlib import Path
from typing import Optional

_CONTEXT: Optional[multiprocessing.context.ForkServerContext] = None


def _context() -> multiprocessing.context.ForkServerContext:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["earlybird.cli", "forked"])
    return _CONTEXT


def run_cli(args: list[str], env: dict[str, str], check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """What ``subprocess.run([python, "-m", "earlybird", *args], env=env, capture_output=True,
    text=True, check=check, timeout=timeout)`` returns, from a forked child."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        child = _context().Process(target=_rank, args=(["-m", "earlybird", *args], dict(env),
                                                       os.getcwd(), str(out), str(err)))
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


def _rank(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """``python -m earlybird|benchmarks ...`` or ``python script.py ...`` in a forked child, with
    ``OMP_NUM_THREADS`` threads (one if unset): a rank, or a :func:`run_cli` run."""
    import runpy

    import torch
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    for fd, path in ((1, out), (2, err)):       # C++ and Python output alike, as a pipe would
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        sys.argv = [module, *rest]
        if module == "earlybird":
            from earlybird.cli import main
        elif module == "benchmarks":
            from benchmarks.__main__ import main
        else:
            raise ValueError(f"no forked entry point for -m {module}")
        sys.exit(main(rest))
    sys.argv = list(args)
    runpy.run_path(args[0], run_name="__main__")


def torchrun(*args: str, cwd: Optional[str] = None, env: Optional[dict[str, str]] = None,
             world: int = 2, timeout: float = 600, grace: float = 30
             ) -> subprocess.CompletedProcess:
    """What ``torchrun --standalone --nproc_per_node 2 <args>`` returns (stdout and stderr of
    every rank, rank 0 first; the first failing rank's exit code), from ranks forked with
    earlybird imported: each rank gets torchrun's variables (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, a free ``MASTER_PORT``) and one thread, and joins the
    process group through ``env://`` as under torchrun. ``conftest.torchrun`` runs the real
    launcher (a fresh interpreter per rank, about 10 s more a run). Once a rank fails, the
    others get ``grace`` seconds to end before they are killed, as torchrun's agent does."""
    import socket
    with socket.socket() as s:                       # a free port for rank 0's store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).resolve().parents[1])
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root, **(env or {}),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "GROUP_RANK": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        ranks = []
        for r in range(world):
            out, err = Path(tmp, f"stdout{r}"), Path(tmp, f"stderr{r}")
            out.touch()
            err.touch()
            rank_env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)}
            p = _context().Process(target=_rank, args=(list(args), rank_env, cwd or root,
                                                       str(out), str(err)))
            p.start()
            ranks.append((p, out, err))
        # a failed rank's peers are stopped, not left waiting in a collective until the timeout
        deadline, failed = time.monotonic() + timeout, None
        while any(p.exitcode is None for p, _, _ in ranks) and time.monotonic() < deadline:
            if failed is None:
                failed = next((p.exitcode for p, _, _ in ranks if p.exitcode), None)
                if failed is not None:
                    deadline = min(deadline, time.monotonic() + grace)
            time.sleep(0.05)
        if failed is not None and any(p.exitcode is None for p, _, _ in ranks):
            for p, _, _ in ranks:
                if p.exitcode is None:
                    p.kill()
                    p.join()
        if any(p.exitcode is None for p, _, _ in ranks):
            for p, _, _ in ranks:
                p.kill()
                p.join()
            raise subprocess.TimeoutExpired(list(args), timeout,
                                            "".join(o.read_text() for _, o, _ in ranks),
                                            "".join(e.read_text() for _, _, e in ranks))
        code = failed or next((p.exitcode for p, _, _ in ranks if p.exitcode), 0)
        return subprocess.CompletedProcess(list(args), code,
                                           "".join(o.read_text() for _, o, _ in ranks),
                                           "".join(e.read_text() for _, _, e in ranks))
