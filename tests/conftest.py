"""Tiny models for the tests: each names the coupling it exercises."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn


class TinyVGG(nn.Module):
    """Plain conv-BN stack and a classifier: three independent groups (4, 6, 8 channels)."""

    def __init__(self, widths=(4, 6, 8), num_classes: int = 3) -> None:
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


class TinyResidual(nn.Module):
    """stem(8) + block: residual add couples stem.bn and block.bn2 into one group of 8."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv1 = nn.Conv2d(8, 5, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc((x + y).relu().mean((2, 3)))


class TinyConcat(nn.Module):
    """Two branches concatenated, then one BN over the concatenation (DenseNet-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(7)
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        return self.head(self.bn(torch.cat([self.a(x), self.b(x)], 1)).relu().mean((2, 3)))


class TinyGrouped(nn.Module):
    """1x1 conv (12) -> BN -> grouped 3x3 conv (3 groups) -> BN -> head: units of 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 12, 3, padding=1, groups=3, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).relu()
        return self.head(self.bn2(self.conv2(x)).relu().mean((2, 3)))


def set_scales(model: nn.Module, values) -> None:
    """Give every BatchNorm's gamma the next values of ``values`` (module order)."""
    values = torch.as_tensor(values, dtype=torch.float32).flatten()
    with torch.no_grad():
        i = 0
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(values[i:i + m.num_features])
                i += m.num_features
    assert i == values.numel(), f"{values.numel()} values for {i} scales"


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Distinct gammas, betas and running stats (and slimming coefficients, where a pruner made
    them), so masks and outputs are not degenerate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in getattr(model, "eb_coefficients", {}).values():
            c.weight.copy_(torch.rand(c.weight.shape, generator=g) * 0.9 + 0.1)
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.9 + 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if getattr(m, "running_var", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``pytest -n auto`` (tox runs it): one worker per core this process may run on, unless
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` says otherwise."""
    return int(os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", len(os.sched_getaffinity(0))))


def pytest_configure(config):
    """Each pytest-xdist worker runs on a core of its own, with one thread (OpenMP too, for the
    processes it starts). Most tests are small enough that Python, not arithmetic, takes their
    time: on 2 cores, 2 pinned workers ran the tests in 235 s where one process with 2 threads
    took 428 s; unpinned workers with 2 threads each took 606 s (docs/development.md)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (a GPU machine): none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def x32() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def torchrun(*args: str, cwd=None, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 <args>`` on CPU (gloo), one OpenMP thread a rank.

    ``--standalone`` takes a free port for the rendezvous, so two runs on one machine (two CI
    jobs, a test beside a user's job) never join each other's process group.
    """
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *args], capture_output=True, text=True,
                          cwd=cwd or root, env=env, timeout=timeout)


def failure(out: subprocess.CompletedProcess) -> str:
    """What a failed run printed, warnings dropped: every rank's own lines before the launcher's."""
    glog_warning = re.compile(r"^(\[rank\d+\]:)?W\d{4} ")       # W1201 20:53:06.239 ...
    lines = [line for line in out.stderr.splitlines()
             if not glog_warning.match(line) and "Warning" not in line]
    return "\n".join(lines)[-6000:]
