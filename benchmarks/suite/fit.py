"""How many epochs of a setting fit in a time budget on this machine?

Times one epoch (after one warm-up epoch) of the dense network and of a pruned copy at each of
the setting's ratios (channels cut by position, the size a ticket has), then projects the
setting's training time for T epochs as EB Train and network slimming spend it: the dense and
the slimming run (2T dense epochs), and for each ratio a finetune of up to T epochs for EB Train
and a whole one for NS (2T pruned epochs, an upper bound: EB Train starts at its draw epoch).
Evaluation and start-up take the share of the budget left by ``margin``.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch

import earlybird as eb
from benchmarks import common
from benchmarks.suite.config import Suite


def epoch_seconds(model: torch.nn.Module, setting: common.Setting, data: common.Data) -> float:
    """Seconds of one training epoch of ``model``, after one warm-up epoch."""
    short = replace(setting, epochs=2, schedule=())
    trainer = eb.Trainer(model, short.recipe, data.train, device=common.device_of(setting),
                         precision=setting.precision, compile=setting.compile)
    trainer.train_epoch()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train_epoch()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def fit(suite: Suite, minutes: float, margin: float = 0.85) -> dict[str, Any]:
    """The longest schedule (at most the setting's) whose projected training time fits in
    ``margin`` of ``minutes``: ``{"epochs", "dense_epoch_s", "pruned_epoch_s", ...}``."""
    st = suite.setting
    data = common.load_data(st, suite.seeds[0])
    model = common.build(st, suite.seeds[0])
    dense = epoch_seconds(model, st, data)
    pruner = eb.EarlyBirdPruner(common.build(st, suite.seeds[0]), common.example(st),
                                suite.ratios, keep_weights=False)
    pruned = {f"{r:g}": epoch_seconds(pruner.prune(r, force=True), st, data) for r in suite.ratios}
    per_epoch = 2 * dense + 2 * sum(pruned.values())
    epochs = min(st.epochs, max(1, math.floor(margin * minutes * 60 / per_epoch)))
    return {"setting": suite.name, "epochs": epochs, "of": st.epochs, "minutes": minutes,
            "dense_epoch_s": dense, "pruned_epoch_s": pruned,
            "projected_min": epochs * per_epoch / 60, "margin": margin}
