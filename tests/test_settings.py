"""One source for every setting: the pruner, RunConfig, the CLI, the callback and the README
state the same defaults; settings errors name settings the way each front end spells them."""
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import yaml

import earlybird as eb
from earlybird.cli import _config, flag, parser
from earlybird.costs.flops import BACKWARD_FACTOR
from earlybird.costs.ledger import build_ledger, phase_cost, write_ledger
from earlybird.data.models import build_model, check_arch, preresnet_block
from earlybird.pipeline import RunConfig
from earlybird.training.precision import LowPrecision, PrecisionConfig
from earlybird.settings import leaves, markdown_table
from earlybird.training.recipe import Recipe
from conftest import TinyVGG

README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS_PAGE = README.parent / "docs" / "loop.md"


def test_the_default_rule_is_plateau_everywhere(x32):
    assert eb.EarlyBirdConfig().criterion == "plateau"
    pruner = eb.EarlyBirdPruner(TinyVGG(), x32)
    assert pruner.config == eb.EarlyBirdConfig()             # no defaults of its own
    assert RunConfig().earlybird == eb.EarlyBirdConfig()
    args = parser().parse_args(["search"])
    assert _config(args) == RunConfig()                       # the CLI adds no defaults either


def test_the_pruner_takes_a_config_and_keyword_arguments_build_one(x32):
    config = eb.EarlyBirdConfig(ratios=[0.5], window=3, criterion="reference")
    assert eb.EarlyBirdPruner(TinyVGG(), x32, config=config).config == config
    over = eb.EarlyBirdPruner(TinyVGG(), x32, [0.3], config=config, epsilon=0.2).config
    assert (over.ratios, over.window, over.epsilon, over.criterion) == ((0.3,), 3, 0.2,
                                                                         "reference")
    with pytest.raises(TypeError, match=r"unknown settings \['windoww'\]; EarlyBirdConfig has"):
        eb.EarlyBirdPruner(TinyVGG(), x32, windoww=3)
    with pytest.raises(TypeError, match="config must be an EarlyBirdConfig, got dict"):
        eb.EarlyBirdPruner(TinyVGG(), x32, config={"window": 3})


def test_every_cli_option_comes_from_a_field_and_shows_its_default():
    search = parser()._subparsers._group_actions[0].choices["search"]
    options = {a.dest: a for a in search._actions}
    found = list(leaves(RunConfig))
    assert {".".join(leaf.path) for leaf in found} <= set(options)
    for leaf in found:
        action = options[".".join(leaf.path)]
        assert flag(leaf.name) in action.option_strings, leaf.name
        default = leaf.default
        shown = " ".join(map(str, default)) if leaf.many and default is not None else default
        assert action.help.endswith(f"(default {shown})"), (leaf.name, action.help)
        assert leaf.field.metadata["help"].replace("%", "%%") in action.help
    assert options["earlybird.sparsity"].option_strings == ["--sparsity", "--s"]
    assert options["earlybird.criterion"].choices == tuple(sorted(eb.CRITERIA))


def test_the_readme_states_the_pruners_settings_and_defaults():
    assert markdown_table(eb.EarlyBirdConfig) in SETTINGS_PAGE.read_text()


def test_run_config_nests_the_recipe_the_search_and_the_precision_and_round_trips():
    cfg = RunConfig(recipe=Recipe(epochs=8), earlybird=eb.EarlyBirdConfig(ratios=[0.5]),
                    precision=PrecisionConfig(search_precision="q8", q8=LowPrecision(wl_grad=6)))
    data = yaml.safe_load(yaml.safe_dump(cfg.as_dict()))
    assert data["recipe"]["schedule"] == [4, 6] and data["precision"]["q8"]["wl_grad"] == 6
    assert RunConfig.from_dict(data) == cfg
    # a flat config.yaml written by earlybird 0.1 still loads (and resumes)
    flat = {"epochs": 8, "ratios": [0.5], "s": 1e-4, "search_precision": "q8", "wl_grad": 6,
            "criterion": "plateau", "swa_start": 7}
    assert RunConfig.from_dict(flat) == cfg
    with pytest.raises(eb.ConfigError, match=r"unknown settings \['colour'\]; allowed: "):
        RunConfig.from_dict({"colour": 1})


@pytest.mark.parametrize("build, python, cli", [
    (lambda: LowPrecision(wl_weight=1), "wl_weight must be an integer in [2, 32], got 1",
     "--wl-weight must be an integer in [2, 32], got 1"),
    (lambda: Recipe(momentum=-1), "momentum and weight_decay must be >= 0, gamma > 0",
     "--momentum and --weight-decay must be >= 0, --gamma > 0"),
    (lambda: RunConfig(check_every=0), "check_every must be >= 1 optimizer steps, got 0",
     "--check-every must be >= 1 optimizer steps, got 0"),
    (lambda: eb.EarlyBirdConfig(span=0), "span must be None or an integer >= 1 (steps), got 0",
     "--span must be None or an integer >= 1 (steps), got 0"),
])
def test_library_errors_name_fields_and_the_cli_names_its_flags(build, python, cli):
    with pytest.raises(eb.ConfigError) as err:
        build()
    assert str(err.value) == python and "--" not in str(err.value)
    assert err.value.render(flag) == cli


def test_every_preresnet_depth_the_settings_accept_builds():
    accepted = []
    for depth in range(8, 120):
        try:
            preresnet_block(depth)
        except ValueError:
            continue
        accepted.append(depth)
        check_arch("preresnet", depth)
        model = build_model("preresnet", depth, 10, width=0.25)
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert 26 in accepted and 47 in accepted and len(accepted) > 20
    assert RunConfig(arch="preresnet", depth=26).dense_model().fc.out_features == 10


def test_training_flops_use_one_backward_factor():
    from benchmarks.suite import costs
    assert inspect.signature(phase_cost).parameters["backward_factor"].default == BACKWARD_FACTOR
    for fn in (build_ledger, write_ledger):
        assert inspect.signature(fn).parameters["backward_factor"].default == BACKWARD_FACTOR
    report = parser()._subparsers._group_actions[0].choices["report"]
    assert next(a for a in report._actions if a.dest == "backward_factor").default == BACKWARD_FACTOR
    record = {"flops": 7, "images_per_epoch": 5, "epoch_s": [1.0]}
    assert costs.part(record, 1)["train_flops"] == BACKWARD_FACTOR * 7 * 5
    # no module spells the factor out again
    root = README.parent
    for path in [*root.glob("earlybird/**/*.py"), *root.glob("benchmarks/**/*.py")]:
        text = path.read_text()
        for pattern in ("3 * samples", "3.0 * ", "3 * forward", "BACKWARD_FACTOR = 3"):
            assert pattern not in text or path.name == "flops.py", (path, pattern)


def test_settings_classes_are_frozen_and_documented():
    for cls in (eb.EarlyBirdConfig, RunConfig, Recipe, PrecisionConfig, LowPrecision):
        assert cls.__dataclass_params__.frozen
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help") or dataclasses.is_dataclass(f.type) or f.name in (
                "recipe", "earlybird", "precision", "q8"), (cls.__name__, f.name)
            assert f"{f.name}:" in cls.__doc__, (cls.__name__, f.name)
