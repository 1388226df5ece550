"""The cost ledger of a run folder: training FLOPs, energy and time per phase and per pipeline.

FLOPs are fvcore's (one multiply-add = one FLOP). A training sample costs ``backward_factor``
(3 by default: forward + backward with weight and input gradients) times the forward FLOPs of
the model in that phase; an evaluation sample costs one forward. Phases are read from the run's
``log.jsonl`` (one record per finished epoch), so a run stopped mid-way is counted up to its
last finished epoch. Wall-clock seconds are as measured; energy is estimated from FLOPs and the
phase's precision (:mod:`earlybird.costs.energy`) and, where RAPL/NVML were readable, also measured.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from .energy import ENERGY_SOURCE, PJ_PER_MAC, estimate_joules
from .flops import BACKWARD_FACTOR, count_flops, training_flops
from ..run.io import PRUNED_FORMAT, safe_load
from ..run.runs import RunDir
from ..pipeline.config import RunConfig

log = logging.getLogger(__name__)

__all__ = ["phase_cost", "build_ledger", "write_ledger", "LEDGER_FILE"]

LEDGER_FILE = "ledger.json"


def phase_cost(
    records: list[dict[str, Any]],
    forward_flops: int,
    backward_factor: float = BACKWARD_FACTOR,
    weights: Optional[list[float]] = None,
    eval_weights: Optional[list[float]] = None,
) -> dict[str, Any]:
    """Sum the cost of epoch records of one model; ``weights`` scale each epoch's training part
    (a ticket drawn mid-epoch counts that epoch in part), ``eval_weights`` its evaluation.

    >>> r = [{"samples": 100, "eval_samples": 10, "train_s": 2.0, "eval_s": 0.5, "precision": "fp32"}]
    >>> c = phase_cost(r, forward_flops=1000)
    >>> c["train_flops"], c["eval_flops"], c["flops"], c["wall_s"]
    (300000.0, 10000.0, 310000.0, 2.5)
    """
    weights = weights or [1.0] * len(records)
    eval_weights = eval_weights or [1.0] * len(records)
    out: dict[str, Any] = {
        "forward_flops": forward_flops,
        "epochs": 0.0,
        "train_samples": 0.0,
        "eval_samples": 0.0,
        "train_flops": 0.0,
        "eval_flops": 0.0,
        "train_s": 0.0,
        "eval_s": 0.0,
        "energy_j_estimated": 0.0,
        "energy_j_measured": None,
        "precision": [],
    }
    measured = []
    for rec, w, we in zip(records, weights, eval_weights):
        precision = rec.get("precision", "fp32")
        train_flops = training_flops(forward_flops, rec["samples"], backward_factor) * w
        eval_flops = forward_flops * rec.get("eval_samples", 0) * we
        out["epochs"] += w
        out["train_samples"] += rec["samples"] * w
        out["eval_samples"] += rec.get("eval_samples", 0) * we
        out["train_flops"] += train_flops
        out["eval_flops"] += eval_flops
        out["train_s"] += rec.get("train_s", 0.0) * w
        out["eval_s"] += rec.get("eval_s", 0.0) * we
        out["energy_j_estimated"] += estimate_joules(train_flops + eval_flops, precision)
        if precision not in out["precision"]:
            out["precision"].append(precision)
        if "train_j" in rec:
            measured.append(rec["train_j"] * w + rec.get("eval_j", 0.0) * we)
    out["flops"] = out["train_flops"] + out["eval_flops"]
    out["wall_s"] = out["train_s"] + out["eval_s"]
    if measured and len(measured) == len(records):
        out["energy_j_measured"] = sum(measured)
    return out


def _epochs(log_records: list[dict], stage: str) -> list[dict]:
    """The stage's epoch records in order, one per epoch (a log written by an earlier version
    may repeat an epoch that a kill made it train twice: the last record counts)."""
    found = {r["epoch"]: r for r in log_records if r.get("stage") == stage and "samples" in r}
    return [found[e] for e in sorted(found)]


def _dense_cost(cfg: RunConfig) -> dict[str, Any]:
    size = cfg.image_size
    cost = count_flops(cfg.dense_model(), torch.zeros(1, 3, size, size))
    return {"flops": cost.flops, "params": cost.params, "uncounted": cost.uncounted}


def build_ledger(run: str | Path, backward_factor: float = BACKWARD_FACTOR) -> dict[str, Any]:
    """The ledger of one run folder as a plain dict (see :func:`write_ledger`)."""
    rd = RunDir(run)
    saved = rd.read_config()
    if saved is None:
        raise FileNotFoundError(f"{rd.config} not found; is {run} a run folder?")
    cfg = RunConfig.from_dict(saved, str(rd.config))
    records = rd.read_log()
    models = {"dense": _dense_cost(cfg)}
    phases: dict[str, dict[str, Any]] = {}
    for stage in ("search", "train"):
        epochs = _epochs(records, stage)
        if epochs:
            phases[stage] = {
                "model": "dense",
                **phase_cost(epochs, models["dense"]["flops"], backward_factor),
            }
    pipelines: list[dict[str, Any]] = []
    search_epochs = _epochs(records, "search")
    for path in sorted(rd.root.glob("pruned-*.pt")):
        saved = safe_load(path, PRUNED_FORMAT)["extra"]
        ratio, draw = float(saved["ratio"]), float(saved["draw_epoch"])
        name = f"pruned-{ratio:g}"
        models[name] = {"flops": int(saved["flops"]), "params": int(saved["params"]), "draw_epoch": draw}
        weights = [min(1.0, max(0.0, draw - r["epoch"])) for r in search_epochs]
        eval_weights = [1.0 if r["epoch"] + 1 <= draw else 0.0 for r in search_epochs]
        until_draw = phase_cost(
            search_epochs, models["dense"]["flops"], backward_factor, weights, eval_weights
        )
        for mode in ("finetune", "scratch"):
            stage = RunDir.retrain_stage(ratio, mode)
            epochs = _epochs(records, stage)
            if not epochs:
                continue
            phases[stage] = {"model": name, **phase_cost(epochs, int(saved["flops"]), backward_factor)}
            pipelines.append(
                _pipeline(
                    f"EB Train ({mode})",
                    ratio,
                    draw,
                    [("search until the draw", until_draw), (stage, phases[stage])],
                    epochs[-1]["test_acc"],
                    int(saved["flops"]),
                    int(saved["params"]),
                )
            )
    for stage, label in (("search", "dense (search run to the end)"), ("train", "dense baseline")):
        epochs = _epochs(records, stage)
        if epochs and (stage == "train" or len(epochs) >= cfg.recipe.epochs):
            pipelines.append(
                _pipeline(
                    label,
                    None,
                    None,
                    [(stage, phases[stage])],
                    epochs[-1]["test_acc"],
                    models["dense"]["flops"],
                    models["dense"]["params"],
                )
            )
    return {
        "run": str(rd.root),
        "unit": "FLOPs: one multiply-add = one FLOP (fvcore)",
        "backward_factor": backward_factor,
        "energy_pj_per_mac": PJ_PER_MAC,
        "energy_source": ENERGY_SOURCE,
        "models": models,
        "phases": phases,
        "pipelines": pipelines,
        "config": cfg.as_dict(),
    }


def _pipeline(
    method: str,
    ratio: Optional[float],
    draw: Optional[float],
    parts: list[tuple[str, dict]],
    test_acc: float,
    flops: int,
    params: int,
) -> dict:
    measured = [p["energy_j_measured"] for _, p in parts]
    return {
        "method": method,
        "ratio": ratio,
        "draw_epoch": draw,
        "test_acc": test_acc,
        "flops": flops,
        "params": params,
        "phases": [name for name, _ in parts],
        "train_flops": sum(p["flops"] for _, p in parts),
        "energy_j_estimated": sum(p["energy_j_estimated"] for _, p in parts),
        "energy_j_measured": None if None in measured else sum(measured),
        "wall_s": sum(p["wall_s"] for _, p in parts),
    }


def write_ledger(run: str | Path, backward_factor: float = BACKWARD_FACTOR) -> Path:
    """Build the ledger and write it atomically as ``ledger.json`` in the run folder."""
    rd = RunDir(run)
    ledger = build_ledger(run, backward_factor)
    path = rd.root / LEDGER_FILE
    rd.write_json(path, ledger)
    return path
