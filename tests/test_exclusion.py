"""Automatic exclusion: groups whose pruning breaks a model are found by group testing and left
out; ``strict=True`` refuses instead."""
import logging
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import earlybird as eb
from earlybird.graph import copy_model, prune_model
from earlybird.graph.exclusion import breaking_groups, out_of_memory, trial
from conftest import randomize_norms, set_scales


class SplitTail(nn.Module):
    """conv1 (6, healthy) feeds conv2 (8), whose output is split by a stored size (timm's
    Res2Net does this): cutting a conv2 channel breaks the split, cutting conv1 does not."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.width = 4
        self.conv_a, self.conv_b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
        a, b = torch.split(x, self.width, 1)
        return self.head(torch.cat([self.conv_a(a), self.conv_b(b)], 1).mean((2, 3)))


def test_a_model_with_an_unprunable_group_prunes_the_rest_and_says_so(x32, caplog):
    model = SplitTail()
    set_scales(model, [0.5, 0.1, 0.6, 0.2, 0.7, 0.3] + [0.9] * 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="earlybird"):
        pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], coefficients=False)
    assert list(pruner.excluded) == ["conv2"]
    # the trial cuts conv2's first and last channel, one on each side of the split: the split
    # by the stored width no longer fits
    assert pruner.excluded["conv2"].startswith("RuntimeError: Given groups=1, weight of size "
                                               "[4, 3, 1, 1], expected input")
    assert pruner.excluded["conv2"].endswith("to have 3 channels, but got 4 channels instead")
    assert pruner.layout.names == ("conv1",) and pruner.layout.num_channels == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("SplitTail: 1 channel group(s) left out, pruning them would "
                                  "break the model: 'conv2' (RuntimeError: Given groups=1")
    assert warnings[0].endswith("6 of 14 scored channels (43%) remain prunable (pruner.excluded "
                                "has every reason)")
    small = pruner.prune(0.5, force=True)
    assert pruner.masks(0.5)["conv1"].tolist() == [True, False, True, False, True, False]
    assert (small.conv1.out_channels, small.conv2.out_channels) == (3, 8)
    assert small(x32).shape == (2, 2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # on copies


def test_strict_tests_nothing_and_keeps_every_group(x32):
    # (the refusals strict keeps are in test_pruner: functional weights and DPN's indices at
    # build, a copy that no longer runs at prune)
    pruner = eb.EarlyBirdPruner(SplitTail(), x32, ratios=[0.5], strict=True, coefficients=False)
    assert pruner.excluded == {} and pruner.layout.names == ("conv1", "conv2")


def test_group_testing_finds_one_bad_group_in_16_with_10_trials_not_16():
    cuts = {f"g{i}": [0] for i in range(16)}
    seen = []

    def test(some):
        seen.append(sorted(some))
        return "g5 breaks" if "g5" in some else None
    assert breaking_groups(None, None, cuts, test) == {"g5": "g5 breaks"}
    assert len(seen) == 10                     # 1 + 2 per halving (4) + the last check
    assert seen[-1] == sorted(set(cuts) - {"g5"})

    seen.clear()
    assert breaking_groups(None, None, cuts, test=lambda some: seen.append(1)) == {}
    assert len(seen) == 1                      # nothing breaks: one trial


def test_group_testing_finds_several_and_pairs_that_break_only_together():
    cuts = {f"g{i}": [0] for i in range(16)}

    def test(some):
        if "g3" in some or "g12" in some:
            return "alone"
        if "g6" in some and "g9" in some:      # split across the first halving
            return "together"
        return None
    bad = breaking_groups(None, None, cuts, test)
    # of the pair, the one found beside the other is left out; the rest passes together
    assert bad == {"g3": "alone", "g12": "alone", "g9": "together"}
    assert test({n: [0] for n in cuts if n not in bad}) is None


def test_a_trial_prunes_a_copy_and_names_the_failure(x32):
    model = SplitTail()
    assert trial(model, x32, {"conv1": [0, 1]}) is None
    # conv2's channel 0 shortens the first chunk, which the stored width keeps at 4; its last
    # channel shortens only the last chunk (conv_b loses that input), which still runs
    assert trial(model, x32, {"conv1": [0], "conv2": [0]}).startswith("RuntimeError: ")
    assert trial(model, x32, {"conv2": [7]}) is None
    assert model.conv1.out_channels == 6 and model.conv2.out_channels == 8


class Hungry(SplitTail):
    """Runs out of memory once it is pruned (the CPU allocator's error, as a trial of a
    630M-parameter ViT-H/14 in an 11 GiB worker hit)."""

    def forward(self, x):
        if self.conv1.out_channels < 6:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. "
                               "DefaultCPUAllocator: can't allocate memory")
        return super().forward(x)


def test_running_out_of_memory_in_a_trial_is_raised_not_taken_for_a_breaking_group(x32):
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        trial(Hungry(), x32, {"conv1": [0]})
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        eb.EarlyBirdPruner(Hungry(), x32)
    assert out_of_memory(MemoryError()) and not out_of_memory(RuntimeError("shape mismatch"))


class Shuffle(nn.Module):
    """A channel shuffle (ShuffleNet's) between conv1 and conv2: channel ``g * 3 + i`` of
    conv1 moves to ``2 * i + g``; torch-pruning maps the channels through it unchanged."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.head = nn.Conv2d(6, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        x = self.bn1(self.conv1(x)).relu()
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(self.conv2(x).mean((2, 3)))


def test_a_trial_with_the_cut_silenced_catches_channels_cut_on_the_wrong_side(x32):
    # cutting conv1's channels 1 and 2 runs, but torch-pruning removes conv2's inputs 1 and 2
    # for them (the shuffle moved them to 2 and 4): with them silenced first, their removal
    # changes the output; a cut torch-pruning maps right (SplitTail's conv1) passes
    model = Shuffle()
    assert trial(model, x32, {"conv1": [1, 2]}) is None
    why = trial(model, x32, {"conv1": [1, 2]}, zeros={"conv1": [1, 2], "bn1": [1, 2]})
    assert re.fullmatch(r"removing a silenced channel changed the output \(by up to [-+.e\d]+ of "
                        r"[-+.e\d]+\): torch-pruning cut other channels than it reported", why)
    assert trial(SplitTail(), x32, {"conv1": [2]}, zeros={"conv1": [2], "bn1": [2]}) is None
    assert model.bn1.weight.min() > 0                      # the dense model is untouched


def test_a_split_maps_each_chunk_to_the_layer_that_reads_it():
    # timm's MixedConv2d: a depthwise 3x3 on channels 0-3 and a 5x5 on 4-7; torch-pruning
    # traced the 5x5 first and gave it the first chunk's indices
    from timm.layers import MixedConv2d
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8),
                          MixedConv2d(8, 8, [3, 5], depthwise=True), nn.BatchNorm2d(8))
    x = torch.randn(2, 3, 8, 8)
    keep = torch.ones(8, dtype=torch.bool)
    keep[[1, 6]] = False
    dense = model.eval()(x)
    small = copy_model(model)
    prune_model(small, x, {"0": keep})
    assert small[2].splits == [3, 3] and [c.in_channels for c in small[2].values()] == [3, 3]
    torch.testing.assert_close(small(x), dense[:, keep])


@settings(max_examples=12, deadline=None)
@given(heads=st.integers(1, 6), head_dim=st.integers(2, 5), layers=st.integers(1, 2),
       ratio=st.sampled_from([0.2, 0.3, 0.5, 0.7]), seed=st.integers(0, 9))
def test_attention_heads_stay_equal_sized(heads, head_dim, layers, ratio, seed):
    # torchvision's ViT: the embedding group runs through every nn.MultiheadAttention, whose
    # heads split it; one unit is one position in every head, so head_dim shrinks by one
    import torchvision.models as TV
    torch.manual_seed(seed)
    hidden = heads * head_dim
    model = TV.VisionTransformer(16, 8, num_layers=layers, num_heads=heads, hidden_dim=hidden,
                                 mlp_dim=2 * hidden, num_classes=3)
    randomize_norms(model, seed)
    x = torch.randn(2, 3, 16, 16)
    pruner = eb.EarlyBirdPruner(model, x, ratios=[ratio], min_channels=1, coefficients=False)
    assert pruner.excluded == {} and pruner.layout.names == ("conv_proj",)
    keep = pruner.masks(ratio)["conv_proj"]
    per_position = keep.view(heads, head_dim)              # [head, position in the head]
    assert (per_position == per_position[0]).all()         # the same positions in every head
    kept = int(per_position[0].sum())
    budget = eb.prune_budget(hidden, ratio)
    assert kept == head_dim - min(budget // heads, head_dim - 1) if heads > 1 else \
        kept == hidden - budget
    small = pruner.prune(ratio, force=True)
    for layer in small.encoder.layers:
        mha = layer.self_attention
        assert (mha.num_heads, mha.head_dim, mha.embed_dim) == (heads, kept, heads * kept)
    assert small.hidden_dim == heads * kept
    out = small(x)
    out.sum().backward()
    assert out.shape == (2, 3) and torch.isfinite(out).all()
