"""The dense baseline: the unpruned network, the whole schedule, no slimming."""
from __future__ import annotations

import statistics

from benchmarks.suite import costs
from benchmarks.suite.job import Job
from benchmarks.suite.registry import Method, register


def dense(job: Job, shared: dict[str, dict]) -> dict:
    d, epochs = shared["dense"], job.st.epochs
    return {"method": "dense", "ratio": None, "seed": job.seed, "test_acc": float(d["test_acc"]),
            **costs.part(d, epochs), "params": int(d["params"]), "flops": int(d["flops"]),
            "dense_params": int(d["params"]), "dense_flops": int(d["flops"]),
            "epochs_trained": epochs, "epoch_s": statistics.mean(float(s) for s in d["epoch_s"])}


register(Method("dense", "unpruned baseline, the whole schedule, no slimming", dense,
                needs=("dense",), per_ratio=False, competitor=False, colour=0))
