"""The suite's methods, by name: what each needs and how it runs.

A method is one :class:`Method`, registered by the module of its family
(``benchmarks/suite/methods/``); adding one is one ``register(Method(...))`` call there. The
registry's order is the report's order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:                                  # pragma: no cover
    from benchmarks.suite.job import Job

SHARED_RUNS = ("dense", "slim", "slim-q8", "slim-dims", "slim-keep", "slim-kind")


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
        name: its name in configs, tables and the cache.
        description: one line for ``python -m benchmarks list`` and the README.
        run: ``run(job, shared) -> row``: trains the method for one (ratio, seed) and returns
            its row; ``shared`` holds the records of the shared runs it ``needs``.
        needs: shared runs (:data:`SHARED_RUNS`) it starts from, trained once per seed.
        per_ratio: False for a method with one row per seed (the dense baseline).
        eb: an EB Train variant (compared against the competitors).
        competitor: compared against EB Train (False: EB variants and controls).
        unstructured: a weight-masked ticket, which keeps the dense shape and FLOPs.
        rule: the detection rule of the EB ticket it uses (``benchmarks.detection.RULES``).
        colour: its colour in the plots (an index into tab20 then tab20b, fixed so old plots keep theirs).
        table: ``"main"``, or ``"stability"`` for a method with a table of its own.
        after: methods whose row (same ratio and seed) it starts from; in a pool they run
            first.
    """

    name: str
    description: str
    run: Callable[["Job", dict[str, dict]], dict]
    needs: tuple[str, ...] = ()
    per_ratio: bool = True
    eb: bool = False
    competitor: bool = True
    unstructured: bool = False
    rule: Optional[str] = None
    colour: int = 0
    table: str = "main"
    after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [n for n in self.needs if n not in SHARED_RUNS]
        if bad:
            raise ValueError(f"method {self.name}: unknown shared runs {bad}; "
                             f"choose from {list(SHARED_RUNS)}")


REGISTRY: dict[str, Method] = {}
METHODS: dict[str, str] = {}          # name -> description, in registry order


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a name may be registered once)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    REGISTRY[method.name] = method
    METHODS[method.name] = method.description
    return method


def get(name: str) -> Method:
    """The registered method ``name``; an unknown name lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {list(REGISTRY)}") from None
