"""The one adapter to torch-pruning: tracing, channel groups and their scores, the slimming
penalty, and real pruning. Everything torch-pruning specific lives in this package.

- :mod:`.trace`: the dependency graph of a model (and the layers the trace misses);
- :mod:`.groups`: :class:`ChannelGraph`, coupled channels laid out flat and scored;
- :mod:`.coefficients`: slimming coefficients for units without a norm scale;
- :mod:`.penalty`: the slimming penalty's gradient;
- :mod:`.surgery`: physical pruning and the pruning history that rebuilds a pruned model.
"""

from .coefficients import Coefficients, coefficient_modules, refuse_untrained, strip_coefficients
from .groups import SCORES, ChannelGraph, ScoredLayer, coupled
from .surgery import (
    History,
    check_runs,
    copy_model,
    memory_format_of,
    plain_history,
    prune_model,
    replay_history,
    sync_attributes,
    zero_pruned_channels,
)
from .trace import (
    NORM_TYPES,
    ROOT_TYPES,
    build_graph,
    find_classifier,
    kept_modes,
    resolve_layers,
    run_example,
    unwrap_model,
)

__all__ = [
    "ChannelGraph",
    "ScoredLayer",
    "coupled",
    "SCORES",
    "History",
    "copy_model",
    "prune_model",
    "plain_history",
    "replay_history",
    "sync_attributes",
    "zero_pruned_channels",
    "NORM_TYPES",
    "ROOT_TYPES",
    "build_graph",
    "find_classifier",
    "kept_modes",
    "run_example",
    "check_runs",
    "resolve_layers",
    "unwrap_model",
    "memory_format_of",
    "Coefficients",
    "coefficient_modules",
    "refuse_untrained",
    "strip_coefficients",
]
