"""Slimming coefficients for units without a norm scale: ViT-, Swin-, ConvNeXt- and Mixer-like
toys keep their function when the coefficients are made, trained, folded and pruned."""
import logging

import pytest
import timm
import torch
import torchvision
from timm.layers import GluMlp, SwiGLU
from timm.models.convnext import ConvNeXt
from timm.models.mlp_mixer import MlpMixer
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import earlybird as eb
from earlybird.graph import coefficient_modules, copy_model, prune_model, replay_history

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def unfused_attention():
    """The toys of this module compute attention with explicit matmuls (exact comparisons);
    timm reads the setting when an attention layer is built. Restored after the module, so
    the other modules' timm models keep timm's default, the fused path."""
    before = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(False)
    yield
    timm.layers.set_fused_attn(before)


def vit(width=24, mlp=2.0, **kwargs):
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=width, depth=2, num_heads=2,
                             mlp_ratio=mlp, num_classes=5, **kwargs)


TOYS = {
    "vit": vit,
    "swin": lambda: SwinTransformer(img_size=32, patch_size=2, embed_dim=12, depths=(1, 1),
                                    num_heads=(2, 2), window_size=4, num_classes=5),
    "convnext": lambda: ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=5,
                                 patch_size=2, ls_init_value=1.0),     # layer scale on
    "mixer": lambda: MlpMixer(img_size=32, patch_size=8, embed_dim=16, num_blocks=2,
                              mlp_ratio=(0.5, 2.0), num_classes=5),
    # gated MLPs: one packed fc1 chunked in two halves (GluMlp), or two (SwiGLU, as EVA's)
    "glu": lambda: vit(mlp_layer=GluMlp),
    "swiglu": lambda: vit(mlp_layer=SwiGLU, act_layer=nn.SiLU),
}
# the attention layers whose heads each toy's coefficients score: {name: heads}
HEADS = {"vit": {"blocks.0.attn": 2, "blocks.1.attn": 2},
         "swin": {"layers.0.blocks.0.attn": 2, "layers.1.blocks.0.attn": 2},
         "convnext": {}, "mixer": {},
         "glu": {"blocks.0.attn": 2, "blocks.1.attn": 2},
         "swiglu": {"blocks.0.attn": 2, "blocks.1.attn": 2}}
# the MLP hidden layers each toy's coefficients score: {fc1 name: hidden units}
HIDDEN = {
    "vit": {"blocks.0.mlp.fc1": 48, "blocks.1.mlp.fc1": 48},
    "swin": {"layers.0.blocks.0.mlp.fc1": 48, "layers.1.blocks.0.mlp.fc1": 96},
    "convnext": {f"stages.{i}.blocks.0.mlp.fc1": w for i, w in enumerate((32, 32, 64, 64))},
    "mixer": {"blocks.0.mlp_tokens.fc1": 8, "blocks.0.mlp_channels.fc1": 32,
              "blocks.1.mlp_tokens.fc1": 8, "blocks.1.mlp_channels.fc1": 32},
    "glu": {"blocks.0.mlp.fc1": 24, "blocks.1.mlp.fc1": 24},     # 48 outputs of fc1: 24 pairs
    "swiglu": {"blocks.0.mlp.fc1_g": 48, "blocks.1.mlp.fc1_g": 48},
}
# gated MLPs whose unit is a pair of fc1 channels, j and j + hidden (the chunks' position j)
PAIRED = {"glu"}


def channels(name, mask):
    """A unit mask as the group's channels: both halves of a packed gated unit."""
    return mask.repeat(2) if name in PAIRED else mask


def _toy(name):
    torch.manual_seed(0)
    model = TOYS[name]().eval()
    nn.init.normal_(model.get_classifier().weight)      # timm's Mixer starts its head at zero
    return model


@pytest.mark.parametrize("name", list(TOYS))
def test_every_mlp_hidden_unit_gets_a_coefficient_and_the_function_is_unchanged(name):
    model = _toy(name)
    before = model(X)
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    made = coefficient_modules(model)
    assert {k: c.weight.numel() for k, c in made.items()} == {
        **HIDDEN[name], **{f"{a}:heads": h for a, h in HEADS[name].items()}}
    assert all(bool((c.weight == 1).all()) for c in made.values())
    assert torch.equal(model(X), before)
    assert [p for p in pruner.coefficients()] == [c.weight for c in made.values()]
    assert set(made) <= set(pruner.layout.names)
    if name in PAIRED:               # a ticket keeps or drops both halves of a gated unit
        with torch.no_grad():
            for c in pruner.coefficients():
                c.copy_(torch.rand(c.shape, generator=torch.Generator().manual_seed(1)))
        for n, width in HIDDEN[name].items():
            mask = pruner.masks(0.5)[n]
            assert mask.numel() == 2 * width and torch.equal(mask[:width], mask[width:])
            assert 0 < int(mask[:width].sum()) < width


@pytest.mark.parametrize("name,seed", [(n, s) for n in TOYS for s in (0, 1, 2)])
def test_pruned_model_computes_the_dense_model_with_pruned_units_silenced(name, seed):
    model = _toy(name)
    eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    made = coefficient_modules(model)
    g = torch.Generator().manual_seed(seed)
    share = [0.2, 0.5, 0.8][seed]                    # roughly this share of units pruned
    with torch.no_grad():
        for c in made.values():
            c.weight.copy_(torch.rand(c.weight.shape, generator=g) * 2 - 0.5)
    keep = {n: torch.rand(c.weight.numel(), generator=g) >= share for n, c in made.items()}
    for mask in keep.values():
        mask[0] = True
    small = copy_model(model)
    history = prune_model(small, X[:1], {n: m if n.endswith(":heads") else channels(name, m)
                                         for n, m in keep.items()})
    trained = model(X)
    with torch.no_grad():
        for n, c in made.items():
            c.weight[~keep[n]] = 0
    silenced = model(X)
    assert not torch.allclose(silenced, trained)            # the pruned units mattered
    torch.testing.assert_close(small(X), silenced, rtol=1e-5, atol=1e-5)
    # a plain model: no coefficient, no hook, and each hidden layer as wide as its mask keeps
    assert not any("eb_coefficients" in n for n, _ in small.state_dict().items())
    assert not any(m._forward_pre_hooks for m in small.modules())
    for n, mask in keep.items():
        if n.endswith(":heads"):                         # whole heads gone, the rest as wide
            attention = small.get_submodule(n[:-6])
            assert attention.num_heads == int(mask.sum())
            assert attention.proj.in_features == int(mask.sum()) * model.get_submodule(
                n[:-6]).proj.in_features // HEADS[name][n[:-6]]
        else:
            assert small.get_submodule(n).out_features == int(channels(name, mask).sum())
            if name in PAIRED:                            # fc2 reads one input per unit
                assert small.get_submodule(n[:-3] + "fc2").in_features == int(mask.sum())
    # the pruning history rebuilds the architecture on a fresh model from plain data
    fresh = _toy(name)
    replay_history(fresh, X[:1], history)
    fresh.load_state_dict(small.state_dict())
    torch.testing.assert_close(fresh(X), small(X))


def test_regularize_adds_the_l1_term_and_an_optimizer_made_after_trains_them():
    model = _toy("vit")
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5], sparsity=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (c,) = pruner.coefficients()[:1]
    model(X).sum().backward()
    grad = c.grad.clone()
    pruner.regularize()
    torch.testing.assert_close(c.grad - grad, torch.full_like(grad, 1e-3))   # sign(1) = 1
    optimizer.step()
    assert bool((c.detach() != 1).all())
    pruner.step()
    pruner.step()                                       # moved: no complaint


def test_coefficients_nothing_trains_are_refused_before_a_ticket_is_drawn():
    model = _toy("vit")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)   # made before the pruner
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    pruner.step()                                       # before any training: cannot tell
    for _ in range(2):
        optimizer.zero_grad()
        model(X).sum().backward()
        pruner.regularize()
        optimizer.step()
    with pytest.raises(RuntimeError, match=r"have not moved since the pruner was built: the "
                       r"optimizer does not train them\. .*add_param_group"):
        pruner.step()
    assert pruner.tickets == {} and len(pruner.iterations) == 1
    optimizer.add_param_group({"params": pruner.coefficients()})
    optimizer.zero_grad()
    model(X).sum().backward()
    pruner.regularize()
    optimizer.step()
    pruner.step()
    assert len(pruner.iterations) == 2


def test_coefficients_resume_through_the_models_state_dict_and_a_second_pruner(tmp_path):
    model = _toy("vit")
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    with torch.no_grad():
        for i, c in enumerate(pruner.coefficients()):
            c.mul_(0.5 + 0.1 * i)
    out = model(X)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    again = _toy("vit")
    eb.EarlyBirdPruner(again, X[:1], ratios=[0.5])
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    torch.testing.assert_close(again(X), out)
    # a second pruner on the same model keeps the trained values (same Parameter objects)
    kept = pruner.coefficients()
    second = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    assert all(a is b for a, b in zip(second.coefficients(), kept))
    torch.testing.assert_close(model(X), out)


def test_remove_coefficients_gives_the_plain_model_back():
    model = _toy("convnext")
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    with torch.no_grad():
        for c in pruner.coefficients():
            c.uniform_(0.5, 1.5)
    out = model(X)
    folded = pruner.remove_coefficients()
    assert set(folded) == set(HIDDEN["convnext"])
    plain = _toy("convnext")
    assert set(model.state_dict()) == set(plain.state_dict())
    assert not any(m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(model(X), out, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"remove_coefficients\(\) was called"):
        pruner.step()


def test_models_without_norm_layers_keep_filter_scores_and_coefficients_can_be_off():
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    pruner = eb.EarlyBirdPruner(plain, X[:1], ratios=[0.5])
    assert pruner.graph.score == "weight" and pruner.coefficients() == []
    model = _toy("vit")
    off = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5], coefficients=False)
    assert off.coefficients() == [] and not hasattr(model, "eb_coefficients")
    assert off.layout.names == ("patch_embed.proj",)
    with pytest.raises(eb.ConfigError, match="coefficients must be True or False, got 'yes'"):
        eb.EarlyBirdConfig(coefficients="yes")


def test_whole_heads_are_units_a_ticket_removes_and_heads_off_leaves_them():
    model = _toy("vit")
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    assert pruner.layout.names[-2:] == ("blocks.0.attn:heads", "blocks.1.attn:heads")
    with torch.no_grad():                              # head 1 of block 0 is the weakest unit
        for c in pruner.coefficients():
            c.fill_(1.0)
        model.eb_coefficients["blocks/0/attn:heads"].weight[1] = 0.01
    keep = pruner.masks(0.5)
    assert keep["blocks.0.attn:heads"].tolist() == [True, False]
    shares = pruner.shares(0.5)               # 24 channels, 96 MLP units, 4 heads: 62 pruned
    assert set(shares) == {"channels", "units", "heads"}
    n = {"channels": 24, "units": 96, "heads": 4}
    assert round(sum(shares[k] * n[k] for k in n)) == eb.prune_budget(124, 0.5) == 62
    small = pruner.prune(0.5, force=True)
    assert (small.blocks[0].attn.num_heads, small.blocks[0].attn.attn_dim) == (1, 12)
    assert small.blocks[1].attn.num_heads == int(keep["blocks.1.attn:heads"].sum())
    assert small(X).shape == (2, 5)
    off = eb.EarlyBirdPruner(_toy("vit"), X[:1], ratios=[0.5], heads="off")
    assert not any(n.endswith(":heads") for n in off.layout.names)
    with pytest.raises(eb.ConfigError, match=r"unknown heads 'all'; choose from \['whole', "
                       r"'dims', 'off'\]"):
        eb.EarlyBirdConfig(heads="all")


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name,seed", [("vit", 0), ("vit", 1), ("swin", 0)])
def test_head_dimensions_leave_every_head_and_the_function_is_kept(name, seed, fused):
    # fused: timm's F.scaled_dot_product_attention path, which scales the logits by the width
    # it is given (the pruned head_dim), where the other path multiplies by the stored `scale`
    model = _toy(name)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5], heads="dims")
    made = coefficient_modules(model)
    dims = {k: c for k, c in made.items() if k.endswith(":dims")}
    width = {a: model.get_submodule(a).proj.in_features // h for a, h in HEADS[name].items()}
    assert {k: c.weight.numel() for k, c in dims.items()} == {f"{a}:dims": w
                                                              for a, w in width.items()}
    assert not any(n.endswith(":heads") for n in pruner.layout.names)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in made.values():
            c.weight.copy_(torch.rand(c.weight.shape, generator=g) + 0.5)
    keep = {n: torch.rand(c.weight.numel(), generator=g) > 0.5 for n, c in made.items()}
    for mask in keep.values():
        mask[0] = True
    small = copy_model(model)
    history = prune_model(small, X[:1], keep)
    with torch.no_grad():
        for n, c in made.items():
            c.weight[~keep[n]] = 0
    torch.testing.assert_close(small(X), model(X), rtol=1e-5, atol=1e-5)
    for a, heads in HEADS[name].items():         # every head keeps the same dimensions
        attention = small.get_submodule(a)
        assert attention.num_heads == heads
        assert attention.proj.in_features == heads * int(keep[f"{a}:dims"].sum())
        kept = int(keep[f"{a}:dims"].sum())
        assert attention.scale == kept ** -0.5            # the queries carry the old scale
        assert [e[2]["scale"] for e in history if e[0] == a] == [kept ** -0.5]
    fresh = _toy(name)
    for m in fresh.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    replay_history(fresh, X[:1], history)
    assert all(fresh.get_submodule(a).scale == small.get_submodule(a).scale for a in HEADS[name])
    fresh.load_state_dict(small.state_dict())
    torch.testing.assert_close(fresh(X), small(X))


# the groups joined by an addition: the embedding (ViT), each stage's width (ConvNeXt)
RESIDUAL = {"vit": {"patch_embed.proj"},
            "convnext": {f"stages.{i}.downsample.1" for i in range(4)}}


@pytest.mark.parametrize("name", list(RESIDUAL))
def test_residual_keep_leaves_the_groups_joined_by_an_addition_whole(name):
    every = eb.EarlyBirdPruner(_toy(name), X[:1], ratios=[0.5]).layout.names
    model = _toy(name)
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5], residual="keep")
    assert set(pruner.layout.names) == set(every) - RESIDUAL[name]
    small = pruner.prune(0.5, force=True)
    for group in RESIDUAL[name]:                             # as wide as before
        assert small.get_submodule(group).out_channels == model.get_submodule(
            group).out_channels
    with pytest.raises(eb.ConfigError, match=r"unknown residual 'drop'; choose from "
                       r"\['prune', 'keep'\]"):
        eb.EarlyBirdConfig(residual="drop")


def test_a_budget_per_kind_prunes_every_kind_by_the_ratio_where_one_threshold_lets_scales_compete():
    # coefficients of 5-6 beside LayerNorm scales of 0.1-1: one global threshold takes every
    # channel it may (23 of 24, the floor keeps 1) and then the weakest 39 units and heads;
    # a budget per kind takes half of each kind: 12 of 24 channels, 48 of 96 units, 2 of 4 heads
    shares, pruners = {}, {}
    for budget in ("global", "kind"):
        model = _toy("vit")
        pruner = pruners[budget] = eb.EarlyBirdPruner(model, X[:1], ratios=[0.3, 0.5], budget=budget)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for c in pruner.coefficients():
                c.copy_(5 + torch.rand(c.shape, generator=g))
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.copy_(0.1 + 0.9 * torch.rand(m.weight.shape, generator=g))
        shares[budget] = pruner.shares(0.5)
        if budget == "kind":
            assert pruner.shares(0.3) == {"channels": 7 / 24, "units": 28 / 96, "heads": 1 / 4}
            keep = pruner.masks(0.5)
            small = pruner.prune(0.5, force=True)
            assert sum(b.attn.num_heads for b in small.blocks) == 2
            assert [b.mlp.fc1.out_features for b in small.blocks] == [
                int(keep[f"blocks.{i}.mlp.fc1"].sum()) for i in range(2)]
            assert sum(b.mlp.fc1.out_features for b in small.blocks) == 48
            assert small.patch_embed.proj.out_channels == 12
            assert small(X).shape == (2, 5)
    assert shares["global"]["channels"] == 23 / 24
    assert shares["global"]["units"] * 96 + shares["global"]["heads"] * 4 == 39
    assert shares["kind"] == {"channels": 0.5, "units": 0.5, "heads": 0.5}
    with pytest.raises(ValueError, match=r"expected 124 scores, got shape \(123,\)"):
        pruners["kind"].keep_masks(torch.rand(123), 0.5)
    pruners["kind"].step(iteration=0)
    with pytest.raises(eb.CheckpointError, match="state drew masks with budget='kind', this "
                       "pruner 'global'"):
        pruners["global"].load_state_dict(pruners["kind"].state_dict())
    with pytest.raises(eb.ConfigError, match=r"unknown budget 'layer'; choose from "
                       r"\['global', 'kind'\]"):
        eb.EarlyBirdConfig(budget="layer")
    assert eb.EarlyBirdConfig().budget == "kind"          # the default since vit-cifar (#26)


def test_a_kind_with_too_few_units_loses_what_its_floors_allow_and_no_kind_is_emptied(caplog):
    # 2 blocks of 2 heads: p = 0.9 asks 3 of 4 heads, the floors (one head a block) allow 2;
    # channels and units still lose 0.9 of theirs (21 of 24, 86 of 96)
    with caplog.at_level(logging.WARNING, logger="earlybird.search.budget"):
        pruner = eb.EarlyBirdPruner(_toy("vit"), X[:1], ratios=[0.9])
    assert [r.getMessage() for r in caplog.records] == [
        "budget='kind': the heads can lose 2 of their units where ratio 0.9 asks 3; those kinds "
        "lose all that min_channels=1 and max_layer_ratio=None allow, the others their share"]
    assert pruner.shares(0.9) == {"channels": 21 / 24, "units": 86 / 96, "heads": 2 / 4}
    small = pruner.prune(0.9, force=True)
    assert [b.attn.num_heads for b in small.blocks] == [1, 1] and small(X).shape == (2, 5)
    with pytest.raises(ValueError, match=r"ratio 0.99 prunes 122 of 124 channels, but "
                       r"min_channels=1 and max_layer_ratio=None allow at most 119"):
        eb.EarlyBirdPruner(_toy("vit"), X[:1], ratios=[0.99])  # 23 + 94 + 2 prunable


def test_a_model_with_one_kind_of_unit_draws_the_same_masks_under_either_budget():
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    pruners = {b: eb.EarlyBirdPruner(model, x, ratios=[0.3, 0.5], budget=b) for b in ("kind", "global")}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0, generator=torch.Generator().manual_seed(m.num_features))
    assert pruners["kind"].budget == pruners["global"].budget == "global"
    for r in (0.3, 0.5):
        assert torch.equal(pruners["kind"].mask(r), pruners["global"].mask(r))
    pruners["global"].step()
    pruners["kind"].load_state_dict(pruners["global"].state_dict())   # a CNN's state loads either way


DDP_SCRIPT = '''
import json, sys, torch, timm
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
sys.path.insert(0, "tests")
import earlybird as eb
from test_coefficients import _toy, X
dist.init_process_group("gloo")
rank = dist.get_rank()
model = _toy("vit").train()
pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])       # before DDP and the optimizer
ddp = DDP(model)
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
g = torch.Generator().manual_seed(rank)                       # each rank its own batches
for _ in range(3):
    x = torch.randn(4, 3, 32, 32, generator=g)
    optimizer.zero_grad()
    ddp(x).square().mean().backward()
    pruner.regularize()
    optimizer.step()
    pruner.step()
from test_heads import TinyViT                                    # tied heads
from test_exclusion import SplitTail                              # a group left out
seen = []
for toy, x in ((TinyViT(2, 4), torch.randn(1, 3, 8, 8)), (SplitTail(), torch.randn(1, 3, 8, 8)),
               (model, X[:1])):
    other = eb.EarlyBirdPruner(toy, x, ratios=[0.5])
    seen.append([list(other.layout.names), list(other.layout.sizes), other.excluded,
                 sorted(other.graph.ties)])
every = [None, None]
dist.all_gather_object(every, seen)
flat = torch.cat([c.detach() for c in pruner.coefficients()])
gathered = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
if rank == 0:
    json.dump({"equal": bool(torch.equal(gathered[0], gathered[1])),
               "same_groups": every[0] == every[1], "tied": every[0][0][3],
               "excluded": sorted(every[0][1][2]),
               "moved": bool((flat != 1).all()), "checks": len(pruner.iterations)},
              open(sys.argv[1], "w"))
from earlybird.training.distributed import leave
leave()                                # no rank leaves while rank 0 still writes
'''


def test_coefficients_train_data_parallel_and_stay_equal_on_every_rank(tmp_path):
    from conftest import failure
    from forked import torchrun                      # ranks forked with earlybird imported
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = torchrun(str(script), str(tmp_path / "out.json"))
    assert out.returncode == 0, failure(out)
    import json
    # exclusions and head ties come out the same on every rank (deterministic trials)
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "equal": True, "moved": True, "checks": 3, "same_groups": True, "tied": ["patch"],
        "excluded": ["conv2"]}


def test_coefficients_under_autocast_and_torch_compile():
    model = _toy("vit")
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    with torch.no_grad():
        for c in pruner.coefficients():
            c.uniform_(0.5, 1.5)
    eager = model(X)
    with torch.autocast("cpu", dtype=torch.bfloat16):          # the scale follows the dtype
        low = model(X)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), eager, rtol=0.05, atol=0.05)
    # dynamo traces the hooks (aot_eager: the graph without inductor's C++ build)
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(X)
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    assert all(c.grad is not None and bool(c.grad.abs().sum() > 0) for c in pruner.coefficients())


def test_pruning_mid_training_carries_the_optimizer_without_the_folded_coefficients():
    model = _toy("vit").train()
    pruner = eb.EarlyBirdPruner(model, X[:1], ratios=[0.5])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        model(X).sum().backward()
        pruner.regularize()
        optimizer.step()
    keep = pruner.masks(0.5)
    dense_buf = optimizer.state[model.blocks[0].mlp.fc1.weight]["momentum_buffer"]
    small, carried = pruner.prune(0.5, force=True, optimizer=optimizer)
    assert [p for g in carried.param_groups for p in g["params"]] == list(small.parameters())
    units, channels = keep["blocks.0.mlp.fc1"], keep["patch_embed.proj"]
    torch.testing.assert_close(carried.state[small.blocks[0].mlp.fc1.weight]["momentum_buffer"],
                               dense_buf[units][:, channels])


class _Gate(nn.Module):
    """``fc2(act(a) * b)`` with ``a, b = fc1(x).chunk(2, dim)``: a gated MLP split along
    ``dim`` of a token tensor ``[B, N, C]``."""

    def __init__(self, dim, act):
        super().__init__()
        self.fc1, self.fc2, self.dim, self.act = nn.Linear(16, 32), nn.Linear(16, 16), dim, act

    def forward(self, x):
        a, b = self.fc1(x).chunk(2, dim=self.dim)
        return self.fc2(self.act(a) * b)


class _Tokens(nn.Module):
    def __init__(self, dim, act):
        super().__init__()
        self.stem, self.pos = nn.Linear(8, 16), nn.Parameter(torch.zeros(1, 5, 16))
        self.norm, self.mlp, self.norm2 = nn.LayerNorm(16), _Gate(dim, act), nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x) + self.pos                   # a position embedding, as in a ViT
        return self.head(self.norm2(x + self.mlp(self.norm(x))))


@pytest.mark.parametrize("dim", [-1, 2])
def test_a_gated_split_by_either_dimension_index_is_paired_and_an_ungated_product_left_alone(dim):
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = _Tokens(dim, nn.SiLU()).eval()            # units and stem channels share one threshold
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.5], budget="global")
    assert dict(zip(pruner.layout.names, pruner.layout.sizes)) == {"stem": 16, "mlp.fc1": 32}
    assert [c.numel() for c in pruner.coefficients()] == [16]     # one per gated unit
    with torch.no_grad():
        pruner.coefficients()[0].copy_(torch.arange(16) / 16)     # units 0..7 lowest
    mask = pruner.masks(0.5)["mlp.fc1"]
    assert torch.equal(mask[:16], mask[16:]) and int(mask[:16].sum()) == 4
    small = pruner.prune(0.5, force=True)
    assert (small.mlp.fc1.out_features, small.mlp.fc2.in_features) == (8, 4)
    # a plain product of the chunks (no activation): torch-pruning merges both chunks into one
    # node, the pairing cannot be seen, and the group is not scored rather than scored wrongly
    plain = eb.EarlyBirdPruner(_Tokens(dim, nn.Identity()).eval(), x, ratios=[0.5])
    assert "mlp.fc1" not in plain.layout.names
