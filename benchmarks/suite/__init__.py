"""Benchmark suite: EB Train against network slimming, lottery tickets with rewinding, SNIP,
ThiNet and random tickets, every method through the same data, schedule and training code.

A *setting* is one JSON file in ``benchmarks/configs/`` (``python -m benchmarks list``,
:mod:`.config`). For each seed the suite trains at most three shared runs, each cached once
(:mod:`.stages`); then every (method, ratio, seed) is one job (:mod:`.runner`), cached as JSON.
The methods are registered by name (:mod:`.registry`), one module per family
(:mod:`.methods`). Budget: every network is trained to the end of the same ``epochs``-epoch
schedule: EB Train finetunes its ticket from the draw epoch to the end; NS and ThiNet finetune
a whole schedule after their dense run (as their papers do); lottery tickets retrain from the
rewind epoch to the end (per round); SNIP, EB re-init and the random ticket train a whole
schedule from a new initialisation. Costs: :mod:`.costs`; the report: :mod:`.report`.
"""
from benchmarks.suite.registry import METHODS, REGISTRY, Method, get, register
from benchmarks.suite import methods  # noqa: F401 - registers every method, in report order
from benchmarks.suite.config import (CONFIGS, RESULTS, Suite, dry_run, load_suite, settings,
                                     suite_from_dict)
from benchmarks.suite.job import Job, take_images
from benchmarks.suite.methods import weight_distance
from benchmarks.suite.report import (markdown, performance_bar, plot, rewrite_results,
                                     summarize, write_results)
from benchmarks.suite.runner import cache_dir, plan, run, run_method
from benchmarks.suite.stages import STAGES, stage_dense, stage_slim

__all__ = ["METHODS", "REGISTRY", "Method", "get", "register", "CONFIGS", "RESULTS", "Suite",
           "dry_run", "load_suite", "settings", "suite_from_dict", "Job", "take_images",
           "weight_distance", "markdown", "performance_bar", "plot", "rewrite_results",
           "summarize", "write_results", "cache_dir", "plan", "run", "run_method", "STAGES",
           "stage_dense", "stage_slim"]
