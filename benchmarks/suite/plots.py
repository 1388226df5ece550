"""The suite's pictures: accuracy against training FLOPs per ratio, and the whole frontier."""
from __future__ import annotations

import statistics
from typing import Any
from pathlib import Path

from benchmarks import common
from benchmarks.suite.registry import get
from earlybird.run.io import atomic_write

MARKERS = ("o", "s", "^", "D", "v", "P", "X")      # one per ratio in the frontier plot



def _palette(plt: Any) -> tuple:
    """tab20 then tab20b: a method's colour index picks from 40, the first 20 as before."""
    return tuple(plt.get_cmap("tab20").colors) + tuple(plt.get_cmap("tab20b").colors)

def plot(summary: dict, out: Path) -> None:
    """Accuracy vs training FLOPs, one panel per ratio, one marker per method (± std)."""
    plt = common.pyplot()
    ratios = sorted({e["ratio"] for e in summary["table"] if e["ratio"] is not None})
    dense = next((e for e in summary["table"] if e["method"] == "dense"), None)
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), 4.5), squeeze=False)
    palette = _palette(plt)                       # one colour per method, the same in every panel
    for ax, ratio in zip(axes[0], ratios):
        for e in [e for e in summary["table"] if e["ratio"] == ratio] + ([dense] if dense else []):
            acc = e["test_acc"]
            ax.errorbar(e["train_flops"] / 1e15, statistics.mean(acc),
                        yerr=statistics.stdev(acc) if len(acc) > 1 else 0, capsize=3,
                        fmt="*" if get(e["method"]).eb else "o", label=e["method"],
                        color=palette[get(e["method"]).colour % len(palette)],
                        markersize=10 if get(e["method"]).eb else 6)
        ax.set_xlabel("training PFLOPs (3 x forward MACs per image)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"p = {ratio:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def frontier(summary: dict, out: Path) -> None:
    """The cost-accuracy frontier: test accuracy (mean ± std over seeds) against training
    FLOPs for every method and ratio in one plot; a colour per method, a marker per ratio, each
    method's ratios joined; the dense network as a reference line."""
    plt = common.pyplot()
    palette = _palette(plt)
    table = [e for e in summary["table"] if e["ratio"] is not None]
    ratios = sorted({e["ratio"] for e in table})
    fig, ax = plt.subplots(figsize=(8, 5.5))
    dense = next((e for e in summary["table"] if e["method"] == "dense"), None)
    if dense is not None:
        acc = statistics.mean(dense["test_acc"])
        ax.axhline(acc, color="black", lw=1, ls="--", label=f"dense ({acc:.2f} %)")
        ax.axvline(dense["train_flops"] / 1e15, color="black", lw=0.5, ls=":")
    for method in dict.fromkeys(e["method"] for e in table):
        mine = sorted((e for e in table if e["method"] == method), key=lambda e: e["ratio"])
        colour = palette[get(method).colour % len(palette)]
        xs = [e["train_flops"] / 1e15 for e in mine]
        ys = [statistics.mean(e["test_acc"]) for e in mine]
        ax.plot(xs, ys, color=colour, lw=1, alpha=0.6)
        for e, x, y in zip(mine, xs, ys):
            acc = e["test_acc"]
            ax.errorbar(x, y, yerr=statistics.stdev(acc) if len(acc) > 1 else 0, capsize=2,
                        fmt=MARKERS[ratios.index(e["ratio"]) % len(MARKERS)], color=colour,
                        markersize=9 if get(method).eb else 6,
                        label=method if e is mine[0] else None)
    for r, marker in zip(ratios, MARKERS):
        ax.plot([], [], marker, color="gray", label=f"p = {r:g}")
    ax.set_xlabel("training PFLOPs (3 x forward MACs per image)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Cost-accuracy frontier (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
