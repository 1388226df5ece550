"""Property-based: random conv nets with residual adds, concatenations, grouped and depthwise
convs; after pruning by any ratio, the small network computes what the dense one computes with
the pruned channels' norm scales and shifts zeroed, and no layer is left empty."""
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from torch import nn

import earlybird as eb
from earlybird.graph import zero_pruned_channels
from conftest import randomize_norms


def cbr(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.body = nn.Sequential(cbr(c, mid), nn.Conv2d(mid, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class Concat(nn.Module):
    def __init__(self, cin, a, b):
        super().__init__()
        self.a, self.b = cbr(cin, a, 1), cbr(cin, b, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


def block(kind, c, a, b, g):
    """A block of ``kind`` on ``c`` input channels; returns (module, output channels)."""
    if kind == "plain":
        return cbr(c, a), a
    if kind == "residual":
        return Residual(c, a), c
    if kind == "concat":
        return Concat(c, a, b), a + b
    if kind == "depthwise":
        return nn.Sequential(cbr(c, c, 3, groups=c), cbr(c, a, 1)), a
    out = g * b                                            # grouped: in and out divisible by g
    return nn.Sequential(cbr(c, g * a, 1), cbr(g * a, out, 3, groups=g)), out


class RandomNet(nn.Module):
    def __init__(self, specs):
        super().__init__()
        layers, c = [cbr(3, 4)], 4
        for spec in specs:
            module, c = block(c=c, **spec)
            layers.append(module)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


SPEC = st.fixed_dictionaries({
    "kind": st.sampled_from(["plain", "residual", "concat", "depthwise", "grouped"]),
    "a": st.integers(1, 6), "b": st.integers(1, 4), "g": st.sampled_from([2, 3])})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(SPEC, min_size=1, max_size=4), ratio=st.floats(0.05, 0.95),
       seed=st.integers(0, 1000))
def test_pruned_equals_dense_with_pruned_channels_zeroed(specs, ratio, seed):
    torch.manual_seed(seed)
    model = RandomNet(specs)
    randomize_norms(model, seed)
    x = torch.randn(2, 3, 6, 6)
    try:
        pruner = eb.EarlyBirdPruner(model, x[:1], ratios=[ratio])
    except ValueError as exc:                              # more than the floors leave room for
        assert "allow at most" in str(exc)
        assume(False)
    mask = pruner.mask(ratio)
    small = pruner.prune(ratio, force=True).eval()
    for m in small.modules():                              # no layer emptied
        if isinstance(m, nn.Conv2d):
            assert m.in_channels >= 1 and m.out_channels >= 1
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features >= 1
    n = pruner.layout.num_channels
    pruned = int((~mask).sum())
    assert pruned <= eb.prune_budget(n, ratio)
    if pruner.layout.units is None:                       # every layer, and every segment of
        segments = pruner.layout.segments                  # one, keeps a channel
        floors = len(pruner.layout.sizes) if segments is None else int(segments.max()) + 1
        assert pruned == min(eb.prune_budget(n, ratio), n - floors)
    zero_pruned_channels(pruner.graph, mask)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-5)
