"""Every CLI option with a wrong value, type or combination: one line, exit 2, nothing written."""
import pytest

from earlybird.cli import main
from test_pipeline import TINY

# (extra arguments for `earlybird search`, what the one line must say)
SEARCH = [
    (["--arch", "vgg99"], "unknown arch 'vgg99'"),
    (["--depth", "12"], "VGG depth must be one of [11, 13, 16, 19], got 12"),
    (["--arch", "preresnet", "--depth", "21"], "PreResNet depth must be 6n+2"),
    (["--width", "0"], "--width must be > 0"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--schedule", "3", "2"], "--schedule must be increasing epochs inside (0, 4)"),
    (["--schedule", "5"], "--schedule must be increasing epochs inside (0, 4)"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--test-batch-size", "-1"], "--test-batch-size must be > 0"),
    (["--momentum", "-0.1"], "--momentum and --weight-decay must be >= 0"),
    (["--weight-decay", "-1"], "--momentum and --weight-decay must be >= 0"),
    (["--gamma", "0"], "--gamma > 0"),
    (["--s=-1e-4"], "sparsity must be a number >= 0"),
    (["--ratios", "0.5", "0.5"], "ratios must not repeat"),
    (["--ratios", "1.2"], "must be a number in (0, 1), got 1.2"),
    (["--epsilon", "0"], "epsilon must be in (0, 1], got 0"),
    (["--epsilon", "2"], "epsilon must be in (0, 1], got 2"),
    (["--window", "1"], "window must be an integer >= 2, got 1"),
    (["--span", "0", "--criterion", "plateau"], "span must be None or an integer >= 1 (steps), got 0"),
    (["--span", "4", "--criterion", "reference"], "span is used by the plateau rule only, not by criterion='reference'"),
    (["--check-every", "0"], "--check-every must be >= 1"),
    (["--train-images", "0"], "--train-images must be >= 1"),
    (["--test-images", "0"], "--test-images must be >= 1"),
    (["--data", "/nonexistent/cifar.tar.gz"], "--data '/nonexistent/cifar.tar.gz' does not exist"),
    (["--dataset", "imagenet"], "--data is required for imagenet"),
    (["--wl-weight", "1"], "--wl-weight must be an integer in [2, 32], got 1"),
    (["--wl-error", "64"], "--wl-error must be an integer in [2, 32], got 64"),
    (["--swa-start", "4"], "--swa-start must be an epoch in [0, 4), got 4"),
]
ARGPARSE = [
    ["--dataset", "mnist"], ["--search-precision", "fp8"], ["--retrain-precision", "int4"],
    ["--rounding", "up"], ["--epochs", "ten"], ["--ratios"], ["--bogus"],
    ["--criterion", "median"], ["--span", "2.5"],
]


def one_line(capsys, code, args):
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("extra,message", SEARCH, ids=[" ".join(e) for e, _ in SEARCH])
def test_search_options(tmp_path, capsys, extra, message):
    save = tmp_path / "run"
    line = one_line(capsys, 2, ["search", "--save", str(save), *TINY, *extra])
    assert line.startswith("earlybird search: error: ") and message in line, line
    assert "Traceback" not in line and not save.exists()


@pytest.mark.parametrize("extra", ARGPARSE, ids=[" ".join(e) for e in ARGPARSE])
def test_malformed_options_are_argparse_errors(tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--save", str(tmp_path / "run"), *extra])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_stage_combinations(tmp_path, capsys):
    save = tmp_path / "run"
    assert main(["search", "--save", str(save), *TINY]) == 0
    before = sorted(p.name for p in save.iterdir())
    cases = [
        (["prune", "--save", str(save), "--ratio", "0.7"], "no ticket for ratio 0.7"),
        (["retrain", "--save", str(save), "--ratio", "0.5"], "pruned-0.5.pt does not exist"),
        (["retrain", "--save", str(tmp_path / "none"), "--ratio", "0.5"], "config.yaml not found"),
        (["search", "--save", str(save), *TINY], "search.pt exists; pass --resume"),
        (["search", "--save", str(save), *TINY, "--lr", "0.2", "--resume"], "other settings (lr)"),
        (["report", str(tmp_path / "none")], "config.yaml not found"),
    ]
    for args, message in cases:
        line = one_line(capsys, 2, args)
        assert message in line, line
    assert main(["prune", "--save", str(save), "--ratio", "0.5"]) == 0
    capsys.readouterr()
    line = one_line(capsys, 2, ["retrain", "--save", str(save), "--ratio", "0.5",
                                "--start-epoch", "9"])
    assert "--start-epoch must be in [0, 4), got 9" in line
    assert sorted(p.name for p in save.iterdir()) == sorted(before + ["pruned-0.5.pt"])
