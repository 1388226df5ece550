"""On a GPU: the pruner, the training layer, a pipeline run and the suite's dry run stay on
the device and do not wait for the host inside a step. Skipped where CUDA is not available
(marker ``gpu``); the same code paths run on the CPU in the other tests."""
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import earlybird as eb
from earlybird.data.datasets import Batches, ImageSet
from conftest import TinyVGG, randomize_norms

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def synchronisations(fn) -> tuple[object, list[str]]:
    """``fn()`` and where it made the host wait for the device (``file:line`` of each wait)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, [f"{Path(w.filename).name}:{w.lineno}" for w in caught
                 if "synchroniz" in str(w.message)]


def test_the_pruner_checks_on_the_device_with_one_transfer():
    torch.manual_seed(0)
    model = TinyVGG().to(CUDA)
    randomize_norms(model)
    x = torch.randn(2, 3, 8, 8, device=CUDA)
    # without the ticket's weights: the check's one copy of masks and distances, nothing else
    bare = eb.EarlyBirdPruner(model, x, ratios=[0.3, 0.5], window=2, epsilon=1.0,
                              criterion="reference", keep_weights=False)
    bare.step()
    drawn, waits = synchronisations(bare.step)
    assert drawn == [0.3, 0.5] and len(waits) == 1, waits
    # with them: the weights go to pinned memory without another wait
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.3, 0.5], window=2, epsilon=1.0,
                                criterion="reference")
    assert pruner.graph.scores().device.type == "cuda"
    pruner.step()
    drawn, waits = synchronisations(pruner.step)
    assert drawn == [0.3, 0.5] and len(waits) == 1, waits
    assert pruner.history(0.5).device.type == "cpu"
    cpu = eb.EarlyBirdPruner(TinyVGG().to("cpu"), x.cpu(), ratios=[0.3, 0.5])
    cpu.model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    assert torch.equal(cpu.mask(0.5), pruner.mask(0.5))      # the same masks as on the CPU
    small = pruner.prune(0.5)
    assert next(small.parameters()).device.type == "cuda"   # the copy stays on the GPU
    assert small(x).shape == (2, 3)
    state = pruner.state_dict()                              # ticket weights, copied off the GPU
    torch.save(state, "/dev/null")
    assert all(v.device.type == "cpu" for v in state["tickets"]["0.5"]["state"].values())


def test_batches_on_the_gpu_equal_the_cpus_and_the_step_does_not_wait():
    g = torch.Generator().manual_seed(0)
    images = ImageSet(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (40,), generator=g), [str(c) for c in range(10)])
    on_gpu, on_cpu = Batches(images, 8, True, seed=3, device=CUDA), Batches(images, 8, True, seed=3)
    for epoch in (0, 1):
        on_gpu.set_epoch(epoch), on_cpu.set_epoch(epoch)
        for (a, ya), (b, yb) in zip(on_gpu, on_cpu):
            assert a.device.type == "cuda" and torch.equal(a.cpu(), b) and torch.equal(ya.cpu(), yb)
    model = eb.models.CifarVGG(11, num_classes=10, width=0.125).to(CUDA)
    trainer = eb.Trainer(model, eb.Recipe(epochs=2), on_gpu, precision="bf16")
    _, waits = synchronisations(trainer.train_epoch)
    assert len(waits) <= 3, waits           # the epoch's loss and accuracy sums, not per step
    assert trainer.layout == torch.channels_last


def test_a_pipeline_run_on_the_gpu(tmp_path):
    from earlybird.cli import main
    from test_pipeline import TINY
    assert main(["run", "--save", str(tmp_path / "run"), *TINY]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["retrain"] and summary["dense"]["test_acc"] > 0
    assert torch.load(tmp_path / "run" / "search.pt", weights_only=True)["done"] is True


def test_the_suites_dry_run_on_the_gpu(tmp_path):
    from benchmarks import suite as S
    small = S.dry_run(S.load_suite("quick"))
    small = replace(small, setting=replace(small.setting, device="cuda"))
    rows = S.run(small, tmp_path, 1, progress=lambda line: None)
    assert sorted(r["method"] for r in rows) == sorted(small.methods)
    assert all(r["train_flops"] > 0 for r in rows)
    assert not list(Path(tmp_path).glob("**/*.tmp"))
