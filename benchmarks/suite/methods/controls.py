"""Controls: a random ticket with the EB ticket's per-layer widths, and stability to SGD noise
(Frankle et al., 2019) of the EB ticket against such a random ticket."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import common
from benchmarks.suite.job import Job
from benchmarks.suite.registry import Method, register
from earlybird.graph import copy_model

RULE = "reference"             # the EB ticket the controls are measured against


def random_widths(keep: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Per layer as many channels as ``keep`` keeps, chosen uniformly at random."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in keep.items():
        chosen = torch.randperm(mask.numel(), generator=g)[:int(mask.sum())]
        out[name] = torch.zeros_like(mask, dtype=torch.bool).index_fill_(0, chosen, True)
    return out


def random_ticket(job: Job, shared: dict[str, dict], method: str = "random", rule: str = RULE,
                  tag: str = "slim") -> dict:
    """The per-layer widths of the EB ticket that ``rule`` draws from the shared run ``tag``
    with random channels, from a new initialisation."""
    slim = shared[tag]
    if rule == "default":                  # as often as the setting checks
        rule = f"default @{job.suite.checks_per_epoch}/epoch"
    t, drawn, _, keep = job.ticket(slim, tag, rule)
    keep = random_widths(keep, job.seed)
    small = job.prune(job.model(seed_offset=1), keep, tag)
    result = job.train(small, 0)
    return job.row(method, small, result, slim, widths={k: int(v.sum()) for k, v in keep.items()},
                   draw_epoch=t, drawn=drawn, rule=rule.split()[0])


def weight_distance(a: nn.Module, b: nn.Module) -> float:
    """``||w_a - w_b|| / ||w_a||`` over all parameters of two copies of one architecture."""
    wa = torch.cat([p.detach().flatten().double().cpu() for p in a.parameters()])
    wb = torch.cat([p.detach().flatten().double().cpu() for p in b.parameters()])
    return float((wa - wb).norm() / wa.norm())


def stability(job: Job, shared: dict[str, dict]) -> dict:
    """Stability to SGD noise (Frankle et al., 2019): train two copies of a ticket from the
    same weights with two data orders and measure how far apart they end. The EB ticket and a
    random ticket of the same per-layer widths are both cut from the weights at the draw epoch,
    so only the choice of channels differs."""
    epochs, slim = job.st.epochs, shared["slim"]
    t, _, dense_model, keep = job.ticket(slim, "slim", RULE)
    orders = (job.data, common.load_data(job.st, job.seed + 1000))
    row: dict[str, Any] = {"method": "stability", "ratio": job.ratio, "seed": job.seed,
                           "draw_epoch": t, "epochs_trained": epochs - t}
    for name, ticket in (("eb", keep), ("random", random_widths(keep, job.seed))):
        start = job.prune(dense_model, ticket)
        copies = [copy_model(start) for _ in orders]
        accs = [job.train(c, t, data=d)["test_acc"] for c, d in zip(copies, orders)]
        row[f"{name}_distance"] = weight_distance(*copies)
        row[f"{name}_accs"] = [float(a) for a in accs]
    return row


register(Method("random", "random ticket: EB ticket's per-layer widths, random channels, new "
                "init, whole schedule", random_ticket, needs=("slim",), competitor=False,
                rule=RULE, colour=14))
register(Method("random-default", "random ticket with the widths of the library default's EB "
                "ticket (eb-default), random channels, new init, whole schedule",
                lambda job, shared: random_ticket(job, shared, "random-default", "default"),
                needs=("slim",), competitor=False, rule="default", colour=21))
register(Method("random-kind", "random ticket with the widths of eb-kind's ticket (a budget per "
                "kind of unit, the library's default), random channels, new init, whole schedule",
                lambda job, shared: random_ticket(job, shared, "random-kind", tag="slim-kind"),
                needs=("slim-kind",), competitor=False, rule=RULE, colour=23))
register(Method("stability", "LT-paper stability: the EB ticket and a random ticket of its "
                "widths, both cut from the draw-epoch weights, each trained twice with two data "
                "orders; the distance between the copies", stability, needs=("slim",),
                competitor=False, rule=RULE, colour=15, table="stability"))
