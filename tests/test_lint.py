"""ruff (its lint rules and its layout) and mypy on the library, clean, with the configuration of
pyproject.toml. They run among the tests, so that pytest-xdist overlaps mypy (about 20 s on a
cold cache) with the other tests instead of running it after them in an environment of its own;
``tox -e py -- -k lint`` runs them alone."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "earlybird").rglob("*.py"))


def _run(*args: str) -> subprocess.CompletedProcess:
    """``python -m <tool> ...`` in the project's root, with this environment's packages (which
    mypy then types the library against)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_ruff_finds_nothing_in_the_library(args):
    out = _run("ruff", *args, "earlybird")
    assert out.returncode == 0, out.stdout + out.stderr
    if args[0] == "format":                                   # it read every module
        assert out.stdout.strip() == f"{len(MODULES)} files already formatted"


def test_mypy_finds_no_error_in_any_module_of_the_library():
    out = _run("mypy", "earlybird")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == f"Success: no issues found in {len(MODULES)} source files"
