"""Filter scores (score="weight") for models without any norm layer, and the score option."""
import logging

import pytest
import torch
from torch import nn

import earlybird as eb
from earlybird.graph import zero_pruned_channels
from conftest import TinyVGG


class TinyPlain(nn.Module):
    """conv(6)-ReLU-conv(8)-ReLU and a head, no norm layer (AlexNet/VGG-without-BN style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x).relu()).relu().mean((2, 3)))


def test_norm_scores_refuse_a_model_without_norms_and_name_the_way_out(x32):
    with pytest.raises(eb.UnsupportedModelError, match=r"pass score='weight'"):
        eb.EarlyBirdPruner(TinyPlain(), x32, score="norm")


def test_auto_falls_back_to_filter_scores_with_a_warning(x32, caplog):
    model = TinyPlain()
    with caplog.at_level(logging.WARNING, logger="earlybird"):
        pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    assert pruner.graph.score == "weight"
    assert "scoring channels by their filters' mean |w|" in caplog.text
    assert pruner.layout.names == ("conv1", "conv2") and pruner.layout.sizes == (6, 8)
    expected = torch.cat([model.conv1.weight.abs().flatten(1).mean(1),
                          model.conv2.weight.abs().flatten(1).mean(1)]).double()
    assert torch.allclose(pruner.graph.scores(), expected)


def test_auto_keeps_norm_scores_when_the_model_has_norms(x32):
    assert eb.EarlyBirdPruner(TinyVGG(), x32).graph.score == "norm"
    assert eb.EarlyBirdPruner(TinyVGG(), x32, score="weight").graph.score == "weight"


def test_filter_scored_prune_removes_the_lowest_filters_and_preserves_function(x32):
    torch.manual_seed(0)
    model = TinyPlain()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    mask = pruner.mask(0.5)
    scores = pruner.graph.scores()
    assert int((~mask).sum()) == 7                          # floor(14 * 0.5)
    assert scores[~mask].max() <= scores[mask].min()        # one global threshold
    small = pruner.prune(0.5, force=True).eval()
    assert small.conv1.out_channels + small.conv2.out_channels == 7
    zero_pruned_channels(pruner.graph, mask)                # zero filter + bias == removed
    with torch.no_grad():
        assert torch.allclose(model.eval()(x32), small(x32), atol=1e-6)


def test_filter_l1_penalty_is_s_sign_w_on_scored_filters_only(x32):
    model = TinyPlain()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], sparsity=1e-2)
    model(x32).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    pruner.regularize()
    for name, p in model.named_parameters():
        if name in ("conv1.weight", "conv2.weight"):
            assert torch.allclose(p.grad, grads[name] + 1e-2 * torch.sign(p.detach())), name
        else:                                               # biases and the head: untouched
            assert torch.equal(p.grad, grads[name]), name


def test_filter_group_lasso_matches_its_gradient(x32):
    model = TinyPlain()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5], sparsity=1e-2, penalty="group_lasso")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize()
    for conv in (model.conv1, model.conv2):
        w = conv.weight.detach().clone().requires_grad_()
        (1e-2 * w.flatten(1).norm(dim=1).sum()).backward()
        assert torch.allclose(conv.weight.grad, w.grad)


def test_unknown_score_lists_the_choices(x32):
    with pytest.raises(ValueError, match=r"unknown score 'bn'; choose from \['auto', 'norm', 'weight'\]"):
        eb.EarlyBirdPruner(TinyVGG(), x32, score="bn")
