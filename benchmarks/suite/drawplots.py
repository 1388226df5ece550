"""The draw-point study's pictures: accuracy against the draw point, and against inference cost."""
from __future__ import annotations

from pathlib import Path

from benchmarks import common
from earlybird.run.io import atomic_write

MARKERS = "sD^v<>*PXhp"          # one per rule, in the order of the results


def curve(results: dict, summary: dict, out: Path) -> None:
    """One panel per ratio: test accuracy (mean ± std over seeds) of tickets drawn at the grid's
    epochs (share of the schedule), each rule's point, dense and NS as reference lines."""
    plt = common.pyplot()
    epochs = results["setting"]["epochs"]
    ratios = list(summary["ratios"])
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), 4.6), squeeze=False)
    dense = summary["dense"]["acc"]
    for ax, ratio in zip(axes[0], ratios):
        entry = summary["ratios"][ratio]
        grid = [p for p in entry["curve"] if p.get("seeds")]
        if grid:
            ax.errorbar([100 * p["epoch"] / epochs for p in grid], [p["acc_mean"] for p in grid],
                        yerr=[p["acc_std"] for p in grid], fmt="o-", color="0.3", capsize=3,
                        label="ticket drawn at a fixed epoch")
        for (rule, got), marker in zip(entry["rules"].items(), MARKERS):
            if not got.get("seeds"):
                continue
            shares = [100 * s for s in got["draw_share"]]
            mid = sum(shares) / len(shares)
            ax.errorbar(mid, got["acc_mean"], yerr=got["acc_std"],
                        xerr=[[mid - min(shares)], [max(shares) - mid]], fmt=marker,
                        markersize=8, capsize=3, label=rule)
        if dense:
            ax.axhline(sum(dense) / len(dense), color="k", ls="--", lw=1, label="dense")
        ns = entry["ns"]
        if ns.get("seeds"):
            ax.axhline(ns["acc_mean"], color="tab:red", ls="-.", lw=1, label="NS")
            ax.axhspan(ns["acc_mean"] - 0.3, ns["acc_mean"] + 0.3, color="tab:red", alpha=0.08)
        ax.axvline(15, color="0.5", ls=":", lw=1)
        ax.set_xscale("log")
        shares = [100 * e / epochs for e in results["grid"]] or [
            100 * s for got in entry["rules"].values() for s in got["draw_share"]] or [1, 100]
        ax.set_xlim(min(shares) * 0.8, max(shares) * 1.25)
        ax.set_xticks([t for t in (1, 2, 3, 5, 10, 15, 25, 50, 100)
                       if min(shares) * 0.8 <= t <= max(shares) * 1.25])
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("draw point (% of the schedule, log scale)")
        ax.set_ylabel("test accuracy after finetuning (%)")
        ax.set_title(f"p = {ratio}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def inference(summary: dict, out: Path) -> None:
    """Test accuracy against the pruned network's inference MFLOPs for every ticket of the
    setting: the grid's (grey, joined per ratio), each rule's, NS and dense."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.get_cmap("tab10").colors
    rules = list(next(iter(summary["ratios"].values()))["rules"]) if summary["ratios"] else []
    for i, (ratio, entry) in enumerate(summary["ratios"].items()):
        grid = [p for p in entry["curve"] if p.get("seeds")]
        ax.plot([p["flops"] / 1e6 for p in grid], [p["acc_mean"] for p in grid], ".-",
                color="0.6", lw=0.8, label="fixed draw epochs" if i == 0 else None)
        for j, rule in enumerate(rules):
            got = entry["rules"][rule]
            if got.get("seeds"):
                ax.plot(got["flops"] / 1e6, got["acc_mean"], MARKERS[j % len(MARKERS)],
                        color=colours[j % len(colours)], markersize=7,
                        label=rule if i == 0 else None)
        ns = entry["ns"]
        if ns.get("seeds"):
            ax.errorbar(ns["flops"] / 1e6, ns["acc_mean"], yerr=ns["acc_std"], fmt="o",
                        color="tab:red", markersize=8, capsize=3,
                        label="NS" if i == 0 else None)
            ax.annotate(f"p={ratio}", (ns["flops"] / 1e6, ns["acc_mean"]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
    dense = summary["dense"]
    if dense["acc"]:
        ax.plot(dense["flops"] / 1e6, sum(dense["acc"]) / len(dense["acc"]), "ks",
                markersize=8, label="dense")
    ax.set_xlabel("inference MFLOPs of the network (one image)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against inference cost (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
