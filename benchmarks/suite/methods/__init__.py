"""The compared methods, one module per family; importing this package registers them all, in
the report's order. Ticket selection is written as small functions over a model and its data,
returning plain masks:

- unstructured masks ``{parameter name: 0/1 tensor}`` (lottery tickets, SNIP), applied by
  zeroing weights and their gradients during training;
- channel keep-masks ``{group root name: bool tensor}`` over earlybird's channel groups, which
  ``earlybird.graph.prune_model`` removes physically (network slimming, EB, ThiNet, SNIP and LT
  channel variants, random tickets).
"""
from benchmarks.suite.methods import dense, eb_train, slimming, lottery, snip, thinet, controls  # noqa: F401,E501 - registration order
from benchmarks.suite.methods.controls import random_widths, weight_distance
from benchmarks.suite.methods.lottery import (global_magnitude_masks, layer_ranks,
                                              prunable_weights, sparsity_of)
from benchmarks.suite.methods.snip import accumulate_grads, snip_saliency
from benchmarks.suite.methods.thinet import greedy_removal, thinet_masks

__all__ = ["random_widths", "weight_distance", "global_magnitude_masks", "layer_ranks",
           "prunable_weights", "sparsity_of", "accumulate_grads", "snip_saliency",
           "greedy_removal", "thinet_masks"]
