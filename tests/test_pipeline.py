"""The EB Train workflow end to end on a tiny slice of the shipped data, and the CLI."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import earlybird as eb
from earlybird.cli import main
from earlybird.run.io import PRUNED_FORMAT
from earlybird.run.runs import CHECKPOINT_FORMAT
import forked
from conftest import failure

BASE = ["--arch", "vgg", "--depth", "11", "--width", "0.125", "--train-images", "256",
        "--test-images", "128", "--batch-size", "64", "--test-batch-size", "128",
        "--epochs", "4", "--sparsity-regularization", "-q"]
# the reference rule: these tests pin the workflow on its draw points (epochs 1-3 of 4)
TINY = [*BASE, "--window", "2", "--epsilon", "0.3", "--ratios", "0.3", "0.5",
        "--criterion", "reference"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> int:
    return main(list(args))


def test_run_writes_a_complete_run_folder(tmp_path, capsys):
    save = str(tmp_path / "run")
    assert cli("run", "--save", save, *TINY) == 0
    table = capsys.readouterr().out
    assert "ratio" in table and "0.30" in table and "0.50" in table
    files = sorted(p.name for p in Path(save).iterdir())
    assert files == sorted(["config.yaml", "ledger.json", "log.jsonl", "pruned-0.3.pt",
                            "pruned-0.5.pt", "retrain-0.3-finetune.pt", "retrain-0.5-finetune.pt",
                            "search.pt", "summary.json", "search.prev.pt",
                            "retrain-0.3-finetune.prev.pt", "retrain-0.5-finetune.prev.pt"])
    search = torch.load(Path(save, "search.pt"), weights_only=True)
    assert search["format"] == CHECKPOINT_FORMAT and search["done"] is True
    pruned = torch.load(Path(save, "pruned-0.5.pt"), weights_only=True)
    assert pruned["format"] == PRUNED_FORMAT
    draw = pruned["extra"]["draw_epoch"]
    ticket_check = int(search["pruner"]["tickets"]["0.5"]["check"])
    assert draw == float(search["pruner"]["iterations"][ticket_check])
    retrain = torch.load(Path(save, "retrain-0.5-finetune.pt"), weights_only=True)
    assert retrain["epoch"] == 4                            # finetuned to the schedule's end
    log = eb.run.runs.RunDir(save).read_log()
    epochs = [r for r in log if r["stage"] == "retrain-0.5-finetune" and "epoch" in r]
    assert [r["epoch"] for r in epochs] == list(range(int(draw), 4))
    small = eb.load_pruned(Path(save, "pruned-0.5.pt"), eb.models.CifarVGG(11, width=0.125))
    assert small.features[0].out_channels == pruned["state_dict"]["features.0.weight"].shape[0]
    # a rerun with --resume skips every finished stage and gives the same table
    assert cli("run", "--save", save, *TINY, "--resume") == 0
    assert capsys.readouterr().out == table


def test_stages_one_by_one_and_scratch_retrain(tmp_path, capsys):
    save = str(tmp_path / "run")
    assert cli("search", "--save", save, *TINY, "--full") == 0
    assert "tickets: p=0.3 at epoch" in capsys.readouterr().out
    assert cli("prune", "--save", save, "--ratio", "0.3") == 0   # settings from config.yaml
    assert cli("retrain", "--save", save, "--ratio", "0.3", "--mode", "scratch", "-q") == 0
    out = capsys.readouterr().out
    assert "scratch, from epoch 0" in out
    ckpt = torch.load(Path(save, "retrain-0.3-scratch.pt"), weights_only=True)
    assert ckpt["epoch"] == 4 and ckpt["step"] == 4 * 4


def one_line_error(capsys, code, *args):
    assert cli(*args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    save = tmp_path / "bad"
    cases = [
        (["--arch", "vgg99"], "unknown arch 'vgg99'; choose from ['vgg', 'preresnet'"),
        (["--schedule", "2", "9"], "--schedule must be increasing epochs inside (0, 4)"),
        (["--data", str(tmp_path / "nowhere")], "does not exist"),
        (["--ratios", "0.5", "1.5"], "must be a number in (0, 1), got 1.5"),
        (["--window", "1"], "window must be an integer >= 2"),
    ]
    for extra, message in cases:
        args = ["search", "--save", str(save), *TINY, *extra]
        line = one_line_error(capsys, 2, *args)
        assert message in line, line
        assert not save.exists()
    with pytest.raises(SystemExit) as exc:
        cli("search", "--dataset", "mnist")
    assert exc.value.code == 2
    assert "invalid choice: 'mnist'" in capsys.readouterr().err
    line = one_line_error(capsys, 2, "prune", "--save", str(save), "--ratio", "0.5")
    assert "config.yaml not found" in line and not save.exists()


def test_prune_without_ticket_and_foreign_checkpoints(tmp_path, capsys):
    save = tmp_path / "run"
    assert cli("search", "--save", str(save), *BASE, "--epsilon", "0.01", "--ratios", "0.5") == 0
    before = sorted(p.name for p in save.iterdir())
    line = one_line_error(capsys, 2, "prune", "--save", str(save), "--ratio", "0.5")
    assert "no ticket for ratio 0.5" in line and "--force" in line
    line = one_line_error(capsys, 2, "retrain", "--save", str(save), "--ratio", "0.5")
    assert "pruned-0.5.pt does not exist" in line
    line = one_line_error(capsys, 2, "search", "--save", str(save), *BASE, "--epsilon", "0.01",
                          "--ratios", "0.5")
    assert "search.pt exists; pass --resume" in line
    line = one_line_error(capsys, 2, "search", "--save", str(save), *TINY, "--resume")
    assert "other settings (criterion, epsilon, ratios, window)" in line
    assert sorted(p.name for p in save.iterdir()) == before
    torch.save({"format": "something-else"}, save / "search.pt")
    line = one_line_error(capsys, 2, "prune", "--save", str(save), "--ratio", "0.5")
    assert "expected a 'earlybird.checkpoint/1' file, found 'something-else'" in line


def run_cli(args, env=None, check=True):
    """``python -m earlybird <args>`` in its own process (forked with earlybird imported)."""
    return forked.run_cli(args, env=env or ENV, check=check)


def test_killed_search_resumes_to_the_same_ticket_and_weights(tmp_path):
    args = [*TINY, "--full"]
    run_cli(["search", "--save", str(tmp_path / "whole"), *args])
    killed = run_cli(["search", "--save", str(tmp_path / "cut"), *args],
                     env={**ENV, "EARLYBIRD_KILL_AT": "search:2:1"}, check=False)
    assert killed.returncode == -9                         # SIGKILL in the middle of epoch 2
    half = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)
    assert half["epoch"] == 2 and half["done"] is False
    run_cli(["search", "--save", str(tmp_path / "cut"), *args, "--resume"])
    a = torch.load(tmp_path / "whole" / "search.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["pruner"]["masks"]["0.5"], b["pruner"]["masks"]["0.5"])
    assert a["pruner"]["tickets"].keys() == b["pruner"]["tickets"].keys()


def test_two_process_gloo_ddp_search_and_retrain(tmp_path):
    save = tmp_path / "ddp"
    out = forked.torchrun("-m", "earlybird", "run", "--save", str(save), *TINY)
    assert out.returncode == 0, failure(out)
    assert out.stdout.count("ratio  drawn") == 1           # only rank 0 prints
    search = torch.load(save / "search.pt", weights_only=True)
    assert search["step"] == 4 * search["epoch"]           # 128 images per rank, 32 per batch
    assert set(search["pruner"]["tickets"]) == {"0.3", "0.5"}
    summary = eb.run.runs.RunDir(save).read_log()
    assert any(r.get("drawn") for r in summary if "drawn" in r)
    assert (save / "retrain-0.5-finetune.pt").exists()


def test_forked_ranks_stop_the_others_when_one_fails_and_report_its_exit_code(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys, time\n"
                      "print('rank', os.environ['RANK'], os.environ['WORLD_SIZE'], flush=True)\n"
                      "sys.exit(3) if os.environ['RANK'] == '1' else time.sleep(120)\n")
    import time
    started = time.monotonic()
    out = forked.torchrun(str(script), cwd=str(tmp_path), grace=1)
    assert out.returncode == 3 and time.monotonic() - started < 60
    assert out.stdout == "rank 0 2\nrank 1 2\n"                # rank 0's output first


def test_check_every_counts_optimizer_steps(tmp_path):
    save = tmp_path / "steps"
    assert cli("search", "--save", str(save), *TINY, "--check-every", "3", "--full") == 0
    search = torch.load(save / "search.pt", weights_only=True)
    iterations = search["pruner"]["iterations"].tolist()
    assert iterations == list(range(3, 17, 3))             # 4 epochs x 4 steps, a check every 3
    assert cli("prune", "--save", str(save), "--ratio", "0.3") == 0
    pruned = torch.load(save / "pruned-0.3.pt", weights_only=True)
    check = int(search["pruner"]["tickets"]["0.3"]["check"])
    assert pruned["extra"]["draw_epoch"] == iterations[check] / 4


def test_the_search_tells_its_pruner_the_schedule_in_the_counter_it_checks_with(tmp_path):
    from earlybird.pipeline import RunConfig, stages
    from earlybird.pipeline.env import setup
    # 4 epochs of 256 images at batch 64: checked once an epoch, the schedule is 4 epochs; every
    # 3 optimizer steps, 16 steps. A total the user gives is kept.
    for check_every, given, total in ((None, None, 4), (3, None, 16), (3, 100, 100)):
        cfg = RunConfig(save=str(tmp_path / "run"), width=0.125, depth=11, train_images=256,
                        test_images=128, batch_size=64, recipe=eb.Recipe(epochs=4),
                        check_every=check_every, earlybird=eb.EarlyBirdConfig(total=given))
        env = setup(cfg)
        assert stages._pruner(env.model(), env).config.total == total


def test_imagefolder_data_with_a_torchvision_model(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for c, color in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
            folder = tmp_path / "data" / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (48, 40), color).save(folder / f"{i}.jpg")
    save = tmp_path / "run"
    assert cli("train", "--save", str(save), "--dataset", "imagefolder", "--data",
               str(tmp_path / "data"), "--arch", "resnet18", "--num-classes", "2", "--epochs", "1",
               "--batch-size", "4", "--test-batch-size", "4", "--workers", "0", "-q") == 0
    ckpt = torch.load(save / "train.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["model"]["fc.weight"].shape == (2, 512)
    log = eb.run.runs.RunDir(save).read_log()
    assert log[0]["samples"] == 8 and log[0]["stage"] == "train"


def test_tampered_or_truncated_checkpoint_is_refused_and_the_previous_one_kept(tmp_path, capsys):
    save = tmp_path / "run"
    assert cli("search", "--save", str(save), *TINY, "--full") == 0
    good = torch.load(save / "search.prev.pt", weights_only=True)
    assert good["epoch"] == 4 and good["done"] is False     # the file the final save replaced
    state = torch.load(save / "search.pt", weights_only=True)
    state["model"]["features.0.weight"][0, 0, 0, 0] += 1.0  # tampered, still loadable
    torch.save(state, save / "search.pt")
    line = one_line_error(capsys, 2, "prune", "--save", str(save), "--ratio", "0.5")
    assert "do not match its checksum" in line and "search.prev.pt" in line
    data = (save / "search.prev.pt").read_bytes()
    (save / "search.pt").write_bytes(data[: len(data) // 3])  # truncated
    line = one_line_error(capsys, 2, "search", "--save", str(save), *TINY, "--full", "--resume")
    assert "not a readable earlybird file" in line and "search.prev.pt" in line
    (save / "search.pt").write_bytes(data)                 # the user restores the previous one
    assert cli("search", "--save", str(save), *TINY, "--full", "--resume") == 0


def test_same_seed_same_tickets_and_weights(tmp_path):
    for name in ("a", "b"):
        assert cli("search", "--save", str(tmp_path / name), *TINY, "--full") == 0
    a = torch.load(tmp_path / "a" / "search.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "search.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for r in ("0.3", "0.5"):
        assert torch.equal(a["pruner"]["masks"][r], b["pruner"]["masks"][r])
        assert a["pruner"]["tickets"][r]["check"] == b["pruner"]["tickets"][r]["check"]
    assert a["sha256"] == b["sha256"]


@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory):
    """The uninterrupted runs, made once per set of arguments (the run is deterministic, so
    every kill point compares against the same one)."""
    made: dict[tuple, Path] = {}

    def whole(args: list) -> Path:
        if tuple(args) not in made:
            made[tuple(args)] = tmp_path_factory.mktemp("whole") / "run"
            run_cli([*args, "--save", str(made[tuple(args)])])
        return made[tuple(args)]
    return whole


def whole_and_killed(tmp_path, whole_runs, point: str, *extra: str) -> None:
    """``run`` into ``whole`` (a copy of the one uninterrupted run), and into ``cut`` killed
    at ``point`` then resumed."""
    args = ["run", *TINY, "--ratios", "0.5", *extra]
    shutil.copytree(whole_runs(args), tmp_path / "whole")
    killed = run_cli([*args, "--save", str(tmp_path / "cut")],
                     env={**ENV, "EARLYBIRD_KILL_AT": point}, check=False)
    assert killed.returncode == -9, killed.stderr[-500:]
    run_cli([*args, "--save", str(tmp_path / "cut"), "--resume"])


@pytest.mark.parametrize("point", ["search:1:2", "prune:0:0", "retrain-0.5-finetune:3:1"])
def test_a_run_killed_anywhere_resumes_to_the_same_result(tmp_path, whole_runs, point):
    whole_and_killed(tmp_path, whole_runs, point)
    for name in ("search.pt", "pruned-0.5.pt", "retrain-0.5-finetune.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(tmp_path / "cut" / name, weights_only=True)
        key = "state_dict" if name.startswith("pruned") else "model"
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), name
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert whole["retrain"] == cut["retrain"]


def test_a_ticket_drawn_at_the_end_is_reported_not_finetuned(tmp_path, capsys):
    # the plateau rule (the default) with window 2 compares single checks: p=0.3 settles only
    # at the check after the last epoch, which leaves nothing to finetune
    save = str(tmp_path / "run")
    args = [*BASE, "--window", "2", "--epsilon", "0.3", "--ratios", "0.3", "0.5"]
    assert cli("run", "--save", save, *args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["search"]["tickets"]["0.3"]["draw_epoch"] == 4.0
    assert summary["drawn_at_the_end"] == [0.3]
    assert [r["ratio"] for r in summary["retrain"]] == [0.5]
    assert "0.30      at the end  (nothing left to finetune)" in capsys.readouterr().out
    assert cli("retrain", "--save", save, "--ratio", "0.3", *args) == 2
    assert ("the ticket for ratio 0.3 was drawn at the end of the schedule (epoch 4 of 4): "
            "nothing is left to finetune") in capsys.readouterr().err


@pytest.mark.parametrize("point", ["search:1:checkpointed", "search:1:torn", "search:1:1",
                                   "retrain-0.5-finetune:3:checkpointed",
                                   "retrain-0.5-finetune:2:torn", "search:4:checkpointed",
                                   "search:4:torn"])
def test_no_epoch_is_logged_or_counted_twice_wherever_a_kill_lands(tmp_path, whole_runs, point):
    # `checkpointed`: after an epoch's checkpoint, before its log lines; `torn`: half-way
    # through writing them; a batch index: mid-epoch, before the checkpoint; epoch 4: the
    # search's last checkpoint (its final check), after which the stage counts as done
    whole_and_killed(tmp_path, whole_runs, point, "--full")
    timing = {"train_s", "eval_s", "swa_s"}
    logs = [[{k: v for k, v in r.items() if k not in timing}
             for r in eb.run.runs.RunDir(tmp_path / name).read_log()] for name in ("whole", "cut")]
    assert logs[0] == logs[1]                              # every record once, in order
    epochs = [(r["stage"], r["epoch"]) for r in logs[1] if "samples" in r]
    assert len(epochs) == len(set(epochs)) and ("search", 1) in epochs
    ledgers = [json.loads((tmp_path / n / "ledger.json").read_text()) for n in ("whole", "cut")]
    assert [(p["method"], p["train_flops"]) for p in ledgers[0]["pipelines"]] == \
        [(p["method"], p["train_flops"]) for p in ledgers[1]["pipelines"]]
    assert not list((tmp_path / "cut").glob(".*.tmp"))      # no temporary file left behind
