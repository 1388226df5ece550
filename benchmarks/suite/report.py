"""The report of a setting: the Table-2-style table (mean ± std over seeds), EB Train against
the best competitors, the performance bar, the stability table and the accuracy-vs-FLOPs
plot; written as ``results.json``, ``README.md`` and ``accuracy_vs_flops.png``."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional, Union

from benchmarks import common
from benchmarks.suite.config import Suite, suite_from_dict
from benchmarks.suite.methods.lottery import prunable_weights
from benchmarks.suite.claims import claims, claims_markdown
from benchmarks.suite.kinds import markdown as kind_section, plot as plot_kinds, plot_name
from benchmarks.suite.plots import frontier, plot
from benchmarks.suite.registry import REGISTRY, get
from earlybird.run.io import write_text

# the EB runs the performance bar is read for: the rules, and eb-kind (the library's default
# budget, a threshold per kind of unit; on a model with one kind it is eb again)
BAR_METHODS = ("eb", "eb-plateau", "eb-default", "eb-kind")


def summarize(suite: Suite, rows: list[dict]) -> dict[str, Any]:
    """Per (method, ratio): accuracy mean/std over seeds and mean costs (for weight-masked
    methods also the nonzero parameters); the EB improvement over the best competitor and over
    the best channel-pruning competitor; the performance bar at ratio 0.5 (if run)."""
    groups: dict[tuple[str, Optional[float]], list[dict]] = {}
    stability: dict[float, list[dict]] = {}
    for r in rows:
        if get(r["method"]).table == "stability":
            stability.setdefault(r["ratio"], []).append(r)
        else:
            groups.setdefault((r["method"], r["ratio"]), []).append(r)
    table = []
    prunable: Optional[int] = None
    for (method, ratio), found in groups.items():
        entry = {"method": method, "ratio": ratio, "seeds": len(found),
                 "test_acc": [r["test_acc"] for r in found]}
        for k in ("train_flops", "energy_j", "wall_s", "params", "flops", "dense_flops",
                  "dense_params"):
            entry[k] = statistics.mean(r[k] for r in found)
        for k in ("draw_epoch", "draw_at", "sparsity", "epoch_s", "train_images"):
            if all(r.get(k) is not None for r in found):
                entry[k] = statistics.mean(r[k] for r in found)
        cpus = sorted({r["host"]["cpu"] for r in found if "cpu" in r.get("host", {})})
        if cpus:                                  # the CPU models that computed the rows
            entry["cpus"] = cpus
        if all("kind_shares" in r for r in found):          # what the ticket prunes, by kind
            entry["kind_shares"] = {k: statistics.mean(r["kind_shares"][k] for r in found)
                                    for k in found[0]["kind_shares"]}
        if suite.claims and all("drawn" in r for r in found):     # how many seeds drew it
            entry["drawn"] = sum(bool(r["drawn"]) for r in found)
        if "sparsity" in entry:         # the masked weights' zeros counted out (ShrinkBench)
            if prunable is None:
                prunable = sum(w.numel() for w in prunable_weights(
                    common.build(suite.setting, suite.seeds[0])).values())
            entry["nonzero_params"] = round(entry["params"] - entry["sparsity"] * prunable)
        table.append(entry)
    order = {m: i for i, m in enumerate(REGISTRY)}
    table.sort(key=lambda e: (e["ratio"] or 0, order[e["method"]]))
    improvement = {}
    for ratio in suite.ratios:
        ours = [e for e in table if e["ratio"] == ratio and e["method"] in BAR_METHODS]
        theirs = [e for e in table if e["ratio"] == ratio and get(e["method"]).competitor]
        if ours and theirs:
            best = max(ours, key=lambda e: statistics.mean(e["test_acc"]))
            rival = max(theirs, key=lambda e: statistics.mean(e["test_acc"]))
            cheap = min(theirs, key=lambda e: e["train_flops"])
            acc = statistics.mean(best["test_acc"])
            improvement[f"{ratio:g}"] = {
                "eb_method": best["method"], "best_competitor": rival["method"],
                "acc_delta": acc - statistics.mean(rival["test_acc"]),
                "cheapest_competitor": cheap["method"],
                "train_flops_saving": cheap["train_flops"] / best["train_flops"],
                "energy_saving": cheap["energy_j"] / best["energy_j"]}
            channel = [e for e in theirs if not get(e["method"]).unstructured]
            if channel:
                rival = max(channel, key=lambda e: statistics.mean(e["test_acc"]))
                improvement[f"{ratio:g}"].update(
                    best_channel_competitor=rival["method"],
                    channel_acc_delta=acc - statistics.mean(rival["test_acc"]))
    out = {"table": table, "improvement": improvement, "bar": performance_bar(suite, table)}
    found = claims(suite, table) if suite.claims else None
    if found:
        out["claims"] = found
    if stability:
        out["stability"] = [
            {"ratio": ratio, "seeds": len(found),
             "draw_epoch": statistics.mean(r["draw_epoch"] for r in found),
             **{f"{k}_distance": [r[f"{k}_distance"] for r in found] for k in ("eb", "random")},
             **{f"{k}_acc": [a for r in found for a in r[f"{k}_accs"]] for k in ("eb", "random")}}
            for ratio, found in sorted(stability.items())]
    return out


def rows_by_cpu(table: list[dict]) -> dict[str, list[str]]:
    """Per CPU model, the methods (``method pR`` per ratio) whose rows it computed.

    >>> rows_by_cpu([{"method": "eb", "ratio": 0.5, "cpus": ["A"]},
    ...              {"method": "dense", "ratio": None, "cpus": ["A", "B"]}])
    {'A': ['eb p0.5', 'dense'], 'B': ['dense']}
    """
    out: dict[str, list[str]] = {}
    for e in table:
        name = e["method"] if e["ratio"] is None else f"{e['method']} p{e['ratio']:g}"
        for cpu in e.get("cpus", []):
            out.setdefault(cpu, []).append(name)
    return out


def performance_bar(suite: Suite, table: list[dict]) -> dict[str, dict[str, Any]]:
    """The issue's bar at ratio 0.5, per EB run of :data:`BAR_METHODS` that ran (``eb``,
    ``eb-kind``, ...): EB vs NS training FLOPs (>= 2x) and wall-clock (>= 1.8x), accuracy within
    0.5 points of NS, draw in the first 20 % of the epochs, and the pruned model's measured
    epoch-time speedup >= 0.7 of its FLOPs reduction."""
    return {m: bar for m in BAR_METHODS
            if (bar := _bar(suite, table, m)) is not None}


def _bar(suite: Suite, table: list[dict], method: str) -> Optional[dict[str, Any]]:
    def get(name: str) -> Optional[dict]:
        return next((e for e in table if e["method"] == name and e["ratio"] == 0.5), None)
    eb_row, ns_row = get(method), get("ns")
    dense = next((e for e in table if e["method"] == "dense"), None)
    if eb_row is None or ns_row is None:
        return None
    out: dict[str, Any] = {
        "flops_ratio": ns_row["train_flops"] / eb_row["train_flops"],
        "wall_ratio": ns_row["wall_s"] / eb_row["wall_s"],
        "acc_gap": statistics.mean(ns_row["test_acc"]) - statistics.mean(eb_row["test_acc"]),
        "draw_share": eb_row["draw_epoch"] / suite.setting.epochs}
    if dense is not None and ns_row.get("epoch_s") and dense.get("epoch_s"):
        flops_red = dense["flops"] / ns_row["flops"]
        out["flops_reduction"] = flops_red
        out["step_speedup"] = dense["epoch_s"] / ns_row["epoch_s"]
        out["speedup_share"] = out["step_speedup"] / flops_red
    out["pass"] = {"flops_ratio >= 2": out["flops_ratio"] >= 2,
                   "wall_ratio >= 1.8": out["wall_ratio"] >= 1.8,
                   "acc within 0.5 of NS": out["acc_gap"] <= 0.5,
                   "draw in first 20 %": out["draw_share"] <= 0.2}
    if "speedup_share" in out:
        out["pass"]["step speedup >= 0.7 x FLOPs reduction"] = out["speedup_share"] >= 0.7
    return out


def markdown(suite: Suite, summary: dict, meta: dict, kinds: Union[None, dict, list] = None) -> str:
    st = suite.setting
    lines = [f"# Benchmark `{suite.name}`: accuracy and training cost per method", "",
             f"Generated by `python -m benchmarks run {suite.name}`; do not edit by hand. "
             f"{suite.description}", "",
             f"Setting: `{st.arch}{st.depth or ''}` width {st.width}, {st.dataset} "
             f"({meta['train_images']:,} training / {meta['test_images']:,} test images), "
             f"{st.epochs} epochs, lr {st.lr} x0.1 at {list(st.schedule)}, batch {st.batch_size}, "
             f"slimming s = {st.s:g}, seeds {list(suite.seeds)}, LT rewind to epoch "
             f"{suite.rewind_epoch}, {suite.lt_rounds} iterative rounds. Accuracy: mean ± std "
             "over seeds. Training FLOPs: 3 x forward multiply-adds per training image "
             "(fvcore); energy: that many MACs at 4.6 pJ (fp32) or 0.23 pJ (8-bit), Horowitz "
             "2014 (an estimate, not a measurement); wall-clock: measured training time of the "
             "parts each method uses.", "",
             "| ratio | method | test acc % | train PFLOPs | energy kJ (est.) | wall min | "
             "params | FLOPs | draw epoch | sparsity |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in summary["table"]:
        ratio = "-" if e["ratio"] is None else f"{e['ratio']:g}"
        draw = f"{e['draw_epoch']:.1f}" if "draw_epoch" in e else "-"
        sparsity = f"{100 * e['sparsity']:.1f} %" if "sparsity" in e else "-"
        params = e.get("nonzero_params", e["params"])
        nonzero = " nonzero" if "nonzero_params" in e else ""
        lines.append(
            f"| {ratio} | {e['method']} | {common.mean_std(e['test_acc'])} | {e['train_flops'] / 1e15:.3f} | "
            f"{e['energy_j'] / 1e3:.3f} | {e['wall_s'] / 60:.1f} | "
            f"{params / 1e6:.3f}M{nonzero} ({e['dense_params'] / params:.2f}x) | "
            f"{e['flops'] / 1e6:.1f}M ({e['dense_flops'] / e['flops']:.2f}x) | {draw} | {sparsity} |")
    if summary["improvement"]:
        ours = ("The most accurate EB run (a rule, or eb-kind: a budget per kind of unit)"
                if any(e["method"] == "eb-kind" for e in summary["table"])
                else "The more accurate EB rule")
        lines += ["", "## EB Train vs the best competitor", "",
                  f"{ours} against the most accurate competitor, and against "
                  "the most accurate one that prunes channels (weight-masked tickets, "
                  f"{', '.join(m for m, spec in REGISTRY.items() if spec.unstructured)}, keep "
                  "the dense network's shape and FLOPs).", "",
                  "| ratio | EB method | acc vs most accurate competitor | acc vs most accurate "
                  "channel-pruning competitor | training FLOPs saving vs the cheapest competitor "
                  "| energy saving |", "| ---: | --- | --- | --- | ---: | ---: |"]
        for ratio, imp in summary["improvement"].items():
            channel = (f"{imp['channel_acc_delta']:+.2f} ({imp['best_channel_competitor']})"
                       if "best_channel_competitor" in imp else "-")
            lines.append(f"| {ratio} | {imp['eb_method']} | {imp['acc_delta']:+.2f} "
                         f"({imp['best_competitor']}) | {channel} | {imp['train_flops_saving']:.2f}x "
                         f"({imp['cheapest_competitor']}) | {imp['energy_saving']:.2f}x |")
    if summary.get("stability"):
        lines += ["", "## Stability to SGD noise (EB ticket vs random ticket)", "",
                  "Two copies of each ticket trained from the same draw-epoch weights with two "
                  "data orders; distance = ||w1 - w2|| / ||w1|| at the end (smaller: more "
                  "stable), accuracy over both copies and all seeds.", "",
                  "| ratio | draw epoch | EB distance | random distance | EB acc % | random acc % |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for e in summary["stability"]:
            lines.append(f"| {e['ratio']:g} | {e['draw_epoch']:.1f} | "
                         f"{common.mean_std(e['eb_distance'], 4)} | "
                         f"{common.mean_std(e['random_distance'], 4)} | "
                         f"{common.mean_std(e['eb_acc'])} | {common.mean_std(e['random_acc'])} |")
    for method, bar in summary["bar"].items():
        lines += ["", f"## Performance bar at p = 0.5 ({method} vs NS)", "",
                  f"- training FLOPs NS / EB: {bar['flops_ratio']:.2f}x (target >= 2x)",
                  f"- wall-clock NS / EB: {bar['wall_ratio']:.2f}x (target >= 1.8x)",
                  f"- accuracy NS - EB: {bar['acc_gap']:+.2f} points (target <= 0.5)",
                  f"- draw point: {100 * bar['draw_share']:.0f} % of the epochs (target <= 20 %)"]
        if "speedup_share" in bar:
            lines.append(f"- pruned (NS p=0.5) epoch-time speedup {bar['step_speedup']:.2f}x for "
                         f"{bar['flops_reduction']:.2f}x fewer FLOPs: {bar['speedup_share']:.2f} "
                         "of it (target >= 0.7)")
        missed = [k for k, ok in bar["pass"].items() if not ok]
        lines.append("- **missed: " + "; ".join(missed) + "**" if missed else "- all met")
    if summary.get("claims"):
        lines += claims_markdown(summary["claims"])
    if st.peak_tflops:
        lines += throughput(summary, st.peak_tflops)
    lines += shares_markdown(summary["table"])
    for data in _searches(kinds):
        lines += kind_section(data)
    lines += common.provenance(meta)
    cpus = rows_by_cpu(summary["table"])
    if len(cpus) > 1:                 # the machine line names only the last invocation's CPU
        *few, most = sorted(cpus, key=lambda cpu: len(cpus[cpu]))
        lines.insert(-1, "- rows computed on: " + "; ".join(
            f"{cpu} ({', '.join(cpus[cpu])})" for cpu in few) + f"; the others on {most}")
    return "\n".join(lines)


def shares_markdown(table: list[dict]) -> list[str]:
    """What each EB ticket prunes of each kind of unit, where a ticket prunes more than one
    kind (a transformer's channels, MLP units, heads or head dimensions); else nothing."""
    shown = [e for e in table if set(e.get("kind_shares", {})) - {"channels"}]
    if not shown:
        return []
    kinds = list(dict.fromkeys(k for e in shown for k in e["kind_shares"]))
    lines = ["", "## What each EB ticket prunes, by kind of unit", "",
             "The share of each kind's units the ticket prunes (mean over seeds; `-`: the "
             "setting leaves the kind out).", "", "| ratio | method | " + " | ".join(kinds) + " |",
             "| ---: | --- |" + " ---: |" * len(kinds)]
    for e in shown:
        cells = [f"{100 * e['kind_shares'][k]:.1f} %" if k in e["kind_shares"] else "-"
                 for k in kinds]
        lines.append(f"| {e['ratio']:g} | {e['method']} | " + " | ".join(cells) + " |")
    return lines


def throughput(summary: dict, peak_tflops: float) -> list[str]:
    """Images per second and the share of the chip's rate each method reached (its training
    FLOPs count multiply-adds, so the chip's rate is met at 2 FLOPs per multiply-add)."""
    lines = ["", "## Throughput", "",
             f"Training images per second and the arithmetic rate reached (2 FLOPs per "
             f"multiply-add) against the chip's {peak_tflops:g} TFLOP/s, over each method's "
             "measured training time.", "",
             "| ratio | method | images / s | TFLOP/s reached | share of the chip's rate |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for e in summary["table"]:
        if "train_images" not in e or not e["wall_s"]:
            continue
        rate = 2 * e["train_flops"] / e["wall_s"] / 1e12
        ratio = "-" if e["ratio"] is None else f"{e['ratio']:g}"
        lines.append(f"| {ratio} | {e['method']} | {e['train_images'] / e['wall_s']:,.0f} | "
                     f"{rate:.1f} | {100 * rate / peak_tflops:.1f} % |")
    return lines


def rewrite_results(out: Path) -> dict:
    """Render ``out/README.md``, the plot and the summary in ``out/results.json`` again from
    the rows, setting and meta stored in ``out/results.json`` (after a change to the report;
    nothing trains, the meta of the run that made the rows is kept)."""
    path = out / "results.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; run the setting first")
    stored = json.loads(path.read_text())
    missing = sorted({"meta", "suite", "rows"} - set(stored))
    if missing:
        raise ValueError(f"{path} has no {missing}: not written by `python -m benchmarks run`")
    suite = suite_from_dict(stored["suite"], stored["suite"]["name"], str(path))
    return write_results(suite, stored["rows"], out, stored["meta"], stored.get("mask_kinds"))


def _searches(kinds: Union[None, dict, list]) -> list[dict]:
    """The mask distances per kind of one shared run (a dict, as results before several were
    kept) or of several (a list)."""
    return [] if not kinds else [kinds] if isinstance(kinds, dict) else list(kinds)


def write_results(suite: Suite, rows: list[dict], out: Path, meta: dict,
                  kinds: Union[None, dict, list] = None) -> dict:
    """results.json (rows + summary + meta), README.md (the table), accuracy_vs_flops.png (a panel
    per ratio) and frontier.png (every method and ratio in one cost-accuracy plot); with
    ``kinds`` (:func:`~benchmarks.suite.kinds.kind_distances`, one shared run's or a list of
    several) also the masks' distances per kind of unit (mask_distance_by_kind*.png)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(suite, rows)
    common.write_json(out / "results.json", {"meta": meta, "suite": suite.as_dict(), **summary,
                                             "rows": rows, **({"mask_kinds": kinds} if kinds else {})})
    write_text(out / "README.md", markdown(suite, summary, meta, kinds))
    for data in _searches(kinds):
        plot_kinds(data, out / plot_name(data.get("search", "slim")))
    if any(e["ratio"] is not None for e in summary["table"]):
        plot(summary, out / "accuracy_vs_flops.png")
        frontier(summary, out / "frontier.png")
    return summary
