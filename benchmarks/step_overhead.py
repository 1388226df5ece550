"""Cost of ``EarlyBirdPruner.step()`` (three ratios) against one training step, side by side.

Target (issue 2): step() under 1 % of one SGD step at batch 64, for ResNet-50 at 224x224 and a
CIFAR VGG16 at 32x32. Run: ``python benchmarks/step_overhead.py`` (or ``tox -e bench``).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

import earlybird as eb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common  # noqa: E402

warnings.filterwarnings("ignore")


def measure(name: str, model: nn.Module, size: int, batch: int, train_repeats: int) -> dict:
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    start = time.perf_counter()
    pruner = eb.EarlyBirdPruner(model, x[:1], ratios=(0.3, 0.5, 0.7))
    build = time.perf_counter() - start
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def train_step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.regularize()
        opt.step()

    train_step()                                            # warm-up
    train = common.median_s(train_step, train_repeats)
    pruner.step()
    step = common.median_s(pruner.step, 20)
    return {"model": name, "channels": pruner.layout.num_channels, "build_s": build,
            "train_step_s": train, "eb_step_ms": step * 1e3, "ratio": step / train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train-repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [
        measure("cifar_vgg16_bn 32x32", eb.models.CifarVGG(16, num_classes=10), 32, args.batch,
                args.train_repeats),
        measure("resnet50 224x224", torchvision.models.resnet50(num_classes=10), 224, args.batch,
                args.train_repeats),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'model':22s} {'channels':>8s} {'graph build':>11s} {'train step':>10s} "
          f"{'step()':>9s} {'step()/train':>12s}")
    for r in rows:
        print(f"{r['model']:22s} {r['channels']:8d} {r['build_s']:10.2f}s {r['train_step_s']:9.3f}s "
              f"{r['eb_step_ms']:7.2f}ms {100 * r['ratio']:11.3f}%")
    worst = max(r["ratio"] for r in rows)
    print(f"target: step() < 1% of a training step -> {'met' if worst < 0.01 else 'MISSED'} "
          f"(worst {100 * worst:.3f}%)")


if __name__ == "__main__":
    main()
