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
5. checks with ``earlybird.flops.count_flops`` that FLOPs and parameters strictly dropped and that
   the dense model was left untouched.

A model's status is ``pass``, ``unsupported: <message>`` (one of earlybird's own errors, from
``earlybird.errors``) or ``FAIL: <type>: <message> [p=<ratio>, <stage>]`` (any other exception, a
silent no-op, a wrong output, or the dense model changed). Every model is caught on its own.

Every model runs in its own subprocess (``--jobs`` at a time, one torch thread each, address
space capped at ``--memory-gb``), so a crash or an out-of-memory kill is one FAIL row and not the
end of the sweep; models that ran out of memory are retried alone at the end, capped at the
machine's memory less 3 GiB. Rows are cached in ``zoo.json`` as they finish: an interrupted sweep run again
resumes and reruns nothing done (``--fresh`` starts over, ``--rerun-failed`` retries FAIL rows).

Run: ``python benchmarks/zoo.py`` (or ``tox -e zoo``). A full sweep writes
``benchmarks/results/zoo/README.md`` (summary and table) and ``zoo.json`` (rows); a partial one
(``--only``, ``--limit``, ``--timm-only``, ``--torchvision-only``) only prints, unless ``--out DIR``
is given.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torchvision
from torch import nn

if __package__ in (None, ""):                      # `python benchmarks/zoo.py` from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import earlybird as eb                             # noqa: E402
from earlybird.errors import EarlyBirdError        # noqa: E402
from earlybird.flops import count_flops            # noqa: E402

RATIOS = (0.3, 0.5, 0.7)
REPORT_RATIO = 0.5
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "zoo"
SMALL = 64                                          # input side wherever the model allows it

# ------------------------------------------------------------------------------ the model lists
# torchvision: every classification model (torchvision.models.list_models); input side per
# model where 64x64 does not fit. ViTs assert their 224 image size, MaxViT needs 224 for its
# window partitions, Inception v3's auxiliary head (built when untrained) needs 299.
TV_SIZES = {"inception_v3": 299, "maxvit_t": 224,
            "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224}

# timm: a fixed, explicit list of small variants across the families.
# (name, input side, extra create_model kwargs). ViT-like models are built for 64x64 with
# img_size=64; the Inception family needs its native 299.
_IMG64 = {"img_size": SMALL}
TIMM_MODELS: list[tuple[str, int, dict]] = [
    # ResNet / ResNeXt and relatives
    ("resnet18", 64, {}), ("resnet18d", 64, {}), ("resnet26d", 64, {}), ("resnet34", 64, {}),
    ("seresnet18", 64, {}), ("resnext26ts", 64, {}), ("resnext50_32x4d", 64, {}),
    ("res2net50_14w_8s", 64, {}), ("resnest14d", 64, {}), ("skresnet18", 64, {}),
    ("ecaresnet26t", 64, {}), ("tresnet_m", 64, {}), ("lambda_resnet26t", 64, {}),
    ("botnet26t_256", 64, _IMG64),
    # RegNet
    ("regnetx_002", 64, {}), ("regnety_002", 64, {}), ("regnetz_b16", 64, {}),
    # EfficientNet / MobileNet and other mobile CNNs
    ("efficientnet_b0", 64, {}), ("efficientnet_lite0", 64, {}), ("tf_efficientnetv2_b0", 64, {}),
    ("mobilenetv2_050", 64, {}), ("mobilenetv3_small_050", 64, {}),
    ("mobilenetv3_large_100", 64, {}), ("mobilenetv4_conv_small", 64, {}),
    ("mnasnet_small", 64, {}), ("fbnetc_100", 64, {}), ("spnasnet_100", 64, {}),
    ("mixnet_s", 64, {}), ("tinynet_e", 64, {}), ("hardcorenas_a", 64, {}), ("lcnet_050", 64, {}),
    ("ghostnet_050", 64, {}), ("ghostnetv2_100", 64, {}), ("rexnet_100", 64, {}),
    ("mobileone_s0", 64, {}), ("repvgg_a0", 64, {}), ("repvit_m1", 64, {}),
    ("hgnetv2_b0", 64, {}), ("fastvit_t8", 64, {}), ("starnet_s1", 64, {}),
    # hybrid CNN-transformers
    ("mobilevit_xxs", 64, {}), ("efficientvit_b0", 64, {}), ("efficientformer_l1", 224, {}),
    ("efficientformerv2_s0", 64, _IMG64), ("edgenext_xx_small", 64, {}),
    ("levit_128s", 64, _IMG64), ("coatnet_nano_rw_224", 64, _IMG64),
    ("maxvit_nano_rw_256", 64, _IMG64), ("tiny_vit_5m_224", 64, {}), ("nextvit_small", 64, {}),
    # DenseNet
    ("densenet121", 64, {}), ("densenetblur121d", 64, {}),
    # ConvNeXt and other metaformers
    ("convnext_atto", 64, {}), ("convnext_femto", 64, {}), ("convnextv2_atto", 64, {}),
    ("poolformer_s12", 64, {}), ("inception_next_tiny", 64, {}), ("mambaout_femto", 64, {}),
    ("rdnet_tiny", 64, {}), ("convmixer_768_32", 64, {}),
    # ViT / DeiT and other plain transformers
    ("vit_tiny_patch16_224", 64, _IMG64), ("vit_small_patch16_224", 64, _IMG64),
    ("deit_tiny_patch16_224", 64, _IMG64), ("deit_tiny_distilled_patch16_224", 64, _IMG64),
    ("eva02_tiny_patch14_224", 64, _IMG64), ("beit_base_patch16_224", 64, _IMG64),
    ("cait_xxs24_224", 64, _IMG64), ("xcit_nano_12_p16_224", 64, {}),
    ("crossvit_tiny_240", 64, {}), ("tnt_s_patch16_224", 64, _IMG64),
    # hierarchical transformers
    ("swin_tiny_patch4_window7_224", 64, _IMG64), ("swinv2_tiny_window8_256", 64, _IMG64),
    ("swinv2_cr_tiny_ns_224", 64, _IMG64), ("pit_ti_224", 64, _IMG64),
    ("pvt_v2_b0", 64, {}), ("coat_lite_tiny", 64, _IMG64), ("visformer_tiny", 64, _IMG64),
    ("nest_tiny", 64, _IMG64), ("gcvit_xxtiny", 64, _IMG64), ("focalnet_tiny_srf", 64, {}),
    ("davit_tiny", 64, {}), ("hiera_tiny_224", 64, _IMG64),
    # MLP-Mixer and MLPs
    ("mixer_s16_224", 64, _IMG64), ("resmlp_12_224", 64, _IMG64), ("gmlp_ti16_224", 64, _IMG64),
    ("sequencer2d_s", 64, {}),
    # Inception
    ("inception_v3", 299, {}), ("inception_v4", 299, {}), ("inception_resnet_v2", 299, {}),
    # others
    ("vgg11_bn", 64, {}), ("dla34", 64, {}), ("dpn48b", 64, {}), ("hrnet_w18_small", 64, {}),
    ("cspresnet50", 64, {}), ("cspdarknet53", 64, {}), ("ese_vovnet19b_dw", 64, {}),
    ("selecsls42b", 64, {}), ("nf_resnet26", 64, {}),
]


def torchvision_names() -> list[str]:
    return list(torchvision.models.list_models(module=torchvision.models))


def all_specs(torchvision_too: bool = True, timm_too: bool = True) -> list[tuple[str, str]]:
    """``[(source, name), ...]`` in sweep order: torchvision first, then timm."""
    specs = []
    if torchvision_too:
        specs += [("torchvision", n) for n in torchvision_names()]
    if timm_too:
        specs += [("timm", n) for n, _, _ in TIMM_MODELS]
    return specs


def build(source: str, name: str) -> tuple[nn.Module, int]:
    """An untrained model with 10 classes, and the input side it is swept at."""
    if source == "torchvision":
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
        return model, TV_SIZES.get(name, SMALL)
    if source == "timm":
        import timm
        spec = {n: (s, kw) for n, s, kw in TIMM_MODELS}
        size, kwargs = spec.get(name, (SMALL, {}))
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs), size
    raise ValueError(f"unknown source {source!r}; use 'torchvision' or 'timm'")


# ------------------------------------------------------------------------------ one model
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
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _key_frames(exc: BaseException) -> dict[str, str]:
    """The innermost traceback frame overall, in earlybird and in torch_pruning."""
    frames = traceback.extract_tb(exc.__traceback__)
    cause = exc.__cause__ or exc.__context__
    while cause is not None:                        # the wrapped exception's frames are deeper
        frames += traceback.extract_tb(cause.__traceback__)
        cause = cause.__cause__ or cause.__context__
    out = {}
    for f in frames:
        where = f"{_short(f.filename)}:{f.lineno} in {f.name}: {(f.line or '').strip()}"
        out["innermost"] = where
        for key, part in (("earlybird", "/earlybird/"), ("torch_pruning", "/torch_pruning/")):
            if part in f.filename.replace(os.sep, "/"):
                out[key] = where
    return out


def _short(path: str) -> str:
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
    ``flops_after`` keyed by ratio (as str), ``seconds``, ``input``, and for a failure the
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
        row["status"] = "pass"
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


class _Alarm:
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


# ------------------------------------------------------------------------------ reporting
def _num(n: Optional[int], unit: str = "") -> str:
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n}{unit}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], ratio: float = REPORT_RATIO) -> str:
    key = str(ratio)
    lines = [f"| source | model | input | score | status | params before | params after p={ratio} | "
             f"FLOPs before | FLOPs after p={ratio} | seconds |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        inp = f"{r['input']}x{r['input']}" if r.get("input") else "-"
        lines.append(
            f"| {r['source']} | {r['model']} | {inp} | {r.get('score') or '-'} | {_cell(r['status'])} | "
            f"{_num(r['params_before'])} | {_num(r['params_after'].get(key))} | "
            f"{_num(r['flops_before'])} | {_num(r['flops_after'].get(key))} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def counts(rows: list[dict], source: str) -> dict[str, Any]:
    mine = [r for r in rows if r["source"] == source]
    n = len(mine)
    passed = sum(r["status"] == "pass" for r in mine)
    unsupported = sum(r["status"].startswith("unsupported") for r in mine)
    return {"models": n, "pass": passed, "unsupported": unsupported,
            "fail": n - passed - unsupported, "pass_rate": passed / n if n else None}


def versions() -> dict[str, str]:
    import timm
    import torch_pruning as tp
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "torch_pruning": getattr(tp, "__version__", "?"), "earlybird": eb.__version__}


def summary(rows: list[dict], meta: dict) -> str:
    lines = ["# Model-zoo sweep: `EarlyBirdPruner` on torchvision and timm", "",
             "Generated by `benchmarks/zoo.py`; do not edit by hand. Each model is built untrained "
             "(`num_classes=10`), `EarlyBirdPruner(model, x, ratios=(0.3, 0.5, 0.7))` is built once, "
             "`step()` is called twice after re-drawing every BatchNorm/LayerNorm weight in "
             "[0.1, 1.0], then each ratio is pruned with `prune(ratio, force=True)`, the pruned "
             "copy runs forward and backward on a batch of 2 (output `(2, 10)`, finite) and its "
             "FLOPs and parameters (fvcore, `earlybird.flops.count_flops`, one multiply-add = one "
             "FLOP, batch 1) must be strictly below the dense model's. Status: `pass`, "
             "`unsupported: ...` (earlybird's own error), or `FAIL: ...` (anything else, a no-op, "
             "a wrong output). Models with no norm layer at all are scored by their filters' mean "
             "|w| (`score` column: `weight`; the others `norm`). Seconds cover the whole model: "
             "building, FLOP counts, the pruner, three prunes with forward/backward, each model in "
             "its own subprocess.", ""]
    lines += ["| source | models | pass | unsupported | FAIL | pass rate | target |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for source, target in (("torchvision", 1.0), ("timm", 0.95)):
        c = counts(rows, source)
        if not c["models"]:
            continue
        rate = c["pass_rate"]
        met = "met" if rate >= target else "MISSED"
        lines.append(f"| {source} | {c['models']} | {c['pass']} | {c['unsupported']} | {c['fail']} "
                     f"| {100 * rate:.1f} % | {100 * target:.0f} % ({met}) |")
    v = meta["versions"]
    lines += ["",
              f"- versions: torch {v['torch']}, torchvision {v['torchvision']}, timm {v['timm']}, "
              f"torch-pruning {v['torch_pruning']}, earlybird {v['earlybird']}, "
              f"Python {v['python']}",
              f"- machine: {meta['machine']}",
              "- commands (in order; rows are cached, so each ran only the models it lacked): "
              + "; ".join(f"`{c}`" for c in meta.get("commands", [meta["command"]])),
              f"- time: {sum(r['seconds'] for r in rows) / 60:.1f} min summed over the models "
              f"({len(rows)} of {meta['planned']} models run{'' if meta['complete'] else ', INCOMPLETE'}); "
              f"wall-clock of the last invocation {meta['total_seconds'] / 60:.1f} min",
              f"- date: {meta['date']}", ""]
    return "\n".join(lines)


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = summary(rows, meta) + "\n" + table(rows) + "\n"
    (out / "README.md").write_text(text)
    payload = {"meta": meta, "summary": {s: counts(rows, s) for s in ("torchvision", "timm")},
               "rows": rows}
    tmp = out / "zoo.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(out / "zoo.json")


def machine(jobs: int = 1, memory_gb: float = 0) -> str:
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2 ** 20
        ram = f", {mem:.0f} GiB RAM"
    except OSError:
        ram = ""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cap = f", {memory_gb:g} GiB address space each" if memory_gb else ""
    return (f"{os.cpu_count()} CPU cores{ram}, no GPU used, {jobs} models at once with "
            f"{threads} torch thread(s){cap}, {platform.system()} {platform.machine()}")


# ------------------------------------------------------------------------------ subprocesses
def _worker(spec: str, row_out: Path, timeout: int) -> int:
    """``--worker source:name``: sweep one model in this process and write its row as JSON."""
    source, name = spec.split(":", 1)
    warnings.filterwarnings("ignore")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    logging.getLogger("earlybird").setLevel(logging.ERROR)
    with _Alarm(timeout):
        row = run_model(source, name)
    tmp = row_out.with_name(row_out.name + ".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(row_out)
    return 0


def _limit_memory(gigabytes: float) -> Callable[[], None]:
    def apply() -> None:
        import resource
        cap = int(gigabytes * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def run_isolated(source: str, name: str, timeout: int, memory_gb: float,
                 threads: int) -> dict[str, Any]:
    """Sweep one model in a fresh subprocess; a crash or a kill becomes the model's FAIL row."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{source}:{name}",
               "--row-out", str(out), "--timeout", str(timeout)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=timeout + 120 if timeout else None,
                                  preexec_fn=_limit_memory(memory_gb) if memory_gb else None)
        except subprocess.TimeoutExpired:
            return _dead_row(source, name, f"no result after {timeout} s", "ModelTimeout", start)
        if out.exists():
            row = json.loads(out.read_text())
            if "MemoryError" in str(row.get("error")) or "DefaultCPUAllocator" in row["status"]:
                row["out_of_memory"] = True
            row["memory_gb"] = memory_gb
            return row
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
        oom = proc.returncode == -signal.SIGKILL or "MemoryError" in tail or "alloc" in tail
        why = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit code {proc.returncode}")
        row = _dead_row(source, name, f"worker {why}: {tail}", "WorkerDied", start)
        row.update(out_of_memory=oom, memory_gb=memory_gb)
        return row


def _ram_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2 ** 20
    except OSError:
        return 0.0


def _dead_row(source: str, name: str, message: str, error: str, start: float) -> dict[str, Any]:
    return {"source": source, "model": name, "status": f"FAIL: {error}: {message}",
            "input": None, "params_before": None, "flops_before": None, "params_after": {},
            "flops_after": {}, "ratios": {}, "channels": None, "groups": None, "error": error,
            "seconds": round(time.perf_counter() - start, 2)}


def _load_meta(out: Optional[Path]) -> dict[str, Any]:
    path = None if out is None else out / "zoo.json"
    if path is None or not path.is_file():
        return {}
    meta = json.loads(path.read_text()).get("meta", {})
    meta.setdefault("commands", [meta["command"]] if "command" in meta else [])
    return meta


def _load_cache(out: Optional[Path]) -> dict[tuple[str, str], dict]:
    path = None if out is None else out / "zoo.json"
    if path is None or not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())["rows"]
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"{path} is not a zoo sweep result ({exc}); move it away or pass --fresh")
    return {(r["source"], r["model"]): r for r in rows}


# ------------------------------------------------------------------------------ main
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="sweep only these models (torchvision or timm names)")
    parser.add_argument("--timm-only", action="store_true", help="sweep only the timm list")
    parser.add_argument("--torchvision-only", action="store_true",
                        help="sweep only torchvision's models")
    parser.add_argument("--limit", type=int, help="sweep at most N models (after the filters)")
    parser.add_argument("--out", type=Path, help=f"write README.md and zoo.json here "
                        f"(default for a full sweep: {_short(str(DEFAULT_OUT))}; a partial sweep "
                        "writes only with --out)")
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds per model before it is recorded as FAIL (0: no limit)")
    parser.add_argument("--jobs", type=int, default=2, help="models swept at once (2)")
    parser.add_argument("--memory-gb", type=float, default=11.0,
                        help="address-space cap of each worker in GiB (11; 0: none); models "
                        "that run out are retried alone at the end with all but 3 GiB of RAM")
    parser.add_argument("--fresh", action="store_true", help="rerun the selected models even if "
                        "--out has their rows (the other rows are kept)")
    parser.add_argument("--rerun-failed", action="store_true",
                        help="rerun cached FAIL rows (pass/unsupported rows are kept)")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite README.md from the rows in --out's zoo.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.row_out, args.timeout)
    if args.timm_only and args.torchvision_only:
        parser.error("--timm-only and --torchvision-only exclude each other")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.memory_gb < 0:
        parser.error(f"--memory-gb must be >= 0, got {args.memory_gb}")

    specs = all_specs(not args.timm_only, not args.torchvision_only)
    if args.only:
        wanted = set(args.only)
        specs = [s for s in specs if s[1] in wanted or f"{s[0]}:{s[1]}" in wanted]
        missing = wanted - {s[1] for s in specs} - {f"{s[0]}:{s[1]}" for s in specs}
        for name in sorted(missing):                # not in the lists: try timm, then torchvision
            source = "torchvision" if name in torchvision_names() else "timm"
            specs.append((source, name.split(":", 1)[-1]))
    if args.limit is not None:
        specs = specs[:args.limit]
    partial = bool(args.only or args.limit is not None or args.timm_only or args.torchvision_only)
    out = args.out or (None if partial else DEFAULT_OUT)
    kept = _load_cache(out)                         # every row in the folder stays in its table
    cache = {k: r for k, r in kept.items() if not (args.fresh and k in specs)}
    if args.rerun_failed:
        cache = {k: r for k, r in cache.items() if not r["status"].startswith("FAIL")}
    order = all_specs() + [s for s in specs if s not in all_specs()]
    order += [k for k in kept if k not in order]
    earlier = _load_meta(out)

    command = "python benchmarks/zoo.py" + "".join(" " + shlex.quote(a) for a in
                                                   (sys.argv[1:] if argv is None else argv))
    meta = {"command": command, "commands": earlier.get("commands", []) + [command],
            "machine": machine(args.jobs, args.memory_gb),
            "versions": versions(), "ratios": list(RATIOS), "report_ratio": REPORT_RATIO,
            "planned": len(order) if out == DEFAULT_OUT else len(set(specs) | set(kept)),
            "complete": False, "total_seconds": 0.0,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if args.report:                                 # the sweep's own record, rows unchanged
        meta.update({k: earlier[k] for k in ("command", "commands", "machine", "date",
                                             "total_seconds") if k in earlier})
    todo = [] if args.report else [s for s in specs if s not in cache]
    print(f"sweeping {len(todo)} of {len(specs)} models ({len(specs) - len(todo)} cached); "
          f"{meta['machine']}", flush=True)
    done: dict[tuple[str, str], dict] = {k: r for k, r in cache.items()}
    start = time.perf_counter()

    def rows_now() -> list[dict]:
        return [done[s] for s in order if s in done]

    def record(spec: tuple[str, str], row: dict) -> None:
        done[spec] = row
        print(f"[{sum(s in done for s in specs)}/{len(specs)}] {spec[0]}:{spec[1]} "
              f"{row['seconds']:.1f}s {row['status']}", flush=True)
        meta["total_seconds"] = round(time.perf_counter() - start, 1)
        if out is not None:
            write_results(out, rows_now(), meta)

    def sweep(spec: tuple[str, str], memory_gb: float, threads: int) -> tuple:
        return spec, run_isolated(*spec, args.timeout, memory_gb, threads)

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in as_completed([pool.submit(sweep, s, args.memory_gb, threads) for s in todo]):
            record(*future.result())
    retry = [s for s in todo if done[s].get("out_of_memory") and args.memory_gb]
    if retry:
        print(f"retrying {len(retry)} models that ran out of memory, one at a time", flush=True)
        for spec in retry:                          # leave 3 GiB to the rest of the machine
            if args.report:
                break
            record(*sweep(spec, max(args.memory_gb, _ram_gb() - 3), os.cpu_count() or 1))
    rows = rows_now()
    meta["complete"] = len(rows) == meta["planned"]
    print()
    print(summary(rows, meta))
    print(table(rows))
    if out is not None:
        write_results(out, rows, meta)
        print(f"\nwrote {out / 'README.md'} and {out / 'zoo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
