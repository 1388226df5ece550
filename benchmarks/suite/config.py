"""A benchmark setting: one JSON file in ``benchmarks/configs/``, read into a :class:`Suite`."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import Setting
from benchmarks.suite.registry import METHODS

CONFIGS = common.ROOT / "configs"
RESULTS = common.ROOT / "results"
SUITE_KEYS = ("description", "gpu", "ratios", "seeds", "methods", "rewind_epoch", "lt_rounds",
              "snip_batches", "thinet_images", "jobs", "checks_per_epoch", "claims")
# keys added after results were committed: left out of as_dict() at their default, so that
# older results (and caches) still match and re-render byte for byte
LATER = {"checks_per_epoch": 1, "claims": False}


@dataclass(frozen=True)
class Suite:
    """One benchmark setting: the training setting plus what to compare."""

    name: str
    setting: Setting
    ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    description: str = ""
    gpu: bool = False
    rewind_epoch: int = 1
    lt_rounds: int = 3
    snip_batches: int = 1
    thinet_images: int = 256
    jobs: int = 2
    checks_per_epoch: int = 1
    claims: bool = False                # report the paper's claims, answered (benchmarks.suite.claims)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"{self.name}: unknown methods {bad}; choose from {list(METHODS)}")
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios):
            raise ValueError(f"{self.name}: ratios must be in (0, 1), got {list(self.ratios)}")
        if not self.seeds:
            raise ValueError(f"{self.name}: needs at least one seed")
        st = self.setting
        if st.epochs < 2 or not all(0 < e < st.epochs for e in st.schedule):
            raise ValueError(f"{self.name}: needs epochs >= 2 and lr decay epochs inside "
                             f"(0, {st.epochs}), got epochs={st.epochs} schedule={list(st.schedule)}")
        if not 0 <= self.rewind_epoch < st.epochs:
            raise ValueError(f"{self.name}: rewind_epoch must be in [0, {st.epochs}), "
                             f"got {self.rewind_epoch}")
        if self.lt_rounds < 1 or self.snip_batches < 1 or self.thinet_images < 1 or self.jobs < 1 \
                or self.checks_per_epoch < 1:
            raise ValueError(f"{self.name}: lt_rounds, snip_batches, thinet_images, jobs and "
                             "checks_per_epoch must be >= 1")
        if st.dataset not in common.DATASETS:
            raise ValueError(f"{self.name}: unknown dataset {st.dataset!r}; choose from "
                             f"{list(common.DATASETS)}")
        if st.layout not in common.LAYOUTS:
            raise ValueError(f"{self.name}: unknown layout {st.layout!r}; choose from "
                             f"{list(common.LAYOUTS)}")

    def as_dict(self) -> dict[str, Any]:
        later = {k: getattr(self, k) for k, default in LATER.items() if getattr(self, k) != default}
        return {"name": self.name, "description": self.description, "gpu": self.gpu,
                "ratios": list(self.ratios), "seeds": list(self.seeds),
                "methods": list(self.methods), "rewind_epoch": self.rewind_epoch,
                "lt_rounds": self.lt_rounds, "snip_batches": self.snip_batches,
                "thinet_images": self.thinet_images, **later, **self.setting.as_dict(),
                "data": self.setting.data}


def settings() -> list[str]:
    """Names of the settings in ``benchmarks/configs``."""
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def load_suite(name: str) -> Suite:
    """Read ``benchmarks/configs/<name>.json`` (or a path to such a file); unknown keys, wrong
    types and bad values are refused with the allowed ones named."""
    path = Path(name)
    if path.suffix != ".json":
        path = CONFIGS / f"{name}.json"
    if not path.exists():
        raise ValueError(f"unknown setting {name!r}; choose from {settings()} or pass a .json path")
    return suite_from_dict(json.loads(path.read_text()), path.stem, path.name)


def suite_from_dict(raw: dict[str, Any], name: str, source: str = "config") -> Suite:
    """A :class:`Suite` from a config's keys (as :meth:`Suite.as_dict` writes them, ``name``
    aside); errors name ``source``."""
    raw = {k: v for k, v in raw.items() if k != "name"}
    allowed = set(SUITE_KEYS) | {f.name for f in fields(Setting)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    st = {k: v for k, v in raw.items() if k in {f.name for f in fields(Setting)}}
    if "schedule" in st:
        st["schedule"] = tuple(st["schedule"])
    if st.get("dataset", "packed") in ("packed", "archive") and "data" in st:
        st["data"] = str((common.ROOT.parent / st["data"]).resolve())
    try:
        setting = Setting(**st)
    except TypeError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return Suite(name=name, setting=setting, ratios=tuple(float(r) for r in raw.get("ratios", (0.5,))),
                 seeds=tuple(int(s) for s in raw.get("seeds", (0,))),
                 methods=tuple(raw.get("methods", ("dense", "eb", "ns"))),
                 **{k: raw[k] for k in SUITE_KEYS
                    if k in raw and k not in ("ratios", "seeds", "methods")})


def dry_run(suite: Suite) -> Suite:
    """The same setting shrunk to one optimizer step per epoch on CPU: random 32 px images of
    the setting's classes, batch 4, 2 epochs, the first ratio, one seed, every method."""
    st = replace(suite.setting, dataset="synthetic", train_images=4, test_images=4,
                 batch_size=4, epochs=2, schedule=(1,), image_size=32, device="cpu")
    return replace(suite, setting=st, ratios=suite.ratios[:1], seeds=suite.seeds[:1],
                   rewind_epoch=min(suite.rewind_epoch, 1), lt_rounds=min(suite.lt_rounds, 2),
                   snip_batches=1, thinet_images=4, jobs=1, checks_per_epoch=1)
