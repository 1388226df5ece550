"""torch.compile in, ONNX / torch.export out."""
import os
import tempfile

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import earlybird as eb
from conftest import TinyVGG, randomize_norms


def test_a_compiled_model_is_searched_and_gives_an_uncompiled_pruned_model(x32):
    torch.manual_seed(0)
    model = TinyVGG()
    compiled = torch.compile(model, backend="aot_eager")   # inductor's front end: dynamo, AOTAutograd
    pruner = eb.EarlyBirdPruner(compiled, x32, ratios=[0.5], window=2, epsilon=0.5)
    assert pruner.model is model                           # read through ._orig_mod
    opt = torch.optim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        nn.functional.cross_entropy(compiled(x32), torch.tensor([0, 1])).backward()
        pruner.regularize()
        opt.step(), opt.zero_grad()
        pruner.step()
    assert 0.5 in pruner.tickets
    small = pruner.prune(0.5)
    assert not hasattr(small, "_orig_mod") and isinstance(small, TinyVGG)
    again = torch.compile(small)                           # inductor's C++ kernels, on the CPU
    assert torch.allclose(again.eval()(x32), small.eval()(x32), atol=1e-5)


@pytest.fixture(scope="module")
def pruned_resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    randomize_norms(model, seed=4)
    x = torch.randn(2, 3, 32, 32)
    return eb.EarlyBirdPruner(model, x, ratios=[0.5]).prune(0.5, force=True).eval(), x


def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(pruned_resnet, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    small, x = pruned_resnet
    path = tmp_path / "small.onnx"
    torch.onnx.export(small, (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = small(x).numpy()
    assert y.shape == (2, 10)
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_torch_export_and_torchscript_give_the_same_outputs(pruned_resnet):
    small, x = pruned_resnet
    with torch.no_grad():
        expected = small(x)
        exported = torch.export.export(small, (x,))
        assert torch.allclose(exported.module()(x), expected, atol=1e-5)
        scripted = torch.jit.trace(small, x)
        assert torch.allclose(scripted(x), expected, atol=1e-5)


def test_a_compiling_process_gets_its_own_inductor_cache_and_clears_killed_ones(tmp_path,
                                                                               monkeypatch):
    # a kill while inductor links a kernel leaves a truncated .so that breaks every later
    # process sharing the cache (pytorch/pytorch#102539): each process compiles privately
    from earlybird.training import compilecache
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(compilecache, "_private_cache", None)
    killed = tmp_path / "earlybird-inductor-999999999-x"             # no such process
    killed.mkdir()
    (killed / "k.so").write_bytes(b"")
    alive = tmp_path / f"earlybird-inductor-{os.getppid()}-y"
    alive.mkdir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what inductor sets
    path = compilecache.private_compile_cache()
    assert path is not None and os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(f"earlybird-inductor-{os.getpid()}-")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path and os.path.isdir(path)
    assert not killed.exists() and alive.exists()
    assert compilecache.private_compile_cache() == path                   # once per process
    live = os.getppid()       # a pid that exists: a later call clears the caches of dead ones
    monkeypatch.setattr(os, "getpid", lambda: live)           # a forked child
    child = compilecache.private_compile_cache()
    assert child not in (None, path) and os.environ["TORCHINDUCTOR_CACHE_DIR"] == child
    monkeypatch.setattr(compilecache, "_private_cache", None)       # a spawned child
    spawned = compilecache.private_compile_cache()
    assert spawned not in (None, path, child)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))   # the user's own
    assert compilecache.private_compile_cache() is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, *(os.path.basename(p) for p in (path, child, spawned))])
