"""The draw-point study's report: the curve, each rule's point on it, and the default it picks.

:func:`collect` reads the cache into plain data (``results.json``); everything else is computed
from that, so ``rewrite`` renders a committed study again without the cache. Written:
``results.json``, ``README.md`` (tables with each ticket's inference FLOPs and parameters),
``draw-point.png`` (accuracy against the draw point, one panel per ratio, dense and NS as
reference lines), ``accuracy_vs_inference.png`` and ``summary.json`` (one row per setting, rule
and ratio).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional

from benchmarks import common
from benchmarks.rules import rule_spec
from benchmarks.suite.config import Suite
from benchmarks.suite.drawpoints import draw_path, rule_point
from benchmarks.suite.runner import row_path
from benchmarks.suite.stages import SLIM
from earlybird.run.io import safe_load

GOAL_POINTS = 0.3          # within this many points of NS ...
GOAL_RATIOS = (0.3, 0.5)   # ... at these ratios ...
GOAL_SHARE = 0.15          # ... drawn in this share of the schedule
ROW_KEYS = ("seed", "ratio", "test_acc", "train_flops", "wall_s", "flops", "params",
            "dense_flops", "dense_params", "draw_epoch", "draw_step", "host")


def collect(suite: Suite, root: Path, grid: tuple[int, ...], rules: tuple[str, ...]) -> dict:
    """The study's rows as plain data: per seed whose slimming run is done, where each rule
    draws, the finetunes found in the cache and the dense and NS rows."""
    seeds, rows, reference, epochs = {}, [], [], suite.setting.epochs
    for seed in suite.seeds:
        folder = root / f"seed{seed}"
        if not (folder / "slim.pt").exists():
            continue
        slim = safe_load(folder / "slim.pt", SLIM)
        spe = int(slim["steps_per_epoch"])
        points: dict[str, dict[str, Optional[list[int]]]] = {}
        for ratio in suite.ratios:
            points[f"{ratio:g}"] = {rule: (None if (at := rule_point(
                slim, ratio, rule, epochs)) is None else list(at)) for rule in rules}
            wanted = {(e, e * spe) for e in grid} | {tuple(v) for v in points[f"{ratio:g}"].values()
                                                     if v is not None}
            for epoch, step in sorted(wanted):
                path = draw_path(folder, ratio, epoch, step, spe)
                if path.exists():
                    row = json.loads(path.read_text())
                    rows.append({k: row[k] for k in ROW_KEYS if k in row})
        for method, ratios in (("dense", [None]), ("ns", list(suite.ratios))):
            for ratio in ratios:
                path = row_path(folder, method, ratio)
                if path.exists():
                    row = json.loads(path.read_text())
                    reference.append({"method": method, **{k: row[k] for k in ROW_KEYS
                                                           if k in row}})
        seeds[str(seed)] = {"steps_per_epoch": spe, "slim_test_acc": float(slim["test_acc"]),
                            "points": points, "host": slim.get("host")}
    return {"setting": suite.as_dict(), "grid": list(grid),
            "rules": {r: list(rule_spec(r, epochs)) for r in rules}, "seeds": seeds, "rows": rows,
            "reference": reference}


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: dict) -> dict[str, Any]:
    """The curve per ratio (grid epochs), each rule's point per ratio, and the reference lines;
    means and standard deviations over the seeds that have them."""
    st, seeds = results["setting"], results["seeds"]
    epochs = st["epochs"]
    found = {(r["seed"], r["ratio"], r["draw_step"]): r for r in results["rows"]}
    ref = results["reference"]
    dense = [r["test_acc"] for r in ref if r["method"] == "dense"]
    out: dict[str, Any] = {"dense": {"acc": dense, "flops": next(
        (r["flops"] for r in ref if r["method"] == "dense"), None)}, "ratios": {}}
    for ratio in st["ratios"]:
        ns = [r for r in ref if r["method"] == "ns" and r["ratio"] == ratio]
        entry: dict[str, Any] = {"ns": _group(ns, None, epochs), "curve": [], "rules": {}}
        for epoch in results["grid"]:
            got = [found.get((int(s), ratio, epoch * info["steps_per_epoch"]))
                   for s, info in seeds.items()]
            entry["curve"].append({"epoch": epoch, **_group([g for g in got if g], ns, epochs)})
        for rule in results["rules"]:
            at = [(s, info["points"][f"{ratio:g}"][rule]) for s, info in seeds.items()]
            got = [found.get((int(s), ratio, p[1])) for s, p in at if p is not None]
            shares = [p[1] / (info["steps_per_epoch"] * epochs)
                      for (s, p), info in zip(at, seeds.values()) if p is not None]
            entry["rules"][rule] = {
                **_group([g for g in got if g], ns, epochs), "drawn": len(shares),
                "draw_share": shares, "seeds_total": len(at),
                "measured": bool(at) and all(g is not None for g in got) and len(got) == len(at)}
        out["ratios"][f"{ratio:g}"] = entry
    return out


def _group(rows: list[dict], ns: Optional[list[dict]], epochs: int) -> dict[str, Any]:
    """Accuracy, costs and sizes of a group of rows (one per seed)."""
    if not rows:
        return {"seeds": 0}
    acc = [r["test_acc"] for r in rows]
    out = {"seeds": len(rows), "acc": acc, "acc_mean": _stats(acc)[0], "acc_std": _stats(acc)[1],
           "train_flops": statistics.mean(r["train_flops"] for r in rows),
           "flops": statistics.mean(r["flops"] for r in rows),
           "params": statistics.mean(r["params"] for r in rows),
           "draw_epoch": [r.get("draw_epoch") for r in rows]}
    if ns:
        out["train_flops_ratio_ns"] = statistics.mean(r["train_flops"] for r in ns) / out[
            "train_flops"]
    return out


def goal(summary: dict, rule: str) -> dict[str, Any]:
    """Whether ``rule``'s tickets come within :data:`GOAL_POINTS` of NS at :data:`GOAL_RATIOS`,
    and how early it draws there (the mean share of the schedule, the later of the ratios)."""
    gaps, shares = {}, []
    for ratio in GOAL_RATIOS:
        entry = summary["ratios"].get(f"{ratio:g}")
        if entry is None:
            return {"met": False, "reason": f"p = {ratio:g} not run"}
        mine, ns = entry["rules"].get(rule, {}), entry["ns"]
        if not mine.get("seeds") or not ns.get("seeds"):
            return {"met": False, "reason": f"p = {ratio:g} not measured yet"}
        gaps[f"{ratio:g}"] = mine["acc_mean"] - ns["acc_mean"]
        shares.append(statistics.mean(mine["draw_share"]) if mine["draw_share"] else 1.0)
    share = max(shares)
    close = all(g >= -GOAL_POINTS for g in gaps.values())
    return {"met": close and share <= GOAL_SHARE, "close_to_ns": close, "gap_to_ns": gaps,
            "draw_share": share}


def decide(summary: dict) -> dict[str, Any]:
    """The rules that meet the goal, the earliest of them, or else the best trade-off: the
    rule closest to NS (the worse of the goal's ratios) among those drawn in the goal's share,
    and the earliest rule within the goal's points of NS at any share."""
    rules = list(next(iter(summary["ratios"].values()))["rules"]) if summary["ratios"] else []
    verdicts = {rule: goal(summary, rule) for rule in rules}
    met = sorted((r for r, v in verdicts.items() if v["met"]),
                 key=lambda r: verdicts[r]["draw_share"])
    measured = {r: v for r, v in verdicts.items() if "gap_to_ns" in v}
    early = [r for r, v in measured.items() if v["draw_share"] <= GOAL_SHARE]
    close = [r for r, v in measured.items() if v["close_to_ns"]]
    return {"goal": {"points": GOAL_POINTS, "ratios": list(GOAL_RATIOS), "share": GOAL_SHARE},
            "verdicts": verdicts, "met": met, "earliest_met": met[0] if met else None,
            "best_early": max(early, key=lambda r: min(measured[r]["gap_to_ns"].values()),
                              default=None),
            "earliest_close": min(close, key=lambda r: measured[r]["draw_share"], default=None)}


def summary_rows(results: dict, summary: dict, setting: str, default_rule: str) -> list[dict]:
    """``summary.json``'s rows: one per rule and ratio."""
    rows = []
    for ratio, entry in summary["ratios"].items():
        ns = entry["ns"]
        for rule, got in entry["rules"].items():
            rows.append({
                "setting": setting, "rule": rule, "is_default": rule == default_rule,
                "ratio": float(ratio), "seeds": got.get("seeds", 0),
                "draw_share_mean": statistics.mean(got["draw_share"]) if got["draw_share"]
                else None,
                "acc_mean": got.get("acc_mean"), "acc_std": got.get("acc_std"),
                "ns_acc_mean": ns.get("acc_mean"),
                "train_flops_ratio_ns": got.get("train_flops_ratio_ns"),
                "inference_mflops": got["flops"] / 1e6 if got.get("seeds") else None,
                "params": got.get("params"), "measured": got["measured"]})
    return rows


def _cell(group: dict, ns: dict) -> str:
    """``acc ± std | Δ NS | MFLOPs | k params | NS training FLOPs / this`` of a group."""
    if not group.get("seeds"):
        return "- | - | - | - | -"
    delta = f"{group['acc_mean'] - ns['acc_mean']:+.2f}" if ns.get("seeds") else "-"
    ratio = f"{group['train_flops_ratio_ns']:.2f}x" if "train_flops_ratio_ns" in group else "-"
    return (f"{group['acc_mean']:.2f} ± {group['acc_std']:.2f} | {delta} | "
            f"{group['flops'] / 1e6:.2f} | {group['params'] / 1e3:.1f} | {ratio}")


def collapsed(results: dict) -> list[str]:
    """The finetunes that ended within a point of chance (a layer's whole signal lost), which a
    mean over seeds would hide.

    >>> collapsed({"setting": {"num_classes": 10}, "reference": [
    ...     {"method": "ns", "seed": 1, "ratio": 0.7, "test_acc": 10.0, "params": 13663}],
    ...     "rows": [{"seed": 0, "ratio": 0.5, "test_acc": 71.2, "draw_epoch": 8}]})
    ['NS, p = 0.7, seed 1: 10.00 % (13.7 k params)']
    """
    chance = 100 / results["setting"].get("num_classes", 10)
    found = []
    for r in [*results["reference"], *results["rows"]]:
        what = ("dense" if r.get("method") == "dense" else f"NS, p = {r['ratio']:g}"
                if r.get("method") == "ns" else f"p = {r['ratio']:g} drawn at epoch {r['draw_epoch']:g}")
        if r["test_acc"] <= chance + 1:
            found.append(f"{what}, seed {r['seed']}: {r['test_acc']:.2f} % "
                         f"({r['params'] / 1e3:.1f} k params)")
    return found


def markdown(results: dict, summary: dict, decision: dict, meta: dict) -> str:
    st, epochs = results["setting"], results["setting"]["epochs"]
    done = len(results["seeds"])
    hosts = sorted({(info.get("host") or {}).get("cpu", "unknown")
                    for info in results["seeds"].values()})
    dense = summary["dense"]
    lines = [f"# Draw-point study: {st['name']}", "",
             "Generated by `benchmarks/detection.py --setting`; do not edit by hand. "
             f"`{st['arch']}{st['depth']}` width {st['width']}, {epochs} epochs, lr {st['lr']} "
             f"x0.1 at {st['schedule']}, slimming s = {st['s']:g}. Every ticket is drawn from "
             "the seed's one slimming run (masks 4 times per epoch, weights at every epoch "
             "boundary), pruned at its draw epoch and finetuned to the end exactly as the suite's "
             "EB Train does. Seeds with a slimming run: "
             f"{done} of {len(st['seeds'])}; CPU: {', '.join(hosts)}.", ""]
    if dense["acc"]:
        lines += [f"Dense (no slimming, full schedule): **{common.mean_std(dense['acc'])} %** "
                  f"({len(dense['acc'])} seeds), {dense['flops'] / 1e6:.2f} MFLOPs.", ""]
    if fell := collapsed(results):
        lines += ["**At chance accuracy** (the network lost a layer's whole signal, typically a "
                  "layer pruned to one channel; included in the means below): "
                  + "; ".join(fell) + ".", ""]
    lines += ["## The curve: tickets drawn at fixed epochs", "",
              "Mean ± std over the seeds measured (n). Δ NS: against network slimming at the "
              "same ratio. MFLOPs and parameters are the pruned network's (inference, one "
              "image). NS / this: network slimming's training FLOPs over this ticket's."
              + ("" if results["grid"] else " No fixed draw epochs (a held-out setting)."), "",
              "| p | draw epoch | share | n | test acc % | Δ NS | MFLOPs | k params | "
              "NS / this |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for ratio, entry in summary["ratios"].items():
        ns = entry["ns"]
        lines.append(f"| {ratio} | NS (end) | 100 % | {ns.get('seeds', 0)} | "
                     + (_cell(ns, {}) if ns.get("seeds") else "- | - | - | - | -") + " |")
        for point in entry["curve"]:
            lines.append(f"| {ratio} | {point['epoch']} | {100 * point['epoch'] / epochs:.1f} % "
                         f"| {point.get('seeds', 0)} | {_cell(point, ns)} |")
    lines += ["", "## Where each rule draws, and its tickets", "",
              "Each rule replayed on the recorded masks (criterion, checks per epoch, window, "
              "epsilon, span in epochs); a ticket drawn inside an epoch is pruned at the next "
              "epoch boundary, as EB Train does. drawn: seeds in which it drew before the end.",
              "", "| rule | spec | p | drawn | share (mean) | test acc % | Δ NS | MFLOPs | "
              "k params | NS / this |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rule, spec in results["rules"].items():
        for ratio, entry in summary["ratios"].items():
            got = entry["rules"][rule]
            share = (f"{100 * statistics.mean(got['draw_share']):.1f} %" if got["draw_share"]
                     else "-")
            lines.append(f"| {rule} | {', '.join('-' if v is None else str(v) for v in spec)} | "
                         f"{ratio} | {got['drawn']}/{got['seeds_total']} | {share} | "
                         f"{_cell(got, entry['ns'])} |")
    lines += ["", "## The goal", "",
              f"Within {GOAL_POINTS} points of NS at p = "
              f"{' and '.join(f'{r:g}' for r in GOAL_RATIOS)}, drawn within the first "
              f"{100 * GOAL_SHARE:.0f} % of the schedule (the later of the two ratios' mean "
              "draw points).", "", "| rule | gap to NS (p = 0.3 / 0.5) | draw share | met |",
              "| --- | --- | ---: | --- |"]
    for rule, v in decision["verdicts"].items():
        if "gap_to_ns" not in v:
            lines.append(f"| {rule} | {v['reason']} | - | no |")
            continue
        gaps = " / ".join(f"{g:+.2f}" for g in v["gap_to_ns"].values())
        lines.append(f"| {rule} | {gaps} | {100 * v['draw_share']:.1f} % | "
                     f"{'**yes**' if v['met'] else 'no'} |")
    lines += ["", f"Earliest rule that meets the goal: {decision['earliest_met'] or 'none'}. "
              f"Closest to NS among the rules drawn within {100 * GOAL_SHARE:.0f} %: "
              f"{decision['best_early'] or 'none'}. Earliest rule within {GOAL_POINTS} points of "
              f"NS at any share: {decision['earliest_close'] or 'none'}.", "",
              "![accuracy against the draw point](draw-point.png)", "",
              "![accuracy against inference FLOPs](accuracy_vs_inference.png)"]
    lines += common.provenance(meta)
    return "\n".join(lines)


def render(results: dict, out: Path, default_rule: str) -> dict:
    """Write README.md, the two plots and summary.json from ``results`` (results.json's
    content) into ``out``; returns the summary."""
    from benchmarks.suite import drawplots
    from earlybird.search.config import EARLIEST_SHARE, EarlyBirdConfig
    from earlybird.run.io import write_text
    summary = summarize(results)
    decision = decide(summary)
    default = EarlyBirdConfig()
    rows = summary_rows(results, summary, results["setting"]["name"], default_rule)
    common.write_json(out / "summary.json", {
        "default": {"criterion": default.criterion, "epsilon": default.epsilon, "window": default.window,
                    "span": default.span, "earliest_share": EARLIEST_SHARE, "rule": default_rule},
        "decision": decision, "rows": rows})
    write_text(out / "README.md", markdown(results, summary, decision, results["meta"]))
    drawplots.curve(results, summary, out / "draw-point.png")
    drawplots.inference(summary, out / "accuracy_vs_inference.png")
    return summary


def write(suite: Suite, root: Path, grid: tuple[int, ...], rules: tuple[str, ...], out: Path,
          meta: dict, default_rule: str) -> dict:
    """Collect the study from the cache ``root`` and write it to ``out``."""
    results = {"meta": meta, **collect(suite, root, grid, rules)}
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "results.json", results)
    return render(results, out, default_rule)


def rewrite(out: Path, default_rule: str) -> dict:
    """Render a committed study again from its ``results.json``."""
    path = out / "results.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist; run the study first")
    return render(json.loads(path.read_text()), out, default_rule)
