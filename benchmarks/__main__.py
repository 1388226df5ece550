"""``python -m benchmarks``: run a benchmark setting, list the settings, or dry-run them.

    python -m benchmarks list
    python -m benchmarks run quick                 # resumes from runs/bench/quick
    python -m benchmarks run mini --methods dense eb ns --seeds 0
    python -m benchmarks run resnet50-imagenet --dry-run
    python -m benchmarks dry-run                   # every setting, one step per method
    torchrun --nproc_per_node=8 -m benchmarks run resnet50-imagenet --data /data/imagenet
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from benchmarks import common, suite as S
from benchmarks.suite.kinds import kind_distances
from earlybird.training.recipe import default_schedule


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the settings and the methods")
    r = sub.add_parser("run", help="run one setting (cached per method, ratio and seed)")
    r.add_argument("setting", help=f"one of {S.settings()} or a path to a .json config")
    r.add_argument("--methods", nargs="+", help="only these methods")
    r.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    r.add_argument("--ratios", type=float, nargs="+", help="only these ratios")
    r.add_argument("--jobs", type=int, help="worker processes (the setting's, 2 on CPU)")
    r.add_argument("--data", help="dataset location (overrides the setting's: torchvision's "
                                  "CIFAR folder, ImageNet's train/ + val/ folder)")
    r.add_argument("--cache", type=Path, default=Path("runs/bench"), help="cache folder")
    r.add_argument("--out", type=Path, help="results folder (benchmarks/results/<setting>)")
    r.add_argument("--fresh", action="store_true", help="delete the setting's cache first")
    r.add_argument("--mix-cpus", action="store_true", help="compute in a cache that another "
                   "CPU model computed in (results are not bit-identical across CPU models)")
    r.add_argument("--epochs", type=int, help="a shorter schedule, the same shape (lr x0.1 at "
                   "50 %% and 75 %%); e.g. what `fit` found")
    r.add_argument("--dry-run", action="store_true",
                   help="one optimizer step per epoch on tiny random inputs, on CPU, every "
                        "method; writes nothing under benchmarks/results")
    f = sub.add_parser("fit", help="how many epochs of a setting fit in --minutes here "
                       "(times an epoch of the dense and each pruned network)")
    f.add_argument("setting")
    f.add_argument("--minutes", type=float, required=True)
    f.add_argument("--data", help="dataset location (overrides the setting's)")
    w = sub.add_parser("report", help="render a setting's results again from its results.json")
    w.add_argument("results", type=Path, help="a results folder, e.g. benchmarks/results/quick")
    d = sub.add_parser("dry-run", help="dry-run every setting (or those named)")
    d.add_argument("settings", nargs="*")
    d.add_argument("--cache", type=Path, default=Path("runs/bench-dry"))
    args = p.parse_args(argv)
    if args.command in ("run", "fit"):
        if args.setting not in S.settings() and not args.setting.endswith(".json"):
            p.error(f"unknown setting {args.setting!r}; choose from {S.settings()}")
    if args.command == "fit" and not args.minutes > 0:
        p.error(f"--minutes must be > 0, got {args.minutes}")
    if args.command == "run":
        if args.epochs is not None and args.epochs < 2:
            p.error(f"--epochs must be >= 2, got {args.epochs}")
        if args.jobs is not None and args.jobs < 1:
            p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.command == "dry-run":
        bad = [s for s in args.settings if s not in S.settings()]
        if bad:
            p.error(f"unknown settings {bad}; choose from {S.settings()}")
    return args


def _select(suite: S.Suite, args: argparse.Namespace) -> S.Suite:
    for name in ("methods", "seeds", "ratios"):
        wanted = getattr(args, name, None)
        if wanted is None:
            continue
        known = getattr(suite, name)
        bad = [w for w in wanted if w not in known]
        if bad:
            raise ValueError(f"--{name} {bad} are not in setting {suite.name} ({list(known)})")
        suite = replace(suite, **{name: tuple(wanted)})
    if args.data is not None:
        if not Path(args.data).exists():
            raise ValueError(f"--data {args.data!r} does not exist")
        suite = replace(suite, setting=replace(suite.setting, data=args.data))
    if getattr(args, "epochs", None) is not None:
        n = args.epochs
        suite = replace(suite, setting=replace(suite.setting, epochs=n,
                                               schedule=tuple(default_schedule(n))))
    return suite


def dry_run(suite: S.Suite, cache: Path, progress=print) -> list[dict]:
    """Every method of a setting for one step per epoch on tiny inputs (a fresh cache)."""
    small = S.dry_run(suite)
    folder = cache / small.name
    env = common.init_distributed(small.setting)
    if env.main and folder.exists():
        shutil.rmtree(folder)
    common.barrier()
    rows = S.run(small, cache, 1, progress)
    common.barrier()
    if env.main:
        shutil.rmtree(folder)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse(argv)
    if args.command == "list":
        for name in S.settings():
            s = S.load_suite(name)
            print(f"{name:24s} {'GPU' if s.gpu else 'CPU'}  {s.description}")
        print("\nmethods:")
        for m, text in S.METHODS.items():
            print(f"  {m:16s} {text}")
        return 0
    if args.command == "fit":
        from benchmarks.suite.fit import fit
        try:
            found = fit(_select(S.load_suite(args.setting), args), args.minutes)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(found))
        return 0
    if args.command == "report":
        try:
            S.rewrite_results(args.results)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print((args.results / "README.md").read_text())
        return 0
    main_rank = common.dist_env().main
    say = print if main_rank else (lambda *a, **k: None)
    if args.command == "dry-run":
        for name in args.settings or S.settings():
            started = time.perf_counter()
            rows = dry_run(S.load_suite(name), args.cache, progress=lambda line: None)
            say(f"{name}: {len(rows)} jobs ran one step each "
                f"({time.perf_counter() - started:.0f} s)")
        return 0
    try:
        suite = _select(S.load_suite(args.setting), args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        started = time.perf_counter()
        rows = dry_run(suite, args.cache / "dry-run", progress=say)
        say(f"dry run of {suite.name}: {len(rows)} jobs, {time.perf_counter() - started:.0f} s")
        return 0
    env = common.init_distributed(suite.setting)
    if args.fresh and env.main and (args.cache / suite.name).exists():
        shutil.rmtree(args.cache / suite.name)
    common.barrier()
    jobs = 1 if env.world > 1 else (args.jobs or suite.jobs)
    started = time.perf_counter()
    try:
        rows = S.run(suite, args.cache, jobs, progress=say, mix_cpus=args.mix_cpus)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = common.load_data(suite.setting, 0)
    test_images = common.summed(sum(len(y) for _, y in data.test))
    # the base search's masks per kind, and those of a budget per kind (the default) if it ran
    tags = ["slim"] + (["slim-kind"] if "eb-kind" in suite.methods else [])
    try:                                  # every rank: it opens the cache, a collective
        kinds = [k for k in (kind_distances(suite, args.cache, tag=t) for t in tags) if k]
    except (ValueError, RuntimeError, OSError) as exc:       # the report is written regardless
        if env.main:
            print(f"warning: no mask distances per kind: {exc}", file=sys.stderr)
        kinds = []
    if env.main:
        _report(suite, args, argv, rows, jobs, env.world, started, data, test_images, kinds)
    common.leave_distributed()
    return 0


def _report(suite: S.Suite, args: argparse.Namespace, argv: Optional[list[str]], rows: list[dict],
            jobs: int, world: int, started: float, data: common.Data, test_images: int,
            kinds: list[dict]) -> None:
    """Rank 0 writes the setting's results and prints its README."""
    launcher = "torchrun --nproc_per_node=N -m benchmarks " if world > 1 else "python -m benchmarks "
    meta = {"command": launcher + " ".join(
                shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
            "machine": common.machine(jobs, world), "date": common.now(),
            "wall_min": (time.perf_counter() - started) / 60,
            "train_images": len(data.train) * suite.setting.batch_size,
            "test_images": test_images}
    out = args.out or S.RESULTS / suite.name
    S.write_results(suite, rows, out, meta, kinds)
    print((out / "README.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
