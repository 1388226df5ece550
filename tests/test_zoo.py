"""The model-zoo sweep's per-model check on a handful of representative models (slow)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.zoo import RATIOS, run_model  # noqa: E402

MODELS = [
    ("torchvision", "resnet18"),
    ("torchvision", "mobilenet_v3_small"),
    ("timm", "efficientnet_b0"),
    ("timm", "deit_tiny_patch16_224"),
]


@pytest.mark.slow
@pytest.mark.parametrize("source, name", MODELS, ids=[f"{s}:{n}" for s, n in MODELS])
def test_zoo_model_passes_with_fewer_flops(source: str, name: str) -> None:
    row = run_model(source, name)
    assert row["status"] == "pass", row
    assert set(row["flops_after"]) == {str(r) for r in RATIOS}
    for ratio in RATIOS:
        assert row["flops_after"][str(ratio)] < row["flops_before"], (ratio, row)
        assert row["params_after"][str(ratio)] < row["params_before"], (ratio, row)
    # a higher ratio removes more
    flops = [row["flops_after"][str(r)] for r in sorted(RATIOS)]
    assert flops == sorted(flops, reverse=True), row
