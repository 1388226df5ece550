"""Running a setting: every (method, ratio, seed) job, its shared runs first, each cached.

Under torchrun every rank runs the jobs one after another, each network trained data-parallel;
otherwise the jobs run in a pool of single-setting worker processes. Every row is cached as
JSON under ``<cache>/<setting>/seed<k>/``, so an interrupted setting resumes where it stopped;
a cache made with other settings is refused. Results are not bit-identical across CPU models,
so each row records where it ran (:func:`benchmarks.common.host`) and a cache refuses to compute
on a second CPU model unless told to (``mix_cpus``).
"""
from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

from benchmarks import common
from benchmarks.suite.config import Suite
from benchmarks.suite.job import Job
from benchmarks.suite.registry import get
from benchmarks.suite.stages import STAGES


def run_method(suite: Suite, seed: int, method: str, ratio: Optional[float], folder: Path) -> dict:
    """One (method, ratio, seed) row, cached as JSON in ``folder``."""
    path = row_path(folder, method, ratio)
    if path.exists():
        return json.loads(path.read_text())
    spec = get(method)
    shared = {s: STAGES[s](suite, seed, folder) for s in spec.needs}
    job = Job(suite, seed, ratio, folder, checkpoint=path.with_suffix(""))
    row = {**spec.run(job, shared), "host": common.host()}
    if common.dist_env().main:
        common.write_json(path, row)
        for done in job.checkpoints():
            done.unlink()
    common.barrier()
    return row


def row_path(folder: Path, method: str, ratio: Optional[float]) -> Path:
    """Where the cache keeps a (method, ratio) row of one seed."""
    return folder / (f"{method}.json" if ratio is None else f"{method}-p{ratio:g}.json")


def _check_after(suite: Suite) -> None:
    """A method may start from the rows of per-ratio methods only, and not in a circle."""
    for name in suite.methods:
        seen, todo = {name}, list(get(name).after)
        while todo:
            other = todo.pop()
            if other == name:
                raise ValueError(f"method {name!r} runs after itself (through {sorted(seen)})")
            if not get(other).per_ratio:
                raise ValueError(f"method {name!r} runs after {other!r}, which has no rows per "
                                 "ratio")
            if other not in seen:
                seen.add(other)
                todo += list(get(other).after)


def plan(suite: Suite) -> list[tuple[str, Optional[float], int]]:
    """Every (method, ratio, seed) job of a setting; the dense baseline once per seed."""
    _check_after(suite)
    jobs = []
    for seed in suite.seeds:
        for method in suite.methods:
            for ratio in (suite.ratios if get(method).per_ratio else [None]):
                jobs.append((method, ratio, seed))
    return jobs


def cache_dir(suite: Suite, cache: Path) -> Path:
    """The setting's cache folder; refuses a cache made with other settings."""
    root = cache / suite.name
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "setting.json"
    mine = _portable({k: v for k, v in suite.as_dict().items()
                      if k not in ("methods", "seeds", "ratios", "claims", "description", "jobs")})
    if stamp.exists():
        theirs = _portable(json.loads(stamp.read_text()))
        if theirs != json.loads(json.dumps(mine)):
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise ValueError(f"the cache {root} was made with different settings ({diff}); pass "
                             "--fresh to start over or --cache for another folder")
    elif common.dist_env().main:
        common.write_json(stamp, mine)
    common.barrier()
    return root


MACHINES = "machines.json"


def claim_machine(root: Path, mix_cpus: bool = False) -> None:
    """Record this machine's CPU model as one that computes results in the cache ``root``.

    Refuses (ValueError) when other CPU models computed there before, unless ``mix_cpus``.
    Under torchrun every rank reads the record before rank 0 writes it and enters the same
    one barrier, so all ranks decide alike: a rank that read the file after rank 0 had added
    its CPU used to skip the barrier and wait for ever in the next collective.
    """
    path, mine = root / MACHINES, common.cpu_model()
    seen = json.loads(path.read_text()) if path.exists() else []
    common.barrier()
    if mine in seen:
        return
    if seen and not mix_cpus:
        raise ValueError(f"the cache {root} holds results computed on {seen}, and this machine "
                         f"is {mine!r}; results are not bit-identical across CPU models: pass "
                         "--mix-cpus to add rows from this CPU anyway, or --cache for another "
                         "folder")
    if common.dist_env().main:
        common.write_json(path, [*seen, mine])


def _portable(stamp: dict) -> dict:
    """A cache stamp with the shipped data named from ``benchmarks/data/`` on, so that two
    checkouts (a worktree running a study, the main one reporting it) share one cache."""
    data = stamp.get("data")
    if isinstance(data, str) and "/benchmarks/data/" in data:
        return {**stamp, "data": "benchmarks/data/" + data.split("/benchmarks/data/", 1)[1]}
    return stamp


def run(suite: Suite, cache: Path, jobs: int, progress: Callable[[str], None] = print,
        mix_cpus: bool = False) -> list[dict]:
    """Run (or read from the cache) every job of ``suite``; returns the rows.

    Under torchrun (``WORLD_SIZE`` > 1) every rank runs the jobs one after another, each
    network trained data-parallel across the ranks; rank 0 writes the cache and reports.
    A cache that computed on another CPU model is refused unless ``mix_cpus``
    (:func:`claim_machine`); a run with every row cached computes nothing and is not refused.
    """
    env = common.init_distributed(suite.setting)
    if env.world > 1:
        jobs = 1
        progress = progress if env.main else (lambda line: None)
    root = cache_dir(suite, cache)
    folders = {s: root / f"seed{s}" for s in suite.seeds}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    todo = plan(suite)
    if not all(row_path(folders[seed], method, ratio).exists() for method, ratio, seed in todo):
        claim_machine(root, mix_cpus)
    rows: list[dict] = []
    started = time.perf_counter()
    threads = max(1, common.usable_cores() // (jobs * env.world))
    if jobs == 1:
        common.init_worker(threads)
        for method, ratio, seed in todo:
            rows.append(run_method(suite, seed, method, ratio, folders[seed]))
            _report(progress, started, rows[-1], len(rows), len(todo))
        return rows
    # cached rows first; then the stages the other jobs need (each once per seed, in
    # parallel; none for a seed whose rows are all cached), then the methods as they can
    finished: set[tuple] = set()
    for job in todo:
        if row_path(folders[job[2]], job[0], job[1]).exists():
            rows.append(run_method(suite, job[2], job[0], job[1], folders[job[2]]))
            finished.add(job)
            _report(progress, started, rows[-1], len(rows), len(todo))
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                               initializer=common.init_worker, initargs=(threads,))
    waiting = [j for j in todo if j not in finished]
    stage_jobs: dict[tuple[str, int], Future] = {}
    for method, _, seed in waiting:
        for stage in get(method).needs:
            if (stage, seed) not in stage_jobs:
                stage_jobs[(stage, seed)] = pool.submit(_stage, stage, suite, seed, folders[seed])
    pending: dict[Future, tuple] = {}

    def ready_to_run(job: tuple) -> bool:
        method, ratio, seed = job
        return all(stage_jobs[(s, seed)].done() for s in get(method).needs) and all(
            (m, ratio, seed) in finished for m in get(method).after if m in suite.methods)
    try:
        while waiting or pending:
            ready = [j for j in waiting if ready_to_run(j)]
            for job in ready:
                waiting.remove(job)
                for s in get(job[0]).needs:
                    stage_jobs[(s, job[2])].result()             # a failed stage fails here
                pending[pool.submit(run_method, suite, job[2], job[0], job[1],
                                    folders[job[2]])] = job
            if not pending:
                running = [f for f in stage_jobs.values() if not f.done()]
                if not running:                          # nothing left that could free a job
                    raise RuntimeError(f"jobs {waiting} wait for methods that never ran")
                wait(running, return_when=FIRST_COMPLETED)
                continue
            done, _ = wait(list(pending) + [f for f in stage_jobs.values() if not f.done()],
                           return_when=FIRST_COMPLETED)
            for future in done:
                if future in pending:
                    finished.add(pending.pop(future))
                    rows.append(future.result())
                    _report(progress, started, rows[-1], len(rows), len(todo))
    finally:
        pool.shutdown(cancel_futures=True)
    return rows


def _stage(stage: str, suite: Suite, seed: int, folder: Path) -> None:
    STAGES[stage](suite, seed, folder)


def _report(progress: Callable[[str], None], started: float, row: dict, done: int,
            total: int) -> None:
    ratio = "" if row["ratio"] is None else f" p={row['ratio']:g}"
    draw = "" if "draw_epoch" not in row else (
        f", drawn at epoch {row['draw_epoch']}" if row.get("drawn", True)
        else f", not drawn: the mask of epoch {row['draw_epoch']}")
    progress(f"[{(time.perf_counter() - started) / 60:5.1f} min] {done}/{total} "
             f"{row['method']}{ratio} seed {row['seed']}: {_outcome(row)}{draw}")


def _outcome(row: dict) -> str:
    if row["method"] == "stability":
        return (f"distance EB {row['eb_distance']:.4f}, random {row['random_distance']:.4f}")
    return f"{row['test_acc']:.2f} %"
