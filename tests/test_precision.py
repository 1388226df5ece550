"""Low-precision search and retraining: the 8-bit grid, SWA, q8/bf16 runs and their ledgers."""
import json
import math

from pathlib import Path

import pytest
import torch
from torch import nn

import earlybird as eb
from earlybird.cli import main
from earlybird.data.datasets import Batches, ImageSet
from earlybird.training.precision import SWA, LowPrecision, LowPrecisionUnavailable, load_qtorch
from conftest import TinyVGG
from test_pipeline import BASE


def on_grid(t: torch.Tensor, wl: int = 8) -> bool:
    """Block floating point with one exponent: multiples of 2**(floor(log2 max|t|) - (wl-2))."""
    top = t.abs().max().item()
    if top == 0:
        return True
    scale = 2.0 ** (math.floor(math.log2(top)) - (wl - 2))
    q = t / scale
    return bool(torch.equal(q, q.round())) and q.abs().max() <= 2 ** (wl - 1)


def test_quantised_step_puts_weights_and_momentum_on_the_8_bit_grid(x32):
    torch.manual_seed(0)
    model = TinyVGG()
    opt = LowPrecision().optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    before = [p.detach().clone() for p in model.parameters()]
    assert not all(on_grid(p) for p in before)
    for _ in range(2):
        model(x32).sum().backward()
        opt.step()
        opt.zero_grad()
    for p in model.parameters():
        assert on_grid(p.detach())
        assert on_grid(opt.optim.state[p]["momentum_buffer"])
    # stochastic rounding may round a small update back (qtorch's CPU rounding is not seeded by
    # torch), but the conv weights move by more than one grid step
    assert not torch.equal(model.features[0].weight, before[0])


def test_activations_are_quantised_per_sample_and_hooks_come_off(x32):
    model = TinyVGG().eval()
    dense = model(x32).detach()
    handles = LowPrecision(wl_activate=4, rounding="nearest").quantize_activations(model)
    out = model(x32).detach()
    assert not torch.equal(out, dense)
    assert all(on_grid(row, 4) for row in out)             # the head's output, one exponent a row
    for h in handles:
        h.remove()
    assert torch.equal(model(x32), dense)


def test_swa_loads_the_mean_of_the_snapshots_and_refreshes_bn():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1))
    swa = SWA(model)
    snapshots = []
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
        swa.update()
        snapshots.append(value)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 4, 4), generator=g, dtype=torch.uint8)
    data = ImageSet(images, torch.zeros(32, dtype=torch.long), ["x"])
    batches = Batches(data, 8, train=False, mean=(0, 0, 0), std=(1 / 255,) * 3)
    swa.apply(batches)
    for p in model.parameters():
        assert torch.allclose(p, torch.full_like(p, 3.0))          # mean of 1, 2 and 6
    assert torch.allclose(model[0].running_mean, images.float().mean((0, 2, 3)), atol=1e-3)


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "c++" else "/bin/" + tool)
    with pytest.raises(LowPrecisionUnavailable, match="needs c\\+\\+ on PATH.*fp32 and bf16 work"):
        load_qtorch()


def test_qtorch_kernels_are_compiled_with_optimisation():
    load_qtorch()
    import qtorch.quant.quant_function as qf
    built = Path(qf.quant_cpu.__file__).parent / "build.ninja"
    flags = next(line for line in built.read_text().splitlines() if line.startswith("cflags"))
    assert "-O3" in flags.split()


@pytest.mark.parametrize("kwargs,message", [
    (dict(wl_weight=1), "^wl_weight must be an integer in \\[2, 32\\], got 1"),
    (dict(rounding="up"), "^rounding must be one of \\['stochastic', 'nearest'\\]"),
])
def test_bad_low_precision_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LowPrecision(**kwargs)


# the reference rule: with window 2 the plateau rule may draw only after the last epoch
Q8 = [*BASE, "--ratios", "0.3", "0.5", "0.7", "--window", "2", "--epsilon", "0.3",
      "--criterion", "reference"]


def test_q8_search_draws_three_tickets_on_the_shipped_subset(tmp_path, capsys):
    save = tmp_path / "q8"
    assert main(["search", "--save", str(save), *Q8, "--search-precision", "q8"]) == 0
    search = torch.load(save / "search.pt", weights_only=True)
    assert set(search["pruner"]["tickets"]) == {"0.3", "0.5", "0.7"}
    assert search["precision"] == "q8"
    weights = [v for k, v in search["model"].items() if k.endswith("weight")]
    assert all(on_grid(w) for w in weights)


@pytest.mark.parametrize("search,retrain", [("q8", "fp32"), ("q8", "q8"), ("bf16", "fp32")])
def test_lf_ll_and_bf16_runs_end_to_end_with_ledgers(tmp_path, search, retrain):
    save = tmp_path / f"{search}-{retrain}"
    args = ["run", "--save", str(save), *Q8, "--ratios", "0.5", "--search-precision", search,
            "--retrain-precision", retrain]
    if retrain == "q8":
        args += ["--swa", "--swa-start", "3"]
    assert main(args) == 0
    ledger = json.loads((save / "ledger.json").read_text())
    assert ledger["phases"]["search"]["precision"] == [search]
    phase = ledger["phases"]["retrain-0.5-finetune"]
    assert phase["precision"] == [retrain]
    pj = {"q8": 0.23, "fp32": 4.6, "bf16": 1.5}[retrain]
    assert phase["energy_j_estimated"] == pytest.approx(phase["flops"] * pj * 1e-12)
    log = eb.run.runs.RunDir(save).read_log()
    if retrain == "q8":
        assert [r["swa"] for r in log if "swa" in r] == [1]   # averaged over epoch 3 only
    pruned = torch.load(save / "retrain-0.5-finetune.pt", weights_only=True)
    assert pruned["precision"] == retrain and pruned["done"]
