"""EarlyBirdPruner on tiny models: groups, scores, detection, tickets, pruning, state, errors."""
import copy

import pytest
import torch
from torch import nn

import earlybird as eb
from earlybird.graph import zero_pruned_channels
from conftest import TinyConcat, TinyGrouped, TinyResidual, TinyVGG, randomize_norms, set_scales


def test_residual_add_makes_one_group_scored_by_the_mean(x32):
    model = TinyResidual()
    randomize_norms(model)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    assert pruner.layout.names == ("stem.0", "conv1")
    assert pruner.layout.sizes == (8, 5)
    scores = pruner.graph.scores()
    expected = (model.stem[1].weight.abs() + model.bn2.weight.abs()) / 2
    assert torch.allclose(scores[:8], expected.double())
    assert torch.allclose(scores[8:], model.bn1.weight.abs().double())


def test_concatenation_maps_each_branch_to_its_slice_of_the_norm(x32):
    model = TinyConcat()
    randomize_norms(model)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    assert pruner.layout.names == ("a", "b") and pruner.layout.sizes == (3, 4)
    assert torch.allclose(pruner.graph.scores(), model.bn.weight.abs().double())
    small = pruner.prune(0.5, force=True)
    keep = pruner.masks(0.5)
    assert small.a.out_channels == int(keep["a"].sum()) and small.b.out_channels == int(keep["b"].sum())
    assert small.bn.num_features == small.a.out_channels + small.b.out_channels


def test_grouped_conv_prunes_the_same_position_in_every_group(x32):
    model = TinyGrouped()
    randomize_norms(model, seed=3)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    for name, mask in pruner.masks(0.5).items():
        per_group = mask.view(3, 4)                       # 3 conv groups of 4 channels
        assert torch.equal(per_group, per_group[:1].expand(3, 4)), name
    small = pruner.prune(0.5, force=True)
    assert small.conv2.in_channels % 3 == 0 and small.conv2.out_channels % 3 == 0
    assert small(x32).shape == (2, 2)


def drive(pruner, model, masks_per_check, ratios_low=0.1, high=1.0):
    """Set gammas so that the p=0.5 mask equals each given 18-bit string; return step() results."""
    out = []
    for bits in masks_per_check:
        keep = torch.tensor([b == "1" for b in bits])
        ramp = torch.linspace(0.0, 0.01, len(bits))       # distinct values, no ties
        set_scales(model, torch.where(keep, high + ramp, ratios_low + ramp))
        out.append(pruner.step())
    return out


# TinyVGG's 18 channels are layers of 4, 6 and 8; every mask keeps 9 and leaves no layer empty.
A = "1100" "111000" "11110000"
B = "0011" "000111" "00001111"
C = "1100" "110100" "11110000"                             # 2 of 18 flipped from A


def test_detection_index_and_ticket_drawn_once(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], window=3, epsilon=0.12,
                                criterion="reference")
    results = drive(pruner, model, [A, B, A, C, A, A, B, A])
    # rows: t=3 [d(C,A)=.11, d(C,B)] no; t=4 [.11, d(A,A)=0] yes -> drawn at check 4, once.
    assert results == [[], [], [], [], [0.5], [], [], []]
    ticket = pruner.tickets[0.5]
    assert (ticket.check, ticket.iteration) == (4, 4)
    assert ticket.mask.tolist() == [b == "1" for b in A]
    assert pruner.distances(0.5) == pytest.approx([1.0, 1.0, 2 / 18, 2 / 18, 0.0, 1.0, 1.0])


def test_each_ratio_detects_on_its_own_and_tracking_continues(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.3, 0.5], window=2, epsilon=0.05,
                                criterion="reference")
    rank = torch.tensor([17, 0, 5, 9, 16, 1, 6, 10, 2, 13, 15, 3, 7, 11, 4, 12, 8, 14.0])
    swapped = rank.clone()                     # ranks 5..8 <-> 9..12: moves p=0.5, not p=0.3
    for r in range(5, 9):
        swapped[rank == r], swapped[rank == r + 4] = r + 4, r
    schedule = [17 - rank, swapped, rank, swapped, swapped, swapped]
    drawn = []
    for t, scores in enumerate(schedule):
        set_scales(model, 0.1 + scores / 17)
        drawn.append(pruner.step(iteration=10 * t))
    assert drawn == [[], [], [0.3], [], [0.5], []]
    assert pruner.tickets[0.3].iteration == 20 and pruner.tickets[0.5].iteration == 40
    assert pruner.distances(0.3)[1:] == [0.0] * 4
    assert pruner.pairwise_distances(0.5).shape == (6, 6)


def test_pairwise_distances_are_those_of_the_recorded_masks(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], window=3)
    drive(pruner, model, [A, B, C, A])
    d = pruner.pairwise_distances(0.5)
    masks = [A, B, C, A]
    for i in range(4):
        for j in range(4):
            want = sum(a != b for a, b in zip(masks[i], masks[j])) / 18
            assert d[i, j].item() == pytest.approx(want)


def test_prune_starts_from_the_ticket_weights_and_leaves_the_model_alone(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], window=2, epsilon=0.01,
                                criterion="reference")
    drive(pruner, model, [B, A, A])
    ticket = pruner.tickets[0.5]
    conv0_at_ticket = model.features[0].weight.detach().clone()
    with torch.no_grad():                                  # training goes on after the ticket
        for p in model.parameters():
            p.add_(1.0)
    before = copy.deepcopy(model.state_dict())
    small = pruner.prune(0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    keep = ticket.masks["features.0"]
    assert torch.equal(small.features[0].weight, conv0_at_ticket[keep])
    widths = {n: small.get_submodule(n).out_channels for n in ticket.masks}
    assert widths == {n: int(m.sum()) for n, m in ticket.masks.items()}
    assert sum(widths.values()) == 18 - 9


def test_no_ticket_yet_names_the_ratio_and_offers_force(x32):
    pruner = eb.EarlyBirdPruner(TinyVGG(), x32, ratios=[0.3, 0.5])
    pruner.step()
    with pytest.raises(eb.NoTicketError, match=r"ratio 0.5 .* after 1 checks.*force=True"):
        pruner.prune(0.5)
    with pytest.raises(ValueError, match=r"ratio 0.7 is not tracked; use one of \[0.3, 0.5\]"):
        pruner.prune(0.7)
    assert pruner.prune(0.7, force=True).features[0].out_channels >= 1


def test_masks_follow_the_current_scores_and_concatenate_in_order(x32):
    model = TinyVGG()
    randomize_norms(model, seed=5)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    masks = pruner.masks(0.5)
    assert list(masks) == ["features.0", "features.3", "features.6"]
    assert torch.equal(torch.cat(list(masks.values())), pruner.mask(0.5))
    all_scores = torch.cat([m.weight.abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    pruned = all_scores[~pruner.mask(0.5)]
    assert len(pruned) == 9 and pruned.max() < all_scores[pruner.mask(0.5)].min()
    set_scales(model, -all_scores.flip(0))                 # sign does not matter, order does
    assert not torch.equal(pruner.mask(0.5), torch.cat(list(masks.values())))


def test_regularize_adds_s_sign_gamma_to_scored_norms_only(x32):
    model = TinyResidual()
    randomize_norms(model)
    with torch.no_grad():
        model.bn1.weight[0] = -0.3
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], sparsity=1e-2)
    model(x32).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    pruner.regularize()
    for name, p in model.named_parameters():
        if name in ("stem.1.weight", "bn1.weight", "bn2.weight"):
            assert torch.allclose(p.grad, grads[name] + 1e-2 * torch.sign(p.detach())), name
        else:
            assert torch.equal(p.grad, grads[name]), name


def test_group_lasso_penalty_matches_its_gradient(x32):
    model = TinyResidual()
    randomize_norms(model)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], sparsity=1e-2, penalty="group_lasso")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize()
    a, b, c = model.stem[1].weight, model.bn2.weight, model.bn1.weight
    w = torch.stack([a, b]).detach().requires_grad_()      # coupled by the residual add
    v = c.detach().clone().requires_grad_()
    (1e-2 * (w.norm(dim=0).sum() + v.abs().sum())).backward()
    assert torch.allclose(a.grad, w.grad[0]) and torch.allclose(b.grad, w.grad[1])
    assert torch.allclose(c.grad, v.grad)


def test_state_dict_resume_continues_detection_exactly(x32, tmp_path):
    seq = [B, A, C, A, B, A, A, C, A, A, A]
    torch.manual_seed(0)
    model = TinyVGG()
    whole = eb.EarlyBirdPruner(model, x32, ratios=[0.3, 0.5], window=3, epsilon=0.12)
    drawn_whole = drive(whole, model, seq)

    torch.manual_seed(0)
    model2 = TinyVGG()
    first = eb.EarlyBirdPruner(model2, x32, ratios=[0.3, 0.5], window=3, epsilon=0.12)
    drawn = drive(first, model2, seq[:5])
    eb.atomic_save(first.state_dict(), tmp_path / "pruner.pt")
    state = torch.load(tmp_path / "pruner.pt", weights_only=True)
    resumed = eb.EarlyBirdPruner(model2, x32, ratios=[0.3, 0.5], window=3, epsilon=0.12)
    resumed.load_state_dict(state)
    drawn += drive(resumed, model2, seq[5:])
    assert drawn == drawn_whole
    for r in (0.3, 0.5):
        assert resumed.distances(r) == whole.distances(r)
        assert torch.equal(resumed.pairwise_distances(r), whole.pairwise_distances(r))
        if r in whole.tickets:
            a, b = whole.tickets[r], resumed.tickets[r]
            assert (a.check, a.iteration) == (b.check, b.iteration)
            assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_state_dict_holds_only_plain_values(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], window=2, epsilon=0.01,
                                criterion="reference")
    drive(pruner, model, [A, A])

    def walk(obj):
        if isinstance(obj, dict):
            assert all(isinstance(k, str) for k in obj)
            return all(walk(v) for v in obj.values())
        if isinstance(obj, list):
            return all(walk(v) for v in obj)
        return isinstance(obj, (torch.Tensor, int, float, str))
    assert walk(pruner.state_dict())


def test_state_from_another_model_is_refused(x32):
    state = eb.EarlyBirdPruner(TinyVGG(), x32, ratios=[0.5]).state_dict()
    other = eb.EarlyBirdPruner(TinyVGG(widths=(4, 6, 9)), x32, ratios=[0.5])
    with pytest.raises(eb.CheckpointError, match="other layers or widths"):
        other.load_state_dict(state)


def test_ignored_layers_by_name_or_module(x32):
    model = TinyVGG()
    by_name = eb.EarlyBirdPruner(model, x32, ignored_layers=["features.3"])
    by_module = eb.EarlyBirdPruner(model, x32, ignored_layers=[model.features[3]])
    assert by_name.layout.names == by_module.layout.names == ("features.0", "features.6")


def test_nan_scores_at_step_name_the_layer(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32)
    with torch.no_grad():
        model.features[4].weight[2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite .* \['features.3'\]"):
        pruner.step()
    assert pruner.iterations == []                         # nothing half-recorded


class NoNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(ratios=[]), ValueError, "ratios is empty"),
    (dict(ratios=[0.5, 1.0]), ValueError, r"must be a number in \(0, 1\), got 1.0"),
    (dict(ratios=[0.0]), ValueError, r"in \(0, 1\), got 0.0"),
    (dict(ratios=[0.3, 0.3]), ValueError, "must not repeat"),
    (dict(ratios=0.5), ValueError, "ratios must be a sequence"),
    (dict(ratios=["0.5"]), ValueError, "must be a number"),
    (dict(window=1), ValueError, "window must be an integer >= 2, got 1"),
    (dict(window=2.5), ValueError, "window must be an integer"),
    (dict(epsilon=0), ValueError, r"epsilon must be in \(0, 1\], got 0"),
    (dict(epsilon=-0.1), ValueError, "epsilon must be in"),
    (dict(criterion="median"), ValueError, r"unknown criterion 'median'; choose from"),
    (dict(criterion="plateau", span=0), ValueError, "span must be None or an integer >= 1"),
    (dict(criterion="reference", span=100), ValueError, "span is used by the plateau rule only"),
    (dict(total=0), ValueError, r"total must be None or an integer >= 1 \(epochs or steps\), got 0"),
    (dict(total=12.5), ValueError, "total must be None or an integer >= 1"),
    (dict(sparsity=-1e-4), ValueError, "sparsity must be a number >= 0"),
    (dict(penalty="l2"), ValueError, r"choose from \['l1', 'group_lasso'\]"),
    (dict(min_channels=0), ValueError, "min_channels must be an integer >= 1"),
    (dict(max_layer_ratio=1.5), ValueError, "max_layer_ratio must be None or in"),
    (dict(ratios=[0.7], max_layer_ratio=0.5), ValueError, "allow at most 9"),
    (dict(ignored_layers=["features.99"]), ValueError, "no module named 'features.99'"),
    (dict(ignored_layers=[3]), TypeError, "modules or qualified names"),
])
def test_bad_arguments_raise_at_construction(x32, kwargs, error, message):
    with pytest.raises(error, match=message):
        eb.EarlyBirdPruner(TinyVGG(), x32, **kwargs)


def test_bad_models_and_inputs_raise_at_construction(x32):
    with pytest.raises(eb.UnsupportedModelError, match="nothing earlybird can prune"):
        eb.EarlyBirdPruner(NoNorm(), x32, score="norm")
    with pytest.raises(eb.UnsupportedModelError, match="nothing earlybird can prune"):
        eb.EarlyBirdPruner(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), x32)
    with pytest.raises(eb.UnsupportedModelError, match="example_inputs do not run"):
        eb.EarlyBirdPruner(TinyVGG(), torch.randn(2, 5, 8, 8))
    with pytest.raises(eb.UnsupportedModelError, match=r"pass the wrapped model \(`model.module`\)"):
        eb.EarlyBirdPruner(nn.DataParallel(TinyVGG()), x32)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        eb.EarlyBirdPruner("resnet18", x32)


def test_training_mode_is_restored_after_tracing(x32):
    model = TinyVGG().train()
    model.features[1].eval()                               # a frozen BN stays frozen
    pruner = eb.EarlyBirdPruner(model, x32)
    pruner.prune(0.5, force=True)
    assert model.training and not model.features[1].training and model.features[4].training


def test_function_preserved_on_tiny_residual(x32):
    model = TinyResidual()
    randomize_norms(model)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    small = pruner.prune(0.5, force=True).eval()
    zero_pruned_channels(pruner.graph, pruner.mask(0.5))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x32), small(x32), atol=1e-6)


def test_rules_see_the_steps_and_ratio_of_every_check(x32, monkeypatch):
    from earlybird.search import criteria
    seen = []

    def spy(checks, window, epsilon, span):
        seen.append((checks.ratio, list(checks.steps), len(checks.rows), window, epsilon, span))
        return False
    monkeypatch.setitem(criteria.CRITERIA, "plateau", spy)
    model = TinyVGG()
    randomize_norms(model)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.3, 0.7], criterion="plateau", window=3,
                                epsilon=0.2, span=250)
    for step in (100, 200, 300):
        pruner.step(iteration=step)
    assert seen[-2:] == [(0.3, [100, 200, 300], 3, 3, 0.2, 250),
                         (0.7, [100, 200, 300], 3, 3, 0.2, 250)]


def test_the_schedule_sets_the_plateau_rules_span_and_none_of_the_other_rules(x32, monkeypatch, caplog):
    from earlybird.search import criteria
    seen = []

    def spy(checks, window, epsilon, span):
        seen.append(span)
        return False
    monkeypatch.setitem(criteria.CRITERIA, "plateau", spy)
    monkeypatch.setitem(criteria.CRITERIA, "reference", spy)
    for settings, span in ((dict(total=128), 12), (dict(total=10240), 960),   # 3/32 of it
                           (dict(total=48), 5), (dict(total=10), 1),     # rounded up: >= 18.75 %
                           (dict(total=128, span=3), 3),
                           (dict(), None), (dict(criterion="reference", total=128), None)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="earlybird"):
            pruner = eb.EarlyBirdPruner(TinyVGG(), x32, ratios=[0.5], **settings)
            assert not caplog.records                  # a pruner that never checks is not told
            pruner.step(iteration=0)
            pruner.step(iteration=1)
        assert seen[-2:] == [span, span] and span == pruner.config.plateau_span()
        # the only setting that says nothing about when to draw is told so, once, at its check
        warned = [r.getMessage() for r in caplog.records if "neither span nor total" in r.getMessage()]
        assert len(warned) == (settings == {})


def test_plateau_rule_in_the_pruner_draws_when_the_masks_stop_changing(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], criterion="plateau", epsilon=0.1,
                                span=200)
    drawn_at = None
    for check in range(12):
        if check < 4:                                       # the masks churn, then settle
            randomize_norms(model, seed=check)
        if pruner.step(iteration=100 * check) and drawn_at is None:
            drawn_at = check
    d = pruner.distances(0.5)
    assert all(x > 0 for x in d[:3]) and all(x == 0 for x in d[3:])
    # distances are 0 from step 400 on: (300, 500] and (500, 700] both 0 -> drawn at step 700
    assert drawn_at == 7 and pruner.tickets[0.5].iteration == 700


class FunctionalLinear(nn.Module):
    """Uses ``proj.weight`` through F.linear (torchvision Swin's attention does this)."""

    def __init__(self, unused: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.proj = nn.Linear(6, 6)
        self.spare = nn.Linear(6, 6)          # defined, never used
        self.head = nn.Linear(6, 2)
        self.unused = unused

    def forward(self, x):
        x = self.bn(self.conv(x)).relu().mean((2, 3))
        if not self.unused:
            x = nn.functional.linear(x, self.proj.weight, self.proj.bias)
        return self.head(x)


def test_weights_used_through_functions_are_refused_by_name_under_strict(x32):
    with pytest.raises(eb.UnsupportedModelError,
                       match=r"FunctionalLinear uses the weights of 1 layer\(s\) through plain "
                             r"functions .* \(e.g. proj\); torch-pruning cannot follow"):
        eb.EarlyBirdPruner(FunctionalLinear(), x32, strict=True)
    # without strict the F.linear call is traced as a call of proj, which then loses the
    # input channels its group loses (tests/test_tolerant.py has the details)
    # (coefficients off: proj's outputs, which have no norm, stay unscored as this test expects)
    pruner = eb.EarlyBirdPruner(FunctionalLinear(), x32, ratios=[0.5], coefficients=False)
    assert pruner.excluded == {}
    small = pruner.prune(0.5, force=True)
    assert (small.conv.out_channels, small.proj.in_features) == (3, 3)


def test_layers_that_never_run_do_not_block_pruning(x32):
    model = FunctionalLinear(unused=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    assert pruner.layout.names == ("conv",)
    assert pruner.prune(0.5, force=True)(x32).shape == (2, 2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class SplitByAttribute(nn.Module):
    """Splits its channels with a stored size, then runs a conv per part (timm's Res2Net does
    this): pruning changes the parts' widths but not ``self.width``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.width = 4
        self.conv_a = nn.Conv2d(4, 4, 1)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        a, b = torch.split(self.bn(self.conv(x)), self.width, 1)
        return self.head(torch.cat([self.conv_a(a), self.conv_b(b)], 1).mean((2, 3)))


def test_a_pruned_copy_that_no_longer_runs_is_refused_with_the_reason_under_strict(x32):
    model = SplitByAttribute()
    set_scales(model, [0.1, 0.2, 0.9, 0.9, 0.3, 0.4, 0.9, 0.9])   # prunes 2 from each part
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], strict=True, coefficients=False)
    assert pruner.excluded == {}
    with pytest.raises(eb.UnsupportedModelError, match=r"SplitByAttribute pruned at ratio 0.5 no "
                       r"longer runs \(\w+: .*\): it computes with channel counts kept"):
        pruner.prune(0.5, force=True)
    assert model(x32).shape == (2, 2)                      # the dense model is untouched


def test_failures_in_the_group_search_are_our_error(x32, monkeypatch):
    import torch_pruning as tp
    search = tp.DependencyGraph.get_pruning_group

    def explode(self, root, *args, **kwargs):
        if root is model.features[3]:
            raise MemoryError
        return search(self, root, *args, **kwargs)
    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", explode)
    model = TinyVGG()
    with pytest.raises(eb.UnsupportedModelError, match=r"TinyVGG: layer 'features.3': "
                       "torch-pruning ran out of memory mapping its channels through reshapes"):
        eb.EarlyBirdPruner(model, x32, strict=True)
    pruner = eb.EarlyBirdPruner(model, x32)                # the others are pruned
    assert pruner.layout.names == ("features.0", "features.6")
    assert pruner.excluded == {"features.3": "torch-pruning ran out of memory mapping its "
                               "channels through reshapes and permutes (window partitions blow "
                               "its index lists up)"}

    def divide(self, root, *args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")
    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", divide)
    with pytest.raises(eb.UnsupportedModelError, match=r"TinyVGG: 3 channel group\(s\) left "
                       r"out, .*'features.0' \(torch-pruning could not group its channels: "
                       r"ZeroDivisionError: integer division or modulo by zero\)"):
        eb.EarlyBirdPruner(TinyVGG(), x32)


def test_the_group_search_is_bounded_in_time(x32, monkeypatch):
    import time
    import torch_pruning as tp
    from earlybird.graph import search as S
    monkeypatch.setattr(S, "GROUP_SECONDS", 0.2)
    monkeypatch.setattr(S, "SEARCH_SECONDS", 1.0)
    search = tp.DependencyGraph.get_pruning_group
    slow = []

    def stuck(self, root, *args, **kwargs):
        if root in slow:
            time.sleep(30)                                 # a search that blows up
        return search(self, root, *args, **kwargs)
    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", stuck)
    model = TinyVGG()
    slow.append(model.features[3])
    started = time.monotonic()
    pruner = eb.EarlyBirdPruner(model, x32)
    assert time.monotonic() - started < 5
    assert pruner.excluded == {"features.3": "torch-pruning's search of its channels ran past "
                               "0.2 s (reshapes and permutes)"}
    assert pruner.layout.names == ("features.0", "features.6")
    slow[:] = [model.features[0], model.features[3], model.features[6]]
    monkeypatch.setattr(S, "GROUP_SECONDS", 0.6)          # 0.6 s, then the 0.4 s left
    started = time.monotonic()
    with pytest.raises(eb.UnsupportedModelError, match=r"torch-pruning's channel search of "
                       r"TinyVGG ran past 1 s after 0 groups \(2 left out\); its reshapes"):
        eb.EarlyBirdPruner(model, x32)
    assert time.monotonic() - started < 5


def test_a_group_may_take_a_multiple_of_the_slowest_group_found(x32, monkeypatch):
    # TinyVGG's groups take milliseconds: the bound on the stuck one is the floor, not the
    # 15 s a group may take at most
    import time
    import torch_pruning as tp
    from earlybird.graph import search as S
    monkeypatch.setattr(S, "GROUP_FLOOR", 0.5)
    monkeypatch.setattr(S, "GROUP_FACTOR", 10.0)
    search = tp.DependencyGraph.get_pruning_group
    model = TinyVGG()

    def stuck(self, root, *args, **kwargs):
        if root is model.features[3]:
            time.sleep(30)
        return search(self, root, *args, **kwargs)
    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", stuck)
    started = time.monotonic()
    pruner = eb.EarlyBirdPruner(model, x32)
    assert time.monotonic() - started < 5 and S.GROUP_SECONDS == 15.0
    assert pruner.excluded == {"features.3": "torch-pruning's search of its channels ran past "
                               "0.5 s (reshapes and permutes)"}


def test_channel_indices_past_a_layer_are_left_out_or_refused_under_strict():
    # timm's dual-path networks: torch-pruning maps the slices and concatenations of a DPN
    # block to channel indices past the end of the BatchNorms (found by the zoo on dpn48b,
    # where it crashed step() with an IndexError). This small DPN shows it in 3 layers.
    from timm.models.dpn import DPN
    model = DPN(k_sec=(1, 3, 1, 1), inc_sec=(4, 8, 8, 16), num_init_features=8, k_r=16,
                groups=4, b=True, small=True, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(eb.UnsupportedModelError, match=r"torch-pruning maps channels of DPN past "
                       r"the end of 1 layer\(s\) \(e.g. channel 263 of 'features.conv3_2.c1x1_a.bn'"
                       r", which has 152\): its channel coupling does not fit"):
        eb.EarlyBirdPruner(model, x, strict=True)
    pruner = eb.EarlyBirdPruner(model, x)
    # the group with wrong indices, and the three whose one-channel cut breaks a residual add
    assert pruner.excluded["features.conv3_3.c1x1_c2"] == (
        "torch-pruning maps its channels past the end of 'features.conv3_2.c1x1_a.bn' "
        "(channel 256 of 152)")
    assert sorted(pruner.excluded) == ["features.conv2_1.c1x1_c2", "features.conv3_3.c1x1_c2",
                                       "features.conv4_1.c1x1_c2", "features.conv5_1.c1x1_c2"]
    assert all(pruner.excluded[n].startswith("RuntimeError: The size of tensor a")
               for n in pruner.excluded if n != "features.conv3_3.c1x1_c2")
    assert not set(pruner.excluded) & set(pruner.layout.names)
    assert (pruner.layout.num_channels, len(pruner.layout.names)) == (616, 13)
    small = pruner.prune(0.5, force=True)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # all scales 1: ties go by position; the grouped convs' units fit 307 of the 308 budget
    assert sum(int(m.sum()) for m in pruner.masks(0.5).values()) == 616 - 307


class CachesFromParameters(TinyVGG):
    """Keeps a tensor computed from a parameter (timm's LeViT caches attention biases so)."""

    def forward(self, x):
        self.cache = {"bias": self.classifier.bias * 2}
        return super().forward(x) + self.cache["bias"]


def test_prune_copies_models_that_cache_tensors_from_their_parameters(x32):
    model = CachesFromParameters()
    randomize_norms(model)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    model(x32)                                             # the cache now has a grad_fn
    assert model.cache["bias"].grad_fn is not None
    with pytest.raises(RuntimeError, match="deepcopy protocol"):
        __import__("copy").deepcopy(model)                 # what a plain copy does
    small = pruner.prune(0.5, force=True)
    assert small.cache["bias"].grad_fn is None and torch.equal(small.cache["bias"],
                                                               model.cache["bias"].detach())
    assert small(x32).shape == (2, 3)


class ConcatIntoResidual(nn.Module):
    """Two 1-channel branches concatenated, then a residual add over the 2 channels: the add's
    group has 2 channels, each fed by its own branch conv (found by the property test)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.BatchNorm2d(1))
        self.b = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.BatchNorm2d(1))
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3),
                                  nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2))
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], 1).relu()
        return self.head((x + self.body(x)).relu().mean((2, 3)))


def test_each_branch_of_a_concatenation_in_a_residual_group_keeps_a_channel(x32):
    model = ConcatIntoResidual()
    randomize_norms(model, 1)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.4])
    assert pruner.layout.names == ("body.0", "body.3") and pruner.layout.sizes == (3, 2)
    assert pruner.layout.segments.tolist() == [0, 0, 0, 1, 2]
    with pytest.raises(ValueError, match="prunes 3 of 5 channels, .* allow at most 2"):
        eb.EarlyBirdPruner(model, x32, ratios=[0.6])
    mask = pruner.mask(0.4)
    assert mask[3:].all() and int((~mask).sum()) == 2      # the branches are floors: body pays
    small = pruner.prune(0.4, force=True)
    assert small(x32).shape == (2, 2) and small.body[0].out_channels == 1


# counts per layer (4, 3, 2), (3, 3, 3), then (2, 3, 4) at different positions (A and C)
EPI_SEQ = ["1111" "111000" "11000000", "1110" "111000" "11100000", A, A, C, A, C]


def test_epi_criterion_compares_layer_counts_not_positions_and_resumes(x32, tmp_path):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], window=2, epsilon=0.1,
                                criterion="epi")
    # drawn at check 4 (= 2 * window) although the mask there (C) moved 2 channels from A
    assert drive(pruner, model, EPI_SEQ) == [[], [], [], [], [0.5], [], []]
    assert pruner.tickets[0.5].mask.tolist() == [b == "1" for b in C]
    # the reference rule at the same window and epsilon does not: C is 0.11 from A
    ref = eb.EarlyBirdPruner(TinyVGG(), x32, ratios=[0.5], window=2, epsilon=0.1,
                             criterion="reference")
    assert drive(ref, ref.model, EPI_SEQ)[4] == []
    # resumed after 3 checks, the counts are rebuilt from the masks: the same detection
    model2 = TinyVGG()
    first = eb.EarlyBirdPruner(model2, x32, ratios=[0.5], window=2, epsilon=0.1, criterion="epi")
    drawn = drive(first, model2, EPI_SEQ[:3])
    eb.atomic_save(first.state_dict(), tmp_path / "p.pt")
    resumed = eb.EarlyBirdPruner(model2, x32, ratios=[0.5], window=2, epsilon=0.1,
                                 criterion="epi")
    resumed.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    assert drawn + drive(resumed, model2, EPI_SEQ[3:]) == [[], [], [], [], [0.5], [], []]
    assert resumed.tickets[0.5].check == 4

