"""Network slimming (Liu et al., 2017): the whole slimming run, prune by its final scales,
finetune a whole schedule; and the same at EB Train's cost (``ns-budget``)."""
from __future__ import annotations

from dataclasses import replace

import earlybird as eb
from benchmarks import common
from benchmarks.suite import costs
from benchmarks.suite.job import Job
from benchmarks.suite.registry import Method, register
from benchmarks.suite.stages import SEARCHES
from earlybird.costs.flops import count_flops, training_flops
from earlybird.training.recipe import default_schedule

BUDGET_OF = "eb-plateau"              # the EB Train row whose training FLOPs ns-budget spends


def ns(job: Job, shared: dict[str, dict]) -> dict:
    slim, epochs = shared["slim"], job.st.epochs
    model = job.model(job.weights("slim", epochs))
    keep = job.split(slim)
    small = job.prune(model, keep)
    result = job.train(small, 0)
    return job.row("ns", small, result, slim, before=[costs.part(slim, epochs)])


def budget_epochs(budget: float, dense: float, small: float) -> int:
    """Epochs ``n`` of the shortened slimming run (and first guess of the finetune) so that
    ``n`` dense epochs and ``n`` small ones cost ``budget`` (FLOPs per epoch given).

    >>> budget_epochs(100.0, dense=10.0, small=2.5)
    8
    """
    return max(1, round(budget / (dense + small)))


def ns_budget(job: Job, shared: dict[str, dict], method: str = "ns-budget",
              budget_of: str = BUDGET_OF) -> dict:
    """Network slimming shortened to EB Train's training FLOPs at this ratio and seed: a
    slimming run of ``n`` epochs and a finetune of ``m``, each with the setting's schedule
    shape (lr x0.1 at 50 % and 75 % of its own length); ``n`` from the dense and the full NS
    ticket's FLOPs per epoch, ``m`` from what is left for the ticket the short run draws."""
    from benchmarks.suite.runner import run_method       # the EB row, from the cache
    budget = float(run_method(job.suite, job.seed, budget_of, job.ratio, job.folder)["train_flops"])
    slim = shared["slim"]
    images = int(slim["images_per_epoch"])
    full = job.model(job.weights("slim", job.st.epochs))
    guess = count_flops(job.prune(full, job.split(slim)), job.example).flops
    per_dense = training_flops(int(slim["flops"]), images)
    n = budget_epochs(budget, per_dense, training_flops(guess, images))
    short = _shortened(job, n)
    model = job.model()
    pruner = eb.EarlyBirdPruner(model, job.example, [job.ratio], sparsity=job.st.s,
                                keep_weights=False, **SEARCHES["slim"])
    searched = common.train(model, short, job.data, 0, n, regularize=pruner.regularize)
    small = job.prune(model.cpu(), pruner.masks(job.ratio))
    per_small = training_flops(count_flops(small.cpu(), job.example).flops, images)
    m = max(1, round((budget - n * per_dense) / per_small))
    result = common.train(small, _shortened(job, m), job.data, 0, m)
    return job.row(method, small, result, slim,
                   before=[costs.own(int(slim["flops"]), searched)], budget_flops=budget,
                   budget_of=budget_of, slim_epochs=n, finetune_epochs=m,
                   short_slim_acc=float(searched["test_acc"]))


def _shortened(job: Job, epochs: int) -> common.Setting:
    return replace(job.st, epochs=epochs, schedule=tuple(default_schedule(epochs)))


register(Method("ns", "network slimming: the whole slimming run, prune by its final scales, "
                "finetune a whole schedule", ns, needs=("slim",), colour=6))
register(Method("ns-budget", "network slimming shortened to EB Train's (eb-plateau) training "
                "FLOPs: a slimming run and a finetune of fewer epochs, same schedule shape",
                ns_budget, needs=("slim",), after=(BUDGET_OF,), competitor=False, colour=16))
register(Method("ns-budget-default", "network slimming shortened to the training FLOPs of EB Train "
                "with the library's default rule (eb-default)",
                lambda job, shared: ns_budget(job, shared, "ns-budget-default", "eb-default"),
                needs=("slim",), after=("eb-default",), competitor=False, colour=22))
