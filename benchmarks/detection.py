"""Detection-rule experiment: how early can a ticket be drawn, and which rule finds that point?

For each seed, one dense run with slimming records the keep-mask of every ratio in ``--ratios``
every ``steps_per_epoch / 4`` optimizer steps (and before the first step) and keeps the weights
at every epoch boundary. Each detection rule is then replayed on the recorded masks (its own
check frequency, window, epsilon and span), and tickets of the ``--retrain`` ratios are
finetuned from the dense weights at several draw points: fixed shares of the schedule
(``--draw-fractions``), each rule's detection point (rounded up to the next epoch boundary, where
a per-epoch pipeline would stop), and a random ticket with the ticket's per-layer widths at the
reference rule's point. Every retrain trains the pruned network from its draw epoch to the end of
the schedule (EB Train), slimming on, as ``earlybird retrain --mode finetune`` does.

Every search and retrain is cached under ``--cache`` (default ``runs/detection``): an interrupted
run started again reruns nothing done. Results: ``--out`` (default
``benchmarks/results/detection``) gets ``results.json``, ``README.md`` (table) and
``detection.png`` (retrain accuracy vs draw epoch, each rule's detection point marked).

Run: ``python benchmarks/detection.py`` (3 seeds, 20 epochs, VGG-11 at width 0.25 on 25,000
training and 10,000 test images; about 2.5 hours on 2 cores with ``--jobs 2``). With
``--setting NAME`` the same study runs on a suite setting's own slimming run, beside its rows
(:mod:`benchmarks.suite.drawpoints`).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common                                   # noqa: E402
from benchmarks.rules import RULES, detect                      # noqa: E402,F401
from benchmarks.suite.methods import random_widths              # noqa: E402
from benchmarks.common import Setting                           # noqa: E402
import earlybird as eb                                          # noqa: E402
from earlybird.costs.flops import count_flops                         # noqa: E402
from earlybird.graph import prune_model                         # noqa: E402
from earlybird.run.io import atomic_save, atomic_write, safe_load, write_text  # noqa: E402

CHECKS_PER_EPOCH = 4
WEIGHTS, SEARCH = "benchmarks.weights/1", "benchmarks.detection-search/1"
RETRAINED_RULES = ("reference", "fifo", "normalized", "plateau")


# ----------------------------------------------------------------------------- the dense run
def search(setting: Setting, seed: int, ratios: tuple[float, ...], folder: Path) -> dict:
    """Dense training with slimming; masks every quarter epoch, weights every epoch."""
    done = folder / "search.pt"
    if done.exists():
        return safe_load(done, SEARCH)
    data = common.load_data(setting, seed)
    spe = data.steps_per_epoch
    if spe % CHECKS_PER_EPOCH:
        raise ValueError(f"{spe} steps per epoch do not split into {CHECKS_PER_EPOCH} checks")
    model = common.build(setting, seed)
    pruner = eb.EarlyBirdPruner(model, common.example(), ratios, sparsity=setting.s,
                                keep_weights=False, total=setting.epochs * spe)
    pruner.step(iteration=0)
    atomic_save({"format": WEIGHTS, "state": model.state_dict()}, folder / "weights-e0.pt")

    def check(step: int) -> bool:
        pruner.step(iteration=step)
        return False

    def keep(epoch: int) -> None:
        atomic_save({"format": WEIGHTS, "state": model.state_dict()},
                    folder / f"weights-e{epoch + 1}.pt")

    started = time.perf_counter()
    result = common.train(model, setting, data, 0, setting.epochs, regularize=pruner.regularize,
                          check_every=spe // CHECKS_PER_EPOCH, on_check=check, after_epoch=keep)
    record = {"format": SEARCH, "steps": torch.tensor(pruner.iterations), "steps_per_epoch": spe,
              "masks": {f"{r:g}": pruner.history(r) for r in ratios},
              "accs": torch.tensor(result["accs"]), "train_s": result["train_s"],
              "wall_s": time.perf_counter() - started,
              "flops": count_flops(model, common.example()).flops}
    atomic_save(record, done)
    return safe_load(done, SEARCH)


def draw_points(record: dict, setting: Setting, ratio: float,
                fractions: tuple[float, ...]) -> list[tuple[str, int, str]]:
    """``[(label, draw epoch, kind)]`` to retrain for one seed and ratio (kind: ticket/random)."""
    spe = int(record["steps_per_epoch"])
    points = [(f"{100 * f:g} %", max(1, round(f * setting.epochs)), "ticket") for f in fractions]
    for rule in RETRAINED_RULES:
        step = detect(record, ratio, rule)
        if step is not None and math.ceil(step / spe) < setting.epochs:
            points.append((rule, math.ceil(step / spe), "ticket"))
    ref = detect(record, ratio, "reference")
    random_at = math.ceil(ref / spe) if ref is not None else setting.epochs // 2
    points.append(("random widths", min(random_at, setting.epochs - 1), "random"))
    return points


# ----------------------------------------------------------------------------- retraining
def retrain(setting: Setting, seed: int, ratio: float, epoch: int, kind: str,
            folder: Path) -> dict:
    """Prune the dense weights at ``epoch`` to the ratio's mask there (or random widths-matched
    channels) and finetune to the end of the schedule. Cached as JSON in ``folder``."""
    path = folder / f"retrain-p{ratio:g}-e{epoch}-{kind}.json"
    if path.exists():
        return json.loads(path.read_text())
    record = safe_load(folder / "search.pt", SEARCH)
    data = common.load_data(setting, seed)
    model = common.build(setting, seed)
    model.load_state_dict(safe_load(folder / f"weights-e{epoch}.pt", WEIGHTS)["state"])
    step = epoch * data.steps_per_epoch
    mask = record["masks"][f"{ratio:g}"][[int(s) for s in record["steps"]].index(step)]
    graph = eb.EarlyBirdPruner(model, common.example(), [ratio], keep_weights=False).graph
    keep = graph.layout.split(mask)
    if kind == "random":
        keep = random_widths(keep, seed * 1000 + epoch)
    small = copy.deepcopy(model)
    prune_model(small, common.example(), keep, graph.ties)
    regularize = eb.EarlyBirdPruner(small, common.example(), [0.5], sparsity=setting.s,
                                    keep_weights=False).regularize
    torch.manual_seed(seed * 1000 + epoch)
    started = time.perf_counter()
    result = common.train(small, setting, data, epoch, setting.epochs, regularize=regularize)
    cost = count_flops(small, common.example())
    row = {"seed": seed, "ratio": ratio, "draw_epoch": epoch, "kind": kind,
           "test_acc": result["test_acc"],
           "flops": cost.flops, "params": cost.params, "train_s": result["train_s"],
           "wall_s": time.perf_counter() - started,
           "widths": {k: int(v.sum()) for k, v in keep.items()}}
    common.write_json(path, row)
    return row


# ----------------------------------------------------------------------------- report
def summarize(setting: Setting, seeds: list[int], ratios: tuple[float, ...],
              retrain_ratios: tuple[float, ...], fractions: tuple[float, ...],
              records: dict[int, dict], rows: list[dict]) -> dict[str, Any]:
    detections = {f"{r:g}": {rule: [detect(records[s], r, rule) for s in seeds] for rule in RULES}
                  for r in ratios}
    spe = int(records[seeds[0]]["steps_per_epoch"])
    dense_acc = [float(records[s]["accs"][-1]) for s in seeds]
    dense_flops = int(records[seeds[0]]["flops"])
    table = []
    for ratio in retrain_ratios:
        labels: dict[str, list[dict]] = {}
        for seed in seeds:
            for label, epoch, kind in draw_points(records[seed], setting, ratio, fractions):
                row = next(r for r in rows if r["seed"] == seed and r["ratio"] == ratio
                           and r["draw_epoch"] == epoch and r["kind"] == kind)
                labels.setdefault(label, []).append(row)
        for label, found in labels.items():
            epochs = [r["draw_epoch"] for r in found]
            cost = [(e * dense_flops + (setting.epochs - e) * r["flops"]) /
                    (setting.epochs * dense_flops) for e, r in zip(epochs, found)]
            table.append({"ratio": ratio, "point": label, "seeds": len(found),
                          "draw_epoch": epochs, "test_acc": [r["test_acc"] for r in found],
                          "train_flops_vs_dense": cost,
                          "pruned_flops": statistics.mean(r["flops"] for r in found)})
    return {"setting": setting.as_dict(), "seeds": seeds, "steps_per_epoch": spe,
            "rules": {k: dict(zip(("criterion", "checks_per_epoch", "window", "epsilon",
                                   "span_epochs"), v)) for k, v in RULES.items()},
            "dense_test_acc": dense_acc, "dense_flops": dense_flops,
            "detections_step": detections, "table": table}


def markdown(summary: dict, meta: dict) -> str:
    st, spe = summary["setting"], summary["steps_per_epoch"]
    lines = ["# Detection rules: retrain accuracy vs draw point", "",
             f"Generated by `benchmarks/detection.py`; do not edit by hand. CIFAR-10 "
             f"({meta['train_images']:,} training / {meta['test_images']:,} test images, JPEG "
             f"round trip), `{st['arch']}{st['depth']}` width {st['width']}, {st['epochs']} "
             f"epochs, lr {st['lr']} x0.1 at {st['schedule']}, batch {st['batch_size']} "
             f"({spe} steps per epoch), slimming s = {st['s']:g} in search and retrain, "
             f"seeds {summary['seeds']}. Every ticket is finetuned from the dense weights at its "
             "draw epoch to the end of the schedule.", "",
             f"Dense (slimming, full schedule): **{common.mean_std(summary['dense_test_acc'])} %**.", "",
             "## Where each rule draws (epoch = step / steps per epoch; mean over seeds, "
             "`-` = not drawn)", "",
             "| rule | checks/epoch | window | epsilon | span | " +
             " | ".join(f"p={r}" for r in summary["detections_step"]) + " |",
             "| --- | ---: | ---: | ---: | --- |" + " ---: |" * len(summary["detections_step"])]
    for name, rule in summary["rules"].items():
        cells = []
        for per_ratio in summary["detections_step"].values():
            steps = per_ratio[name]
            got = [s / spe for s in steps if s is not None]
            cells.append("-" if not got else
                         f"{statistics.mean(got):.2f}" + ("" if len(got) == len(steps) else
                                                          f" ({len(got)}/{len(steps)})"))
        span = "-" if rule["span_epochs"] is None else f"{int(rule['span_epochs'] * spe)} steps"
        lines.append(f"| {name} | {rule['checks_per_epoch']} | {rule['window']} | "
                     f"{rule['epsilon']} | {span} | " + " | ".join(cells) + " |")
    lines += ["", "## Retrain accuracy by draw point (mean ± std over seeds)", "",
              "| ratio | draw point | draw epoch | test acc % | training FLOPs vs dense | "
              "pruned FLOPs vs dense |", "| ---: | --- | --- | ---: | ---: | ---: |"]
    for row in summary["table"]:
        epochs = sorted(set(row["draw_epoch"]))
        lines.append(f"| {row['ratio']} | {row['point']} | {', '.join(map(str, epochs))} | "
                     f"{common.mean_std(row['test_acc'])} | "
                     f"{statistics.mean(row['train_flops_vs_dense']):.2f} | "
                     f"{row['pruned_flops'] / summary['dense_flops']:.2f} |")
    lines += common.provenance(meta)
    return "\n".join(lines)


def plot(summary: dict, out: Path) -> None:
    plt = common.pyplot()
    ratios = sorted({row["ratio"] for row in summary["table"]})
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), 4.2), squeeze=False)
    markers = {"reference": "s", "fifo": "^", "normalized": "D", "plateau": "*",
               "random widths": "x"}
    dense = summary["dense_test_acc"]
    for ax, ratio in zip(axes[0], ratios):
        rows = [r for r in summary["table"] if r["ratio"] == ratio]
        fixed = sorted((r for r in rows if r["point"].endswith("%")),
                       key=lambda r: statistics.mean(r["draw_epoch"]))
        ax.errorbar([statistics.mean(r["draw_epoch"]) for r in fixed],
                    [statistics.mean(r["test_acc"]) for r in fixed],
                    yerr=[statistics.stdev(r["test_acc"]) if len(r["test_acc"]) > 1 else 0
                          for r in fixed], fmt="o-", color="0.3", capsize=3,
                    label="fixed draw epoch")
        for r in rows:
            if r["point"] in markers:
                ax.errorbar(statistics.mean(r["draw_epoch"]), statistics.mean(r["test_acc"]),
                            yerr=statistics.stdev(r["test_acc"]) if len(r["test_acc"]) > 1 else 0,
                            fmt=markers[r["point"]], markersize=9, capsize=3, label=r["point"])
        ax.axhline(statistics.mean(dense), color="k", ls="--", lw=1, label="dense, full schedule")
        ax.set_xlabel("draw epoch (ticket taken from the dense run)")
        ax.set_ylabel("test accuracy after finetuning (%)")
        ax.set_title(f"p = {ratio}, s = {summary['setting']['s']:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--s", type=float, default=1e-4, help="slimming strength (1e-4)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9],
                   help="ratios whose masks are recorded and whose detections are reported")
    p.add_argument("--retrain", type=float, nargs="+", default=[0.7],
                   help="ratios whose tickets are retrained (0.7)")
    p.add_argument("--draw-fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--train-images", type=int, default=None, help="N training images (a fixed random subset)")
    p.add_argument("--test-images", type=int, default=None, help="N test images (a fixed random subset)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (2)")
    p.add_argument("--cache", type=Path, default=Path("runs/detection"))
    p.add_argument("--out", type=Path, default=common.ROOT / "results" / "detection")
    args = p.parse_args(argv)
    bad = [r for r in args.retrain if r not in args.ratios]
    if bad:
        p.error(f"--retrain ratios {bad} must be among --ratios {args.ratios}")
    if args.epochs < 4 or args.jobs < 1 or not args.seeds:
        p.error("need --epochs >= 4, --jobs >= 1 and at least one seed")
    if any(not 0 < f < 1 for f in args.draw_fractions):
        p.error(f"--draw-fractions must be in (0, 1), got {args.draw_fractions}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    if "--setting" in (sys.argv[1:] if argv is None else argv):   # the study on a suite setting
        from benchmarks.suite import drawcli
        return drawcli.main(argv)
    args = _parse(argv)
    setting = replace(Setting(), epochs=args.epochs, width=args.width, s=args.s,
                      schedule=(args.epochs // 2, (args.epochs * 3) // 4),
                      train_images=args.train_images, test_images=args.test_images)
    ratios, retrain_ratios = tuple(args.ratios), tuple(args.retrain)
    fractions = tuple(args.draw_fractions)
    tag = f"{setting.arch}{setting.depth}-w{setting.width:g}-e{setting.epochs}-s{setting.s:g}"
    folders = {s: args.cache / tag / f"seed{s}" for s in args.seeds}
    started = time.perf_counter()
    records: dict[int, dict] = {}
    rows: list[dict] = []
    threads = max(1, 2 // args.jobs) if args.jobs <= 2 else 1
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"),
                               initializer=common.init_worker, initargs=(threads,))
    pending: dict[Future, tuple] = {}
    for seed in args.seeds:
        pending[pool.submit(search, setting, seed, ratios, folders[seed])] = ("search", seed)
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            what = pending.pop(future)
            result = future.result()
            elapsed = (time.perf_counter() - started) / 60
            if what[0] == "search":
                seed = what[1]
                records[seed] = result
                print(f"[{elapsed:5.1f} min] seed {seed}: dense {float(result['accs'][-1]):.2f} %",
                      flush=True)
                todo = {(r, e, k) for r in retrain_ratios
                        for _, e, k in draw_points(result, setting, r, fractions)}
                for ratio, epoch, kind in sorted(todo):
                    job = pool.submit(retrain, setting, seed, ratio, epoch, kind, folders[seed])
                    pending[job] = ("retrain", seed, ratio, epoch, kind)
            else:
                rows.append(result)
                print(f"[{elapsed:5.1f} min] seed {what[1]} p={what[2]} epoch {what[3]} "
                      f"{what[4]}: {result['test_acc']:.2f} %", flush=True)
    pool.shutdown()
    summary = summarize(setting, args.seeds, ratios, retrain_ratios, fractions, records, rows)
    data = common.load_data(setting, 0)
    meta = {"command": "python benchmarks/detection.py" + "".join(
                " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
            "machine": common.machine(args.jobs), "date": common.now(),
            "wall_min": (time.perf_counter() - started) / 60,
            "train_images": len(data.train.data), "test_images": len(data.test.data)}
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json(args.out / "results.json", {"meta": meta, **summary, "rows": rows})
    text = markdown(summary, meta)
    write_text(args.out / "README.md", text)
    plot(summary, args.out / "detection.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
