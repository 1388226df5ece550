"""Which input memory format trains a CIFAR VGG-11 faster on this CPU: contiguous (NCHW) or
channels_last (NHWC), for the dense widths and for the odd widths pruning leaves, with one
thread (as the benchmark studies' workers train) and with every core?

One SGD step (forward, backward, update) at batch 128 on 32x32 inputs, median of 10 after 3
warm-up steps, both formats side by side for each set of conv widths; the ratio says how much
faster channels_last is. ``earlybird.training.trainer.memory_format`` picks channels_last on the
CPU with one thread, and with more only when every conv width is a multiple of 8, from these
measurements.

Run: ``python benchmarks/memory_format.py`` (about two minutes on 2 cores).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from earlybird.training.trainer import memory_format  # noqa: E402

WIDTHS = {
    "dense VGG-11 w0.125": [8, 16, 32, 32, 64, 64, 64, 64],
    "dense VGG-11 w0.25": [16, 32, 64, 64, 128, 128, 128, 128],
    "demo ticket p=0.3": [14, 27, 49, 48, 82, 76, 87, 99],      # the earlier demo (w0.25)
    "demo ticket p=0.5": [13, 26, 39, 39, 56, 52, 50, 69],
    "w0.125 demo p=0.3": [8, 16, 26, 24, 42, 32, 34, 59],       # the demo's tickets now
    "w0.125 demo p=0.5": [8, 16, 23, 19, 26, 13, 13, 54],
    "w0.125 demo p=0.7": [8, 12, 16, 12, 9, 5, 4, 38],
    "widths rounded to 8": [16, 24, 48, 48, 80, 80, 88, 96],
    "multiples of 4, not 8": [12, 28, 52, 44, 84, 76, 84, 100],
    "dense VGG-11 w0.5": [32, 64, 128, 128, 256, 256, 256, 256],
    "w0.5, one less each": [31, 63, 127, 127, 255, 255, 255, 255],
}


def vgg(widths: list[int]) -> nn.Module:
    layers, c = [], 3
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        if i in (0, 1, 3, 5):
            layers.append(nn.MaxPool2d(2))
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def main() -> None:
    print(f"torch {torch.__version__}, {common.cpu_model()}; one SGD step, batch 128")
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s)")
        print(f"{'widths':24s} {'contiguous':>11s} {'channels_last':>14s} {'cl speedup':>11s}  chosen")
        for name, widths in WIDTHS.items():
            torch.manual_seed(0)
            x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
            model = vgg(widths)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            times = []
            for fmt in (torch.contiguous_format, torch.channels_last):
                xx = x.contiguous(memory_format=fmt)

                def step() -> None:
                    loss = nn.functional.cross_entropy(model(xx), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                times.append(common.median_s(step, 10, warmup=3))
            chosen = "channels_last" if memory_format(model, torch.device("cpu"), threads) == \
                torch.channels_last else "contiguous"
            print(f"{name:24s} {1e3 * times[0]:9.1f}ms {1e3 * times[1]:12.1f}ms "
                  f"{times[0] / times[1]:10.2f}x  {chosen}")


if __name__ == "__main__":
    main()
