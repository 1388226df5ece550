"""The README's Python example runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    small, model, again = namespace["small"], namespace["model"], namespace["again"]
    assert (tmp_path / "small.pt").is_file()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]
