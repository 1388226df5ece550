"""The core install and its extras: setup.cfg's ranges, and one error naming the extra when a
feature's optional dependency is missing (simulated by hiding the module)."""
import configparser
import importlib
import re
import sys
from pathlib import Path

import pytest

import earlybird as eb
from earlybird.extras import EXTRAS, MissingExtraError, missing, require

ROOT = Path(__file__).resolve().parents[1]


def _requirements(text):
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def test_core_install_has_only_major_version_caps_and_no_optional_dependency():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    core = _requirements(cfg["options"]["install_requires"])
    names = [re.split(r"[<>=!~ ]", r)[0] for r in core]
    assert names == ["torch", "torchvision", "torch-pruning", "timm", "fvcore", "pyyaml",
                     "tqdm", "numpy"]
    for req in core:                       # an upper bound only at the next major version
        for cap in re.findall(r"<=?\s*([\d.]+)", req):
            assert re.search(r"<\d+$", req) and "." not in cap, req
    extras = {k: [re.split(r"[<>=!~ ]", r)[0] for r in _requirements(v)]
              for k, v in cfg["options.extras_require"].items()}
    for extra, modules in EXTRAS.items():   # the modules an extra promises, it installs
        assert set(modules) <= set(extras[extra])
    assert extras["lowp"] == ["qtorch", "ninja"]
    assert sorted(extras["all"]) == sorted(m for k, ms in extras.items() if k not in ("all", "test")
                                           for m in ms)
    constraints = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in constraints and "torchvision==0.29.1" in constraints
    assert "-c {toxinidir}/constraints.txt" in (ROOT / "tox.ini").read_text()


def test_a_missing_extra_is_named_with_the_command_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert missing("plots") == ["matplotlib"]
    with pytest.raises(MissingExtraError, match=re.escape(
            "the plots needs the 'plots' extra (matplotlib not installed): "
            "pip install 'earlybird-tickets[plots]'")):
        require("plots", "the plots")
    with pytest.raises(ValueError, match=r"unknown extra 'plot'; choose from \['export', "
                       r"'lightning', 'lowp', 'plots'\]"):
        require("plot", "the plots")
    assert issubclass(MissingExtraError, (eb.EarlyBirdError, ImportError))


def test_each_feature_refuses_without_its_extra(monkeypatch, tmp_path):
    from earlybird.costs.plots import write_plots
    from earlybird.training.precision import load_qtorch
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"'plots' extra \(matplotlib not installed\)"):
        write_plots(tmp_path)
    monkeypatch.setitem(sys.modules, "qtorch", None)
    with pytest.raises(MissingExtraError, match=r"q8 \(low-precision search\) needs the 'lowp' "
                       r"extra \(qtorch not installed\)"):
        load_qtorch()
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "earlybird.integrations.lightning", raising=False)
    with pytest.raises(MissingExtraError, match=r"EarlyBirdCallback needs the 'lightning' extra"):
        importlib.import_module("earlybird.integrations.lightning")


def test_the_demo_without_plots_stops_before_any_work(monkeypatch, tmp_path, capsys):
    from earlybird.cli import main
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "demo"
    assert main(["demo", "--save", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("earlybird demo: error: earlybird demo (its plots) needs the 'plots' "
                           "extra (matplotlib not installed): pip install "
                           "'earlybird-tickets[plots]'")
    assert not out.exists()                           # nothing was written
    assert main(["report", "--no-plots", str(tmp_path / "none")]) == 2   # no plots asked:
    assert "extra" not in capsys.readouterr().err                        # another error
