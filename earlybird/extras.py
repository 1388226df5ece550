"""Optional dependencies: the extras a feature needs, and one clear error when one is missing.

The core install (``pip install earlybird-tickets``) is what the pruner needs: torch,
torchvision, torch-pruning, timm, fvcore. The rest comes as extras:

========== =============================== ============================================
extra      installs                        for
========== =============================== ============================================
plots      matplotlib                      the run folder's plots (``earlybird demo``)
lowp       qtorch, ninja                   low-precision search (``precision="q8"``)
lightning  lightning                       :class:`~earlybird.integrations.lightning.EarlyBirdCallback`
export     onnx, onnxruntime               checking an ONNX export of a pruned model
all        all of the above
========== =============================== ============================================

>>> from earlybird.extras import EXTRAS, require
>>> sorted(EXTRAS)
['export', 'lightning', 'lowp', 'plots']
>>> require("plot", "the plots")
Traceback (most recent call last):
...
ValueError: unknown extra 'plot'; choose from ['export', 'lightning', 'lowp', 'plots']
"""

from __future__ import annotations

import importlib.util

from .errors import EarlyBirdError

__all__ = ["EXTRAS", "MissingExtraError", "missing", "require"]

# the modules each extra must make importable (lowp also installs ninja, whose binary may as
# well come from the system: load_qtorch checks for it on PATH)
EXTRAS: dict[str, tuple[str, ...]] = {
    "plots": ("matplotlib",),
    "lowp": ("qtorch",),
    "lightning": ("lightning",),
    "export": ("onnx", "onnxruntime"),
}


class MissingExtraError(EarlyBirdError, ImportError):
    """A feature's optional dependencies are not installed; the message names the extra."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; choose from {sorted(EXTRAS)}")
    gone = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: sys.modules[module] is None
            found = False
        if not found:
            gone.append(module)
    return gone


def require(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` when ``feature`` cannot run here."""
    gone = missing(extra)
    if gone:
        raise MissingExtraError(
            f"{feature} needs the '{extra}' extra ({', '.join(gone)} not installed): "
            f"pip install 'earlybird-tickets[{extra}]'"
        )
