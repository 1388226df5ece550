"""The paper's pictures of a run folder, as PNG files plus the JSON data behind each.

* ``pairwise-<p>.png``: mask distance between every two checks (the paper's Figure 3), the
  ``epsilon`` contour and the check that drew the ticket;
* ``distance.png``: distance between consecutive masks per ratio, with ``epsilon``;
* ``layers.png``: channels each ticket keeps per layer, against the layer's width;
* ``flops-vs-draw.png``: training FLOPs of EB Train had the ticket been drawn at each check
  (the paper's Figure 5), when the search recorded several checks.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from ..search.distance import pairwise_distances
from .flops import count_flops, training_flops
from ..graph import prune_model
from ..run.io import atomic_write, safe_load, write_json
from ..pipeline.config import RunConfig
from ..search.pruner import EarlyBirdPruner
from ..extras import require
from ..run.runs import CHECKPOINT_FORMAT, RunDir

log = logging.getLogger(__name__)

__all__ = ["write_plots"]


def _plt():
    require("plots", "plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    atomic_write(png, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
    _plt().close(fig)
    write_json(out / f"{name}.json", data, indent=1)
    return png


def _search_state(rd: RunDir) -> dict[str, Any]:
    path = rd.checkpoint("search")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: plots need a search")
    return safe_load(path, CHECKPOINT_FORMAT)


def _xlabel(cfg: RunConfig) -> str:
    return "optimizer step of the check" if cfg.check_every else "epoch of the check"


def plot_pairwise(state: dict, cfg: RunConfig, out: Path) -> list[Path]:
    plt = _plt()
    its = state["pruner"]["iterations"].tolist()
    paths = []
    for key, masks in state["pruner"]["masks"].items():
        if len(masks) < 2:
            continue
        d = pairwise_distances(masks)
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        im = ax.imshow(
            d.numpy(),
            cmap="viridis_r",
            origin="lower",
            vmin=0,
            extent=(its[0] - 0.5, its[-1] + 0.5, its[0] - 0.5, its[-1] + 0.5)
            if len(its) > 1 and its == list(range(its[0], its[-1] + 1))
            else None,
        )
        fig.colorbar(im, ax=ax, label="mask distance")
        ax.contour(its, its, d.numpy(), levels=[cfg.earlybird.epsilon], colors="red", linewidths=1)
        ticket = state["pruner"]["tickets"].get(key)
        if ticket is not None:
            t = its[int(ticket["check"])]
            ax.axvline(t, color="white", ls="--", lw=1)
            ax.axhline(t, color="white", ls="--", lw=1)
        ax.set_title(f"p = {key}: pairwise mask distance (red: {cfg.earlybird.epsilon:g})")
        ax.set_xlabel(_xlabel(cfg))
        ax.set_ylabel(_xlabel(cfg))
        paths.append(
            _save(
                fig,
                out,
                f"pairwise-{key}",
                {
                    "ratio": float(key),
                    "iterations": its,
                    "epsilon": cfg.earlybird.epsilon,
                    "drawn_at": None if ticket is None else its[int(ticket["check"])],
                    "distance": d.tolist(),
                },
            )
        )
    return paths


def plot_consecutive(state: dict, cfg: RunConfig, out: Path) -> Path:
    plt = _plt()
    its = state["pruner"]["iterations"].tolist()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    data: dict[str, Any] = {"iterations": its[1:], "epsilon": cfg.earlybird.epsilon, "ratios": {}}
    for key, masks in state["pruner"]["masks"].items():
        dist = (masks[1:] != masks[:-1]).double().mean(1).tolist() if len(masks) > 1 else []
        (line,) = ax.plot(its[1 : len(dist) + 1], dist, marker=".", label=f"p = {key}")
        ticket = state["pruner"]["tickets"].get(key)
        drawn = None if ticket is None else its[int(ticket["check"])]
        if drawn is not None:
            ax.axvline(drawn, color=line.get_color(), ls=":", lw=1)
        data["ratios"][key] = {"distance": dist, "drawn_at": drawn}
    ax.axhline(cfg.earlybird.epsilon, color="red", lw=1, label=f"epsilon = {cfg.earlybird.epsilon:g}")
    ax.set_xlabel(_xlabel(cfg))
    ax.set_ylabel("distance to the previous mask")
    ax.set_title("How far each ticket moved since the last check (dotted: drawn)")
    ax.legend(fontsize=8)
    return _save(fig, out, "distance", data)


def plot_layers(state: dict, out: Path) -> Path:
    plt = _plt()
    names, sizes = state["pruner"]["names"], state["pruner"]["sizes"]
    tickets = state["pruner"]["tickets"]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names) + 2), 3.8))
    x = torch.arange(len(names)).float()
    ax.bar(x, sizes, color="lightgray", label="dense width")
    data: dict[str, Any] = {"layers": names, "dense": sizes, "kept": {}}
    width = 0.8 / max(1, len(tickets))
    for i, (key, t) in enumerate(sorted(tickets.items())):
        mask = state["pruner"]["masks"][key][int(t["check"])]
        kept = [int(m.sum()) for m in torch.split(mask, sizes)]
        ax.bar(x - 0.4 + width * (i + 0.5), kept, width=width, label=f"p = {key}")
        data["kept"][key] = kept
    ax.set_xticks(x.tolist(), names, rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title("Channels each ticket keeps per layer (group root)")
    ax.legend(fontsize=8)
    return _save(fig, out, "layers", data)


def plot_flops_vs_draw(
    state: dict, cfg: RunConfig, records: list[dict], out: Path, max_points: int = 16
) -> Path | None:
    """Training FLOPs of search-until-t plus retraining the ticket of check t to the end."""
    its = state["pruner"]["iterations"].tolist()
    per_epoch = [r["samples"] for r in records if r.get("stage") == "search" and "samples" in r]
    if len(its) < 3 or not per_epoch:
        return None
    plt = _plt()
    samples = per_epoch[0]
    steps = max(1, -(-samples // cfg.batch_size)) if cfg.check_every else 1
    x = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
    model = cfg.dense_model()
    epochs = cfg.recipe.epochs
    pruner = EarlyBirdPruner(model, x, ratios=[0.5])
    dense = count_flops(model, x).flops
    pick = sorted({round(i * (len(its) - 1) / (max_points - 1)) for i in range(max_points)})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    data: dict[str, Any] = {"epochs": epochs, "dense_forward_flops": dense, "ratios": {}}
    for key, masks in state["pruner"]["masks"].items():
        rows = []
        for c in pick:
            small = copy.deepcopy(model)
            prune_model(small, x, pruner.layout.split(masks[c]), pruner.graph.ties)
            t = its[c] / steps
            flops = training_flops(dense * t + count_flops(small, x).flops * (epochs - t), samples)
            rows.append((t, flops))
        (line,) = ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", ms=3, label=f"p = {key}")
        ticket = state["pruner"]["tickets"].get(key)
        if ticket is not None:
            ax.axvline(its[int(ticket["check"])] / steps, color=line.get_color(), ls=":", lw=1)
        data["ratios"][key] = {"draw_epoch": [r[0] for r in rows], "train_flops": [r[1] for r in rows]}
    ax.axhline(training_flops(dense * epochs, samples), color="gray", lw=1, label="dense, full schedule")
    ax.set_xlabel("epoch at which the ticket is drawn")
    ax.set_ylabel("training FLOPs (search + retrain)")
    ax.set_title("EB Train cost vs draw point (dotted: where the rule drew)")
    ax.legend(fontsize=8)
    return _save(fig, out, "flops-vs-draw", data)


def write_plots(run: str | Path) -> list[Path]:
    """Write every picture of a run folder into ``<run>/plots``; returns the PNG paths.
    Needs the ``plots`` extra (matplotlib)."""
    require("plots", "plots")
    rd = RunDir(run)
    saved, state = rd.read_config(), _search_state(rd)
    if saved is None:
        raise FileNotFoundError(f"{rd.config} not found; is {run} a run folder?")
    cfg = RunConfig.from_dict(saved, str(rd.config))
    out = rd.root / "plots"
    paths = plot_pairwise(state, cfg, out) + [plot_consecutive(state, cfg, out)]
    if state["pruner"]["tickets"]:
        paths.append(plot_layers(state, out))
    extra = plot_flops_vs_draw(state, cfg, rd.read_log(), out)
    return paths + ([extra] if extra else [])
