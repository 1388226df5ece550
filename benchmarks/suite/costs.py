"""What a method's training cost: FLOPs, estimated energy and measured wall-clock.

Training FLOPs are :data:`earlybird.flops.BACKWARD_FACTOR` x the forward multiply-adds
(fvcore, batch of one image) per training image; evaluation is not counted. Energy is those
MACs at the phase's precision (:func:`earlybird.energy.estimate_joules`), wall-clock the
measured training time of the parts a method uses.

>>> part({"flops": 10, "images_per_epoch": 4, "epoch_s": [1.0, 2.0, 4.0]}, 2)["wall_s"]
3.0
"""
from __future__ import annotations

from earlybird.energy import estimate_joules
from earlybird.flops import training_flops

KEYS = ("train_flops", "energy_j", "wall_s", "train_images")


def part(record: dict, epochs: float, precision: str = "fp32") -> dict[str, float]:
    """Cost of ``epochs`` epochs of a shared run (its measured seconds for those epochs)."""
    flops = training_flops(float(record["flops"]), int(record["images_per_epoch"])) * epochs
    secs = [float(s) for s in record["epoch_s"]]
    return {"train_flops": flops, "energy_j": estimate_joules(flops, precision),
            "wall_s": sum(secs[:int(epochs)]),
            "train_images": int(record["images_per_epoch"]) * epochs}


def own(flops: int, result: dict, precision: str = "fp32") -> dict[str, float]:
    """Cost of a training run of a model of ``flops`` (a ``common.train`` result)."""
    total = training_flops(flops, result["images_per_epoch"]) * len(result["epoch_s"])
    return {"train_flops": total, "energy_j": estimate_joules(total, precision),
            "wall_s": result["train_s"],
            "train_images": result["images_per_epoch"] * len(result["epoch_s"])}


def total(*parts: dict[str, float]) -> dict[str, float]:
    """The parts added up."""
    return {k: sum(p[k] for p in parts) for k in KEYS}
