"""Every Python snippet in the README runs as written (the torchrun one under 2 gloo ranks)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import failure, torchrun

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_its_snippets():
    assert len(BLOCKS) == 11


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    monkeypatch.chdir(tmp_path)
    if code.startswith("# run with: torchrun"):
        script = tmp_path / "snippet.py"
        script.write_text(code)
        out = torchrun(str(script), cwd=tmp_path)
        assert out.returncode == 0, failure(out)
        assert (tmp_path / "ddp-small.pt").is_file()
        return
    if "import lightning" in code:
        pytest.importorskip("lightning", reason="the lightning extra is not installed")
    if "onnx.export" in code:
        pytest.importorskip("onnx", reason="the export extra is not installed")
    namespace: dict = {}
    exec(compile(code, f"README.md snippet {index}", "exec"), namespace)
    if index == 0:                                          # the main example
        small, model, again = namespace["small"], namespace["model"], namespace["again"]
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]
    if "scheduler" in namespace:
        assert namespace["pruner"] is None                  # the ticket was drawn and pruned
        assert namespace["scheduler"].optimizer is namespace["optimizer"]
