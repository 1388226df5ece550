"""torch.compile in, ONNX / torch.export out."""
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
    compiled = torch.compile(model)                        # inductor, on the CPU
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
    again = torch.compile(small)
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
