"""``python -m benchmarks.zoo``: sweep every torchvision classifier and the timm list (see the
package docstring), resumable from the rows in ``--out``."""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

from benchmarks.zoo.check import short_path
from benchmarks.zoo.isolate import ram_gb, run_isolated, worker
from benchmarks.zoo.models import DEFAULT_OUT, RATIOS, REPORT_RATIO, all_specs, torchvision_names
from benchmarks.zoo.report import (load_cache, load_meta, machine, summary, table, versions,
                                   write_results)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="sweep only these models (torchvision or timm names)")
    parser.add_argument("--timm-only", action="store_true", help="sweep only the timm list")
    parser.add_argument("--torchvision-only", action="store_true",
                        help="sweep only torchvision's models")
    parser.add_argument("--limit", type=int, help="sweep at most N models (after the filters)")
    parser.add_argument("--out", type=Path, help=f"write README.md and zoo.json here "
                        f"(default for a full sweep: {short_path(str(DEFAULT_OUT))}; a partial sweep "
                        "writes only with --out)")
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds per model before it is recorded as FAIL (0: no limit)")
    parser.add_argument("--jobs", type=int, default=2, help="models swept at once (2)")
    parser.add_argument("--memory-gb", type=float, default=11.0,
                        help="address-space cap of each worker in GiB (11; 0: none); models "
                        "that run out are retried alone at the end with all but 3 GiB of RAM")
    parser.add_argument("--fresh", action="store_true", help="rerun the selected models even if "
                        "--out has their rows (the other rows are kept)")
    parser.add_argument("--rerun-failed", action="store_true",
                        help="rerun cached FAIL rows (pass/unsupported rows are kept)")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite README.md from the rows in --out's zoo.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.row_out, args.timeout)
    if args.timm_only and args.torchvision_only:
        parser.error("--timm-only and --torchvision-only exclude each other")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.memory_gb < 0:
        parser.error(f"--memory-gb must be >= 0, got {args.memory_gb}")

    specs = all_specs(not args.timm_only, not args.torchvision_only)
    if args.only:
        wanted = set(args.only)
        specs = [s for s in specs if s[1] in wanted or f"{s[0]}:{s[1]}" in wanted]
        missing = wanted - {s[1] for s in specs} - {f"{s[0]}:{s[1]}" for s in specs}
        for name in sorted(missing):                # not in the lists: try timm, then torchvision
            source = "torchvision" if name in torchvision_names() else "timm"
            specs.append((source, name.split(":", 1)[-1]))
    if args.limit is not None:
        specs = specs[:args.limit]
    partial = bool(args.only or args.limit is not None or args.timm_only or args.torchvision_only)
    out = args.out or (None if partial else DEFAULT_OUT)
    kept = load_cache(out)                         # every row in the folder stays in its table
    cache = {k: r for k, r in kept.items() if not (args.fresh and k in specs)}
    if args.rerun_failed:
        cache = {k: r for k, r in cache.items() if not r["status"].startswith("FAIL")}
    order = all_specs() + [s for s in specs if s not in all_specs()]
    order += [k for k in kept if k not in order]
    earlier = load_meta(out)

    command = "python -m benchmarks.zoo" + "".join(" " + shlex.quote(a) for a in
                                                   (sys.argv[1:] if argv is None else argv))
    meta = {"command": command, "commands": earlier.get("commands", []) + [command],
            "machine": machine(args.jobs, args.memory_gb),
            "versions": versions(), "ratios": list(RATIOS), "report_ratio": REPORT_RATIO,
            "planned": len(order) if out == DEFAULT_OUT else len(set(specs) | set(kept)),
            "complete": False, "total_seconds": 0.0,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if args.report:                                 # the sweep's own record, rows unchanged
        meta.update({k: earlier[k] for k in ("command", "commands", "machine", "date",
                                             "total_seconds") if k in earlier})
    todo = [] if args.report else [s for s in specs if s not in cache]
    print(f"sweeping {len(todo)} of {len(specs)} models ({len(specs) - len(todo)} cached); "
          f"{meta['machine']}", flush=True)
    done: dict[tuple[str, str], dict] = {k: r for k, r in cache.items()}
    start = time.perf_counter()

    def rows_now() -> list[dict]:
        return [done[s] for s in order if s in done]

    def record(spec: tuple[str, str], row: dict) -> None:
        done[spec] = row
        print(f"[{sum(s in done for s in specs)}/{len(specs)}] {spec[0]}:{spec[1]} "
              f"{row['seconds']:.1f}s {row['status']}", flush=True)
        meta["total_seconds"] = round(time.perf_counter() - start, 1)
        if out is not None:
            write_results(out, rows_now(), meta)

    def sweep(spec: tuple[str, str], memory_gb: float, threads: int) -> tuple:
        return spec, run_isolated(*spec, args.timeout, memory_gb, threads)

    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)   # the cores taskset leaves
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in as_completed([pool.submit(sweep, s, args.memory_gb, threads) for s in todo]):
            record(*future.result())
    retry = [s for s in todo if done[s].get("out_of_memory") and args.memory_gb]
    if retry:
        print(f"retrying {len(retry)} models that ran out of memory, one at a time", flush=True)
        for spec in retry:                          # leave 3 GiB to the rest of the machine
            if args.report:
                break
            record(*sweep(spec, max(args.memory_gb, ram_gb() - 3), len(os.sched_getaffinity(0))))
    rows = rows_now()
    meta["complete"] = len(rows) == meta["planned"]
    print()
    print(summary(rows, meta))
    print(table(rows))
    if out is not None:
        write_results(out, rows, meta)
        print(f"\nwrote {out / 'README.md'} and {out / 'zoo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
