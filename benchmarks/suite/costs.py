"""What a method's training cost: FLOPs, estimated energy and measured wall-clock.

Training FLOPs are :data:`earlybird.costs.flops.BACKWARD_FACTOR` x the forward multiply-adds
(fvcore, batch of one image) per training image; evaluation is not counted. Energy is those
MACs at the phase's precision (:func:`earlybird.costs.energy.estimate_joules`), wall-clock the
measured training time of the parts a method uses, epoch by epoch, where an epoch that took
over 3x its run's median epoch (the machine paused or shared for a while) counts as the median.

>>> part({"flops": 10, "images_per_epoch": 4, "epoch_s": [1.0, 2.0, 4.0]}, 2)["wall_s"]
3.0
"""
from __future__ import annotations

import statistics

from earlybird.costs.energy import estimate_joules
from earlybird.costs.flops import training_flops

KEYS = ("train_flops", "energy_j", "wall_s", "train_images")
STALL = 3.0                     # an epoch over STALL x the median epoch was held up


def seconds(epoch_s: list[float], epochs: int | None = None) -> float:
    """The first ``epochs`` epoch times (all by default) added up, a stalled epoch counted as
    the run's median.

    >>> seconds([1.0, 1.2, 30.0, 0.9])                 # the 30 s epoch waited for the machine
    4.2
    """
    if not epoch_s:
        return 0.0
    cap = STALL * statistics.median(epoch_s)
    return sum(s if s <= cap else statistics.median(epoch_s)
               for s in epoch_s[:len(epoch_s) if epochs is None else epochs])


def part(record: dict, epochs: float, precision: str = "fp32") -> dict[str, float]:
    """Cost of ``epochs`` epochs of a shared run (its measured seconds for those epochs)."""
    flops = training_flops(float(record["flops"]), int(record["images_per_epoch"])) * epochs
    secs = [float(s) for s in record["epoch_s"]]
    return {"train_flops": flops, "energy_j": estimate_joules(flops, precision),
            "wall_s": seconds(secs, int(epochs)),
            "train_images": int(record["images_per_epoch"]) * epochs}


def own(flops: int, result: dict, precision: str = "fp32") -> dict[str, float]:
    """Cost of a training run of a model of ``flops`` (a ``common.train`` result)."""
    total = training_flops(flops, result["images_per_epoch"]) * len(result["epoch_s"])
    return {"train_flops": total, "energy_j": estimate_joules(total, precision),
            "wall_s": seconds([float(s) for s in result["epoch_s"]]),
            "train_images": result["images_per_epoch"] * len(result["epoch_s"])}


def total(*parts: dict[str, float]) -> dict[str, float]:
    """The parts added up."""
    return {k: sum(p[k] for p in parts) for k in KEYS}
