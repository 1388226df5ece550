"""The draw-point study's command line: ``python benchmarks/detection.py --setting NAME``
runs :mod:`.drawpoints` on a suite setting and writes :mod:`.drawreport`'s report."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from benchmarks import common
from benchmarks.rules import rule_spec
from benchmarks.suite import drawreport
from benchmarks.suite.config import RESULTS, load_suite, settings
from benchmarks.suite.drawpoints import DEFAULT_RULE, GRID, STUDY_RULES, run
from benchmarks.suite.runner import cache_dir

__all__ = ["parse", "merge", "main"]


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    """The study's options (``benchmarks/detection.py --setting NAME ...``)."""
    p = argparse.ArgumentParser(prog="python benchmarks/detection.py --setting",
                                description="The draw-point study on a suite setting.")
    p.add_argument("--setting", required=True, help=f"one of {settings()}")
    p.add_argument("--draw-epochs", type=int, nargs="*", default=list(GRID),
                   help=f"the grid of draw epochs ({' '.join(map(str, GRID))}); none: only the "
                   "rules' own points, dense and NS (a held-out setting)")
    p.add_argument("--rules", nargs="+", default=list(STUDY_RULES),
                   help="rules whose draw points are finetuned (benchmarks/rules.py)")
    p.add_argument("--seeds", type=int, nargs="+", help="only these of the setting's seeds")
    p.add_argument("--jobs", type=int, default=2, help="single-thread worker processes (2)")
    p.add_argument("--cache", type=Path, default=Path("runs/bench"),
                   help="the suite's cache folder (runs/bench)")
    p.add_argument("--out", type=Path,
                   help="results folder (benchmarks/results/draw-point/<setting>)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from what the cache holds now; compute nothing")
    p.add_argument("--rerender", action="store_true",
                   help="render the committed results.json in --out again")
    p.add_argument("--mix-cpus", action="store_true", help="compute in a cache that another "
                   "CPU model computed in (results are not bit-identical across CPU models)")
    args = p.parse_args(argv)
    if args.setting not in settings():
        p.error(f"unknown setting {args.setting!r}; choose from {settings()}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    epochs = load_suite(args.setting).setting.epochs
    for rule in args.rules:
        try:
            rule_spec(rule, epochs)
        except ValueError as exc:
            p.error(str(exc))
    return args


def merge(folder: Path) -> Path:
    """``summary.json`` of every setting studied under ``folder`` (one subfolder each) in one
    file: the library's default and all rows."""
    parts = [json.loads(p.read_text()) for p in sorted(folder.glob("*/summary.json"))]
    if not parts:
        raise ValueError(f"no study under {folder}")
    path = folder / "summary.json"
    common.write_json(path, {"default": parts[0]["default"],
                             "rows": [r for p in parts for r in p["rows"]]})
    return path


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    suite = load_suite(args.setting)
    out = args.out or RESULTS / "draw-point" / suite.name
    try:
        if args.rerender:
            drawreport.rewrite(out, DEFAULT_RULE)
            merge(out.parent)
            print((out / "README.md").read_text())
            return 0
        if args.seeds:
            bad = [s for s in args.seeds if s not in suite.seeds]
            if bad:
                raise ValueError(f"--seeds {bad} are not in setting {suite.name} "
                                 f"({list(suite.seeds)})")
            suite = replace(suite, seeds=tuple(args.seeds))
        grid, rules = tuple(args.draw_epochs), tuple(args.rules)
        started = time.perf_counter()
        if not args.report_only:
            run(suite, args.cache, args.jobs, grid, rules, args.mix_cpus)
        meta = {"command": "python benchmarks/detection.py" + "".join(
                    " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
                "machine": common.machine(args.jobs, threads=1), "date": common.now(),
                "wall_min": (time.perf_counter() - started) / 60}
        drawreport.write(suite, cache_dir(suite, args.cache), grid, rules, out, meta,
                         DEFAULT_RULE)
        merge(out.parent)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((out / "README.md").read_text())
    return 0
