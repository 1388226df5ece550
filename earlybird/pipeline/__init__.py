"""EB Train as stages sharing one run folder: search -> prune -> retrain, and a dense baseline.

``RunConfig`` holds every setting (:mod:`.config`), :func:`setup` builds a run's data, device
and folder (:mod:`.env`), :class:`Stage` trains one resumable stage (:mod:`.stage`), and
:mod:`.stages` chains them.
"""

from .config import NUM_CLASSES, RunConfig
from .env import RunEnv, setup
from .stage import Stage
from .stages import MODES, prune, retrain, run, search, train_dense

__all__ = [
    "RunConfig",
    "RunEnv",
    "Stage",
    "setup",
    "search",
    "prune",
    "retrain",
    "train_dense",
    "run",
    "MODES",
    "NUM_CLASSES",
]
