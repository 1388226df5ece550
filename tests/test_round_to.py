"""round_to: every layer keeps a multiple of k units (or all of them), one global threshold
over blocks of k, the budget met as closely as the blocks allow."""
import pytest
import torch
import torchvision
from hypothesis import given, settings, strategies as st
from torch import nn

import earlybird as eb
from earlybird.search.blocks import masks_by_block
from earlybird.search.masks import ChannelLayout, keep_masks, layer_caps, prune_budget


def _blocks_left(scores, sizes, mask, k, caps):
    """Per layer, the size of the block a further cut would prune next (its lowest kept
    channels down to the next allowed count), or None when the layer's floor forbids it."""
    out = []
    for part, keep, size, cap in zip(torch.split(scores, sizes), torch.split(mask, sizes),
                                     sizes, caps):
        kept = int(keep.sum())
        below = kept - (kept % k or k) if kept != size else size - (size % k or k)
        block = kept - below
        out.append(block if below >= 1 and size - below <= cap else None)
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.sampled_from([2, 3, 8, 16]),
       st.floats(0.05, 0.95), st.integers(0, 2 ** 31 - 1), st.sampled_from([0, 1, 3]))
def test_every_layer_keeps_a_multiple_of_k_and_the_budget_is_filled(sizes, k, ratio, seed, tied):
    # tied: 0 continuous scores; else scores among tied + 1 values (0.35, as a mean of tied
    # floats rounds below the value itself: 3 * 0.35 / 3 < 0.35)
    g = torch.Generator().manual_seed(seed)
    layout = ChannelLayout(tuple(f"l{i}" for i in range(len(sizes))), tuple(sizes))
    n = layout.num_channels
    scores = (torch.rand(n, generator=g, dtype=torch.float64) if not tied else
              0.35 + 0.1 * torch.randint(0, tied, (n,), generator=g).double())
    caps = layer_caps(sizes)
    mask = keep_masks(scores, layout, [ratio], caps, round_to=k)[ratio]
    budget = prune_budget(layout.num_channels, ratio)
    pruned = int((~mask).sum())
    assert pruned <= budget
    for part, keep, size in zip(torch.split(scores, sizes), torch.split(mask, sizes), sizes):
        kept = int(keep.sum())
        assert kept == size or (kept % k == 0 and kept >= k)      # a multiple of k, or all
        if kept < size:                                           # a tail of the layer went
            assert part[keep].min() >= part[~keep].max()
    # as close as blocks allow: no layer's next block fits in what is left of the budget
    left = budget - pruned
    for block in _blocks_left(scores, sizes, mask, k, caps):
        assert block is None or block > left


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=5), st.floats(0.05, 0.95),
       st.integers(0, 2 ** 31 - 1), st.integers(1, 3))
def test_blocks_of_one_are_the_plain_global_threshold(sizes, ratio, seed, floor):
    g = torch.Generator().manual_seed(seed)
    layout = ChannelLayout(tuple(f"l{i}" for i in range(len(sizes))), tuple(sizes))
    scores = torch.randint(0, 5, (layout.num_channels,), generator=g).double()   # with ties
    caps = layer_caps(sizes, min_channels=floor)
    plain = keep_masks(scores, layout, [ratio], caps)[ratio]
    budgets = {ratio: prune_budget(len(scores), ratio)}
    blocks = masks_by_block(scores, layout, budgets, caps, None, [1] * len(sizes))
    assert torch.equal(blocks[ratio], plain)


def test_tied_scores_keep_multiples_and_unit_ids_may_have_gaps():
    layout = ChannelLayout(("a",), (4,))
    mask = keep_masks(torch.full((4,), .35, dtype=torch.float64), layout, [0.75], [3],
                      round_to=3)[0.75]
    assert mask.tolist() == [False, True, True, True]      # 3 kept: the multiple of 3 left
    # unit ids 0, 5, 9 (gaps) pair channels j and j + 3 as 0..2 do
    gaps = ChannelLayout(("fc1",), (6,), units=torch.tensor([0, 5, 9, 0, 5, 9]))
    dense = ChannelLayout(("fc1",), (6,), units=torch.tensor([0, 1, 2, 0, 1, 2]))
    scores = torch.tensor([.1, .5, .6, .1, .5, .6])
    assert torch.equal(keep_masks(scores, gaps, [0.34], [5], round_to=2)[0.34],
                       keep_masks(scores, dense, [0.34], [5], round_to=2)[0.34])


def test_a_block_is_ranked_by_its_mean_and_units_count_as_one():
    # two layers of 4, k = 2: each layer's blocks are its two lowest and its two highest
    layout = ChannelLayout(("a", "b"), (4, 4))
    scores = torch.tensor([.10, .90, .80, .15, .30, .35, .95, .97], dtype=torch.float64)
    mask = keep_masks(scores, layout, [0.25], layer_caps(layout.sizes), round_to=2)[0.25]
    # a's lowest block {.10, .15} (mean .125) goes before b's {.30, .35} (.325)
    assert mask.tolist() == [False, True, True, False, True, True, True, True]
    # gated-MLP pairs: channels j and j + 3 are one unit; k = 2 units = 4 channels
    paired = ChannelLayout(("fc1",), (6,), units=torch.tensor([0, 1, 2, 0, 1, 2]))
    mask = keep_masks(torch.tensor([.1, .5, .6, .1, .5, .6]), paired, [0.34], [5],
                      round_to=2)[0.34]                 # budget 2 channels = unit 0 (1 block)
    assert mask.tolist() == [False, True, True, False, True, True]
    with pytest.raises(ValueError, match=r"round_to must be an integer >= 1 or one per layer "
                       r"\(2\), got \[8\]"):
        keep_masks(scores, layout, [0.5], layer_caps(layout.sizes), round_to=[8])


def test_a_pruned_resnet_keeps_multiples_of_8_and_distances_keep_their_meaning():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.3, 0.5], round_to=8)
    plain = eb.EarlyBirdPruner(torchvision.models.resnet18(num_classes=10).eval(), x, ratios=[0.5])
    assert pruner.layout == plain.layout                  # the same channels, rounded counts
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
    for step in range(2):
        pruner.step(iteration=step)
    mask = pruner.mask(0.5)
    counts = pruner.layout.counts(mask)
    assert all(c % 8 == 0 or c == s for c, s in zip(counts, pruner.layout.sizes))
    n = pruner.layout.num_channels
    assert prune_budget(n, 0.5) - 8 < int((~mask).sum()) <= prune_budget(n, 0.5)
    assert pruner.distances(0.5) == [0.0]               # same scores, same ticket: 0 apart
    small = pruner.prune(0.5, force=True)
    for m in small.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels != 3:
            assert m.out_channels % 8 == 0, m
    assert small(x).shape == (1, 10)
    with pytest.raises(eb.ConfigError, match="round_to must be an integer >= 1, got 0"):
        eb.EarlyBirdConfig(round_to=0)


def test_attention_heads_are_not_rounded():
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4,
                              mlp_ratio=2.0, num_classes=5)
    # 32 embedding channels, 64 MLP units, 4 heads; p = 0.49 prunes 49: the weak head and
    # 48 MLP units (blocks of 2)
    pruner = eb.EarlyBirdPruner(model, torch.randn(1, 3, 32, 32), ratios=[0.49], round_to=2,
                                budget="global")         # the kinds compete for one budget
    with torch.no_grad():
        for c in pruner.coefficients():
            c.copy_(torch.rand(c.shape, generator=torch.Generator().manual_seed(2)))
        model.eb_coefficients["blocks/0/attn:heads"].weight.copy_(torch.tensor([.01, 1, 1, 1]))
    counts = dict(zip(pruner.layout.names, pruner.layout.counts(pruner.mask(0.49))))
    assert counts == {"patch_embed.proj": 32, "blocks.0.mlp.fc1": 16, "blocks.0.attn:heads": 3}
