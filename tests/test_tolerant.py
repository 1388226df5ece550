"""torch-pruning's graph where it cannot map channels exactly: node-by-node index mappings,
capped and deduplicated; layers used through ``F.linear``; per-channel parameters of a layer's
own (:mod:`earlybird.graph.tolerant`)."""
import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torch.nn import functional as F
from torch_pruning._helpers import _HybridIndex as H

import earlybird as eb
from earlybird.graph.search import _bounded
from earlybird.graph.tolerant import _Capped, linear_calls, out_params
from earlybird.graph.trace import build_graph
from conftest import randomize_norms


def test_shufflenet_v2_traces_although_torch_pruning_alone_cannot():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ZeroDivisionError):           # torch-pruning 1.6 on its own
        tp.DependencyGraph().build_dependency(model, x)
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.5])
    # the channel shuffle's groups torch-pruning maps wrongly are left out: every stage's
    # branch ends (18 of them) and the downsampling branches' first convs of stages 3 and 4
    ends = [f"stage{s}.{i}.branch2.5" for s, n in ((2, 4), (3, 8), (4, 4)) for i in range(n)]
    starts = ["stage2.0.branch1.2", "stage3.0.branch1.0", "stage3.0.branch1.2",
              "stage4.0.branch1.0", "stage4.0.branch1.2"]
    assert sorted(pruner.excluded) == sorted(ends + starts)
    assert pruner.layout.num_channels == 1912 and round(pruner.graph.prunable_share, 3) == 0.619
    small = pruner.prune(0.5, force=True)
    kept = sum(int(m.sum()) for m in pruner.masks(0.5).values())
    assert kept == 1912 - 956
    assert small(x).shape == (2, 10)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_capped_mapping_drops_indices_no_tensor_can_have():
    flatten = tp.dependency.index_mapping._FlattenIndexMapping(stride=4)
    capped = _Capped(flatten, bound=6)
    assert flatten([H(1, 0)]) == [H(4, 0), H(5, 0), H(6, 0), H(7, 0)]
    assert capped([H(0, 0), H(1, 3)]) == [H(0, 0), H(1, 0), H(2, 0), H(3, 0), H(4, 3), H(5, 3)]


class PatchMerge(nn.Module):
    """Swin's patch merging on a channels-last map: four row/column slices concatenated on the
    channels, then a LayerNorm and a linear layer over the four copies."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.norm, self.reduction = nn.LayerNorm(24), nn.Linear(24, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.merge(self.embed(x.permute(0, 2, 3, 1)))       # [B, H, W, 6] -> [.., 24]
        return self.head(self.reduction(self.norm(x)).mean((1, 2)))

    @staticmethod
    def merge(x):
        return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)


def norm_channels(graph, model, cut):
    group = graph.get_pruning_group(model.embed, graph.get_pruner_of_module(model.embed)
                                    .prune_out_channels, cut)
    return sorted(int(i) for item in group if item.dep.target.module is model.norm
                  for i in item.idxs)


def test_a_slice_of_the_rows_of_a_channels_last_map_passes_the_channels_unchanged(x32):
    model = PatchMerge()
    assert norm_channels(build_graph(model, x32), model, [2]) == [2, 8, 14, 20]
    plain = tp.DependencyGraph().build_dependency(model, x32)      # takes dim 1 for channels
    assert norm_channels(plain, model, [2]) != [2, 8, 14, 20]
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    assert pruner.excluded == {}
    small = pruner.prune(0.5, force=True)
    assert small.norm.normalized_shape == (4 * small.embed.out_features,)
    assert small.reduction.in_features == 4 * small.embed.out_features
    assert small(x32).shape == (2, 2)


def test_swin_group_search_ends_with_every_index_inside_its_layer():
    # before the cap, this one-channel group of Swin-T's last MLP ran for more than 5 minutes
    # (its index lists grew 32-fold per turn of a reshape cycle)
    model = torchvision.models.swin_t(num_classes=10)
    graph = build_graph(model, torch.randn(1, 3, 64, 64))
    layer = model.features[7][1].mlp[3]
    with _bounded(60):
        group = graph.get_pruning_group(layer, graph.get_pruner_of_module(layer)
                                        .prune_out_channels, [0])
    assert graph.index_bound == 3072                              # the MLP's hidden width
    sizes = {dep.target.module: max(p.shape) for dep, _ in group
             for p in getattr(dep.target.module, "parameters", lambda: [])()}
    assert all(max(idxs) < sizes.get(dep.target.module, 3072) for dep, idxs in group)
    assert len(group) > 1 and group[0].idxs == [0]


class OwnBias(nn.Module):
    """Uses ``qkv.weight`` through F.linear with a bias of its own (timm's BEiT, EVA, Swin-V2
    concatenate ``q_bias`` and ``v_bias`` this way)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.qkv = nn.Linear(8, 12, bias=False)
        self.q_bias = nn.Parameter(torch.linspace(-1, 1, 12))
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu().mean((2, 3))
        return self.head(F.linear(x, self.qkv.weight, self.q_bias).relu())


def test_layers_used_through_f_linear_are_traced_as_calls_and_pruned(x32):
    model = OwnBias()
    randomize_norms(model)
    expected, original, calls = model.eval()(x32), F.linear, []
    model.qkv.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    with linear_calls([model.qkv]):
        assert F.linear is not original
        assert torch.allclose(model(x32), expected, atol=1e-6)     # the same output
    assert calls == [(2, 12)]              # ... computed by a call of the layer, hooks and all
    assert F.linear is original
    model(x32)
    assert calls == [(2, 12)]
    assert model.qkv in build_graph(model, x32).module2node
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], coefficients=False)   # qkv unscored
    assert pruner.excluded == {} and pruner.layout.names == ("conv",)
    small = pruner.prune(0.5, force=True)
    assert (small.conv.out_channels, small.qkv.in_features, small.qkv.out_features) == (4, 4, 12)
    assert small(x32).shape == (2, 2)


class GainConv(nn.Conv2d):
    """A conv with a per-filter gain of its own (timm's ``ScaledStdConv2d``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, self.out_channels).view(-1, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


class GainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = GainConv(3, 8, 3, padding=1), GainConv(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.conv2(self.conv1(x).relu()).relu().mean((2, 3)))


def test_a_layers_own_per_channel_parameters_are_pruned_with_it(x32, tmp_path):
    model = GainNet()
    assert out_params(model.conv1) == ["gain"] and out_params(model.head) == []
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])        # no norms: filter scores
    assert pruner.excluded == {} and pruner.layout.names == ("conv1", "conv2")
    small = pruner.prune(0.5, force=True)
    masks = pruner.masks(0.5)
    assert sum(int(m.sum()) for m in masks.values()) == 7                 # of 14
    for name in ("conv1", "conv2"):
        dense, pruned, kept = (getattr(model, name), getattr(small, name),
                               masks[name].nonzero().flatten())
        assert pruned.gain.shape == (pruned.out_channels, 1, 1, 1) == (len(kept), 1, 1, 1)
        assert torch.equal(pruned.gain.flatten(), dense.gain.flatten()[kept])
    eb.save_pruned(small, tmp_path / "small.pt")
    again = eb.load_pruned(tmp_path / "small.pt", GainNet())
    assert again.conv1.gain.shape == small.conv1.gain.shape
    assert torch.equal(again.eval()(x32), small.eval()(x32))


class Scale(nn.Module):
    """timm's MetaFormer ``Scale``: a per-channel scale viewed through a stored shape."""

    def __init__(self, dim):
        super().__init__()
        self.scale, self.shape = nn.Parameter(torch.linspace(0.5, 1.5, dim)), (dim, 1, 1)

    def forward(self, x):
        return x * self.scale.view(self.shape)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.scale = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), Scale(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.scale(self.bn(self.conv(x))).relu().mean((2, 3)))


def test_a_shape_kept_beside_a_scale_follows_the_pruned_width(x32):
    model = Scaled()
    randomize_norms(model)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    assert pruner.excluded == {}                 # the trial's exact-output check passed too
    small = pruner.prune(0.5, force=True)
    kept = pruner.masks(0.5)["conv"].nonzero().flatten()
    assert small.scale.shape == (3, 1, 1) and small.conv.out_channels == 3
    assert torch.equal(small.scale.scale, model.scale.scale.detach()[kept])
    assert small(x32).shape == (2, 2)


class MergeByReshape(PatchMerge):
    """timm's Swin patch merging: a channels-last map's 2x2 neighbourhoods flattened into the
    channels, ``[B, H/2, 2, W/2, 2, C] -> [B, H/2, W/2, 4 C]``."""

    @staticmethod
    def merge(x):
        B, H, W, C = x.shape
        return x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)


def test_a_flatten_of_a_channels_last_maps_each_channel_to_every_copy(x32):
    model = MergeByReshape()
    assert norm_channels(build_graph(model, x32), model, [2]) == [2, 8, 14, 20]
    plain = tp.DependencyGraph().build_dependency(model, x32)
    assert norm_channels(plain, model, [2]) != [2, 8, 14, 20]
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    assert pruner.excluded == {}
    small = pruner.prune(0.5, force=True)
    assert small.reduction.in_features == 4 * small.embed.out_features
    assert small(x32).shape == (2, 2)
