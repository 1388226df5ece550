"""The pruner on real timm and torchvision architectures: it must work unmodified."""
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torchvision

import earlybird as eb
from earlybird.graph.attention import heads_layer, unit_width
from earlybird.graph import zero_pruned_channels
from conftest import randomize_norms

TV = torchvision.models
MODELS = {
    "tv_vgg16_bn": (lambda: TV.vgg16_bn(num_classes=10), 32),
    "tv_resnet18": (lambda: TV.resnet18(num_classes=10), 32),
    "tv_resnet50": (lambda: TV.resnet50(num_classes=10), 32),
    "tv_mobilenet_v2": (lambda: TV.mobilenet_v2(num_classes=10), 32),
    "tv_densenet121": (lambda: TV.densenet121(num_classes=10), 32),
    "timm_resnet50": (lambda: timm.create_model("resnet50", num_classes=10), 32),
    "timm_efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=10), 32),
    "timm_regnety_002": (lambda: timm.create_model("regnety_002", num_classes=10), 32),
    "timm_convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=10), 32),
    "timm_vit_tiny_patch16_224": (
        lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32), 32),
    "tv_vit_small": (lambda: TV.VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=32,
                                                  mlp_dim=64, num_classes=10), 32),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_search_and_prune_any_model(name):
    ctor, size = MODELS[name]
    torch.manual_seed(0)
    model = ctor()
    x = torch.randn(2, 3, size, size)
    pruner = eb.EarlyBirdPruner(model, x, ratios=(0.3, 0.5, 0.7))
    for seed in (1, 2):                                    # two checks with perturbed scales
        randomize_norms(model, seed)
        assert pruner.step() == []
    n = pruner.layout.num_channels
    if name == "tv_vgg16_bn":          # conv channels, and the hidden Linear units by coefficients
        assert n == 4224 + 2 * 4096
        assert [k for k in pruner.layout.names if "classifier" in k] == ["classifier.0",
                                                                         "classifier.3"]
    small = pruner.prune(0.5, force=True)
    keep = pruner.masks(0.5)
    assert sum(int(m.sum()) for m in keep.values()) == n - eb.prune_budget(n, 0.5)
    for layer, mask in keep.items():             # exactly the ticket's channels (and heads)
        assert unit_width(small.get_submodule(heads_layer(layer) or layer), layer) == mask.sum()
    out = small(torch.randn(3, 3, size, size))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert after < 0.9 * before
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is not None:                                   # the head keeps its 10 outputs
        assert small.get_classifier().out_features == 10
    if name.startswith("timm_vit"):
        for block in small.blocks:
            attn = block.attn
            assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
            assert attn.qkv.in_features == small.patch_embed.proj.out_channels < 192


def preserved(model, size, ratio=0.5):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    randomize_norms(model, seed=7)
    pruner = eb.EarlyBirdPruner(model, x, ratios=[ratio])
    small = pruner.prune(ratio, force=True).eval()
    zero_pruned_channels(pruner.graph, pruner.mask(ratio))
    model.eval()
    with torch.no_grad():
        return model(x), small(x), small


def test_function_preserved_vgg16_bn():
    dense, pruned, small = preserved(TV.vgg16_bn(num_classes=10), 32)
    assert torch.allclose(dense, pruned, atol=1e-4)
    assert small.features[0].out_channels < 64


def test_function_preserved_resnet50_with_residual_channels_pruned():
    dense, pruned, small = preserved(TV.resnet50(num_classes=10), 64)
    assert torch.allclose(dense, pruned, atol=1e-4)
    stage = small.layer1[0]                                # the residual stage is pruned as one
    assert stage.downsample[0].out_channels < 256
    assert stage.conv3.out_channels == stage.downsample[0].out_channels
    assert small.layer1[2].conv3.out_channels == stage.downsample[0].out_channels
    assert small.fc.in_features < 2048 and small.fc.out_features == 10


def test_pruned_model_round_trips_into_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = TV.resnet18(num_classes=10)
    randomize_norms(model, seed=3)
    x = torch.randn(2, 3, 32, 32)
    small = eb.EarlyBirdPruner(model, x, ratios=[0.5]).prune(0.5, force=True).eval()
    eb.save_pruned(small, tmp_path / "small.pt", ratio=0.5)
    torch.save({"x": x, "y": small(x).detach()}, tmp_path / "io.pt")
    code = textwrap.dedent(f"""
        import torch, torchvision, earlybird as eb
        model = eb.load_pruned({str(tmp_path / 'small.pt')!r}, torchvision.models.resnet18(num_classes=10))
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        diff = (model.eval()(io["x"]) - io["y"]).abs().max().item()
        print(diff, model.layer1[0].conv1.out_channels)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    diff, width = out.stdout.split()
    assert float(diff) == 0.0 and int(width) == small.layer1[0].conv1.out_channels
    saved = torch.load(tmp_path / "small.pt", weights_only=True)   # plain data only
    assert saved["extra"] == {"ratio": 0.5} and saved["format"] == "earlybird.pruned/1"


def test_unreadable_foreign_and_pickled_files_are_refused(tmp_path):
    small = eb.EarlyBirdPruner(TV.resnet18(num_classes=10), torch.randn(1, 3, 32, 32),
                               ratios=[0.5]).prune(0.5, force=True)
    path = tmp_path / "small.pt"
    eb.save_pruned(small, path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    torch.save(small, tmp_path / "pickled.pt")                     # a whole module: code
    for name, message in [("cut.pt", "not a readable earlybird file"),
                          ("foreign.pt", "found 'something-else'"),
                          ("pickled.pt", "not a readable earlybird file"),
                          ("missing.pt", "no such file")]:
        with pytest.raises(eb.CheckpointError, match=message):
            eb.load_pruned(tmp_path / name, TV.resnet18(num_classes=10))
    with pytest.raises(eb.CheckpointError, match="do not fit the rebuilt model|does not fit"):
        eb.load_pruned(path, TV.resnet34(num_classes=10))
    with pytest.raises(ValueError, match="carries no pruning history"):
        eb.save_pruned(TV.resnet18(), tmp_path / "dense.pt")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    eb.atomic_save({"v": 1}, path)

    def broken(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        eb.atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_open_would_give(tmp_path, umask):
    import os
    import stat
    old = os.umask(umask)
    try:
        eb.atomic_save({"v": 1}, tmp_path / "a.pt")
        eb.run.io.atomic_write(tmp_path / "b.txt", lambda fh: fh.write(b"x"))
        with open(tmp_path / "c.txt", "w") as fh:                  # what open() gives
            fh.write("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.pt": 0o666 & ~umask, "b.txt": 0o666 & ~umask, "c.txt": 0o666 & ~umask}


def test_training_only_branches_are_traced_and_pruned_consistently():
    torch.manual_seed(0)
    model = TV.googlenet(num_classes=10, init_weights=True)   # aux classifiers run in training
    x = torch.randn(1, 3, 64, 64)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.5])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # untouched
    small = pruner.prune(0.5, force=True)
    out = small.train()(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in out] == [(2, 10)] * 3             # logits and both aux logits
    assert small.aux1.conv.conv.in_channels == small.inception4a.branch1.conv.out_channels + \
        small.inception4a.branch2[1].conv.out_channels + small.inception4a.branch3[1].conv.out_channels + \
        small.inception4a.branch4[1].conv.out_channels


def test_torchvision_vit_keeps_its_hidden_dim_in_step_and_round_trips(tmp_path):
    """nn.MultiheadAttention's out_proj runs inside the attention module (pruned with it, not
    refused as a functional use); the model's own ``hidden_dim`` follows the pruned width."""
    torch.manual_seed(0)
    model = TV.VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                                 num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    randomize_norms(model, 3)
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.5])
    small = pruner.prune(0.5, force=True).eval()
    assert small.hidden_dim == small.conv_proj.out_channels < 32
    eb.save_pruned(small, tmp_path / "vit.pt")
    again = eb.load_pruned(tmp_path / "vit.pt", TV.VisionTransformer(
        32, 8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10)).eval()
    assert again.hidden_dim == small.hidden_dim
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


def test_a_frozen_stem_is_traced_pruned_and_left_frozen():
    model = torchvision.models.resnet18(num_classes=10)
    frozen = list(model.conv1.parameters()) + list(model.bn1.parameters())
    for p in frozen:
        p.requires_grad_(False)
    x = torch.randn(1, 3, 32, 32)
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.5])
    assert pruner.layout.names[0] == "conv1"              # the stem's residual group is traced
    randomize_norms(model)
    small = pruner.prune(0.5, force=True).eval()
    assert small(x).shape == (1, 10)
    assert small.conv1.out_channels == small.layer1[0].conv2.out_channels < 64
    assert [p.requires_grad for p in (*small.conv1.parameters(), *small.bn1.parameters())] == \
        [False] * 3 and all(p.requires_grad for p in small.layer1.parameters())
    # the slimming penalty never changes a frozen scale, even one with a gradient
    model.bn1.weight.grad = torch.zeros(64)
    model.layer1[0].bn1.weight.grad = torch.zeros(64)
    pruner.regularize()
    assert not model.bn1.weight.grad.any() and model.layer1[0].bn1.weight.grad.abs().min() > 0


def test_frozen_batchnorm_is_refused_with_the_reason():
    from torchvision.ops.misc import FrozenBatchNorm2d
    model = torchvision.models.resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d)
    with pytest.raises(eb.UnsupportedModelError, match=r"FrozenBatchNorm2d \(20 layers, e.g. "
                       r"'bn1'\): its fixed scales are buffers"):
        eb.EarlyBirdPruner(model, torch.randn(1, 3, 32, 32))


def test_a_channels_last_model_is_pruned_channels_last():
    model = torchvision.models.resnet18(num_classes=10).to(memory_format=torch.channels_last)
    randomize_norms(model)
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    small = eb.EarlyBirdPruner(model, x, ratios=[0.5]).prune(0.5, force=True)
    assert small.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not small.conv1.weight.is_contiguous()
    plain = eb.EarlyBirdPruner(torchvision.models.resnet18(num_classes=10), x, ratios=[0.5])
    assert plain.prune(0.5, force=True).conv1.weight.is_contiguous()
