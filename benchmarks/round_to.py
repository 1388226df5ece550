"""Step time of pruned tickets whose layers keep multiples of 1, 8 or 16 channels, side by side.

For each model a p = 0.5 ticket is drawn three times from the same scores, with ``round_to``
1, 8 and 16, pruned, and one SGD training step (forward, backward, update) of each pruned
model is timed in turn, round-robin, so the three share the machine's state; each in the
input layout ``earlybird.Trainer`` trains it in (channels_last on the CPU only when every conv
width is a multiple of 8, :func:`earlybird.training.trainer.memory_format`) and, for comparison,
contiguous. Scores: every
BatchNorm scale set to a seeded random value in [0.1, 1] (an untrained model's scales tie at
1). Run: ``python benchmarks/round_to.py``; results in ``benchmarks/results/round_to/``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

import earlybird as eb
from earlybird.costs.flops import count_flops
from earlybird.run.io import write_text
from earlybird.training.trainer import memory_format

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "round_to"
MODELS = {
    "cifar_vgg16_bn": lambda: eb.models.CifarVGG(16, num_classes=10),
    "cifar_preresnet56": lambda: eb.models.PreResNet(56, num_classes=10),
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
}
MULTIPLES = (1, 8, 16)


def tickets(name: str, ratio: float, seed: int) -> dict[int, nn.Module]:
    """The pruned model of ``name``'s p = ``ratio`` ticket for each multiple."""
    torch.manual_seed(seed)
    dense = MODELS[name]()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.9 + 0.1)
    x = torch.randn(2, 3, 32, 32)
    out = {}
    for k in MULTIPLES:
        pruner = eb.EarlyBirdPruner(dense, x, ratios=[ratio], round_to=k)
        out[k] = pruner.prune(ratio, force=True)
    return out


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def measure(models: dict[int, nn.Module], batch: int, repeats: int
            ) -> dict[tuple[int, bool], float]:
    """Median seconds of one SGD step of each model, in the layout the Trainer picks (key
    ``(k, True)``) and contiguous (``(k, False)``), timed round-robin."""
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    steps = {}
    for (k, model), chosen in [(item, c) for item in models.items() for c in (True, False)]:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        layout = memory_format(model, torch.device("cpu")) if chosen else torch.contiguous_format
        xk = x.contiguous(memory_format=layout)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt,
                 xk: torch.Tensor = xk) -> None:
            loss = nn.functional.cross_entropy(model(xk), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        steps[k, chosen] = step
    for step in steps.values():                      # warm-up
        step(), step()
    times: dict[tuple[int, bool], list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            start = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(t) for k, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    start = time.time()
    rows = []
    for name in args.models:
        models = tickets(name, args.ratio, seed=0)
        step = measure(models, args.batch, args.repeats)
        flops = {k: count_flops(m, torch.randn(1, 3, 32, 32)).flops for k, m in models.items()}
        for k, model in models.items():
            w = widths(model)
            layout = memory_format(model, torch.device("cpu"))
            rows.append({"model": name, "round_to": k, "step_ms": step[k, True] * 1e3,
                         "layout": "channels_last" if layout == torch.channels_last
                         else "contiguous", "contiguous_ms": step[k, False] * 1e3,
                         "vs_1": step[k, True] / step[1, True], "mflops": flops[k] / 1e6,
                         "per_flop_vs_1": (step[k, True] / flops[k]) / (step[1, True] / flops[1]),
                         "params": sum(p.numel() for p in model.parameters()),
                         "widths_multiple_of_8": sum(c % 8 == 0 for c in w), "convs": len(w)})
    meta = {"command": "python benchmarks/round_to.py " + " ".join(sys.argv[1:]),
            "machine": common.machine(1), "host": common.host(), "batch": args.batch,
            "ratio": args.ratio, "repeats": args.repeats,
            "wall_min": (time.time() - start) / 60, "date": common.now()}
    lines = ["# Step time of rounded tickets (`round_to`)", "",
             f"Generated by `benchmarks/round_to.py`; do not edit by hand. One SGD step at batch "
             f"{args.batch}, 32x32, of the p = {args.ratio} ticket pruned with each `round_to`, "
             f"median of {args.repeats} steps timed round-robin, in the input layout "
             "`earlybird.Trainer` picks (and contiguous). Scores: seeded random norm "
             "scales (one ticket per model, three roundings of it).", "",
             "| model | round_to | step (ms) | layout (Trainer's) | contiguous (ms) | vs "
             "round_to=1 | inference MFLOPs | time per FLOP vs round_to=1 | params | convs with "
             "a width divisible by 8 |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['round_to']} | {r['step_ms']:.1f} | {r['layout']} | "
                     f"{r['contiguous_ms']:.1f} | {r['vs_1']:.3f} | {r['mflops']:.1f} | "
                     f"{r['per_flop_vs_1']:.3f} | "
                     f"{r['params']:,} | {r['widths_multiple_of_8']} of {r['convs']} |")
    lines += common.provenance(meta)
    OUT.mkdir(parents=True, exist_ok=True)
    common.write_json(OUT / "results.json", {"meta": meta, "rows": rows})
    write_text(OUT / "README.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
