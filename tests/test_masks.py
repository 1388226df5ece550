"""Masks are pure functions: exact counts, one global threshold, ties, floors, grouped units."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from earlybird.search.masks import ChannelLayout, global_masks, keep_masks, layer_caps, prune_budget


@pytest.mark.parametrize("n,p,k", [(10, 0.3, 3), (100, 0.29, 29), (100, 0.7, 70), (7, 0.5, 3),
                                   (4224, 0.5, 2112), (1, 0.9, 0), (3, 0.999, 2)])
def test_prune_budget_is_floor(n, p, k):
    assert prune_budget(n, p) == k


def test_global_threshold_prunes_lowest_across_layers():
    scores = {"a": torch.tensor([0.9, 0.05, 0.8]), "b": torch.tensor([0.1, 0.2, 0.7, 0.6])}
    masks = global_masks(scores, 0.4)                      # floor(7 * 0.4) = 2
    assert masks["a"].tolist() == [True, False, True]
    assert masks["b"].tolist() == [False, True, True, True]
    masks = global_masks(scores, 0.6)                      # floor(4.2) = 4
    assert masks["a"].tolist() == [True, False, True]
    assert masks["b"].tolist() == [False, False, True, False]


def test_ties_are_broken_by_position_earlier_first():
    scores = {"a": torch.full((3,), 0.5), "b": torch.full((3,), 0.5)}
    masks = global_masks(scores, 0.34)                     # floor(6 * 0.34) = 2
    assert masks["a"].tolist() == [False, False, True]
    assert masks["b"].tolist() == [True, True, True]
    masks = global_masks(scores, 0.5)                      # 'a' keeps one, so 'b' gives one
    assert masks["a"].tolist() == [False, False, True]
    assert masks["b"].tolist() == [False, True, True]


def test_min_channels_floor_moves_the_cut_to_other_layers():
    scores = {"a": torch.tensor([0.01, 0.02, 0.03]), "b": torch.tensor([0.5, 0.6, 0.7, 0.8])}
    masks = global_masks(scores, 0.5, min_channels=1)      # 3 pruned, 'a' keeps 1
    assert masks["a"].tolist() == [False, False, True]
    assert masks["b"].tolist() == [False, True, True, True]
    masks = global_masks(scores, 0.5, min_channels=2)
    assert masks["a"].tolist() == [False, True, True]
    assert masks["b"].tolist() == [False, False, True, True]


def test_max_layer_ratio_caps_each_layer():
    scores = {"a": torch.tensor([0.01, 0.02, 0.03, 0.04]), "b": torch.tensor([0.5, 0.6, 0.7, 0.8])}
    masks = global_masks(scores, 0.5, max_layer_ratio=0.25)  # each layer loses at most 1
    assert masks["a"].tolist() == [False, True, True, True]
    assert masks["b"].tolist() == [False, True, True, True]
    assert layer_caps([4, 4], 1, 0.25) == [1, 1]


def test_units_prune_the_same_position_in_every_conv_group():
    # one layer of 6 channels in 3 conv groups of 2: positions 0 and 1 form units of 3 channels.
    layout = ChannelLayout(("g",), (6,), units=torch.tensor([0, 1, 0, 1, 0, 1]))
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7], dtype=torch.float64)
    mask = keep_masks(scores, layout, [0.5], layer_caps(layout.sizes))[0.5]
    assert mask.tolist() == [False, True, False, True, False, True]


def test_units_that_overshoot_the_budget_are_passed_over():
    # units of 3 (layer g) and single channels (layer s); budget floor(9*0.5)=4 = one unit + 1.
    layout = ChannelLayout(("g", "s"), (6, 3), units=torch.tensor([0, 1, 0, 1, 0, 1, 2, 3, 4]))
    scores = torch.tensor([0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.5, 0.2, 0.95], dtype=torch.float64)
    mask = keep_masks(scores, layout, [0.5], layer_caps(layout.sizes))[0.5]
    assert (~mask).sum() == 4
    assert mask.tolist() == [False, True, False, True, False, True, True, False, True]


def test_several_ratios_come_from_one_ranking_and_nest():
    layout = ChannelLayout(("a", "b"), (5, 5))
    scores = torch.rand(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = keep_masks(scores, layout, [0.3, 0.5, 0.7], layer_caps(layout.sizes))
    assert [int((~m).sum()) for m in out.values()] == [3, 5, 7]
    assert bool((out[0.3] >= out[0.5]).all()) and bool((out[0.5] >= out[0.7]).all())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="ratio must be in"):
        global_masks({"a": torch.ones(3)}, 1.0)
    with pytest.raises(ValueError, match="expected 5 scores"):
        keep_masks(torch.ones(4), ChannelLayout(("a",), (5,)), [0.5], [4])
    with pytest.raises(ValueError, match="at least one channel"):
        ChannelLayout(("a",), (0,))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
       ratio=st.floats(0.01, 0.99), min_channels=st.integers(1, 3), seed=st.integers(0, 2**16),
       ties=st.booleans())
def test_properties_exact_count_floor_and_threshold(sizes, ratio, min_channels, seed, ties):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 3).floor()                      # only 3 distinct values
    layout = ChannelLayout(tuple(f"l{i}" for i in range(len(sizes))), tuple(sizes))
    caps = layer_caps(sizes, min_channels)
    mask = keep_masks(scores, layout, [ratio], caps)[ratio]
    budget = min(prune_budget(n, ratio), sum(caps))
    assert int((~mask).sum()) == budget
    for size, part in zip(sizes, torch.split(mask, sizes)):
        assert int(part.sum()) >= min(min_channels, size)
    if sum(caps) >= n - len(sizes) * min_channels and prune_budget(n, ratio) <= min(caps or [0]):
        # no floor can bind: a plain global threshold, ties broken by position
        order = sorted(range(n), key=lambda i: (float(scores[i]), i))
        assert sorted(i for i in range(n) if not mask[i]) == sorted(order[:budget])
    assert math.isclose(float(mask.double().mean()), 1 - budget / n)
