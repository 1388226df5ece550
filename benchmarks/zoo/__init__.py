"""Model-zoo sweep: does ``EarlyBirdPruner`` work on every torchvision classifier and on a fixed
list of timm models?

For each model (untrained, ``num_classes=10``) and each ratio 0.3 / 0.5 / 0.7 the sweep

1. builds ``EarlyBirdPruner(model, x, ratios=(0.3, 0.5, 0.7))`` once (timed with the rest),
2. calls ``step()`` twice, each time after giving every scored BatchNorm/LayerNorm ``weight``
   fresh random values in [0.1, 1.0] (models without norm layers are scored by their filters,
   ``score="weight"``: each scored filter is scaled by a fresh random factor in [0.1, 1.0]),
3. prunes with ``pruner.prune(ratio, force=True)``,
4. runs forward and backward on the pruned copy with a batch of 2 (output must be ``(2, 10)``
   and finite; models that return auxiliary outputs in training mode, torchvision's GoogLeNet
   and Inception v3, are checked on their main logits and back-propagate through all outputs),
5. checks with ``earlybird.costs.flops.count_flops`` that FLOPs and parameters strictly dropped and that
   the dense model was left untouched.

A model's status is ``pass``, ``unsupported: <message>`` (one of earlybird's own errors, from
``earlybird.errors``) or ``FAIL: <type>: <message> [p=<ratio>, <stage>]`` (any other exception, a
silent no-op, a wrong output, or the dense model changed). Every model is caught on its own.

Every model runs in its own subprocess (``--jobs`` at a time, one torch thread each, address
space capped at ``--memory-gb``), so a crash or an out-of-memory kill is one FAIL row and not the
end of the sweep; models that ran out of memory are retried alone at the end, capped at the
machine's memory less 3 GiB. Rows are cached in ``zoo.json`` as they finish: an interrupted sweep run again
resumes and reruns nothing done (``--fresh`` starts over, ``--rerun-failed`` retries FAIL rows).

Run: ``python -m benchmarks.zoo`` (or ``tox -e zoo``). A full sweep writes
``benchmarks/results/zoo/README.md`` (summary and table) and ``zoo.json`` (rows); a partial one
(``--only``, ``--limit``, ``--timm-only``, ``--torchvision-only``) only prints, unless ``--out DIR``
is given.

The package: :mod:`.models` (the two model lists), :mod:`.check` (one model in this process),
:mod:`.isolate` (one model in a memory-capped subprocess), :mod:`.report` (table and summary),
``python -m benchmarks.zoo`` (the sweep).
"""
from benchmarks.zoo.check import ModelTimeout, SweepFailure, perturb_scores, run_model
from benchmarks.zoo.isolate import run_isolated
from benchmarks.zoo.models import (RATIOS, REPORT_RATIO, TIMM_MODELS, TV_SIZES, all_specs, build,
                                   torchvision_names)
from benchmarks.zoo.report import counts, summary, table, write_results

__all__ = ["ModelTimeout", "SweepFailure", "perturb_scores", "run_model", "run_isolated",
           "RATIOS", "REPORT_RATIO", "TIMM_MODELS", "TV_SIZES", "all_specs", "build",
           "torchvision_names", "counts", "summary", "table", "write_results"]
