"""Why do pruned networks not train faster on a GPU? One training step, side by side.

The first GPU run (``benchmarks/results/vgg16-cifar10-fast``) trained the dense VGG16-BN at
5.7 % of the H200's bf16 rate, and its pruned tickets, with 2-4x fewer FLOPs, no faster per
epoch. This times one SGD step (forward, backward, update; 32 px images at batch 256, or at
each of several batch sizes; bf16 autocast by default) of the dense network and of its
p = 0.5 ticket pruned with ``round_to`` 1 and 8 (every conv keeping a multiple of 8
channels, what tensor cores want), each in the channels_last and the contiguous layout,
eager and, with ``--compile``, under ``torch.compile``. Steps are timed in blocks,
round-robin, the device synchronised around each block, so all variants share the
machine's state. The table gives the median step, the images per second and the arithmetic
rate reached (3 x forward multiply-adds x 2 FLOPs). A step that takes as long at batch 1024
as at 256 is bound by per-kernel overhead, not by arithmetic.

Run: ``python benchmarks/gpu/steps.py --out DIR`` (about 30 s eager on one H200, plus a compile
per variant with ``--compile``); on a CPU it runs the same code, e.g. for a quick look with
``--batch 8 --blocks 2 --steps 2``. ``benchmarks/gpu/run.sh`` runs it at batches 256 and
1024.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from benchmarks.round_to import MODELS, tickets, widths  # noqa: E402
from earlybird.costs.flops import count_flops  # noqa: E402
from earlybird.run.io import write_text  # noqa: E402

MODEL = "cifar_vgg16_bn"
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def variants(ratio: float, seed: int = 0) -> dict[str, nn.Module]:
    """The dense network and its ``ratio`` ticket with ``round_to`` 1 and 8, by label."""
    pruned = tickets(MODEL, ratio, seed)
    torch.manual_seed(seed)
    return {"dense": MODELS[MODEL](), f"p={ratio:g} round_to=1": pruned[1],
            f"p={ratio:g} round_to=8": pruned[8]}


def make_step(model: nn.Module, device: torch.device, layout: torch.memory_format, batch: int,
              precision: str, compiled: bool) -> Callable[[], None]:
    """One SGD step of ``model`` on a fixed random batch, as the Trainer takes it."""
    model = model.to(device=device, memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    forward = torch.compile(model) if compiled else model
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(steps: dict[str, Callable[[], None]], device: torch.device, blocks: int,
            per_block: int) -> dict[str, float]:
    """Median seconds per step of each entry: ``blocks`` rounds, each timing ``per_block``
    steps of every entry in turn between two device synchronisations."""
    for step in steps.values():                       # warm-up (and compile)
        for _ in range(3):
            step()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(blocks):
        for key, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(per_block):
                step()
            sync(device)
            times[key].append((time.perf_counter() - start) / per_block)
    return {k: statistics.median(t) for k, t in times.items()}


def run(device: torch.device, batches: list[int], ratio: float, precision: str, compiled: bool,
        blocks: int, per_block: int) -> list[dict]:
    """One row per (batch, network, layout, mode): step ms, images/s, TFLOP/s reached."""
    models = variants(ratio)
    macs = {k: count_flops(m, torch.randn(1, 3, 32, 32)).flops for k, m in models.items()}
    modes = ["eager", "compile"] if compiled else ["eager"]
    steps = {}
    for batch in batches:
        for label, model in models.items():
            for lname, layout in LAYOUTS.items():
                for mode in modes:
                    # each variant trains its own copy: layouts and modes share no weights
                    steps[f"{batch}|{label}|{lname}|{mode}"] = make_step(
                        copy.deepcopy(model), device, layout, batch, precision, mode == "compile")
    seconds = measure(steps, device, blocks, per_block)
    rows = []
    for key, s in seconds.items():
        batch_s, label, lname, mode = key.split("|")
        batch, dense_s = int(batch_s), seconds[f"{batch_s}|dense|channels_last|eager"]
        w = widths(models[label])
        rows.append({"batch": batch, "network": label, "layout": lname, "mode": mode,
                     "step_ms": s * 1e3,
                     "images_per_s": batch / s, "tflops": 6 * macs[label] * batch / s / 1e12,
                     "mflops": macs[label] / 1e6, "vs_dense": s / dense_s,
                     "flops_vs_dense": macs[label] / macs["dense"],
                     "widths_multiple_of_8": sum(c % 8 == 0 for c in w), "convs": len(w)})
    return rows


def markdown(rows: list[dict], meta: dict, peak: Optional[float]) -> str:
    lines = ["# One training step on the GPU: dense against pruned", "",
             "Generated by `benchmarks/gpu/steps.py`; do not edit by hand. One SGD step "
             f"(32 px, {meta['precision']}) of VGG16-BN and of its "
             f"p = {meta['ratio']:g} ticket pruned with `round_to` 1 and 8, median over "
             f"{meta['blocks']} blocks of {meta['per_block']} steps timed round-robin. "
             "`time vs dense` against the dense network in channels_last, eager, at the same "
             "batch.", "",
             "| batch | network | layout | mode | step (ms) | images / s | TFLOP/s"
             + (" | share of peak" if peak else "") + " | FLOPs vs dense | time vs dense | "
             "convs with a width divisible by 8 |",
             "| ---: | --- | --- | --- | ---: | ---: | ---: |" + (" ---: |" if peak else "")
             + " ---: | ---: | ---: |"]
    for r in rows:
        share = f" {100 * r['tflops'] / peak:.1f} % |" if peak else ""
        lines.append(f"| {r['batch']} | {r['network']} | {r['layout']} | {r['mode']} | "
                     f"{r['step_ms']:.2f} | "
                     f"{r['images_per_s']:,.0f} | {r['tflops']:.1f} |{share} "
                     f"{r['flops_vs_dense']:.2f} | {r['vs_dense']:.2f} | "
                     f"{r['widths_multiple_of_8']} of {r['convs']} |")
    return "\n".join(lines + common.provenance(meta))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[256], help="batch sizes (256)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--compile", action="store_true", help="also time each variant compiled")
    p.add_argument("--blocks", type=int, default=5, help="timed rounds (5)")
    p.add_argument("--steps", type=int, default=20, help="steps per variant and round (20)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the chip's rate at this precision, for a share-of-peak column")
    p.add_argument("--out", type=Path, default=None, help="results folder (none: print only)")
    args = p.parse_args(argv)
    if min(args.batch) < 1 or args.blocks < 1 or args.steps < 1 or not 0 < args.ratio < 1:
        p.error("need --batch, --blocks, --steps >= 1 and --ratio in (0, 1)")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.time()
    rows = run(device, args.batch, args.ratio, args.precision, args.compile, args.blocks,
               args.steps)
    meta = {"command": "python benchmarks/gpu/steps.py " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv),
            "machine": common.machine(1), "host": common.host(), "batch": args.batch,
            "ratio": args.ratio, "precision": args.precision, "blocks": args.blocks,
            "per_block": args.steps, "wall_min": (time.time() - start) / 60,
            "date": common.now()}
    text = markdown(rows, meta, args.peak_tflops)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        common.write_json(args.out / "results.json", {"meta": meta, "rows": rows})
        write_text(args.out / "README.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
