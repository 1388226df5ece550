"""Cost ledger, energy and plots: checked against hand-computed numbers."""
import json

import pytest
import torch
from torch import nn

import earlybird as eb
from earlybird.cli import main
from earlybird.costs.energy import EnergyMeter, estimate_joules
from earlybird.costs.flops import count_flops
from earlybird.costs.ledger import build_ledger, phase_cost
from test_pipeline import TINY


def test_flops_of_a_tiny_conv_net_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3))
    cost = count_flops(net, torch.zeros(1, 3, 8, 8))
    conv = 4 * 3 * 3 * 3 * 8 * 8                           # out x in x k x k x H x W
    linear = 256 * 3
    assert cost.flops == conv + linear == 7680
    assert cost.params == 4 * 27 + 256 * 3 + 3


def test_vit_attention_is_counted_not_skipped():
    import timm
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    cost = count_flops(vit, torch.zeros(1, 3, 32, 32))
    assert "aten::scaled_dot_product_attention" not in cost.uncounted
    tokens, dim = 5, 192                                    # 4 patches + cls, 3 heads
    attention = 12 * 2 * tokens * tokens * dim              # q@k^T and attn@v per block
    linear = 12 * tokens * (dim * 3 * dim + dim * dim + 2 * dim * 4 * dim)
    patch = 4 * 16 * 16 * 3 * dim
    norms = 25 * 5 * tokens * dim                           # fvcore: 5 per LayerNorm element
    assert cost.flops == attention + linear + patch + dim * 10 + norms


def test_training_is_three_forwards_and_phases_add_up():
    records = [{"epoch": 0, "samples": 100, "eval_samples": 20, "train_s": 1.0, "eval_s": 0.25},
               {"epoch": 1, "samples": 100, "eval_samples": 20, "train_s": 1.5, "eval_s": 0.25}]
    cost = phase_cost(records, forward_flops=1_000)
    assert cost["train_flops"] == 3 * 1_000 * 200
    assert cost["eval_flops"] == 1_000 * 40
    assert cost["flops"] == 600_000 + 40_000 and cost["wall_s"] == 3.0
    assert cost["energy_j_estimated"] == pytest.approx(640_000 * 4.6e-12)
    half = phase_cost(records, 1_000, weights=[1.0, 0.5], eval_weights=[1.0, 0.0])
    assert half["train_flops"] == 3 * 1_000 * 150 and half["eval_flops"] == 20_000
    assert phase_cost(records, 1_000, backward_factor=2.0)["train_flops"] == 400_000


def test_energy_table_and_rapl_counters(tmp_path):
    assert estimate_joules(1e12, "fp32") == pytest.approx(4.6)
    assert estimate_joules(1e12, "fp16") == pytest.approx(1.5)
    assert estimate_joules(1e12, "int8") == estimate_joules(1e12, "q8") == pytest.approx(0.23)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        estimate_joules(1, "fp8")
    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "energy_uj").write_text("999000000")
    (pkg / "max_energy_range_uj").write_text("1000000000")
    meter = EnergyMeter(str(tmp_path))
    assert meter.sources == ["rapl"] and meter.read() == 0.0
    (pkg / "energy_uj").write_text("2000000")               # wrapped past the range
    assert meter.read() == pytest.approx(3.0)
    assert EnergyMeter(str(tmp_path / "none")).read() is None


def test_ledger_of_a_real_run_matches_the_log(tmp_path, capsys):
    save = tmp_path / "run"
    assert main(["run", "--save", str(save), *TINY]) == 0
    ledger = json.loads((save / "ledger.json").read_text())
    assert ledger == json.loads(json.dumps(build_ledger(save)))
    cfg = [8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64]   # VGG-11 at width 1/8
    macs, norm, c, hw = 0, 0, 3, 32
    for v in cfg:
        if v == "M":
            hw //= 2
            continue
        macs += v * c * 9 * hw * hw                         # conv: out x in x 3 x 3 x H x W
        norm += v * hw * hw                                 # BN elements
        c = v
    macs += 64 * 10                                         # the classifier
    pool = 64 * hw * hw                                     # global average pool over 2x2
    # fvcore's convention: 2 FLOPs per BatchNorm element, 1 per pooled element
    assert ledger["models"]["dense"]["flops"] == macs + 2 * norm + pool == 2_619_264
    log = eb.run.runs.RunDir(save).read_log()
    search = [r for r in log if r["stage"] == "search" and "samples" in r]
    phase = ledger["phases"]["search"]
    flops = ledger["models"]["dense"]["flops"]
    assert phase["train_flops"] == 3 * flops * sum(r["samples"] for r in search)
    assert phase["wall_s"] == pytest.approx(sum(r["train_s"] + r["eval_s"] for r in search))
    for p in ledger["pipelines"]:
        retrain = ledger["phases"][p["phases"][1]]
        draw = p["draw_epoch"]
        until = sum(3 * flops * r["samples"] * min(1, max(0, draw - r["epoch"])) +
                    flops * r["eval_samples"] * (r["epoch"] + 1 <= draw) for r in search)
        assert p["train_flops"] == pytest.approx(until + retrain["flops"])
        assert retrain["forward_flops"] == ledger["models"][f"pruned-{p['ratio']:g}"]["flops"] < flops
    assert main(["report", str(save), str(save)]) == 0
    out = capsys.readouterr().out
    assert out.count("EB Train (finetune)") == 4 and "energy est." in out
    pngs = sorted(p.name for p in (save / "plots").glob("*.png"))
    assert pngs == ["distance.png", "flops-vs-draw.png", "layers.png", "pairwise-0.3.png",
                    "pairwise-0.5.png"]
    for png in (save / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    data = json.loads((save / "plots" / "layers.json").read_text())
    pruned = torch.load(save / "pruned-0.5.pt", weights_only=True)["state_dict"]
    assert data["kept"]["0.5"][0] == pruned["features.0.weight"].shape[0]
    assert main(["report", str(tmp_path / "nothing")]) == 2
