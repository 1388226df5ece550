"""Mask distance and the detection rules on hand-made masks and distance sequences."""
import pytest
import torch

import earlybird as eb
from earlybird.criteria import get_criterion


def bits(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s])


def test_mask_distance_is_hamming_over_n():
    assert eb.mask_distance(bits("1011101"), bits("1001001")) == 2 / 7
    assert eb.mask_distance(bits("1111"), bits("1111")) == 0.0
    assert eb.mask_distance(bits("1100"), bits("0011")) == 1.0


def test_mask_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        eb.mask_distance(bits("10"), bits("100"))


def test_pairwise_matches_mask_distance():
    masks = torch.stack([bits("1100"), bits("1010"), bits("0011"), bits("1100")])
    d = eb.pairwise_distances(masks)
    for i in range(4):
        for j in range(4):
            assert d[i, j].item() == pytest.approx(eb.mask_distance(masks[i], masks[j]))
    assert torch.equal(d, d.T) and d.diagonal().abs().sum() == 0


@pytest.mark.parametrize("p,expected", [(0.1, 0.2), (0.5, 1.0), (0.9, 0.2)])
def test_max_distance(p, expected):
    assert eb.max_distance(p) == pytest.approx(expected)


def rows_from_masks(masks, window):
    """What the pruner records: distance of each mask to up to window-1 earlier ones."""
    rows = []
    for t, m in enumerate(masks):
        rows.append([eb.mask_distance(m, masks[t - j]) for j in range(1, window) if t - j >= 0])
    return rows


def first_detection(rule, masks, window, epsilon):
    for t in range(len(masks)):
        if get_criterion(rule)(rows_from_masks(masks[: t + 1], window), window, epsilon):
            return t
    return None


# 10-channel masks: distance between consecutive ones is (flips)/10.
SEQ_SETTLES = ["1111100000", "0000011111", "1010101010", "1111100000", "1111010000",
               "1111100000", "1111100000", "1111100000", "1111100000", "1111100000"]
SEQ_DRIFT = ["1111100000", "1111010000", "1110110000", "1101110000", "1011110000",
             "0111110000", "0111101000", "0111100100"]   # one kept channel moves each step


@pytest.mark.parametrize("rule,seq,window,epsilon,expected", [
    ("reference", SEQ_SETTLES, 3, 0.1, 7),   # m4 is 0.2 from its neighbours: 5 and 6 see it
    ("reference", SEQ_SETTLES, 3, 0.2, 5),
    ("reference", SEQ_SETTLES, 5, 0.0001, 9),
    ("fifo", SEQ_SETTLES, 3, 0.1, 8),
    ("fifo", SEQ_SETTLES, 2, 0.2, 5),
    ("reference", SEQ_DRIFT, 3, 0.1, None),  # every mask is 0.2 from the one before
    ("reference", SEQ_DRIFT, 3, 0.2, 2),     # the moving zero: two steps back is 0.2 too
    ("reference", SEQ_DRIFT, 2, 0.2, 1),
    ("fifo", SEQ_DRIFT, 3, 0.2, 3),          # consecutive distances are all 0.2
])
def test_first_detection_index(rule, seq, window, epsilon, expected):
    masks = [bits(s) for s in seq]
    assert first_detection(rule, masks, window, epsilon) == expected


def test_unknown_criterion_lists_the_choices():
    with pytest.raises(ValueError, match=r"choose from \['fifo', 'reference'\]"):
        get_criterion("nope")
