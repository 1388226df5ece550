"""The draw-point study on a suite setting: retrain accuracy against the epoch the ticket is drawn.

Per seed, the setting's own slimming run (the ``slim`` stage, masks recorded
``checks_per_epoch`` times per epoch, weights at every epoch boundary) is the one search. A
ticket of each ratio is drawn from it at every epoch of a grid and at the point where each
detection rule of :data:`benchmarks.rules.RULES` would draw it, pruned and finetuned from there
to the end of the schedule exactly as the suite's EB Train does (:meth:`Job.ticket_at`, then
:meth:`Job.train`): a point of the grid that a rule also picks is the same row. The dense
baseline and network slimming come from the suite's own methods, as reference lines.

Everything is cached beside the suite's rows (``<cache>/<setting>/seed<k>/draw-p<r>-e<t>.json``,
``-s<step>`` added for a ticket drawn inside an epoch), so an interrupted study resumes, and the
cache refuses a second CPU model unless told to (:func:`~benchmarks.suite.runner.claim_machine`).
``python benchmarks/detection.py --setting converged`` runs it.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

from benchmarks import common
from benchmarks.rules import DEFAULT, detect
from benchmarks.suite import costs
from benchmarks.suite.config import Suite
from benchmarks.suite.job import Job
from benchmarks.suite.runner import cache_dir, claim_machine, row_path, run_method
from benchmarks.suite.stages import STAGES

GRID = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# "default" is the library's default: the plateau rule with a span of 3/32 of the schedule (in
# the 128-epoch converged setting 12 epochs, so it draws at epoch 24 at the earliest);
# "plateau" is the default before, a span of 2 epochs
STUDY_RULES = ("default", "reference", "fifo", "normalized", "plateau", "plateau eps=0.05",
               "plateau eps=0.02", "plateau span=4", "plateau span=8", "epi", "epi tau=0.99",
               "reference eps=0.12", "reference eps=0.15")
REFERENCE_METHODS = ("dense", "ns")
DEFAULT_RULE = DEFAULT         # the replay of the library's default (EarlyBirdConfig)


def draw_path(folder: Path, ratio: float, epoch: int, step: Optional[int], spe: int) -> Path:
    """Where the cache keeps the finetune of a ticket drawn at ``step`` (default: the boundary
    before ``epoch``), pruned at ``epoch``."""
    inside = "" if step is None or step == epoch * spe else f"-s{step}"
    return folder / f"draw-p{ratio:g}-e{epoch}{inside}.json"


def rule_point(slim: dict, ratio: float, rule: str, epochs: int) -> Optional[tuple[int, int]]:
    """``(epoch, step)`` where ``rule`` draws the ticket of ``ratio`` in a slimming run: the check
    that drew it and the next epoch boundary, where the weights are kept and EB Train prunes;
    None when the rule draws nothing before the last epoch."""
    step = detect(slim, ratio, rule, epochs)
    if step is None:
        return None
    epoch = math.ceil(step / int(slim["steps_per_epoch"]))
    return (epoch, step) if epoch < epochs else None


def finetune(suite: Suite, seed: int, ratio: float, epoch: int, step: Optional[int],
             folder: Path) -> dict:
    """The ticket drawn at ``step`` (default: the boundary before ``epoch``), pruned from the
    weights at ``epoch`` and finetuned to the end; its row, cached as JSON in ``folder``."""
    slim = STAGES["slim"](suite, seed, folder)
    spe = int(slim["steps_per_epoch"])
    path = draw_path(folder, ratio, epoch, step, spe)
    if path.exists():
        return json.loads(path.read_text())
    job = Job(suite, seed, ratio, folder, checkpoint=path.with_suffix(""))
    dense_model, keep = job.ticket_at(slim, "slim", epoch, step)
    small = job.prune(dense_model, keep)
    result = job.train(small, epoch)
    row = job.row("draw", small, result, slim, before=[costs.part(slim, epoch)],
                  draw_epoch=epoch, draw_step=epoch * spe if step is None else step,
                  widths={k: int(v.sum()) for k, v in keep.items()}, host=common.host())
    if common.dist_env().main:
        common.write_json(path, row)
        for done in job.checkpoints():
            done.unlink()
    return row


def points(slim: dict, suite: Suite, ratio: float, grid: tuple[int, ...],
           rules: tuple[str, ...]) -> dict[str, tuple[int, Optional[int]]]:
    """``{label: (epoch, step)}`` to finetune for one seed and ratio: the grid (step None: the
    boundary) and each rule's draw point (rules that draw nothing are left out)."""
    found: dict[str, tuple[int, Optional[int]]] = {f"epoch {e}": (e, None) for e in grid}
    for rule in rules:
        at = rule_point(slim, ratio, rule, suite.setting.epochs)
        if at is not None:
            found[rule] = at
    return found


def run(suite: Suite, cache: Path, jobs: int, grid: tuple[int, ...] = GRID,
        rules: tuple[str, ...] = STUDY_RULES, mix_cpus: bool = False,
        progress: Callable[[str], None] = print) -> dict[int, dict]:
    """Every stage, reference row and finetune of the study, cached; a pool of ``jobs``
    single-thread workers (one job at a time in this process, on every core, when ``jobs`` is
    1), seeds in order (one seed's curve is complete before the next
    seed's finetunes start). Returns ``{seed: {"slim", "rows": {(ratio, epoch, step): row},
    "reference": {(method, ratio): row}}}``."""
    bad = [e for e in grid if not 0 < e < suite.setting.epochs]
    if bad:
        raise ValueError(f"grid epochs {bad} must be in (0, {suite.setting.epochs})")
    root = cache_dir(suite, cache)
    claim_machine(root, mix_cpus)
    folders = {s: root / f"seed{s}" for s in suite.seeds}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    out: dict[int, dict] = {s: {"rows": {}, "reference": {}} for s in suite.seeds}
    started = time.perf_counter()
    pool: ProcessPoolExecutor | _InProcess
    if jobs == 1:                  # as the suite's runner does: no worker to start, all cores
        common.init_worker(common.usable_cores())
        pool = _InProcess()
    else:
        pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                                   initializer=common.init_worker, initargs=(1,))
    pending: dict[Future, tuple] = {}
    # (priority, kind, seed, args): a seed's slimming run, then its reference rows and
    # finetunes (longest first, so the pool ends evenly), then its dense baseline
    queue: list[tuple] = [((s, 0, 0), "slim", s, ()) for s in suite.seeds]

    def say(line: str) -> None:
        progress(f"[{(time.perf_counter() - started) / 60:6.1f} min] {line}")

    try:
        while queue or pending:
            queue.sort(key=lambda item: item[0])
            while queue and len(pending) < jobs:
                _, kind, seed, args = queue.pop(0)
                if kind == "slim":
                    fut = pool.submit(STAGES["slim"], suite, seed, folders[seed])
                elif kind == "method":
                    fut = pool.submit(run_method, suite, seed, args[0], args[1], folders[seed])
                else:
                    fut = pool.submit(finetune, suite, seed, *args, folders[seed])
                pending[fut] = (kind, seed, args)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, seed, args = pending.pop(fut)
                result = fut.result()
                if kind == "slim":
                    out[seed]["slim"] = result
                    say(f"seed {seed}: slimming run {float(result['test_acc']):.2f} %")
                    queue += _after_slim(result, suite, seed, grid, rules)
                elif kind == "method":
                    out[seed]["reference"][args] = result
                    say(f"seed {seed}: {args[0]}{'' if args[1] is None else f' p={args[1]:g}'}"
                        f" {result['test_acc']:.2f} %")
                else:
                    out[seed]["rows"][args] = result
                    say(f"seed {seed}: p={args[0]:g} drawn at epoch {args[1]}"
                        f"{'' if args[2] is None else f' (step {args[2]})'}: "
                        f"{result['test_acc']:.2f} %")
    finally:
        pool.shutdown(cancel_futures=True)
    return out


class _InProcess:
    """The pool's two calls for ``jobs == 1``: each job runs at once, in this process."""

    def submit(self, fn: Callable, *args: object) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:                     # raised again by fut.result()
            fut.set_exception(exc)
        return fut

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


def _after_slim(slim: dict, suite: Suite, seed: int, grid: tuple[int, ...],
                rules: tuple[str, ...]) -> list[tuple]:
    """The jobs a seed's slimming run makes possible, with their priorities."""
    epochs = suite.setting.epochs
    todo: set[tuple[float, int, Optional[int]]] = set()
    for ratio in suite.ratios:
        for epoch, step in points(slim, suite, ratio, grid, rules).values():
            todo.add((ratio, epoch, None if step == epoch * int(slim["steps_per_epoch"])
                      else step))
    items = [((seed, 1, -(epochs - e)), "draw", seed, (r, e, s)) for r, e, s in todo]
    items += [((seed, 1, -2 * epochs), "method", seed, ("ns", r)) for r in suite.ratios]
    items.append(((seed, 2, 0), "method", seed, ("dense", None)))
    return items


def cached_reference(folder: Path, method: str, ratio: Optional[float]) -> Optional[dict]:
    """A reference row of the suite's cache, or None when it is not computed."""
    path = row_path(folder, method, ratio)
    return json.loads(path.read_text()) if path.exists() else None
