"""The benchmark scripts' own logic: rule replay, random tickets, isolated zoo workers."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import earlybird as eb  # noqa: E402
from benchmarks import detection, rules, zoo  # noqa: E402
from benchmarks.suite import methods  # noqa: E402
from benchmarks.common import Setting  # noqa: E402
from conftest import TinyVGG, set_scales  # noqa: E402
from test_pruner import A, B, C, EPI_SEQ, drive  # noqa: E402


def record_from(masks: list[str], spe: int = 8) -> dict:
    """A search record with one mask per quarter epoch (2 steps), starting at step 0."""
    stacked = torch.tensor([[c == "1" for c in m] for m in masks])
    return {"steps": torch.arange(len(masks)) * (spe // 4), "steps_per_epoch": spe,
            "masks": {"0.5": stacked}}


# 10 channels; the mask moves one kept channel per quarter epoch for 3 epochs, then stays.
MOVING = ["1111100000", "0111110000", "0011111000", "0001111100", "0000111110", "0000011111",
          "1000001111", "1100000111", "1110000011", "1111000001", "1111100000", "0111110000",
          "0011111000"]
SETTLED = MOVING + ["0011111000"] * 24


def test_rules_replay_at_their_own_check_frequency():
    rec = record_from(SETTLED)
    # per-epoch checks (every 8 steps): masks at steps 0, 8, 16, 24 (= index 12), 32, ...;
    # from step 24 on all equal, so the reference rule (window 5) draws at step 24 + 4*8 = 56
    assert detection.detect(rec, 0.5, "reference") == 56
    # at 4 checks per epoch the window of 5 masks covers one epoch: drawn at step 24 + 4*2 = 32
    assert detection.detect(rec, 0.5, "reference @4/epoch") == 32
    # fifo needs window + 1 = 6 per-epoch masks: step 24 + 5*8 = 64
    assert detection.detect(rec, 0.5, "fifo") == 64


def test_draw_points_round_detections_up_to_epoch_boundaries():
    rec = record_from(SETTLED)
    setting = Setting(epochs=20)
    points = detection.draw_points(rec, setting, 0.5, (0.05, 0.1, 0.2, 0.4))
    assert points[:4] == [("5 %", 1, "ticket"), ("10 %", 2, "ticket"), ("20 %", 4, "ticket"),
                          ("40 %", 8, "ticket")]
    by_label = {label: (epoch, kind) for label, epoch, kind in points}
    assert by_label["reference"] == (7, "ticket")           # step 56 / 8 steps per epoch
    assert by_label["fifo"] == (8, "ticket")
    assert by_label["random widths"] == (7, "random")       # at the reference rule's point


def test_random_ticket_keeps_each_layers_width():
    keep = {"a": torch.tensor([True, False, True, True]), "b": torch.tensor([False] * 5 + [True])}
    again = methods.random_widths(keep, seed=3)
    assert {k: int(v.sum()) for k, v in again.items()} == {"a": 3, "b": 1}
    assert again.keys() == keep.keys() and all(v.dtype == torch.bool for v in again.values())
    same = methods.random_widths(keep, seed=3)                # the seed fixes the choice
    assert all(torch.equal(again[k], same[k]) for k in keep)


def test_a_zoo_worker_that_dies_is_one_fail_row():
    # 0.2 GiB of address space cannot even import torch: the worker dies, the sweep goes on
    row = zoo.run_isolated("torchvision", "resnet18", timeout=120, memory_gb=0.2, threads=1)
    assert row["model"] == "resnet18" and row["status"].startswith("FAIL: WorkerDied: worker ")
    assert row["memory_gb"] == 0.2 and row["params_after"] == {}


@pytest.mark.parametrize("argv,message", [
    (["--retrain", "0.6"], "--retrain ratios [0.6] must be among --ratios"),
    (["--epochs", "3"], "need --epochs >= 4"),
    (["--draw-fractions", "1.5"], "--draw-fractions must be in (0, 1)"),
])
def test_detection_script_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        detection._parse(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_epi_replayed_on_recorded_masks_draws_where_the_pruner_did(x32, monkeypatch):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], window=2, epsilon=0.1, criterion="epi")
    for t, bits in enumerate(EPI_SEQ):                  # one check per epoch of 10 steps
        drive(pruner, model, [bits])
        pruner.iterations[-1] = 10 * t
    record = {"steps": torch.tensor(pruner.iterations), "steps_per_epoch": 10,
              "masks": {"0.5": pruner.history(0.5)}, "sizes": torch.tensor([4, 6, 8])}
    monkeypatch.setitem(rules.VARIANTS, "epi w2", ("epi", 1, 2, 0.1, None))
    assert rules.detect(record, 0.5, "epi w2") == 10 * pruner.tickets[0.5].check == 40
    with pytest.raises(ValueError, match=r"rule 'epi w2' needs the layer sizes of the record"):
        rules.detect({k: v for k, v in record.items() if k != "sizes"}, 0.5, "epi w2")


def test_the_default_replayed_on_recorded_masks_draws_where_the_pruner_told_the_schedule_did(x32):
    # 16 epochs of 8 optimizer steps, checked every 2 (4 times an epoch, as EB Train checks):
    # the pruner's span is 3/32 of 128 = 12 steps, the replay's 3/32 of 16 = 1.5 epochs of 8
    # steps. The masks churn for 10 checks and then settle (C moves 2 of 18 channels from A)
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], total=16 * 8)
    for t, bits in enumerate([A, B] * 5 + [A, C] + [A] * 16):
        keep = torch.tensor([b == "1" for b in bits])
        set_scales(model, torch.where(keep, 1.0, 0.1) + torch.linspace(0.0, 0.01, len(bits)))
        pruner.step(iteration=2 * t)
    record = {"steps": torch.tensor(pruner.iterations), "steps_per_epoch": 8,
              "masks": {"0.5": pruner.history(0.5)}}
    drawn = pruner.tickets[0.5].iteration
    assert pruner.config.plateau_span() == 12 and drawn >= 2 * 12
    assert rules.detect(record, 0.5, "default", epochs=16) == drawn
    with pytest.raises(ValueError, match="the default rule's span is a share of the schedule"):
        rules.detect(record, 0.5, "default")


def test_round_to_script_prunes_one_ticket_three_ways_and_times_each(monkeypatch):
    from benchmarks import round_to
    monkeypatch.setitem(round_to.MODELS, "tiny", lambda: eb.models.CifarVGG(11, num_classes=10,
                                                                            width=0.25))
    models = round_to.tickets("tiny", 0.5, seed=0)
    assert sorted(models) == [1, 8, 16]
    for k, model in models.items():                        # every conv keeps a multiple of k
        dense = [16, 32, 64, 64, 128, 128, 128, 128]
        assert all(w % k == 0 or w == d for w, d in zip(round_to.widths(model), dense))
    assert round_to.widths(models[1]) != round_to.widths(models[8])
    times = round_to.measure(models, batch=4, repeats=1)
    assert sorted(times) == [(k, c) for k in (1, 8, 16) for c in (False, True)]
    assert all(t > 0 for t in times.values())


def test_compile_script_times_a_network_both_ways_and_writes_its_table(tmp_path, monkeypatch):
    from benchmarks import compile_step
    monkeypatch.setitem(compile_step.NETWORKS, "tiny", ("vgg", 11, 0.0625))
    compiled = []                   # inductor's own compile (~15 s) is not what this tests
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)   # the script's one thread
    assert compile_step.main(["--networks", "tiny", "--steps", "1", "--out", str(tmp_path)]) == 0
    import json
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["network"] for r in rows] == ["tiny"] and len(compiled) == 1
    r = rows[0]
    assert r["eager_ms"] > 0 and r["compiled_ms"] > 0 and r["eager_contiguous_ms"] > 0
    assert r["layout"] == "channels_last"          # the Trainer's layout at one thread
    ratio = r["eager_ms"] / r["compiled_ms"]
    assert (f"| tiny | channels_last | {r['eager_contiguous_ms']:.1f} | {r['eager_ms']:.1f} | "
            f"{r['compiled_ms']:.1f} | {ratio:.2f}x |") in (tmp_path / "README.md").read_text()
    with pytest.raises(SystemExit):
        compile_step.main(["--steps", "0"])


def test_gpu_step_script_times_dense_and_both_roundings_in_each_layout_and_mode(tmp_path,
                                                                            monkeypatch):
    from benchmarks import round_to
    from benchmarks.gpu import steps
    monkeypatch.setitem(round_to.MODELS, "tiny", lambda: eb.models.CifarVGG(11, num_classes=10,
                                                                            width=0.25))
    monkeypatch.setattr(steps, "MODEL", "tiny")
    compiled = []                   # inductor's own compile is not what this tests
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    argv = ["--device", "cpu", "--batch", "4", "2", "--blocks", "1", "--steps", "1", "--compile",
            "--peak-tflops", "100", "--out", str(tmp_path)]
    assert steps.main(argv) == 0
    import json
    stored = json.loads((tmp_path / "results.json").read_text())
    rows = stored["rows"]
    labels = ["dense", "p=0.5 round_to=1", "p=0.5 round_to=8"]
    assert [(r["batch"], r["network"], r["layout"], r["mode"]) for r in rows] == [
        (b, n, lay, m) for b in (4, 2) for n in labels for lay in ("channels_last", "contiguous")
        for m in ("eager", "compile")]
    assert len(compiled) == 12              # one compiled copy per batch, network and layout
    by = {(r["batch"], r["network"], r["layout"], r["mode"]): r for r in rows}
    base = by[4, "dense", "channels_last", "eager"]
    assert base["vs_dense"] == 1.0 and base["flops_vs_dense"] == 1.0
    assert base["widths_multiple_of_8"] == base["convs"] == 8
    rounded = by[4, "p=0.5 round_to=8", "channels_last", "eager"]
    assert rounded["widths_multiple_of_8"] == 8 and rounded["flops_vs_dense"] < 1
    for r in rows:                                  # the columns are one measurement each
        b, dense = r["batch"], by[r["batch"], "dense", "channels_last", "eager"]
        assert r["images_per_s"] == pytest.approx(b / (r["step_ms"] / 1e3))
        assert r["tflops"] == pytest.approx(6 * r["mflops"] * 1e6 * b / (r["step_ms"] / 1e3)
                                            / 1e12)
        assert r["vs_dense"] == pytest.approx(r["step_ms"] / dense["step_ms"])
    table = [line for line in (tmp_path / "README.md").read_text().splitlines()
             if line.startswith(("| 4 |", "| 2 |"))]
    assert len(table) == 24 and all("% |" in line for line in table)   # share of the peak
    assert stored["meta"]["batch"] == [4, 2] and stored["meta"]["precision"] == "bf16"
    with pytest.raises(SystemExit):
        steps.main(["--ratio", "1.5"])


def test_saturation_picks_the_cheapest_converged_candidate_and_marks_compiled_runs():
    from benchmarks import saturation

    def row(candidate, t, seed, acc, compiled=False):
        return {"candidate": candidate, "epochs": t, "seed": seed, "test_acc": acc,
                "epoch_s": [2.0, 2.0], "flops": 10 ** 6, "params": 1000,
                "images_per_epoch": 100, "compiled": compiled}
    rows = [row("a", 32, 0, 60.0), row("a", 64, 0, 61.0), row("a", 128, 0, 61.2),
            row("b", 32, 0, 50.0, True), row("b", 64, 0, 55.0, True)]
    summary = saturation.summarize(rows, (32, 64, 128))
    gaps = {(e["candidate"], e["epochs"]): e.get("gap_to_2T") for e in summary["table"]}
    assert gaps == {("a", 32): 1.0, ("a", 64): pytest.approx(0.2), ("a", 128): None,
                    ("b", 32): 5.0, ("b", 64): None}
    assert summary["chosen"] == {"candidate": "a", "epochs": 64, "converged": True,
                                 "gap_to_2T": pytest.approx(0.2)}
    text = saturation.markdown(summary, {"command": "c", "machine": "m", "date": "d",
                                         "wall_min": 0.0})
    assert "| b (compiled) | 1,000 | 1.00 | 100 | 32 | 1 |" in text and "| a | 1,000 |" in text


RESULTS = ROOT / "benchmarks" / "results"
SUITE_RESULTS = sorted(d.name for d in RESULTS.iterdir() if (d / "results.json").is_file()
                       and "suite" in json.loads((d / "results.json").read_text()))


@pytest.mark.parametrize("name", SUITE_RESULTS)
def test_committed_suite_results_render_again_byte_for_byte(name, tmp_path):
    # `python -m benchmarks report` on a committed folder: nothing trains, the same report
    import json
    import shutil
    from benchmarks import suite as S
    copy = tmp_path / name
    shutil.copytree(RESULTS / name, copy)
    S.rewrite_results(copy)
    assert (copy / "README.md").read_text() == (RESULTS / name / "README.md").read_text()
    assert json.loads((copy / "results.json").read_text()) == \
        json.loads((RESULTS / name / "results.json").read_text())


def test_committed_saturation_results_render_again_byte_for_byte():
    import json
    from benchmarks import saturation
    names = sorted(d.name for d in RESULTS.iterdir() if d.name.startswith("saturation"))
    assert names == ["saturation", "saturation-residual", "saturation-residual-w0.5"]
    for name in names:
        stored = json.loads((RESULTS / name / "results.json").read_text())
        epochs = tuple(sorted({r["epochs"] for r in stored["rows"]}))
        summary = saturation.summarize(stored["rows"], epochs)
        assert stored["chosen"] == json.loads(json.dumps(summary["chosen"])), name
        assert saturation.markdown(summary, stored["meta"]) == \
            (RESULTS / name / "README.md").read_text(), name


def test_committed_step_transformer_and_detection_results_render_again_byte_for_byte():
    import json
    from benchmarks import compile_step, detection, transformers
    for name, module in (("compile", compile_step), ("transformers", transformers)):
        stored = json.loads((RESULTS / name / "results.json").read_text())
        assert module.markdown(stored["rows"], stored["meta"]) == \
            (RESULTS / name / "README.md").read_text(), name
    stored = json.loads((RESULTS / "detection" / "results.json").read_text())
    meta = stored.pop("meta")
    assert detection.markdown(stored, meta) == (RESULTS / "detection" / "README.md").read_text()
