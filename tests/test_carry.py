"""Pruning mid-training keeps the optimizer's state, sliced to the kept channels."""
import copy
import inspect

import pytest
import torch
from torch import nn

import earlybird as eb
from conftest import TinyVGG, randomize_norms


def hand_sliced(model: TinyVGG, masks: dict, tensors: dict) -> dict:
    """Slice a per-parameter dict the way pruning TinyVGG must: rows by a layer's own mask,
    input columns by the previous layer's mask."""
    m0, m3, m6 = masks["features.0"], masks["features.3"], masks["features.6"]
    rows = {"features.0.weight": (m0, None), "features.1.weight": (m0, None),
            "features.1.bias": (m0, None), "features.3.weight": (m3, m0),
            "features.4.weight": (m3, None), "features.4.bias": (m3, None),
            "features.6.weight": (m6, m3), "features.7.weight": (m6, None),
            "features.7.bias": (m6, None), "classifier.weight": (None, m6),
            "classifier.bias": (None, None)}
    out = {}
    for name, t in tensors.items():
        r, c = rows[name]
        t = t[r] if r is not None else t
        out[name] = t[:, c] if c is not None else t
    return out


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    lambda p: torch.optim.Adam(p, lr=1e-2),
])
def test_one_step_after_pruning_equals_a_fresh_model_with_the_sliced_state(x32, make_opt):
    torch.manual_seed(0)
    model = TinyVGG()
    randomize_norms(model, seed=2)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    y = torch.tensor([0, 2])
    for _ in range(3):
        nn.functional.cross_entropy(model(x32), y).backward()
        opt.step(), opt.zero_grad(), sched.step()
    masks = pruner.masks(0.5)
    small, opt2, sched2 = pruner.prune(0.5, force=True, optimizer=opt, scheduler=sched)
    assert type(opt2) is type(opt) and opt2.defaults == opt.defaults
    assert sched2.last_epoch == sched.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    names = dict(model.named_parameters())
    keys = [k for k, v in opt.state[names["features.0.weight"]].items() if v.dim() > 0]
    # the reference: a fresh copy of the pruned model, its state sliced by hand
    fresh = copy.deepcopy(small)
    ref = make_opt(fresh.parameters())
    ref.load_state_dict(copy.deepcopy(opt2.state_dict()))  # same hyper-parameters and step count
    fresh_params = dict(fresh.named_parameters())
    for key in keys:
        sliced = hand_sliced(model, masks, {n: opt.state[p][key] for n, p in names.items()})
        for n, p in fresh_params.items():
            ref.state[p][key] = sliced[n].clone()
            assert torch.equal(opt2.state[dict(small.named_parameters())[n]][key], sliced[n]), (key, n)
    for m, o in ((small, opt2), (fresh, ref)):
        nn.functional.cross_entropy(m(x32), y).backward()
        o.step()
    for (n, a), (_, b) in zip(small.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), (n, (a - b).abs().max().item(), a.shape)
    sched2.step()
    sched.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["lr"] == sched.get_last_lr()[0]


def test_pruning_with_an_optimizer_starts_from_the_current_weights(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.no_grad():
        model.features[0].weight.add_(1.0)
    small, _ = pruner.prune(0.5, force=True, optimizer=opt)
    keep = pruner.masks(0.5)["features.0"]
    assert torch.equal(small.features[0].weight, model.features[0].weight[keep])


def test_scheduler_without_optimizer_and_foreign_parameters_are_refused(x32):
    model = TinyVGG()
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    opt = torch.optim.SGD([*model.parameters(), nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="scheduler= needs optimizer="):
        pruner.prune(0.5, force=True, scheduler=object())
    with pytest.raises(ValueError, match="1 parameters that are not the model's"):
        pruner.prune(0.5, force=True, optimizer=opt)


def _groups(model: TinyVGG, kind: str) -> list:
    """Two parameter groups, as fine-tuning recipes make them: weight decay on conv/linear
    weights only, and another lr for norms and biases. LBFGS takes one group, Muon 2-D weights."""
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if p.dim() == 1]
    if kind == "LBFGS":
        return [{"params": list(model.parameters())}]
    if kind == "Muon":
        return [{"params": [p for p in decay if p.dim() == 2]}]
    defaults = inspect.signature(getattr(torch.optim, kind).__init__).parameters
    wd = {"weight_decay": 1e-3} if "weight_decay" in defaults else {}
    no_wd = {"weight_decay": 0.0} if "weight_decay" in defaults else {}
    return [{"params": decay, "lr": 0.02, **wd}, {"params": rest, "lr": 0.005, **no_wd}]


def _expected(value: torch.Tensor, param: torch.Tensor, name: str, model, masks) -> torch.Tensor:
    """A state tensor sliced like its parameter; one that broadcasts to it (Adafactor's factored
    statistics) is expanded, sliced and taken back along its size-1 dimensions."""
    full = hand_sliced(model, masks, {name: value.expand(param.shape)})[name]
    for d in range(value.dim()):
        if value.shape[d] == 1 and param.shape[d] > 1:
            full = full.narrow(d, 0, 1)
    return full


OPTIMIZERS = ["SGD", "SGD-nesterov", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop",
              "Adagrad", "Adadelta", "ASGD", "Rprop", "Adafactor", "Muon", "LBFGS"]


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_every_torch_optimizer_carries_over_with_its_groups_and_sliced_state(x32, kind):
    # SparseAdam is left out: it refuses the dense gradients of any conv net
    name, extra = kind.split("-")[0], {}
    if kind == "SGD-nesterov":
        extra = {"momentum": 0.9, "nesterov": True}
    if kind == "RMSprop":
        extra = {"momentum": 0.9, "centered": True}
    torch.manual_seed(0)
    model = TinyVGG()
    randomize_norms(model, seed=2)
    pruner = eb.EarlyBirdPruner(model, x32, ratios=[0.5])
    make = lambda groups: getattr(torch.optim, name)(groups, **extra)   # noqa: E731
    opt = make(_groups(model, name))
    y = torch.tensor([0, 2])

    def closure(m, o):
        def run():
            o.zero_grad()
            loss = nn.functional.cross_entropy(m(x32), y)
            loss.backward()
            return loss
        return run
    for _ in range(3):
        opt.step(closure(model, opt))
    masks = pruner.masks(0.5)
    small, opt2 = pruner.prune(0.5, force=True, optimizer=opt)
    assert type(opt2) is type(opt) and opt2.defaults == opt.defaults
    assert len(opt2.param_groups) == len(opt.param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    small_params = dict(small.named_parameters())
    for old, new in zip(opt.param_groups, opt2.param_groups):       # per-group hyper-parameters
        assert {k: v for k, v in new.items() if k != "params"} == \
               {k: v for k, v in old.items() if k != "params"}
        assert [id(p) for p in new["params"]] == [id(small_params[names[id(p)]])
                                                  for p in old["params"]]
    dense_params = dict(model.named_parameters())
    for n, p in small_params.items():
        before, after = opt.state.get(dense_params[n], {}), opt2.state.get(p, {})
        if name == "LBFGS":                 # flat history over all parameters: starts afresh
            assert after == {}
            continue
        assert set(after) == set(before), n
        for key, value in before.items():
            if torch.is_tensor(value) and value.dim() > 0:
                want = _expected(value, dense_params[n], n, model, masks)
                assert torch.equal(after[key], want), (kind, n, key)
            else:
                assert after[key] == value if not torch.is_tensor(value) else torch.equal(
                    after[key], value)
    # one more step equals a fresh optimizer over a copy of the pruned model, given that state
    fresh = copy.deepcopy(small)
    fresh_params = dict(fresh.named_parameters())
    ref = make([{**{k: v for k, v in g.items() if k != "params"},
                 "params": [fresh_params[names[id(p)]] for p in g["params"]]}
                for g in opt.param_groups])
    ref.load_state_dict(copy.deepcopy(opt2.state_dict()))
    for m, o in ((small, opt2), (fresh, ref)):
        o.step(closure(m, o))
    for (n, a), (_, b) in zip(small.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), (kind, n)
