"""Every Python snippet in the README and on every page of the docs runs as written (the
torchrun one under 2 gloo ranks)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import failure, torchrun

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(page.relative_to(ROOT).as_posix(), k, code) for page in PAGES
          for k, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))]
MAIN = 'again = eb.load_pruned("small.pt", torchvision.models.resnet18(num_classes=10))\n'


def test_the_pages_have_their_snippets():
    counts = {}
    for page, _, _ in BLOCKS:
        counts[page] = counts.get(page, 0) + 1
    assert counts == {"README.md": 1, "docs/index.md": 1, "docs/loop.md": 8,
                      "docs/transformers.md": 1, "docs/workflow.md": 1}
    assert sum(MAIN in code for _, _, code in BLOCKS) == 2     # README and getting started


@pytest.mark.parametrize("page,index,code", BLOCKS, ids=[f"{p}:{k}" for p, k, _ in BLOCKS])
def test_readme_snippet_runs(page, index, code, tmp_path, monkeypatch):
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
    if "torch.compile(" in code:
        # the snippet's own logic (the pruner reads a compiled model through ._orig_mod; a
        # pruned model compiles again) under the aot_eager backend: inductor's C++ kernel
        # builds cost ~20 s a cold run, and test_compile_export runs the same path on inductor
        import functools
        import torch
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    namespace: dict = {}
    exec(compile(code, f"{page} snippet {index}", "exec"), namespace)
    if MAIN in code:                                        # the main example
        small, model, again = namespace["small"], namespace["model"], namespace["again"]
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]
    if "scheduler" in namespace:
        assert namespace["pruner"] is None                  # the ticket was drawn and pruned
        assert namespace["scheduler"].optimizer is namespace["optimizer"]
