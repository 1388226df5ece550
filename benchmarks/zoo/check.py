"""Sweeping one model in this process: build, prune at every ratio, run the pruned copy, check."""
from __future__ import annotations

import gc
import os
import signal
import time
import traceback
from typing import Any, Optional

import torch
from torch import nn

import earlybird as eb
from benchmarks.zoo.models import RATIOS, REPORT_RATIO, build
from earlybird.errors import EarlyBirdError
from earlybird.costs.flops import count_flops


MIN_FLOPS_CUT = 0.15       # a pass cuts the FLOPs by at least this at the report ratio


class SweepFailure(Exception):
    """A check of the sweep itself failed (no-op pruning, wrong output, dense model changed)."""


class ModelTimeout(BaseException):
    """The model took longer than --timeout seconds (a BaseException, so that no library's
    ``except Exception`` turns it into a model error)."""


@torch.no_grad()
def perturb_scores(pruner: eb.EarlyBirdPruner) -> None:
    """New scores for the next ``step()``: every scored norm ``weight`` to fresh random values in
    [0.1, 1.0]; with filter scores, every scored filter scaled by a random factor in [0.1, 1.0]."""
    for entry in pruner.graph.norms:
        w = entry.module.weight
        if entry.filters:
            w.mul_(torch.empty(w.shape[0], *([1] * (w.dim() - 1))).uniform_(0.1, 1.0))
        else:
            w.uniform_(0.1, 1.0)


def _logits(out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(main logits, scalar to back-propagate) of a model output; tuples (torchvision's
    GoogLeNetOutputs / InceptionOutputs in training mode) are checked on their first tensor."""
    if isinstance(out, torch.Tensor):
        return out, out.sum()
    if isinstance(out, (tuple, list)):
        tensors = [t for t in out if isinstance(t, torch.Tensor)]
        if tensors:
            return tensors[0], sum(t.sum() for t in tensors)
    raise SweepFailure(f"the pruned model returned {type(out).__name__}, not logits")


def _shapes(model: nn.Module) -> dict[str, tuple]:
    """The shapes of the model's own state (the slimming coefficients the pruner adds aside)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("eb_coefficients.")}


def _key_frames(exc: BaseException) -> dict[str, str]:
    """The innermost traceback frame overall, in earlybird and in torch_pruning."""
    frames = traceback.extract_tb(exc.__traceback__)
    cause = exc.__cause__ or exc.__context__
    while cause is not None:                        # the wrapped exception's frames are deeper
        frames += traceback.extract_tb(cause.__traceback__)
        cause = cause.__cause__ or cause.__context__
    out = {}
    for f in frames:
        where = f"{short_path(f.filename)}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
        out["innermost"] = where
        for key, part in (("earlybird", "/earlybird/"), ("torch_pruning", "/torch_pruning/")):
            if part in f.filename.replace(os.sep, "/"):
                out[key] = where
    return out


def short_path(path: str) -> str:
    path = path.replace(os.sep, "/")
    for part in ("site-packages/", "/work/main/"):
        if part in path:
            return path.split(part, 1)[1]
    return path


def _message(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def run_model(source: str, name: str, ratios: tuple[float, ...] = RATIOS, seed: int = 0,
              report_ratio: float = REPORT_RATIO) -> dict[str, Any]:
    """Sweep one model; never raises for the model's own failures (they become its status).

    Returns a row: ``status``, ``params_before``/``flops_before``, ``params_after``/
    ``flops_after`` keyed by ratio (as str), ``seconds``, ``input``, ``excluded`` (groups the
    pruner left out) and ``prunable`` (the share of scored channels left), and for a failure the
    ``stage``/``ratio`` it happened at, ``error`` type and ``frames`` (key traceback frames).
    """
    torch.manual_seed(seed)
    row: dict[str, Any] = {"source": source, "model": name, "status": None, "input": None,
                           "params_before": None, "flops_before": None,
                           "params_after": {}, "flops_after": {}, "ratios": {},
                           "channels": None, "groups": None}
    start = time.perf_counter()
    stage, ratio = "build model", None
    model = pruner = small = out = None
    try:
        model, size = build(source, name)
        row["input"] = size
        x = torch.randn(1, 3, size, size)
        stage = "count dense FLOPs"
        dense = count_flops(model, x)
        row["params_before"], row["flops_before"] = dense.params, dense.flops
        shapes = _shapes(model)
        stage = "EarlyBirdPruner()"
        pruner = eb.EarlyBirdPruner(model, x, ratios=ratios)
        row["channels"], row["groups"] = pruner.layout.num_channels, len(pruner.layout.sizes)
        row["score"] = pruner.graph.score
        row["excluded"], row["prunable"] = len(pruner.excluded), pruner.graph.prunable_share
        stage = "step()"
        for _ in range(2):
            perturb_scores(pruner)
            pruner.step()
        for ratio in ratios:
            stage = "prune()"
            small = pruner.prune(ratio, force=True)
            stage = "forward/backward"
            small.train()
            out, loss = _logits(small(torch.randn(2, 3, size, size)))
            if tuple(out.shape) != (2, 10):
                raise SweepFailure(f"pruned output has shape {tuple(out.shape)}, not (2, 10)")
            if not bool(torch.isfinite(out).all()):
                raise SweepFailure("pruned output is not finite")
            loss.backward()
            out = loss = None
            stage = "count pruned FLOPs"
            after = count_flops(small, x)
            row["params_after"][str(ratio)] = after.params
            row["flops_after"][str(ratio)] = after.flops
            if after.flops >= dense.flops or after.params >= dense.params:
                raise SweepFailure(
                    f"nothing was pruned at p={ratio}: FLOPs {dense.flops} -> {after.flops}, "
                    f"params {dense.params} -> {after.params}")
            if _shapes(model) != shapes:
                raise SweepFailure("prune() changed the dense model")
            row["ratios"][str(ratio)] = "pass"
            small = None
            gc.collect()
        ratio = None
        reported = row["flops_after"].get(str(report_ratio))
        cut = 1.0 if reported is None else 1 - reported / dense.flops
        row["status"] = "pass" if cut >= MIN_FLOPS_CUT else (
            f"unsupported: p={report_ratio} cuts FLOPs by only {cut:.1%}, under the "
            f"{MIN_FLOPS_CUT:.0%} a pass needs")
    except ModelTimeout as exc:
        row.update(status=f"FAIL: ModelTimeout: {exc} [{_where(ratio, stage)}]", stage=stage,
                   ratio=ratio, error="ModelTimeout")
    except Exception as exc:  # noqa: BLE001 - every failure becomes the model's status
        kind = type(exc).__name__
        if isinstance(exc, EarlyBirdError):
            row["status"] = f"unsupported: {_message(exc)}"
        else:
            row["status"] = f"FAIL: {kind}: {_message(exc)} [{_where(ratio, stage)}]"
        row.update(stage=stage, ratio=ratio, error=kind, frames=_key_frames(exc))
        if ratio is not None:
            row["ratios"][str(ratio)] = row["status"]
    finally:
        model = pruner = small = out = None
        gc.collect()
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _where(ratio: Optional[float], stage: str) -> str:
    return stage if ratio is None else f"p={ratio}, {stage}"


class Alarm:
    """SIGALRM-based per-model time limit (POSIX main thread only; 0 disables it)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds if hasattr(signal, "SIGALRM") else 0

    def __enter__(self) -> None:
        if self.seconds:
            def fire(signum: int, frame: Any) -> None:
                raise ModelTimeout(f"no result after {self.seconds} s")
            signal.signal(signal.SIGALRM, fire)
            signal.alarm(self.seconds)

    def __exit__(self, *exc: Any) -> None:
        if self.seconds:
            signal.alarm(0)
