"""earlybird: early-bird tickets (You et al., ICLR 2020) for any timm or torchvision model.

>>> import earlybird as eb
>>> eb.prune_budget(64, 0.5)
32
"""

from .search.config import EarlyBirdConfig, make_config
from .search.criteria import CRITERIA, Checks, fifo_rule, normalized_rule, plateau_rule, reference_rule
from .search.distance import mask_distance, max_distance, pairwise_distances
from .errors import CheckpointError, ConfigError, EarlyBirdError, NoTicketError, UnsupportedModelError
from .run.io import atomic_save, load_pruned, save_pruned
from .search.masks import ChannelLayout, global_masks, keep_masks, layer_caps, prune_budget
from .training.precision import LowPrecision, PrecisionConfig
from .search.pruner import EarlyBirdPruner, Ticket
from .training.recipe import Recipe
from .training.trainer import Trainer
from .data import models  # noqa: F401 - registers the CIFAR models in timm

__version__ = "0.1.0"
__all__ = [
    "EarlyBirdPruner",
    "EarlyBirdConfig",
    "make_config",
    "Ticket",
    "ChannelLayout",
    "Recipe",
    "Trainer",
    "PrecisionConfig",
    "LowPrecision",
    "mask_distance",
    "pairwise_distances",
    "max_distance",
    "global_masks",
    "keep_masks",
    "layer_caps",
    "prune_budget",
    "Checks",
    "reference_rule",
    "fifo_rule",
    "normalized_rule",
    "plateau_rule",
    "CRITERIA",
    "save_pruned",
    "load_pruned",
    "atomic_save",
    "EarlyBirdError",
    "UnsupportedModelError",
    "NoTicketError",
    "CheckpointError",
    "ConfigError",
]
