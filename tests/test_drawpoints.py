"""The draw-point study on a suite setting, and where results were computed (host identity)."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common, detection, resume, suite as S  # noqa: E402
from benchmarks.rules import rule_spec  # noqa: E402
from benchmarks.suite import drawcli, drawpoints, drawreport  # noqa: E402
from benchmarks.suite.stages import STAGES, WEIGHTS  # noqa: E402
from earlybird.run import io  # noqa: E402
from earlybird.search.config import EarlyBirdConfig  # noqa: E402

SUMMARY_KEYS = {"setting", "rule", "is_default", "ratio", "seeds", "draw_share_mean",
                "acc_mean", "acc_std", "ns_acc_mean", "train_flops_ratio_ns",
                "inference_mflops", "params", "measured"}


def _suite(methods=("dense", "eb", "ns")):
    # 8 epochs of 4 steps on 16 random images, masks twice per epoch
    raw = {"arch": "vgg", "depth": 11, "width": 0.125, "dataset": "synthetic",
           "train_images": 16, "test_images": 8, "batch_size": 4, "epochs": 8,
           "schedule": [4, 6], "ratios": [0.3, 0.5], "seeds": [0], "checks_per_epoch": 2,
           "methods": list(methods)}
    return S.suite_from_dict(raw, "draw")


def test_a_ticket_of_the_grid_is_the_eb_row_drawn_at_the_same_epoch(tmp_path):
    suite = _suite(("eb",))
    eb_row = S.run(replace(suite, ratios=(0.5,)), tmp_path, 1, progress=lambda line: None)[0]
    folder = tmp_path / "draw" / "seed0"
    mine = drawpoints.finetune(suite, 0, 0.5, eb_row["draw_epoch"], None, folder)
    for key in ("test_acc", "train_flops", "flops", "params", "epochs_trained", "draw_epoch"):
        assert mine[key] == eb_row[key], key
    assert mine["host"] == eb_row["host"] == common.host()
    assert drawpoints.draw_path(folder, 0.5, 3, None, 4).name == "draw-p0.5-e3.json"
    assert drawpoints.draw_path(folder, 0.5, 3, 10, 4).name == "draw-p0.5-e3-s10.json"


def test_the_study_runs_resumes_and_renders_its_summary_again(tmp_path):
    suite = _suite()
    grid, rules = (2, 4, 6), ("reference", "default", "epi")       # default: its span is 3/32
    # of the 8 epochs
    out = drawpoints.run(suite, tmp_path, 1, grid, rules, progress=lambda line: None)
    folder = tmp_path / "draw" / "seed0"
    slim = out[0]["slim"]
    wanted = {(r, e, None) for r in suite.ratios for e in grid}
    for r in suite.ratios:                           # the rules' own points, where they drew
        for rule in rules:
            at = drawpoints.rule_point(slim, r, rule, 8)
            if at is not None:
                wanted.add((r, at[0], None if at[1] == 4 * at[0] else at[1]))
    assert set(out[0]["rows"]) == wanted
    # the default waits for twice its span, 2 x 3 steps of 4 an epoch, and draws in this run
    assert all(drawpoints.rule_point(slim, r, "default", 8)[1] >= 6 for r in suite.ratios)
    assert set(out[0]["reference"]) == {("dense", None), ("ns", 0.3), ("ns", 0.5)}
    # every finetune starts at its draw epoch and trains to the end of the schedule
    assert all(row["epochs_trained"] == 8 - key[1] for key, row in out[0]["rows"].items())
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = drawpoints.run(suite, tmp_path, 1, grid, rules, progress=lambda line: None)
    assert again[0]["rows"] == out[0]["rows"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps   # nothing ran
    meta = {"command": "c", "machine": "m", "date": "d", "wall_min": 0.0}
    results = tmp_path / "results" / "draw"
    summary = drawreport.write(suite, tmp_path / "draw", grid, rules, results, meta, "default")
    assert [p["epoch"] for p in summary["ratios"]["0.5"]["curve"]] == list(grid)
    written = {p.name: p.read_bytes() for p in results.iterdir()}
    assert set(written) == {"results.json", "README.md", "summary.json", "draw-point.png",
                            "accuracy_vs_inference.png"}
    drawreport.rewrite(results, "default")
    assert {p.name: p.read_bytes() for p in results.iterdir()} == written
    top = json.loads(drawcli.merge(results.parent).read_text())
    assert len(top["rows"]) == len(rules) * len(suite.ratios)
    assert all(set(row) == SUMMARY_KEYS for row in top["rows"])
    assert [r["rule"] for r in top["rows"] if r["is_default"]] == ["default", "default"]
    ns = {r: out[0]["reference"][("ns", r)]["test_acc"] for r in suite.ratios}
    assert all(row["ns_acc_mean"] == ns[row["ratio"]] for row in top["rows"])
    # a held-out setting: no grid, the rules' points, dense and NS only (all cached already)
    held = drawpoints.run(suite, tmp_path, 1, (), rules, progress=lambda line: None)
    assert set(held[0]["rows"]) == {(r, *point) for r in suite.ratios
                                    for point in _points(slim, r, rules)}
    assert held[0]["rows"] and set(held[0]["reference"]) == set(out[0]["reference"])
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    alone = drawreport.write(suite, tmp_path / "draw", (), rules, tmp_path / "held", meta,
                             "default")
    assert all(not entry["curve"] for entry in alone["ratios"].values())
    assert all(alone["ratios"][r]["rules"] == summary["ratios"][r]["rules"]
               for r in ("0.3", "0.5"))
    assert any(got.get("seeds") for got in alone["ratios"]["0.3"]["rules"].values())
    assert "No fixed draw epochs (a held-out setting)." in (tmp_path / "held" / "README.md").read_text()
    assert (tmp_path / "held" / "draw-point.png").stat().st_size > 0


def _points(slim, ratio, rules):
    """Each rule's point as the study keys it: (epoch, None) on an epoch boundary."""
    found = [drawpoints.rule_point(slim, ratio, rule, 8) for rule in rules]
    return [(e, None if s == 4 * e else s) for e, s in (p for p in found if p is not None)]


COMMITTED = ROOT / "benchmarks" / "results" / "draw-point"


def test_the_committed_studies_render_again_to_the_same_report_and_summary(tmp_path):
    # every committed study comes back from its results.json alone, and the merged summary
    # holds exactly their rows
    names = sorted(p.parent.name for p in COMMITTED.glob("*/results.json"))
    assert "converged" in names
    for name in names:
        copy = tmp_path / name
        copy.mkdir()
        (copy / "results.json").write_text((COMMITTED / name / "results.json").read_text())
        drawreport.rewrite(copy, drawpoints.DEFAULT_RULE)
        for f in ("README.md", "summary.json"):
            assert (copy / f).read_text() == (COMMITTED / name / f).read_text(), (name, f)
    merged = json.loads(drawcli.merge(tmp_path).read_text())
    assert merged == json.loads((COMMITTED / "summary.json").read_text())


def test_the_summary_names_the_librarys_default_rule():
    # the replayed rule the study marks as the default is the library's default detection told
    # the schedule: 128 epochs of 80 steps give the pruner the replay's span in steps
    default = EarlyBirdConfig(total=128 * 80)
    criterion, _, window, epsilon, span_epochs = rule_spec(drawpoints.DEFAULT_RULE, 128)
    assert (criterion, window, epsilon) == (default.criterion, default.window, default.epsilon)
    assert int(span_epochs * 80) == default.plateau_span() == 960


def _summary(gaps_shares):
    """A summary with NS at 70 % and one rule per entry: {rule: {ratio: (acc, share)}}."""
    ratios = {}
    for ratio in ("0.3", "0.5"):
        ratios[ratio] = {"ns": {"seeds": 3, "acc_mean": 70.0}, "curve": [], "rules": {
            rule: {"seeds": 3, "acc_mean": v[ratio][0], "draw_share": [v[ratio][1]] * 3}
            for rule, v in gaps_shares.items()}}
    return {"ratios": ratios, "dense": {"acc": []}}


def test_the_goal_takes_the_earliest_rule_within_the_points_of_ns():
    summary = _summary({
        "late": {"0.3": (70.5, 0.28), "0.5": (70.0, 0.27)},       # close, too late
        "early": {"0.3": (69.8, 0.08), "0.5": (69.71, 0.10)},     # close (-0.29), in time
        "earliest": {"0.3": (69.0, 0.03), "0.5": (70.0, 0.03)},   # 1 point off at p = 0.3
    })
    decision = drawreport.decide(summary)
    assert decision["met"] == ["early"] and decision["earliest_met"] == "early"
    assert decision["verdicts"]["early"]["draw_share"] == 0.10      # the later ratio's point
    assert decision["verdicts"]["earliest"]["gap_to_ns"] == {"0.3": -1.0, "0.5": 0.0}
    assert decision["best_early"] == "early" and decision["earliest_close"] == "early"
    none = drawreport.decide(_summary({"late": {"0.3": (70.5, 0.28), "0.5": (70.0, 0.2)}}))
    assert none["earliest_met"] is None and none["best_early"] is None
    assert none["earliest_close"] == "late"


def test_a_cache_refuses_a_second_cpu_model_unless_told(tmp_path, monkeypatch):
    suite = replace(_suite(("dense",)), ratios=(0.5,))
    rows = S.run(suite, tmp_path, 1, progress=lambda line: None)
    assert rows[0]["host"] == {"cpu": common.cpu_model(), "torch": common.host()["torch"],
                               "threads": common.host()["threads"]}
    root = tmp_path / "draw"
    assert json.loads((root / "machines.json").read_text()) == [common.cpu_model()]
    monkeypatch.setattr(common, "cpu_model", lambda: "Another CPU")
    assert S.run(suite, tmp_path, 1, progress=lambda line: None) == rows   # all cached: fine
    (root / "seed0" / "dense.json").unlink()
    with pytest.raises(ValueError, match=r"holds results computed on \[.*\], and this machine is "
                       r"'Another CPU'; .* pass --mix-cpus"):
        S.run(suite, tmp_path, 1, progress=lambda line: None)
    with pytest.raises(ValueError, match="pass --mix-cpus"):
        drawpoints.run(suite, tmp_path, 1, (2,), (), progress=lambda line: None)
    S.run(suite, tmp_path, 1, progress=lambda line: None, mix_cpus=True)
    assert json.loads((root / "machines.json").read_text())[1:] == ["Another CPU"]


def test_every_rank_claims_the_machine_through_the_same_one_barrier(tmp_path, monkeypatch):
    # under torchrun rank 1 may read machines.json before or after rank 0 has added its CPU;
    # either way it must enter the one barrier rank 0 enters (it used to skip it when it read
    # late, and both ranks then waited for ever in different collectives)
    from benchmarks.suite.runner import claim_machine
    from earlybird.training.distributed import Dist
    barriers, writes = [], []
    monkeypatch.setattr(common, "barrier", lambda: barriers.append(1))
    monkeypatch.setattr(common, "write_json", lambda path, data: writes.append(data))
    mine = common.cpu_model()
    for rank in (0, 1):
        monkeypatch.setattr(common, "dist_env", lambda rank=rank: Dist(rank, 2, rank))
        for record in (None, [mine], ["Another CPU", mine]):
            root = tmp_path / f"r{rank}-{len(record or ())}"
            root.mkdir()
            if record is not None:
                (root / "machines.json").write_text(json.dumps(record))
            barriers.clear()
            claim_machine(root)
            assert len(barriers) == 1, (rank, record)
    assert writes == [[mine]]                           # rank 0 only, and only where absent
    root = tmp_path / "other"
    root.mkdir()
    (root / "machines.json").write_text(json.dumps(["Another CPU"]))
    barriers.clear()
    with pytest.raises(ValueError, match="pass --mix-cpus"):
        claim_machine(root)                             # every rank refuses, after the barrier
    assert len(barriers) == 1


def test_workers_share_the_cores_the_process_may_use(monkeypatch):
    # a study pinned with `taskset -c 1` beside another one: its worker gets 1 thread, not 2
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: {1}, raising=False)
    assert common.usable_cores() == 1
    assert "1 worker process(es) with 1 torch thread(s) each" in common.machine(1)
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert common.usable_cores() == 4
    assert "2 worker process(es) with 2 torch thread(s) each" in common.machine(2)


@pytest.mark.parametrize("argv,message", [
    (["--setting", "nope"], "unknown setting 'nope'"),
    (["--setting", "converged", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--setting", "converged", "--rules", "sometimes"], "unknown rule 'sometimes'"),
])
def test_the_study_refuses_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        detection.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_grid_epochs_outside_the_schedule_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"grid epochs \[0, 8\] must be in \(0, 8\)"):
        drawpoints.run(_suite(), tmp_path, 1, (0, 2, 8), (), progress=lambda line: None)


def test_two_checkouts_share_a_cache_but_other_data_is_refused(tmp_path):
    suite = _suite(("dense",))
    root = S.cache_dir(suite, tmp_path)
    stamp = json.loads((root / "setting.json").read_text())
    moved = "/another/checkout/benchmarks/data/" + Path(stamp["data"]).name   # a worktree's path
    (root / "setting.json").write_text(json.dumps({**stamp, "data": moved}))
    assert S.cache_dir(suite, tmp_path) == root
    (root / "setting.json").write_text(json.dumps({**stamp, "data": "/data/other.npz"}))
    with pytest.raises(ValueError, match=r"made with different settings \(\['data'\]\)"):
        S.cache_dir(suite, tmp_path)


class _Killed(Exception):
    pass


def _kill_before(monkeypatch, epoch):
    """Stop training (as a kill would) when the Trainer is about to train ``epoch``."""
    from earlybird.training.trainer import Trainer
    real = Trainer.train_epoch

    def train_epoch(self):
        if self.epoch == epoch:
            raise _Killed(epoch)
        return real(self)
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def test_training_killed_between_epochs_goes_on_from_its_checkpoint_exactly(tmp_path,
                                                                           monkeypatch):
    st = _suite().setting
    data = common.load_data(st, 0)
    whole = common.build(st, 0)
    torch.manual_seed(1)
    want = common.train(whole, st, data, 0, 5, eval_every_epoch=True,
                        checkpoint=tmp_path / "a.ckpt")
    path = tmp_path / "b.ckpt"
    with monkeypatch.context() as m:
        _kill_before(m, 3)
        torch.manual_seed(1)
        with pytest.raises(_Killed):
            common.train(common.build(st, 0), st, data, 0, 5, eval_every_epoch=True,
                         checkpoint=path)
    assert io.safe_load(path, resume.CHECKPOINT)["trainer"]["epoch"] == 3
    torch.manual_seed(99)                       # a new process: another random state
    resumed = common.build(st, 0)
    got = common.train(resumed, st, data, 0, 5, eval_every_epoch=True, checkpoint=path)
    assert got["accs"] == want["accs"] and got["test_acc"] == want["test_acc"]
    assert len(got["epoch_s"]) == 5 and got["images_per_epoch"] == want["images_per_epoch"] == 16
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(),
                                                 resumed.state_dict().values()))
    again = common.train(common.build(st, 0), st, data, 0, 5, checkpoint=path)   # all done
    assert again["test_acc"] == want["test_acc"] and again["epoch_s"] == got["epoch_s"]
    assert again["accs"] == [want["test_acc"]]          # as without eval_every_epoch


def test_a_killed_slimming_run_and_finetune_resume_to_the_same_masks_and_rows(tmp_path,
                                                                            monkeypatch):
    suite = _suite()
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for f in (whole, cut):
        f.mkdir()
    want = STAGES["slim"](suite, 0, whole)
    want_row = drawpoints.finetune(suite, 0, 0.5, 4, None, whole)
    with monkeypatch.context() as m:
        _kill_before(m, 6)
        with pytest.raises(_Killed):
            STAGES["slim"](suite, 0, cut)
    assert sorted(p.name for p in cut.iterdir() if "ckpt" in p.name) == ["slim.ckpt"]
    got = STAGES["slim"](suite, 0, cut)
    assert torch.equal(got["steps"], want["steps"]) and got["test_acc"] == want["test_acc"]
    assert all(torch.equal(got["masks"][r], want["masks"][r]) for r in want["masks"])
    assert len(got["epoch_s"]) == 8
    for e in (5, 8):
        a, b = (io.safe_load(f / f"slim-e{e}.pt", WEIGHTS)["state"] for f in (whole, cut))
        assert all(torch.equal(a[k], b[k]) for k in a)
    with monkeypatch.context() as m:
        _kill_before(m, 6)
        with pytest.raises(_Killed):
            drawpoints.finetune(suite, 0, 0.5, 4, None, cut)
    assert sorted(p.name for p in cut.iterdir() if "ckpt" in p.name) == [
        "draw-p0.5-e4.ckpt-train1"]
    row = drawpoints.finetune(suite, 0, 0.5, 4, None, cut)
    for key in ("test_acc", "train_flops", "epochs_trained", "flops", "params", "widths"):
        assert row[key] == want_row[key], key
    assert not [p for p in cut.iterdir() if "ckpt" in p.name]       # removed once kept


def test_a_checkpoint_from_another_thread_count_is_set_aside(tmp_path, monkeypatch, caplog):
    # the thread count picks the input layout, so its numbers differ: the run starts over
    st = _suite().setting
    data = common.load_data(st, 0)
    path = tmp_path / "c.ckpt"
    with monkeypatch.context() as m:
        _kill_before(m, 2)
        with pytest.raises(_Killed):
            common.train(common.build(st, 0), st, data, 0, 3, checkpoint=path)
    saved = io.safe_load(path, resume.CHECKPOINT)
    assert saved["where"] == {"cpu": common.cpu_model(), "threads": torch.get_num_threads()}
    saved = {k: v for k, v in saved.items() if k != "sha256"}
    io.atomic_save({**saved, "where": {**saved["where"], "threads": 64}}, path)
    trained = []
    with monkeypatch.context() as m:
        from earlybird.training.trainer import Trainer
        real = Trainer.train_epoch
        m.setattr(Trainer, "train_epoch", lambda self: trained.append(self.epoch) or real(self))
        got = common.train(common.build(st, 0), st, data, 0, 3, checkpoint=path)
    assert trained == [0, 1, 2] and len(got["epoch_s"]) == 3          # from the start
    assert "starting over" in caplog.text
    assert io.safe_load(path, resume.CHECKPOINT)["where"]["threads"] == torch.get_num_threads()
