"""Mask distance and the detection rules on hand-made masks and distance sequences."""
import pytest
import torch

import earlybird as eb
from earlybird.search.criteria import Checks, get_criterion


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


def first_detection(rule, masks, window, epsilon, ratio=0.5, steps=None, span=None):
    steps = list(range(len(masks))) if steps is None else steps
    for t in range(len(masks)):
        checks = Checks(rows_from_masks(masks[: t + 1], window), steps[: t + 1], ratio)
        if get_criterion(rule)(checks, window, epsilon, span):
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
    with pytest.raises(ValueError, match=r"choose from \['epi', 'fifo', 'normalized', 'plateau', 'reference'\]"):
        get_criterion("nope")


# normalized: the reference rule on distance / (2 min(p, 1-p)). SEQ_SETTLES' masks keep 5 of 10.
@pytest.mark.parametrize("ratio,epsilon,expected", [
    (0.5, 0.1, 7),          # max distance 1.0: identical to the reference rule
    (0.5, 0.2, 5),
    (0.3, 0.2, 7),          # max 0.6: 0.1 -> 0.167 passes, 0.2 -> 0.333 does not
    (0.3, 0.34, 5),         # 0.2 / 0.6 = 0.333 <= 0.34
    (0.1, 0.5, 7),          # max 0.2: 0.1 / 0.2 = 0.5
])
def test_normalized_rule_rescales_epsilon_by_the_largest_distance(ratio, epsilon, expected):
    masks = [bits(s) for s in SEQ_SETTLES]
    assert first_detection("normalized", masks, 3, epsilon, ratio=ratio) == expected


def distance_rows(distances):
    """Checks rows for a given sequence of consecutive distances (window 2)."""
    return [[]] + [[d] for d in distances]


def plateau_detection(distances, steps, epsilon, span=None, window=3):
    rows = distance_rows(distances)
    for t in range(len(rows)):
        if get_criterion("plateau")(Checks(rows[: t + 1], steps[: t + 1]), window, epsilon, span):
            return t
    return None


FALL_THEN_FLAT = [0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
FLAT_HIGH = [0.12, 0.11, 0.12, 0.11, 0.12, 0.11]          # flips ~11 % every check, steadily
STILL_FALLING = [0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05]


@pytest.mark.parametrize("distances,epsilon,span,expected", [
    (FALL_THEN_FLAT, 0.1, 200, 7),    # spans (300,500] vs (500,700]: both 0.1
    (FALL_THEN_FLAT, 0.2, 200, 6),    # |0.1 - 0.15| = 0.05 <= 0.2 * 0.4
    (FALL_THEN_FLAT, 0.1, 300, 8),    # (200,500] 0.133 vs (500,800] 0.1: 0.033 <= 0.04
    (FALL_THEN_FLAT, 0.1, None, 5),   # window 3: span = (3-1)//2 = 1 check = 100 steps:
                                      # distance 4 (0.1) vs distance 3 (0.1), at check 5
    (FLAT_HIGH, 0.1, 200, 4),         # a steady churn is a plateau: as soon as 2 spans exist
    (STILL_FALLING, 0.1, 200, None),  # falls 0.1 per span, 0.1 > 0.1 * 0.4 every time
    (STILL_FALLING, 0.3, 200, 4),     # 0.1 <= 0.3 * 0.4
])
def test_plateau_rule_detection_index(distances, epsilon, span, expected):
    steps = [100 * i for i in range(len(distances) + 1)]
    assert plateau_detection(distances, steps, epsilon, span) == expected


def test_plateau_rule_default_span_is_half_the_window_of_checks():
    # window 5 (the default): span None = 2 checks; same detection as span=200 at 100 steps/check
    steps = [100 * i for i in range(len(FALL_THEN_FLAT) + 1)]
    rows = distance_rows(FALL_THEN_FLAT)
    rule = get_criterion("plateau")
    got = [rule(Checks(rows[:t + 1], steps[:t + 1]), 5, 0.1, None) for t in range(len(rows))]
    want = [rule(Checks(rows[:t + 1], steps[:t + 1]), 5, 0.1, 200) for t in range(len(rows))]
    assert got == want and got.index(True) == 7


def test_plateau_rule_counts_steps_not_checks():
    # the same curve checked twice as often (every 50 steps, each distance recorded twice):
    # detection lands within one coarse check of the coarse detection at step 700
    d = [x for x in FALL_THEN_FLAT for _ in range(2)]
    steps = [50 * i for i in range(len(d) + 1)]
    t = plateau_detection(d, steps, 0.1, span=200)
    assert steps[t] == 650
    # a uniform scale change of the distances does not move the detection
    assert plateau_detection([x / 4 for x in FALL_THEN_FLAT],
                             [100 * i for i in range(10)], 0.1, 200) == 7


def test_plateau_rule_waits_for_two_spans_and_rejects_a_rise():
    steps = [100 * i for i in range(8)]
    assert plateau_detection([0.1, 0.1, 0.1], steps, 0.1, span=200) is None
    assert plateau_detection([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], steps, 0.1, span=200) is None


def test_checks_must_pair_rows_with_steps():
    with pytest.raises(ValueError, match="2 rows of distances for 1 steps"):
        Checks([[], [0.1]], [0])


# ----------------------------------------------------------------------------- epi (When to Prune)
def test_layer_similarity_is_one_minus_the_mean_relative_count_change():
    from earlybird.search.criteria import layer_similarity
    assert layer_similarity([4, 3, 2], [4, 3, 2]) == 1.0
    # |4-3|/7, 0, |2-3|/5 over three layers
    assert layer_similarity([4, 3, 2], [3, 3, 3]) == pytest.approx(1 - (1 / 7 + 1 / 5) / 3)
    assert layer_similarity([0, 5], [0, 5]) == 1.0               # empty in both: alike
    with pytest.raises(ValueError, match="kept channels of 2 and 3 layers cannot be compared"):
        layer_similarity([1, 2], [1, 2, 3])


def test_epi_needs_counts_and_draws_while_the_indicator_still_rises():
    from earlybird.search.criteria import epi_rule
    with pytest.raises(ValueError, match=r"needs the kept channels per layer \(Checks.counts\)"):
        epi_rule(Checks([[]], [0]), 2, 0.1)
    with pytest.raises(ValueError, match="2 rows of kept channels for 1 steps"):
        Checks([[]], [0], counts=[[1], [1]])
    seq = [[4, 3, 2], [3, 3, 3], [2, 3, 4], [2, 3, 4], [2, 3, 4], [2, 3, 4]]
    # EPI(2..5) = 0.832, 0.943, 1.0, 1.0: eligible from check 2 * window = 4, where it is above
    # 0.9 and above both earlier values; at check 5 it no longer rises
    got = [epi_rule(Checks([[]] * (t + 1), list(range(t + 1)), counts=seq[:t + 1]), 2, 0.1)
           for t in range(len(seq))]
    assert got == [False, False, False, False, True, False]
    # a tighter threshold (epsilon 0.01: EPI > 0.99) still draws at 4, a level sequence never
    assert epi_rule(Checks([[]] * 5, list(range(5)), counts=seq[:5]), 2, 0.01)
    flat = [[2, 3, 4]] * 8
    assert not any(epi_rule(Checks([[]] * (t + 1), list(range(t + 1)), counts=flat[:t + 1]), 2,
                            0.1) for t in range(8))
