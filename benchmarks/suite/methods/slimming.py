"""Network slimming (Liu et al., 2017): the whole slimming run, prune by its final scales,
finetune a whole schedule."""
from __future__ import annotations

from benchmarks.suite import costs
from benchmarks.suite.job import Job
from benchmarks.suite.registry import Method, register


def ns(job: Job, shared: dict[str, dict]) -> dict:
    slim, epochs = shared["slim"], job.st.epochs
    model = job.model(job.weights("slim", epochs))
    keep = job.pruner(model).layout.split(slim["masks"][f"{job.ratio:g}"][epochs])
    small = job.prune(model, keep)
    result = job.train(small, 0)
    return job.row("ns", small, result, slim, before=[costs.part(slim, epochs)])


register(Method("ns", "network slimming: the whole slimming run, prune by its final scales, "
                "finetune a whole schedule", ns, needs=("slim",), colour=6))
