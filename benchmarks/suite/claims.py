"""Does EB Train deliver? The paper's claims, answered from a setting's table in numbers.

(a) at p = 0.3 and 0.5, EB Train within 0.5 points of network slimming, with how many times
fewer training FLOPs and how much less wall-clock; (b) the EB ticket more accurate than the
random ticket of the same widths by more than two standard deviations (the pooled seed
standard deviation of the two); (c) the share of the schedule at which each ticket was drawn;
(d) EB Train against network slimming at its training FLOPs (``ns-budget``,
``ns-budget-default``). Each is read
for the EB rules the setting ran (``eb-default``, the library's default, first) and marked met
or missed next to the paper's figure.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Optional

EB_RULES = ("eb-default", "eb-plateau", "eb")
# each EB rule's controls: the random ticket of its widths and NS at its training FLOPs
RANDOM_OF = {"eb": "random", "eb-default": "random-default"}
BUDGET_OF = {"eb-plateau": "ns-budget", "eb-default": "ns-budget-default"}
ACC_GAP = 0.5                     # points: "within 0.5 of NS"
SIGMAS = 2.0
PAPER = {
    "a": "EB Train within about 0.3 points of NS or better, with 1.1-2.5x fewer training "
         "FLOPs (Table 2, 160 epochs)",
    "b": "not in the EB paper; Liu et al. (Rethinking, 2019) find structured tickets no "
         "better than a random initialisation of the same architecture",
    "c": "tickets emerge after 6-20 % of the epochs (160-epoch runs; epochs 9-31)",
    "d": "not in the paper (its NS trains a whole dense run and a whole finetune)",
}


def _mean(entry: dict) -> float:
    return statistics.mean(entry["test_acc"])


def _sd(entry: dict) -> float:
    return statistics.stdev(entry["test_acc"]) if len(entry["test_acc"]) > 1 else 0.0


def claims(suite: Any, table: list[dict]) -> Optional[dict[str, Any]]:
    """The four answers for the EB rules in ``table`` (a summary's table), or None when the
    setting has no EB Train method and no network slimming to judge it by."""
    def get(method: str, ratio: float) -> Optional[dict]:
        return next((e for e in table if e["method"] == method and e["ratio"] == ratio), None)
    rules = [m for m in EB_RULES if any(e["method"] == m for e in table)]
    if not rules or not any(e["method"] == "ns" for e in table):
        return None
    epochs = suite.setting.epochs
    out: dict[str, Any] = {"a": [], "b": [], "c": [], "d": [], "paper": PAPER,
                           "acc_gap": ACC_GAP, "sigmas": SIGMAS}
    for method in rules:
        for ratio in suite.ratios:
            eb = get(method, ratio)
            if eb is None:
                continue
            ns = get("ns", ratio)
            rnd = get(RANDOM_OF[method], ratio) if method in RANDOM_OF else None
            nsb = get(BUDGET_OF[method], ratio) if method in BUDGET_OF else None
            if ns is not None and ratio in (0.3, 0.5):
                gap = _mean(ns) - _mean(eb)
                out["a"].append({"method": method, "ratio": ratio, "eb_acc": _mean(eb),
                                 "ns_acc": _mean(ns), "gap": gap, "met": gap <= ACC_GAP,
                                 "flops_saving": ns["train_flops"] / eb["train_flops"],
                                 "wall_saving": ns["wall_s"] / eb["wall_s"]})
            if rnd is not None:                           # the random ticket of its widths
                pooled = math.sqrt((_sd(eb) ** 2 + _sd(rnd) ** 2) / 2)
                delta = _mean(eb) - _mean(rnd)
                out["b"].append({"method": method, "ratio": ratio, "eb_acc": _mean(eb),
                                 "random_acc": _mean(rnd), "delta": delta, "pooled_sd": pooled,
                                 "met": delta > SIGMAS * pooled})
            drawn = eb.get("draw_at", eb.get("draw_epoch"))
            if drawn is not None:                 # a seed without a ticket is not "drawn early"
                seeds = eb.get("drawn", eb["seeds"])
                out["c"].append({"method": method, "ratio": ratio, "draw_epoch": drawn,
                                 "share": drawn / epochs, "drawn_seeds": seeds,
                                 "seeds": eb["seeds"],
                                 "met": seeds == eb["seeds"] and drawn / epochs <= 0.2})
            if nsb is not None:                           # NS spending its FLOPs
                out["d"].append({"method": method, "ratio": ratio, "eb_acc": _mean(eb),
                                 "ns_budget_acc": _mean(nsb),
                                 "delta": _mean(eb) - _mean(nsb),
                                 "flops_ratio": nsb["train_flops"] / eb["train_flops"],
                                 "met": _mean(eb) >= _mean(nsb)})
    return out


def claims_markdown(found: dict[str, Any]) -> list[str]:
    """The claims section of a results README."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"
    lines = ["", "## Does EB Train deliver? The paper's claims, measured", "",
             f"(a) Within {found['acc_gap']} points of NS at p = 0.3 and 0.5 — paper: "
             f"{found['paper']['a']}.", "",
             "| EB rule | p | EB acc % | NS acc % | NS - EB | FLOPs NS / EB | wall-clock NS / EB "
             "| verdict |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in found["a"]:
        lines.append(f"| {e['method']} | {e['ratio']:g} | {e['eb_acc']:.2f} | {e['ns_acc']:.2f} "
                     f"| {e['gap']:+.2f} | {e['flops_saving']:.2f}x | {e['wall_saving']:.2f}x "
                     f"| {verdict(e['met'])} |")
    lines += ["", f"(b) The EB ticket beats the random ticket of its widths by more than "
              f"{found['sigmas']:g} pooled seed standard deviations — paper: "
              f"{found['paper']['b']}.", "",
              "| EB rule | p | EB acc % | random acc % | EB - random | pooled sd | verdict |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in found["b"]:
        lines.append(f"| {e['method']} | {e['ratio']:g} | {e['eb_acc']:.2f} | "
                     f"{e['random_acc']:.2f} | {e['delta']:+.2f} | {e['pooled_sd']:.2f} | "
                     f"{verdict(e['met'])} |")
    lines += ["", f"(c) Where each ticket was drawn (verdict: within the first 20 %) — paper: "
              f"{found['paper']['c']}.", "",
              "| EB rule | p | drawn at epoch (mean) | share of the schedule | seeds drawn | "
              "verdict |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for e in found["c"]:
        lines.append(f"| {e['method']} | {e['ratio']:g} | {e['draw_epoch']:.2f} | "
                     f"{100 * e['share']:.1f} % | {e['drawn_seeds']} of {e['seeds']} | "
                     f"{verdict(e['met'])} |")
    lines += ["", "(d) EB Train against network slimming at the same training FLOPs "
              "(`ns-budget`; `ns-budget-default` for `eb-default`; verdict: EB at least as "
              "accurate) — paper: "
              f"{found['paper']['d']}.", "",
              "| EB rule | p | EB acc % | ns-budget acc % | EB - ns-budget | FLOPs ns-budget / EB "
              "| verdict |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in found["d"]:
        lines.append(f"| {e['method']} | {e['ratio']:g} | {e['eb_acc']:.2f} | "
                     f"{e['ns_budget_acc']:.2f} | {e['delta']:+.2f} | {e['flops_ratio']:.3f} | "
                     f"{verdict(e['met'])} |")
    return lines
