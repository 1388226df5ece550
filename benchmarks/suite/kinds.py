"""Do the masks of each kind of unit settle early? Mask distances per kind (issue #26).

A transformer's ticket prunes several kinds of unit at once: attention heads, MLP units scored
by slimming coefficients, channels scored by norm scales. The paper's evidence for early-bird
tickets is that the mask stops moving early in training (its Figure 3, pairwise distances
between the masks of every two epochs). :func:`kind_distances` splits one seed's recorded masks
(the ``slim`` stage's, at every epoch boundary) by kind and computes that matrix per kind and
ratio; the report shows it as a plot and gives, per kind, the first epoch from which
consecutive masks stay within the detection threshold. Under one global threshold a kind may
lose far less than the ratio ``p`` (or far more), and two masks that prune a share ``q`` of a
kind's units differ in at most ``2 min(q, 1 - q)`` of them: a kind that loses 3 % can never
move by 0.1. So the threshold is applied to the distance as a share of the largest one the
two masks' pruned counts allow (the ``normalized`` rule's measure), and the report gives each
kind's pruned share beside it. Everything is plain data, stored in ``results.json``, so a
committed report renders again without the cache.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

import earlybird as eb
from benchmarks import common
from benchmarks.suite.config import Suite
from benchmarks.suite.runner import cache_dir
from benchmarks.suite.stages import SEARCHES, SLIM
from earlybird.graph.coefficients import unit_kind
from earlybird.run.io import atomic_write, safe_load
from earlybird.search.distance import pairwise_distances

SETTLED = 0.1          # the reference rule's epsilon: consecutive masks closer than this


def kind_distances(suite: Suite, cache: Path, seed: Optional[int] = None,
                   tag: str = "slim") -> Optional[dict[str, Any]]:
    """Per kind of unit and ratio, the pairwise distances between the masks of every two epoch
    boundaries of ``seed``'s slimming run ``tag`` (the setting's first seed by default; a
    shared run of :data:`~benchmarks.suite.stages.SEARCHES`); None without that run or with
    one kind only."""
    seed = suite.seeds[0] if seed is None else seed
    path = cache_dir(suite, cache) / f"seed{seed}" / f"{tag}.pt"
    if not path.exists():
        return None
    slim = safe_load(path, SLIM)
    st = suite.setting
    pruner = eb.EarlyBirdPruner(common.build(st, seed), common.example(st), suite.ratios,
                                sparsity=st.s, keep_weights=False, **SEARCHES[tag])
    layout = pruner.layout
    if list(layout.sizes) != [int(s) for s in slim["sizes"]]:
        raise ValueError(f"{path}: its masks were recorded on another layout of the network")
    coefficients = set(pruner.graph.coefficients)
    kinds: dict[str, list[int]] = {}
    start = 0
    for name, size in zip(layout.names, layout.sizes):
        kinds.setdefault(unit_kind(name, coefficients), []).extend(range(start, start + size))
        start += size
    if len(kinds) < 2:
        return None
    spe, steps = int(slim["steps_per_epoch"]), [int(s) for s in slim["steps"]]
    rows = [i for i, s in enumerate(steps) if s % spe == 0]
    out: dict[str, Any] = {"seed": seed, "search": tag, "epochs": [steps[i] // spe for i in rows],
                           "kinds": {}}
    for kind, idx in kinds.items():
        index = torch.tensor(idx)
        masks = {f"{r:g}": slim["masks"][f"{r:g}"][rows][:, index] for r in suite.ratios}
        out["kinds"][kind] = {
            "units": len(idx),
            "ratios": {r: [[round(float(v), 4) for v in line]
                           for line in pairwise_distances(m).tolist()] for r, m in masks.items()},
            # the share of the kind's units each epoch's mask prunes
            "pruned": {r: [round(1 - float(row.float().mean()), 4) for row in m]
                       for r, m in masks.items()}}
    return out


def reachable(a: float, b: float) -> float:
    """The largest distance between two masks that prune shares ``a`` and ``b`` of the same
    units: every unit one prunes the other keeps, as far as their counts allow.

    >>> reachable(0.03, 0.03), reachable(0.5, 0.5), reachable(0.8, 0.6)
    (0.06, 1.0, 0.6)
    """
    return round(min(a + b, 2 - a - b), 10)


def settle_epoch(distances: list[list[float]], epochs: list[int],
                 threshold: float = SETTLED, pruned: Optional[list[float]] = None) -> Optional[int]:
    """The first epoch from which every two consecutive masks differ by less than
    ``threshold``, or None if the last step still moves more. With ``pruned`` (each mask's
    pruned share) a distance counts as a share of the largest the two masks allow
    (:func:`reachable`).

    >>> d = [[0, .3, .3, .3], [.3, 0, .05, .06], [.3, .05, 0, .02], [.3, .06, .02, 0]]
    >>> settle_epoch(d, [0, 1, 2, 3])
    1
    >>> few = [[0, .06, .06, .06], [.06, 0, .04, .04], [.06, .04, 0, 0], [.06, .04, 0, 0]]
    >>> settle_epoch(few, [0, 1, 2, 3]), settle_epoch(few, [0, 1, 2, 3], pruned=[.03] * 4)
    (0, 2)
    """
    first = None
    for i in range(1, len(epochs)):
        d = distances[i - 1][i]
        if pruned is not None:
            top = reachable(pruned[i - 1], pruned[i])
            d = d / top if top else 0.0
        if d < threshold:
            first = epochs[i - 1] if first is None else first
        else:
            first = None
    return first


def last_change(distances: list[list[float]], epochs: list[int]) -> Optional[int]:
    """The last epoch whose mask differs from the previous epoch's in any unit, or None.

    >>> last_change([[0, .3, .3, .3], [.3, 0, .05, .05], [.3, .05, 0, 0], [.3, .05, 0, 0]],
    ...             [0, 1, 2, 3])
    2
    """
    moved = [epochs[i] for i in range(1, len(epochs)) if distances[i - 1][i] > 0]
    return moved[-1] if moved else None


def markdown(data: dict[str, Any]) -> list[str]:
    """The section of the report: per kind, units and the epoch its masks settle at."""
    tag = data.get("search", "slim")
    budget = SEARCHES[tag].get("budget", "global")
    lines = ["", "## Do the masks of each kind settle early?" + (f" ({tag})" if tag != "slim" else ""),
             "", f"Seed {data['seed']}'s slimming run `{tag}` ({_settings(tag)}), masks at every "
             "epoch boundary, split by the kind of unit "
             f"(`{plot_name(tag)}`: the distance between every two epochs' "
             "masks, as a share of the kind's units). Pruned: the share of the kind's units the "
             "last mask prunes (" + ("one global threshold gives each kind its own" if budget ==
                                     "global" else "a budget per kind: the ratio") + "). Settles at: the "
             f"first epoch from which consecutive masks differ by less than {SETTLED:g} of the "
             "largest distance their pruned counts allow (a kind that loses 3 % of its units "
             "can move by 0.06 at most); with 12 heads, one head in or out moves a mask by "
             "0.083 of the units. Last change: the last epoch whose mask differs from the one "
             "before in any unit.", "",
             "| kind | units | p | pruned | settles at epoch | last change | of |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    last = data["epochs"][-1]
    for kind, entry in data["kinds"].items():
        for ratio, matrix in entry["ratios"].items():
            pruned = entry["pruned"][ratio]
            at = settle_epoch(matrix, data["epochs"], pruned=pruned)
            moved = last_change(matrix, data["epochs"])
            lines.append(f"| {kind} | {entry['units']:,} | {ratio} | {100 * pruned[-1]:.1f} % | "
                         f"{'never' if at is None else at} | {'-' if moved is None else moved} | "
                         f"{last} |")
    return lines


def _settings(tag: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in SEARCHES[tag].items())


def plot_name(tag: str) -> str:
    """The file of the plot of the shared run ``tag``'s mask distances."""
    return "mask_distance_by_kind.png" if tag == "slim" else f"mask_distance_by_kind-{tag}.png"


def plot(data: dict[str, Any], out: Path) -> None:
    """A heatmap per kind (rows) and ratio (columns) of the pairwise mask distances."""
    plt = common.pyplot()
    kinds = list(data["kinds"])
    ratios = list(next(iter(data["kinds"].values()))["ratios"])
    epochs = data["epochs"]
    fig, axes = plt.subplots(len(kinds), len(ratios), figsize=(4.4 * len(ratios),
                                                               3.8 * len(kinds)), squeeze=False)
    span = (epochs[0] - 0.5, epochs[-1] + 0.5, epochs[0] - 0.5, epochs[-1] + 0.5)
    for row, kind in zip(axes, kinds):
        for ax, ratio in zip(row, ratios):
            matrix = data["kinds"][kind]["ratios"][ratio]
            image = ax.imshow(matrix, cmap="viridis_r", origin="lower", vmin=0, extent=span)
            fig.colorbar(image, ax=ax, label="mask distance")
            ax.set_title(f"{kind} ({data['kinds'][kind]['units']:,}), p = {ratio}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("epoch")
    fig.tight_layout()
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
