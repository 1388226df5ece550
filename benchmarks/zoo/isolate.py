"""One model per subprocess: a crash, a time-out or an out-of-memory kill is one FAIL row."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from benchmarks.zoo.check import Alarm, run_model
from earlybird.run.io import write_json

ROOT = Path(__file__).resolve().parents[2]


def worker(spec: str, row_out: Path, timeout: int) -> int:
    """``--worker source:name``: sweep one model in this process and write its row as JSON."""
    source, name = spec.split(":", 1)
    warnings.filterwarnings("ignore")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    logging.getLogger("earlybird").setLevel(logging.ERROR)
    with Alarm(timeout):
        row = run_model(source, name)
    write_json(row_out, row)
    return 0


def _limit_memory(gigabytes: float) -> Callable[[], None]:
    def apply() -> None:
        import resource
        cap = int(gigabytes * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def run_isolated(source: str, name: str, timeout: int, memory_gb: float,
                 threads: int) -> dict[str, Any]:
    """Sweep one model in a fresh subprocess; a crash or a kill becomes the model's FAIL row."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "benchmarks.zoo", "--worker", f"{source}:{name}",
               "--row-out", str(out), "--timeout", str(timeout)]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=timeout + 120 if timeout else None,
                                  preexec_fn=_limit_memory(memory_gb) if memory_gb else None)
        except subprocess.TimeoutExpired:
            return _dead_row(source, name, f"no result after {timeout} s", "ModelTimeout", start)
        if out.exists():
            row = json.loads(out.read_text())
            if "MemoryError" in str(row.get("error")) or "DefaultCPUAllocator" in row["status"]:
                row["out_of_memory"] = True
            row["memory_gb"] = memory_gb
            return row
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
        # under an address-space cap a failed allocation can also end in a segfault
        oom = (proc.returncode == -signal.SIGKILL or "MemoryError" in tail or "alloc" in tail
               or (proc.returncode == -signal.SIGSEGV and bool(memory_gb)))
        why = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit code {proc.returncode}")
        row = _dead_row(source, name, f"worker {why}: {tail}", "WorkerDied", start)
        row.update(out_of_memory=oom, memory_gb=memory_gb)
        return row


def ram_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2 ** 20
    except OSError:
        return 0.0


def _dead_row(source: str, name: str, message: str, error: str, start: float) -> dict[str, Any]:
    return {"source": source, "model": name, "status": f"FAIL: {error}: {message}",
            "input": None, "params_before": None, "flops_before": None, "params_after": {},
            "flops_after": {}, "ratios": {}, "channels": None, "groups": None, "error": error,
            "seconds": round(time.perf_counter() - start, 2)}
