"""EB Train (You et al., 2020): slimming until a detection rule draws the ticket, prune, and
train only the small network from the draw epoch to the end; its re-initialised variant and
the 8-bit search (LF: fp32 finetune, LL: 8-bit finetune)."""
from __future__ import annotations

from benchmarks.suite import costs
from benchmarks.suite.job import Job
from benchmarks.suite.registry import Method, register


def _eb(job: Job, method: str, shared: dict[str, dict], tag: str, rule: str) -> dict:
    slim = shared[tag]
    if rule in ("plateau", "default"):     # as often as the setting checks
        rule = f"{rule} @{job.suite.checks_per_epoch}/epoch"
    t, drawn, dense_model, keep = job.ticket(slim, tag, rule)
    search = costs.part(slim, t, str(slim["precision"]))
    extra = {"draw_epoch": t, "drawn": drawn, "rule": rule.split()[0],
             "kind_shares": job.kind_shares(keep, tag)}
    if job.suite.checks_per_epoch > 1:
        extra["draw_at"] = job.draw_step(slim, rule)   # the check that drew it, in epochs
    if method == "eb-reinit":
        small = job.prune(job.model(seed_offset=1), keep, tag)
        result = job.train(small, 0)
    else:
        small = job.prune(dense_model, keep, tag)
        result = job.train(small, t, "q8" if method == "ll" else None)
    return job.row(method, small, result, slim, before=[search],
                   precision="q8" if method == "ll" else None, **extra)


def _variant(name: str, description: str, tag: str, rule: str, colour: int) -> None:
    register(Method(name, description, lambda job, shared: _eb(job, name, shared, tag, rule),
                    needs=(tag,), eb=True, competitor=False, rule=rule, colour=colour))


_variant("eb", "EB Train: slimming until the reference rule draws the ticket, prune, finetune "
         "to the end", "slim", "reference", 1)
_variant("eb-plateau", "EB Train with the plateau rule (span 2 epochs of steps), checked "
         "checks_per_epoch times per epoch", "slim", "plateau", 2)
_variant("eb-default", "EB Train with the library's default rule (plateau, span 3/32 of the "
         "schedule), checked checks_per_epoch times per epoch", "slim", "default", 20)
_variant("eb-reinit", "EB Train's ticket (reference rule) re-initialised, trained a whole "
         "schedule", "slim", "reference", 3)
_variant("lf", "EB Train with an 8-bit search, fp32 finetune", "slim-q8", "reference", 4)
_variant("ll", "EB Train with an 8-bit search and an 8-bit finetune", "slim-q8", "reference", 5)
# a transformer's search settings, each changed from eb's (heads="whole", residual="prune",
# budget="global": stages.BASE): the measurement that chose the library's defaults (vit-cifar:
# budget="kind" became the default); on a VGG each is eb again
TRANSFORMER_VARIANTS = ("eb-dims", "eb-keep", "eb-kind")
_variant("eb-dims", "EB Train (reference rule) with heads=\"dims\": the same head dimensions "
         "leave every head", "slim-dims", "reference", 17)
_variant("eb-keep", "EB Train (reference rule) with residual=\"keep\": the residual width stays "
         "whole", "slim-keep", "reference", 18)
_variant("eb-kind", "EB Train (reference rule) with budget=\"kind\": channels, MLP units and "
         "heads each lose the ratio", "slim-kind", "reference", 19)
