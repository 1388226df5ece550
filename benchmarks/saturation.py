"""Saturation study: which CPU setting has converged, so that EB Train can be judged there?

For each candidate setting (network, width, number of training images) the dense network is
trained for T and 2T epochs (lr 0.1, x0.1 at 50 % and 75 % of the epochs, the reference
schedule shape) with several seeds, always tested on the full 10,000-image CIFAR-10 test set.
A setting has *converged* at T when ``mean dense(2T) - mean dense(T) <= 0.5`` points; the
cheapest converged (setting, T) is the one to benchmark in.

Every run is the benchmark suite's own ``dense`` stage (same data, same training code), cached
under ``--cache`` (``runs/bench/saturation-<candidate>-e<T>/seed<k>/dense.pt``), so an
interrupted study resumes where it stopped. Results go to ``--out``
(``benchmarks/results/saturation``): ``results.json`` and ``README.md``.

Run: ``python benchmarks/saturation.py`` (3 candidates x T = 32/64/128 x 2 seeds, about 45
minutes on 2 cores with 2 single-threaded workers).
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common                                   # noqa: E402
from benchmarks import suite as S                               # noqa: E402
from earlybird.run.io import write_text                             # noqa: E402

# name: the setting's keys (beside the schedule), as in a suite config
CANDIDATES: dict[str, dict[str, Any]] = {
    "vgg11-w0.25-5k": {"arch": "vgg", "depth": 11, "width": 0.25, "train_images": 5000},
    "vgg11-w0.125-10k": {"arch": "vgg", "depth": 11, "width": 0.125, "train_images": 10000},
    "preresnet20-w0.5-5k": {"arch": "preresnet", "depth": 20, "width": 0.5, "train_images": 5000},
    # residual candidates for the draw-point study's held-out setting (issue #25), trained
    # compiled: 1.09-1.16x faster steps on one thread than eager channels_last
    # (benchmarks/results/compile)
    "preresnet20-w0.25-10k": {"arch": "preresnet", "depth": 20, "width": 0.25,
                              "train_images": 10000, "compile": True},
    "preresnet20-w0.5-10k": {"arch": "preresnet", "depth": 20, "width": 0.5,
                             "train_images": 10000, "compile": True},
}
EPOCHS = (32, 64, 128)
GAP = 0.5                          # points: 2T may add at most this much to count as converged


def suite_for(candidate: str, epochs: int, seeds: tuple[int, ...]) -> S.Suite:
    """The suite setting of one candidate trained for ``epochs`` (dense only)."""
    raw = {**CANDIDATES[candidate], "dataset": "packed", "data": "benchmarks/data/cifar10-25k.npz",
           "epochs": epochs, "schedule": [epochs // 2, (epochs * 3) // 4], "lr": 0.1,
           "batch_size": 125, "s": 1e-4, "ratios": [0.5], "seeds": list(seeds),
           "methods": ["dense"], "description": f"saturation study: {candidate}, {epochs} epochs"}
    return S.suite_from_dict(raw, f"saturation-{candidate}-e{epochs}")


def _dense(suite: S.Suite, seed: int, cache: Path) -> dict[str, Any]:
    folder = S.cache_dir(suite, cache) / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    record = S.stage_dense(suite, seed, folder)
    return {"test_acc": float(record["test_acc"]), "epoch_s": [float(s) for s in record["epoch_s"]],
            "flops": int(record["flops"]), "params": int(record["params"]),
            "images_per_epoch": int(record["images_per_epoch"])}


def summarize(rows: list[dict], epochs: tuple[int, ...]) -> dict[str, Any]:
    """Per candidate and T: mean ± std accuracy, cost; the gap to 2T and whether it converged;
    the cheapest converged (candidate, T), or the one with the smallest gap if none did."""
    table = []
    for candidate in dict.fromkeys(r["candidate"] for r in rows):
        for t in epochs:
            found = [r for r in rows if r["candidate"] == candidate and r["epochs"] == t]
            if not found:
                continue
            accs = [r["test_acc"] for r in found]
            entry = {"candidate": candidate, "epochs": t, "seeds": len(found), "test_acc": accs,
                     "mean": statistics.mean(accs),
                     # median: robust to epochs stretched by other work on the machine
                     "epoch_s": statistics.mean(statistics.median(r["epoch_s"]) for r in found),
                     "compiled": found[0].get("compiled", False),
                     "train_images": found[0]["images_per_epoch"], "flops": found[0]["flops"],
                     "params": found[0]["params"]}
            entry["core_h"] = entry["epoch_s"] * t / 3600
            table.append(entry)
    for entry in table:
        twice = next((e for e in table if e["candidate"] == entry["candidate"]
                      and e["epochs"] == 2 * entry["epochs"]), None)
        if twice is not None:
            entry["gap_to_2T"] = twice["mean"] - entry["mean"]
            entry["converged"] = entry["gap_to_2T"] <= GAP
    judged = [e for e in table if "converged" in e]
    converged = [e for e in judged if e["converged"]]
    pick = min(converged, key=lambda e: e["core_h"]) if converged else (
        min(judged, key=lambda e: e["gap_to_2T"]) if judged else None)
    chosen = None if pick is None else {"candidate": pick["candidate"], "epochs": pick["epochs"],
                                        "converged": pick["converged"],
                                        "gap_to_2T": pick["gap_to_2T"]}
    return {"gap_limit": GAP, "table": table, "chosen": chosen}


def markdown(summary: dict, meta: dict) -> str:
    lines = ["# Saturation study: which CPU setting has converged", "",
             "Generated by `python benchmarks/saturation.py`; do not edit by hand. Dense "
             "network, lr 0.1 decayed x0.1 at 50 % and 75 % of T, batch 125, SGD momentum 0.9, "
             "weight decay 1e-4, no slimming; training images a fixed random subset of the "
             "shipped 25,000; tested on the full 10,000-image CIFAR-10 test set. Converged at T: "
             f"mean dense(2T) - mean dense(T) <= {summary['gap_limit']} points.", "",
             "| candidate | params | MFLOPs | train images | T | seeds | test acc % | "
             "gap to 2T | converged | s / epoch | core-h for T |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for e in summary["table"]:
        gap = f"{e['gap_to_2T']:+.2f}" if "gap_to_2T" in e else "-"
        conv = ("yes" if e["converged"] else "no") if "converged" in e else "-"
        name = e["candidate"] + (" (compiled)" if e.get("compiled") else "")
        lines.append(f"| {name} | {e['params']:,} | {e['flops'] / 1e6:.2f} | "
                     f"{e['train_images']:,} | {e['epochs']} | {e['seeds']} | "
                     f"{common.mean_std(e['test_acc'])} | {gap} | {conv} | {e['epoch_s']:.1f} | "
                     f"{e['core_h']:.2f} |")
    c = summary["chosen"]
    lines += [""]
    if c is None:
        lines.append("No candidate has both T and 2T measured yet.")
    elif c["converged"]:
        lines.append(f"**Chosen: `{c['candidate']}` at T = {c['epochs']} epochs**, the cheapest "
                     f"converged setting (2T adds {c['gap_to_2T']:+.2f} points).")
    else:
        lines.append(f"**No candidate converged.** Nearest: `{c['candidate']}` at T = "
                     f"{c['epochs']} ({c['gap_to_2T']:+.2f} points from 2T); results there carry "
                     "that gap.")
    note = ("Seconds per epoch: the median epoch of each run (mean over seeds), with two "
            "single-threaded workers sharing the 2 cores; the median leaves out epochs that "
            "other work on the machine stretched. Core-hours: that times T.")
    if any(e.get("compiled") for e in summary["table"]):
        note += (" (compiled): trained through torch.compile, 1.09-1.16x faster a step for these "
                 "networks than eager in the same memory layout (benchmarks/results/compile), so "
                 "its cost is not comparable with the eager rows'.")
    lines += ["", note]
    lines += common.provenance(meta)
    return "\n".join(lines)


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--epochs", type=int, nargs="+", default=list(EPOCHS),
                   help="values of T (each with 2T among them to be judged)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--limit", nargs="+", default=[], metavar="CANDIDATE=T",
                   help="train CANDIDATE for at most T epochs (its longer runs are left out)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (2)")
    p.add_argument("--cache", type=Path, default=Path("runs/bench"))
    p.add_argument("--out", type=Path, default=common.ROOT / "results" / "saturation")
    args = p.parse_args(argv)
    if args.jobs < 1 or any(t < 4 for t in args.epochs):
        p.error("need --jobs >= 1 and every --epochs >= 4")
    try:
        args.limit = {c: int(t) for c, t in (item.split("=") for item in args.limit)}
    except ValueError:
        p.error(f"--limit takes CANDIDATE=T, got {args.limit}")
    bad = sorted(set(args.limit) - set(CANDIDATES))
    if bad:
        p.error(f"--limit: unknown candidates {bad}; choose from {list(CANDIDATES)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse(argv)
    seeds, epochs = tuple(args.seeds), tuple(sorted(set(args.epochs)))
    todo = [(c, t, s) for c in args.candidates for t in epochs for s in seeds
            if t <= args.limit.get(c, t)]
    todo.sort(key=lambda j: -j[1])                      # longest first: the pool stays busy
    started = time.perf_counter()
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"),
                               initializer=common.init_worker, initargs=(1,))
    pending = {pool.submit(_dense, suite_for(c, t, seeds), s, args.cache): (c, t, s)
               for c, t, s in todo}
    rows = []
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                c, t, s = pending.pop(future)
                rows.append({"candidate": c, "epochs": t, "seed": s,
                             "compiled": bool(CANDIDATES[c].get("compile")), **future.result()})
                print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {c} T={t} seed {s}: "
                      f"{rows[-1]['test_acc']:.2f} %", flush=True)
    finally:
        pool.shutdown(cancel_futures=True)
    rows.sort(key=lambda r: (args.candidates.index(r["candidate"]), r["epochs"], r["seed"]))
    summary = summarize(rows, epochs)
    meta = {"command": "python benchmarks/saturation.py" + "".join(
                " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
            "machine": common.machine(args.jobs, threads=1), "date": common.now(),
            "wall_min": (time.perf_counter() - started) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "results.json", {"meta": meta, **summary, "rows": rows})
    text = markdown(summary, meta)
    write_text(args.out / "README.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
