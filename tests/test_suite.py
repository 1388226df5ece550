"""The benchmark suite: method selection rules, configs, the cache and the report."""
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import earlybird as eb  # noqa: E402
from benchmarks import __main__ as cli, common, suite as S  # noqa: E402
from benchmarks.suite import methods  # noqa: E402
from benchmarks.suite.methods.eb_train import TRANSFORMER_VARIANTS  # noqa: E402
from conftest import TinyResidual, TinyVGG, failure  # noqa: E402
from forked import torchrun  # noqa: E402  (ranks forked with earlybird imported)


# ----------------------------------------------------------------------------- selection rules
def test_global_magnitude_masks_prune_exactly_the_lowest_and_keep_earlier_prunes():
    torch.manual_seed(0)
    scores = {"a": torch.randn(4, 3), "b": torch.randn(10)}
    masks = methods.global_magnitude_masks(scores, 0.5)
    flat = torch.cat([s.abs().flatten() for s in scores.values()])
    kept = torch.cat([m.flatten() for m in masks.values()])
    assert int((kept == 0).sum()) == 11                        # round(0.5 * 22)
    assert flat[kept == 1].min() > flat[kept == 0].max()        # one global threshold
    # a second round at a higher sparsity keeps everything pruned before pruned, whatever its score
    boosted = {k: torch.where(masks[k] == 0, torch.full_like(v, 100.0), v) for k, v in scores.items()}
    again = methods.global_magnitude_masks(boosted, 0.75, already=masks)
    assert all(bool((again[k][masks[k] == 0] == 0).all()) for k in scores)
    assert int(sum((m == 0).sum() for m in again.values())) == 16     # round(0.75 * 22)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        methods.global_magnitude_masks(scores, 1.0)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9])
def test_global_magnitude_masks_equal_the_first_of_a_stable_sort_with_ties(sparsity):
    g = torch.Generator().manual_seed(3)
    scores = {"a": torch.randint(-4, 5, (7, 5), generator=g).float(),      # many ties
              "b": torch.randint(-4, 5, (30,), generator=g).float()}
    flat = torch.cat([s.abs().flatten().double() for s in scores.values()])
    k = int(round(sparsity * flat.numel()))
    expected = torch.ones_like(flat)
    expected[torch.sort(flat, stable=True).indices[:k]] = 0
    masks = methods.global_magnitude_masks(scores, sparsity)
    assert torch.equal(torch.cat([m.flatten().double() for m in masks.values()]), expected)


def test_greedy_removal_matches_brute_force_on_the_first_choice_and_cancels_pairs():
    torch.manual_seed(1)
    contrib = torch.randn(50, 6, dtype=torch.float64)
    removed = methods.greedy_removal(contrib, 3)
    assert len(set(removed)) == 3
    first = min(range(6), key=lambda c: float((contrib[:, c] ** 2).sum()))
    assert removed[0] == first
    # each later pick minimises the error of the removed set given the earlier picks
    for i in range(1, 3):
        base = contrib[:, removed[:i]].sum(1)
        rest = [c for c in range(6) if c not in removed[:i]]
        assert removed[i] == min(rest, key=lambda c: float(((base + contrib[:, c]) ** 2).sum()))


def test_thinet_removes_channels_the_next_layer_ignores():
    model = TinyVGG()
    with torch.no_grad():
        model.features[3].weight[:, [1, 3]] = 0              # conv2 ignores channels 1, 3 of conv1
    pruner = eb.EarlyBirdPruner(model, torch.zeros(1, 3, 8, 8), [0.5], keep_weights=False)
    batches = [(torch.randn(8, 3, 8, 8), torch.zeros(8, dtype=torch.long))]
    keep = methods.thinet_masks(pruner, batches, 0.5, samples=256)
    assert keep["features.0"].tolist() == [True, False, True, False]
    # every group loses round(0.5 * size) channels: ThiNet prunes each layer at the same ratio
    assert {k: int((~v).sum()) for k, v in keep.items()} == {"features.0": 2, "features.3": 3,
                                                              "features.6": 4}


def test_thinet_calibration_takes_exactly_the_configured_number_of_images():
    batches = [(torch.arange(i * 125, (i + 1) * 125).view(125, 1).float(),
                torch.arange(i * 125, (i + 1) * 125)) for i in range(3)]
    taken = S.take_images(batches, 256)
    assert [len(x) for x, _ in taken] == [125, 125, 6]
    assert torch.cat([y for _, y in taken]).tolist() == list(range(256))
    assert torch.equal(torch.cat([x for x, _ in taken]).flatten().long(), torch.arange(256))
    assert [len(x) for x, _ in S.take_images(batches, 100)] == [100]
    assert sum(len(x) for x, _ in S.take_images(batches, 1000)) == 375


def test_filter_scores_sum_the_coupled_filters():
    model = TinyResidual()
    graph = eb.EarlyBirdPruner(model, torch.zeros(1, 3, 8, 8), [0.5], score="weight").graph
    scores = graph.layout.split(graph.filter_scores(lambda m: m.weight.abs().flatten(1).sum(1)))
    l1 = lambda conv: conv.weight.detach().abs().flatten(1).sum(1).double()   # noqa: E731
    # the residual group sums stem conv and conv2 (both write the 8 residual channels)
    assert torch.allclose(scores["stem.0"], l1(model.stem[0]) + l1(model.conv2))
    assert torch.allclose(scores["conv1"], l1(model.conv1))
    with pytest.raises(ValueError, match="score='weight'"):
        eb.EarlyBirdPruner(model, torch.zeros(1, 3, 8, 8)).graph.filter_scores(l1)


def test_channel_lt_prunes_the_same_share_of_every_layer_by_filter_magnitude():
    # the mini setting's VGG-11: raw summed |w| grows with fan-in, so one global cut at p = 0.5
    # leaves the first conv a single channel; ranking within each layer cuts half of each
    model = common.build(S.load_suite("mini").setting, 0)
    pruner = eb.EarlyBirdPruner(model, torch.zeros(1, 3, 32, 32), [0.5], score="weight")
    raw = pruner.graph.filter_scores(lambda m: m.weight.abs().flatten(1).sum(1))
    assert int(pruner.keep_masks(raw, 0.5)[pruner.layout.names[0]].sum()) == 1
    keep = pruner.keep_masks(methods.layer_ranks(raw, pruner.layout), 0.5)
    sizes = dict(zip(pruner.layout.names, pruner.layout.sizes))
    assert {n: int(k.sum()) for n, k in keep.items()} == {n: s // 2 for n, s in sizes.items()}
    for name, scores in pruner.layout.split(raw).items():    # the largest filters stay
        assert scores[keep[name]].min() > scores[~keep[name]].max()
    # channels pruned in an earlier round (score -1) go first, then the smallest survivors
    layout = eb.search.masks.ChannelLayout(("a",), (4,))
    assert methods.layer_ranks(torch.tensor([3., -1., 1., 2.]), layout).tolist() == [
        0.875, 0.125, 0.375, 0.625]
    with pytest.raises(ValueError, match=r"expected 4 scores, got shape \(3,\)"):
        methods.layer_ranks(torch.ones(3), layout)


def test_random_widths_keep_each_layers_count_and_differ_by_seed():
    keep = {"a": torch.tensor([True, False, True, False, False]), "b": torch.ones(3, dtype=torch.bool)}
    r0, r0b, r1 = (methods.random_widths(keep, s) for s in (0, 0, 1))
    assert {k: int(v.sum()) for k, v in r0.items()} == {"a": 2, "b": 3}
    assert all(torch.equal(r0[k], r0b[k]) for k in keep)
    assert torch.equal(r0["b"], keep["b"])                     # a full layer stays full
    # layer a has C(5, 2) = 10 choices: seeds 0..7 do not all draw seed 0's
    assert any(not torch.equal(methods.random_widths(keep, s)["a"], r0["a"]) for s in range(1, 8))


def test_snip_saliency_is_gradient_times_weight_of_every_prunable_layer():
    model = TinyVGG()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    sal = methods.snip_saliency(model, [(x, y)])
    assert list(sal) == ["features.0.weight", "features.3.weight", "features.6.weight"]
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert torch.allclose(sal["features.3.weight"], (model.features[3].weight.grad *
                                                      model.features[3].weight).abs())


# ----------------------------------------------------------------------------- configs and CLI
def _write(tmp_path, **raw):
    path = tmp_path / "s.json"
    base = {"arch": "vgg", "depth": 11, "width": 0.25, "epochs": 4, "schedule": [2, 3]}
    path.write_text(json.dumps({**base, **raw}))
    return str(path)


@pytest.mark.parametrize("raw, message", [
    ({"colour": 1}, r"unknown keys \['colour'\]; allowed:"),
    ({"methods": ["eb", "magic"]}, r"unknown methods \['magic'\]; choose from \['dense', 'eb'"),
    ({"ratios": [0.5, 1.0]}, r"ratios must be in \(0, 1\), got \[0.5, 1.0\]"),
    ({"schedule": [2, 9]}, r"lr decay epochs inside \(0, 4\)"),
    ({"rewind_epoch": 4}, r"rewind_epoch must be in \[0, 4\), got 4"),
    ({"dataset": "mnist"}, r"unknown dataset 'mnist'; choose from \['packed', 'cifar10'"),
    ({"seeds": []}, "needs at least one seed"),
])
def test_bad_configs_are_refused_with_the_allowed_values(tmp_path, raw, message):
    with pytest.raises(ValueError, match=message):
        S.load_suite(_write(tmp_path, **raw))


def test_every_shipped_config_loads_and_names_a_known_setting():
    names = S.settings()
    assert {"quick", "mini", "vgg16-cifar10", "vgg16-cifar100", "preresnet101-cifar10",
            "preresnet101-cifar100", "resnet18-imagenet", "resnet50-imagenet"} <= set(names)
    quick = S.load_suite("quick")
    assert (quick.methods, quick.ratios, quick.seeds) == (("dense", "eb", "eb-plateau", "ns"), (0.5,),
                                                          (0, 1))
    assert S.load_suite("vgg16-cifar100").ratios == (0.1, 0.3, 0.5)
    # every method but the transformer search settings' variants and random-kind, the random
    # tickets of eb-kind's widths (on a VGG each is eb, or random, again)
    assert set(S.load_suite("mini").methods) == \
        set(S.METHODS) - set(TRANSFORMER_VARIANTS) - {"random-kind"}
    with pytest.raises(ValueError, match=r"unknown setting 'nope'; choose from \["):
        S.load_suite("nope")


def test_cli_refuses_bad_selections(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "nope"])
    assert "unknown setting 'nope'" in capsys.readouterr().err
    assert cli.main(["run", "quick", "--methods", "snip"]) == 2
    assert "--methods ['snip'] are not in setting quick" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "quick", "--jobs", "0"])
    assert "--jobs must be >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- cache, rows, report
def _tiny(tmp_path, methods_=("dense", "eb", "ns", "lt", "lt-channel-iter", "snip-channel",
                              "thinet", "random")):
    return S.dry_run(replace(S.load_suite("mini"), methods=tuple(methods_)))


def test_a_dry_run_trains_every_method_and_rows_carry_their_costs(tmp_path):
    suite = _tiny(tmp_path)
    rows = S.run(suite, tmp_path, 1, progress=lambda line: None)
    by = {r["method"]: r for r in rows}
    assert set(by) == set(suite.methods) and len(rows) == len(S.plan(suite)) == 8
    dense = by["dense"]
    # 2 epochs x 4 images x 3 x forward MACs
    assert dense["train_flops"] == 3 * dense["flops"] * 4 * 2
    # EB: its search epochs (dense MACs) + its own epochs (pruned MACs); not drawn in 2 epochs,
    # so it prunes at the last epoch boundary before the end and trains one epoch
    e = by["eb"]
    assert (e["draw_epoch"], e["drawn"], e["epochs_trained"]) == (1, False, 1)
    assert e["train_flops"] == 3 * 4 * (e["dense_flops"] * 1 + e["flops"] * 1)
    assert by["ns"]["train_flops"] == 3 * 4 * (2 * e["dense_flops"] + 2 * by["ns"]["flops"])
    assert by["ns"]["flops"] < by["ns"]["dense_flops"]
    # one-shot LT reaches exactly the sparsity asked for over the prunable weights
    n = sum(w.numel() for w in methods.prunable_weights(common.build(suite.setting, 0)).values())
    assert by["lt"]["sparsity"] == pytest.approx(round(0.3 * n) / n)
    assert by["random"]["widths"] and by["thinet"]["flops"] < by["thinet"]["dense_flops"]
    # a second run reads every row from the cache: nothing trains
    calls = []
    real = common.train
    common.train = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = S.run(suite, tmp_path, 1, progress=lambda line: None)
    finally:
        common.train = real
    assert calls == [] and again == rows


def test_parallel_resume_reruns_no_stage_of_a_seed_whose_rows_are_cached(tmp_path):
    # a cache whose stage files were lost (only the JSON rows are committed): the two-worker
    # run recomputes the stages only of the seed with a row missing, and returns every row
    suite = replace(_tiny(tmp_path, ("dense", "eb")), seeds=(0, 1))
    rows = S.run(suite, tmp_path, 1, progress=lambda line: None)
    root = tmp_path / suite.name
    for f in root.glob("seed*/*.pt"):
        f.unlink()
    (root / "seed1" / "eb-p0.3.json").unlink()
    lines: list[str] = []
    again = S.run(suite, tmp_path, 2, progress=lines.append)
    assert sorted(p.name for p in (root / "seed0").glob("*.pt")) == []
    assert {p.name for p in (root / "seed1").glob("*.pt")} >= {"slim.pt", "slim-e0.pt"}
    assert "dense.pt" not in {p.name for p in (root / "seed1").glob("*.pt")}
    key = lambda r: (r["method"], r["ratio"] or 0, r["seed"])
    assert sorted(map(key, again)) == sorted(map(key, rows)) and len(lines) == len(rows) == 4
    assert [r for r in again if key(r) != ("eb", 0.3, 1)] == [
        r for r in rows if key(r) != ("eb", 0.3, 1)]


def test_a_cache_made_with_other_settings_is_refused(tmp_path):
    suite = _tiny(tmp_path, ("dense",))
    S.run(suite, tmp_path, 1, progress=lambda line: None)
    other = replace(suite, setting=replace(suite.setting, lr=0.05))
    with pytest.raises(ValueError, match=r"was made with different settings \(\['lr'\]\); pass "
                       "--fresh"):
        S.run(other, tmp_path, 1, progress=lambda line: None)


def _row(method, ratio, seed, acc, flops, wall, **kw):
    return {"method": method, "ratio": ratio, "seed": seed, "test_acc": acc,
            "train_flops": flops, "energy_j": flops * 4.6e-12, "wall_s": wall,
            "params": 100, "flops": kw.pop("final_flops", 50), "dense_params": 200,
            "dense_flops": 100, **kw}


def test_summary_improvement_and_performance_bar_from_known_rows():
    suite = replace(S.load_suite("quick"), methods=("dense", "eb", "ns", "snip", "lt"))
    rows = [_row("dense", None, 0, 90.0, 60.0, 100.0, final_flops=100, epoch_s=10.0),
            _row("dense", None, 1, 92.0, 60.0, 100.0, final_flops=100, epoch_s=10.0),
            _row("eb", 0.5, 0, 88.0, 25.0, 40.0, draw_epoch=2, epoch_s=6.0),
            _row("eb", 0.5, 1, 90.0, 25.0, 40.0, draw_epoch=4, epoch_s=6.0),
            _row("ns", 0.5, 0, 89.5, 90.0, 120.0, epoch_s=6.0),
            _row("ns", 0.5, 1, 89.5, 90.0, 120.0, epoch_s=6.0),
            _row("snip", 0.5, 0, 85.0, 30.0, 50.0), _row("snip", 0.5, 1, 86.0, 30.0, 50.0)]
    # an unstructured ticket: the quick VGG-11 (579,098 parameters, 576,432 of them in the
    # prunable convs) at 50 % sparsity keeps 579,098 - 288,216 nonzero
    rows += [_row("lt", 0.5, s, 91.0, 100.0, 130.0, params=579098, dense_params=579098,
                  sparsity=0.5) for s in (0, 1)]
    summary = S.summarize(suite, rows)
    imp = summary["improvement"]["0.5"]
    assert (imp["best_competitor"], imp["cheapest_competitor"]) == ("lt", "snip")
    assert imp["acc_delta"] == pytest.approx(-2.0) and imp["train_flops_saving"] == pytest.approx(1.2)
    assert imp["best_channel_competitor"] == "ns" and imp["channel_acc_delta"] == pytest.approx(-0.5)
    lt = next(e for e in summary["table"] if e["method"] == "lt")
    assert lt["nonzero_params"] == 290882 and "nonzero_params" not in summary["table"][0]
    assert list(summary["bar"]) == ["eb"]
    bar = summary["bar"]["eb"]
    assert bar["flops_ratio"] == pytest.approx(3.6) and bar["wall_ratio"] == pytest.approx(3.0)
    assert bar["acc_gap"] == pytest.approx(0.5) and bar["draw_share"] == pytest.approx(3 / 16)
    assert bar["step_speedup"] == pytest.approx(10 / 6) and bar["flops_reduction"] == 2.0
    assert all(bar["pass"].values())
    text = S.markdown(suite, summary, {"command": "c", "machine": "m", "wall_min": 1.0,
                                       "date": "d", "train_images": 20000, "test_images": 10000})
    assert "| 0.5 | eb | 89.00 ± 1.41 |" in text and "- all met" in text
    assert "| 0.291M nonzero (1.99x) |" in text and "| -2.00 (lt) | -0.50 (ns) | 1.20x (snip) |" in text


def test_report_reads_the_bar_for_the_default_budget_and_names_every_cpu_of_its_rows():
    # eb-kind (a threshold per kind of unit, the library's default) is an EB run the report
    # compares with NS; rows from two CPU models are named, the machine line names only one
    suite = replace(S.load_suite("vit-cifar"), methods=("dense", "eb", "eb-kind", "ns"),
                    ratios=(0.5,))
    xeon, epyc = {"host": {"cpu": "Xeon"}}, {"host": {"cpu": "EPYC"}}
    rows = [_row("dense", None, 0, 49.0, 60.0, 100.0, final_flops=100, epoch_s=10.0, **xeon),
            _row("eb", 0.5, 0, 38.0, 25.0, 40.0, draw_epoch=12, epoch_s=6.0, **xeon),
            _row("eb-kind", 0.5, 0, 44.0, 30.0, 45.0, draw_epoch=8, epoch_s=6.0, **epyc),
            _row("ns", 0.5, 0, 51.0, 90.0, 120.0, epoch_s=6.0, **xeon)]
    summary = S.summarize(suite, rows)
    assert list(summary["bar"]) == ["eb", "eb-kind"]
    assert summary["bar"]["eb-kind"]["acc_gap"] == pytest.approx(7.0)
    assert summary["bar"]["eb-kind"]["flops_ratio"] == pytest.approx(3.0)
    imp = summary["improvement"]["0.5"]
    assert (imp["eb_method"], imp["best_competitor"]) == ("eb-kind", "ns")
    assert imp["acc_delta"] == pytest.approx(-7.0)
    text = S.markdown(suite, summary, {"command": "c", "machine": "m (EPYC)", "wall_min": 1.0,
                                       "date": "d", "train_images": 10000, "test_images": 10000})
    assert "## Performance bar at p = 0.5 (eb-kind vs NS)" in text
    assert text.count("- rows computed on: ") == 1
    assert "- rows computed on: EPYC (eb-kind p0.5); the others on Xeon\n" in text
    assert "The most accurate EB run (a rule, or eb-kind" in text
    one = S.markdown(suite, S.summarize(suite, [{**r, **xeon} for r in rows]),
                     {"command": "c", "machine": "m", "wall_min": 1.0, "date": "d",
                      "train_images": 10000, "test_images": 10000})
    assert "rows computed on" not in one


def test_report_renders_stored_results_again_and_keeps_their_meta(tmp_path, capsys):
    suite = replace(S.load_suite("quick"), methods=("dense", "eb", "ns"))
    rows = [_row("dense", None, 0, 90.0, 60.0, 100.0, final_flops=100, epoch_s=10.0),
            _row("eb", 0.5, 0, 88.0, 25.0, 40.0, draw_epoch=2, epoch_s=6.0),
            _row("ns", 0.5, 0, 89.5, 90.0, 120.0, epoch_s=6.0)]
    meta = {"command": "python -m benchmarks run quick", "machine": "m", "wall_min": 26.8,
            "date": "d", "train_images": 20000, "test_images": 10000}
    S.write_results(suite, rows, tmp_path, meta)
    readme, stored = (tmp_path / "README.md").read_text(), (tmp_path / "results.json").read_text()
    (tmp_path / "README.md").write_text("an older format")
    assert cli.main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "README.md").read_text() == readme and readme in capsys.readouterr().out
    assert (tmp_path / "results.json").read_text() == stored
    assert "- wall-clock: 26.8 min (this invocation" in readme
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope' / 'results.json'} does not exist" in capsys.readouterr().err


# A CIFAR-100 setting is its CIFAR-10 twin with a 100-class head, its own data and ratios: the
# twin's dry run covers every method on the network, the CIFAR-100 one every method that
# builds, trains or prunes a head (dense, EB Train, NS and the lottery ticket)
TWINS = {"vgg16-cifar100": "vgg16-cifar10", "preresnet101-cifar100": "preresnet101-cifar10"}
# A deeper or wider network of a family whose cheapest setting runs every method through the same
# code: its dry run covers the methods that meet the network's own layers (its blocks traced,
# scored and pruned by channels, by weights and layer by layer). mini is CifarVGG-11 at width
# 0.25, resnet18-imagenet torchvision's ResNet with basic blocks; ResNet-50 adds bottlenecks;
# PreResNet-101 (bottlenecks) has the PreResNet-20 at width 0.25 (basic blocks) of its setting.
KIN = {"vgg16-cifar10": "mini", "resnet50-imagenet": "resnet18-imagenet",
       "preresnet101-cifar10": "preresnet20-w0.25"}
MODEL_FACING = ("dense", "eb", "ns", "lt", "lt-channel", "snip-channel", "thinet")


def _load(name):
    """A shipped setting, or preresnet101-cifar10's own setting with a PreResNet-20 at width 0.25."""
    if name != "preresnet20-w0.25":
        return S.load_suite(name)
    suite = S.load_suite("preresnet101-cifar10")
    return replace(suite, name=name, setting=replace(suite.setting, depth=20, width=0.25))


def test_a_setting_of_a_family_is_covered_by_a_setting_that_runs_every_method():
    for name, every in KIN.items():
        a, b = S.load_suite(name), _load(every)
        family = [s.setting.arch.rstrip("0123456789") for s in (a, b)]   # resnet50 -> resnet
        assert family[0] == family[1] and set(a.methods) <= set(b.methods)
        assert set(MODEL_FACING) <= set(a.methods)


def test_a_cifar100_setting_differs_from_its_twin_only_in_classes_data_and_ratios():
    for name, twin in TWINS.items():
        a, b = S.load_suite(name), S.load_suite(twin)
        assert (a.setting.num_classes, a.setting.dataset) == (100, "cifar100")
        assert replace(a.setting, num_classes=10, dataset="cifar10") == b.setting
        assert replace(a, name=twin, setting=b.setting, ratios=b.ratios,
                       description=b.description) == b


@pytest.mark.parametrize("name", ["vgg16-cifar10", "vgg16-cifar100", "preresnet101-cifar10",
                                  "preresnet101-cifar100", "preresnet20-w0.25",
                                  "resnet18-imagenet", "resnet50-imagenet", "mini",
                                  "vgg16-cifar10-fast", "converged", "vit-cifar"])
def test_dry_run_builds_every_model_loader_and_method_of_the_setting(name, tmp_path):
    # the GPU settings cannot train here; their dry run trains every method one optimizer step
    # per epoch on random 32 px images of the setting's classes, through the same code
    suite = _load(name)
    if name in TWINS:
        suite = replace(suite, methods=("dense", "eb", "ns", "lt"))
    elif name in KIN:
        suite = replace(suite, methods=MODEL_FACING)
    rows = cli.dry_run(suite, tmp_path, progress=lambda line: None)
    assert sorted(r["method"] for r in rows) == sorted(suite.methods)
    for r in rows:
        if r["method"] == "stability":
            assert r["eb_distance"] > 0 and r["random_distance"] > 0
            continue
        assert r["train_flops"] > 0 and r["params"] <= r["dense_params"]
        if r["method"] not in ("dense", "lt", "lt-iter", "snip"):       # channel methods shrink
            assert r["flops"] < r["dense_flops"], r["method"]
    head = common.build(suite.setting, 0)
    assert rows[0]["dense_params"] == sum(p.numel() for p in head.parameters())
    if suite.setting.arch == "vit":                 # MLP units and whole heads were pruned
        ns = next(r for r in rows if r["method"] == "ns")
        assert ns["flops"] < ns["dense_flops"]
        # each transformer setting's variant: what its ticket prunes, by kind (an embedding
        # of 96 channels, 4 MLPs of 384 units, 4 x 3 heads of 32 dimensions)
        shares = {r["method"]: r["kind_shares"] for r in rows if r["method"].startswith("eb")}
        assert set(shares["eb"]) == {"channels", "units", "heads"}
        assert set(shares["eb-dims"]) == {"channels", "units", "head_dims"}
        assert set(shares["eb-keep"]) == {"units", "heads"}          # the embedding stays whole
        p = next(r["ratio"] for r in rows if r["method"] == "eb-kind")
        assert shares["eb-kind"] == {k: eb.prune_budget(n, p) / n for k, n in
                                     (("channels", 96), ("units", 1536), ("heads", 12))}
        flops = {r["method"]: r["flops"] for r in rows}
        assert flops["random-kind"] == flops["eb-kind"]      # the same widths, other channels
    assert not (tmp_path / suite.name).exists()                        # the dry run cleans up


DDP_CONFIG = {"description": "two gloo ranks", "arch": "vgg", "depth": 11, "width": 0.25,
              "dataset": "synthetic", "train_images": 16, "test_images": 10, "epochs": 2,
              "schedule": [1], "batch_size": 8, "ratios": [0.5], "seeds": [0],
              "methods": ["dense", "eb", "ns", "lt", "snip", "snip-channel", "thinet", "ll"],
              "rewind_epoch": 1, "lt_rounds": 1, "thinet_images": 8, "jobs": 1}


def test_torchrun_trains_every_method_data_parallel_and_rank0_writes(tmp_path):
    # two gloo ranks on CPU, as torchrun runs the ImageNet settings on GPUs; ll covers q8,
    # whose stochastic rounding differs per process (the ranks must still draw one ticket)
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(DDP_CONFIG))
    out = torchrun("-m", "benchmarks", "run", str(config), "--cache", str(tmp_path / "cache"),
                   "--out", str(tmp_path / "out"))
    assert out.returncode == 0, failure(out)
    assert out.stdout.count("seed 0:") == 8                 # one progress line per job, rank 0 only
    # every rank stays in the group until rank 0 has reported (a rank that left early made rank
    # 0's report lose its collectives, and gloo's teardown abort now and then)
    assert "no mask distances" not in out.stderr and "terminate called" not in out.stderr
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    meta = result["meta"]
    assert "torchrun, 2 data-parallel processes" in meta["machine"]
    assert meta["command"].startswith("torchrun --nproc_per_node=N -m benchmarks run ")
    # 4 images per rank per step: the epoch still covers all 16 images, the test set all 10
    assert (meta["train_images"], meta["test_images"]) == (16, 10)
    by = {r["method"]: r for r in result["rows"]}
    assert set(by) == set(DDP_CONFIG["methods"])
    assert by["dense"]["train_flops"] == 3 * by["dense"]["flops"] * 16 * 2
    e = by["eb"]
    assert e["train_flops"] == 3 * 16 * (e["dense_flops"] * e["draw_epoch"]
                                         + e["flops"] * (2 - e["draw_epoch"]))
    assert by["lt"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert sorted(p.name for p in (tmp_path / "cache" / "ddp" / "seed0").glob("*.json")) == \
        sorted(f"{m}.json" if m == "dense" else f"{m}-p0.5.json" for m in DDP_CONFIG["methods"])


def test_imagenet_loaders_shard_by_rank(tmp_path, monkeypatch):
    from PIL import Image
    for split in ("train", "val"):
        for c, color in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
            folder = tmp_path / split / c
            folder.mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (40, 40), color).save(folder / f"{i}.jpg")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    setting = common.Setting(dataset="imagenet", data=str(tmp_path), batch_size=4,
                             num_classes=2, image_size=224)
    data = common.load_data(setting, seed=3)
    sampler = data.train.sampler
    assert isinstance(sampler, torch.utils.data.DistributedSampler)
    assert (sampler.rank, sampler.num_replicas, sampler.seed) == (1, 2, 3)
    assert data.train.batch_size == 2 and len(data.train) == 2      # 10 images: 5 per rank
    assert list(data.test.dataset.indices) == [1, 3, 5, 7, 9]      # every image once over ranks
    data.train.set_epoch(4)
    assert sampler.epoch == 4
    with pytest.raises(ValueError, match="batch_size 5 must be a multiple of the number of "
                                         "processes \\(2\\)"):
        common.load_data(replace(setting, batch_size=5), seed=0)


def test_weight_distance_is_relative_to_the_first_copy():
    a, b = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[3.0, 4.0]]))
        b.weight.copy_(torch.tensor([[3.0, 1.0]]))
    assert S.weight_distance(a, b) == pytest.approx(3 / 5)
    assert S.weight_distance(a, a) == 0.0


def test_stability_measures_only_the_data_order(tmp_path, monkeypatch):
    suite = replace(_tiny(tmp_path, ("stability",)), setting=replace(
        _tiny(tmp_path).setting, train_images=16, batch_size=4))
    rows = S.run(suite, tmp_path, 1, progress=lambda line: None)
    (row,) = rows
    assert (row["draw_epoch"], row["epochs_trained"]) == (1, 1)
    assert row["eb_distance"] > 0 and row["random_distance"] > 0
    assert len(row["eb_accs"]) == len(row["random_accs"]) == 2
    text = S.markdown(suite, S.summarize(suite, rows), {"train_images": 16, "test_images": 4,
                      "command": "c", "machine": "m", "wall_min": 0, "date": "d"})
    assert "## Stability to SGD noise" in text and f"| {suite.ratios[0]:g} | 1.0 |" in text
    # with one data order for both copies, training is deterministic: the copies coincide
    (tmp_path / "same").mkdir()
    real = common.load_data
    monkeypatch.setattr(common, "load_data", lambda st, seed: real(st, seed % 1000))
    (same,) = S.run(suite, tmp_path / "same", 1, progress=lambda line: None)
    assert same["eb_distance"] == 0.0 and same["random_distance"] == 0.0
    assert same["eb_accs"][0] == same["eb_accs"][1]


def _budget_suite(tmp_path):
    raw = {"arch": "vgg", "depth": 11, "width": 0.125, "dataset": "synthetic",
           "train_images": 16, "test_images": 8, "batch_size": 4, "epochs": 8,
           "schedule": [4, 6], "ratios": [0.5], "seeds": [0], "checks_per_epoch": 2,
           "claims": True, "methods": ["dense", "eb", "eb-plateau", "ns", "ns-budget", "random"]}
    return S.suite_from_dict(raw, "budget")


def test_ns_budget_spends_eb_trains_flops_and_checks_run_inside_epochs(tmp_path):
    suite = _budget_suite(tmp_path)
    rows = S.run(suite, tmp_path, 1, progress=lambda line: None)
    by = {r["method"]: r for r in rows}
    slim = S.stage_slim(suite, 0, tmp_path / "budget" / "seed0")
    # 4 steps per epoch, a check every 2: masks at steps 0, 2, ..., 32
    assert [int(s) for s in slim["steps"]] == list(range(0, 33, 2))
    eb_row, budget = by["eb-plateau"], by["ns-budget"]
    assert eb_row["rule"] == "plateau" and eb_row["draw_at"] * 2 == int(eb_row["draw_at"] * 2)
    # pruned at the epoch boundary after the check that drew it (or before the end)
    assert eb_row["draw_epoch"] == min(math.ceil(eb_row["draw_at"]), suite.setting.epochs - 1)
    # ns-budget: a shortened slimming run and finetune whose FLOPs are EB Train's within 5 %
    assert budget["budget_flops"] == eb_row["train_flops"]
    assert abs(budget["train_flops"] / eb_row["train_flops"] - 1) <= 0.05
    n, m = budget["slim_epochs"], budget["finetune_epochs"]
    assert budget["train_flops"] == 3 * 16 * (n * budget["dense_flops"] + m * budget["flops"])
    assert n < suite.setting.epochs and budget["epochs_trained"] == m
    assert budget["train_flops"] < by["ns"]["train_flops"]
    text = (tmp_path / "out" / "README.md")
    S.write_results(suite, rows, tmp_path / "out", {"command": "c", "machine": "m",
                    "wall_min": 0, "date": "d", "train_images": 16, "test_images": 8})
    readme = text.read_text()
    assert "## Does EB Train deliver?" in readme and "| eb-plateau | 0.5 |" in readme
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 10_000


def test_claims_are_read_from_the_table():
    suite = replace(S.load_suite("quick"), methods=("dense", "eb", "eb-plateau", "ns", "random",
                                                    "ns-budget"), ratios=(0.3, 0.5), claims=True)
    rows = []
    for seed, shift in ((0, -0.5), (1, 0.5)):
        for ratio in (0.3, 0.5):
            rows += [_row("eb-plateau", ratio, seed, 80.0 + shift, 25.0, 40.0, draw_epoch=3,
                          draw_at=2.5),
                     _row("eb", ratio, seed, 79.0 + shift, 35.0, 50.0, draw_epoch=8),
                     _row("ns", ratio, seed, 80.4 + shift, 90.0, 120.0),
                     _row("random", ratio, seed, 77.0 + 2 * shift, 35.0, 50.0),
                     _row("ns-budget", ratio, seed, 78.0, 25.5, 41.0)]
    found = S.summarize(suite, rows)["claims"]
    a = {(e["method"], e["ratio"]): e for e in found["a"]}
    assert a[("eb-plateau", 0.5)]["gap"] == pytest.approx(0.4) and a[("eb-plateau", 0.5)]["met"]
    assert a[("eb", 0.3)]["gap"] == pytest.approx(1.4) and not a[("eb", 0.3)]["met"]
    assert a[("eb-plateau", 0.3)]["flops_saving"] == pytest.approx(3.6)
    assert a[("eb-plateau", 0.3)]["wall_saving"] == pytest.approx(3.0)
    (b,) = [e for e in found["b"] if e["ratio"] == 0.5]       # the reference ticket vs random
    # sds 0.71 (eb) and 1.41 (random): pooled 1.12; 2.0 points < 2 x 1.12
    assert b["delta"] == pytest.approx(2.0) and b["pooled_sd"] == pytest.approx(1.118, abs=1e-3)
    assert not b["met"]
    c = {(e["method"], e["ratio"]): e for e in found["c"]}
    assert c[("eb-plateau", 0.5)]["share"] == pytest.approx(2.5 / 16) and c[("eb-plateau", 0.5)]["met"]
    assert c[("eb", 0.5)]["share"] == pytest.approx(0.5) and not c[("eb", 0.5)]["met"]
    (d, _) = found["d"]
    assert d["delta"] == pytest.approx(2.0) and d["flops_ratio"] == pytest.approx(25.5 / 25)
    assert d["met"]
    text = S.markdown(suite, S.summarize(suite, rows), {"command": "c", "machine": "m",
                      "wall_min": 1.0, "date": "d", "train_images": 1, "test_images": 1})
    assert "| eb-plateau | 0.5 | 80.00 | 80.40 | +0.40 | 3.60x | 3.00x | met |" in text
    assert "| eb | 0.5 | 79.00 | 77.00 | +2.00 | 1.12 | **missed** |" in text
    # settings without claims=True (quick, mini) render as they always have
    assert "claims" not in S.summarize(replace(suite, claims=False), rows)


def test_the_default_rules_claims_are_read_against_its_own_controls():
    # eb-default is judged against the random ticket of its widths and NS at its FLOPs, not
    # against the reference ticket's random control or eb-plateau's ns-budget
    suite = replace(S.load_suite("quick"), ratios=(0.5,), claims=True, methods=(
        "eb", "eb-plateau", "eb-default", "ns", "random", "random-default", "ns-budget",
        "ns-budget-default"))
    rows = []
    for seed, shift in ((0, -0.5), (1, 0.5)):
        rows += [_row("eb-default", 0.5, seed, 80.0 + shift, 30.0, 45.0, draw_epoch=3),
                 _row("eb", 0.5, seed, 79.0 + shift, 35.0, 50.0, draw_epoch=8),
                 _row("eb-plateau", 0.5, seed, 78.0 + shift, 25.0, 40.0, draw_epoch=2),
                 _row("ns", 0.5, seed, 80.4 + shift, 90.0, 120.0),
                 _row("random", 0.5, seed, 70.0, 35.0, 50.0),
                 _row("random-default", 0.5, seed, 76.0 + shift, 30.0, 45.0),
                 _row("ns-budget", 0.5, seed, 60.0, 25.5, 41.0),
                 _row("ns-budget-default", 0.5, seed, 79.5, 30.3, 46.0)]
    found = S.summarize(suite, rows)["claims"]
    b = {e["method"]: e for e in found["b"]}
    assert b["eb-default"]["delta"] == pytest.approx(4.0) and b["eb"]["delta"] == pytest.approx(9.0)
    d = {e["method"]: e for e in found["d"]}
    assert d["eb-default"]["delta"] == pytest.approx(0.5) and d["eb-default"]["flops_ratio"] == \
        pytest.approx(30.3 / 30.0)
    assert d["eb-plateau"]["delta"] == pytest.approx(18.0)
    assert [e["method"] for e in found["a"]] == ["eb-default", "eb-plateau", "eb"]   # default first


def test_a_transformers_masks_are_split_by_kind_and_render_again_from_the_results(tmp_path):
    # a 3-epoch ViT slimming run (issue #26: do the head and MLP masks settle early?)
    from benchmarks.suite.kinds import kind_distances
    small = S.dry_run(S.load_suite("vit-cifar"))
    small = replace(small, methods=("ns", "eb-kind"),
                    setting=replace(small.setting, epochs=3, schedule=(2,)))
    rows = S.run(small, tmp_path / "cache", 1, progress=lambda line: None)
    data = kind_distances(small, tmp_path / "cache")
    assert data["epochs"] == [0, 1, 2, 3] and data["seed"] == 0
    assert {k: e["units"] for k, e in data["kinds"].items()} == {
        "channels": 96, "units": 1536, "heads": 12}    # embedding, 4 MLPs of 384, 4 x 3 heads
    for entry in data["kinds"].values():
        matrix = torch.tensor(entry["ratios"]["0.3"])
        assert matrix.shape == (4, 4) and torch.equal(matrix, matrix.T)
        assert not matrix.diagonal().any() and bool((matrix[0, 1:] > 0).all())
        assert len(entry["pruned"]["0.3"]) == 4 and all(0 <= q <= 1 for q in entry["pruned"]["0.3"])
    # one global threshold: the kinds' pruned shares make up the ratio over all units
    last = {k: e["pruned"]["0.3"][-1] * e["units"] for k, e in data["kinds"].items()}
    assert round(sum(last.values())) == eb.prune_budget(96 + 1536 + 12, 0.3)
    # the default's search (a budget per kind): every mask prunes the ratio of each kind
    per_kind = kind_distances(small, tmp_path / "cache", tag="slim-kind")
    assert per_kind["search"] == "slim-kind" and data["search"] == "slim"
    assert {k: e["pruned"]["0.3"] for k, e in per_kind["kinds"].items()} == {
        k: [round(eb.prune_budget(n, 0.3) / n, 4)] * 4 for k, n in
        (("channels", 96), ("units", 1536), ("heads", 12))}
    meta = {"command": "c", "machine": "m", "wall_min": 1.0, "date": "d", "train_images": 4,
            "test_images": 4}
    out = tmp_path / "results"
    S.write_results(small, rows, out, meta, [data, per_kind])
    readme = (out / "README.md").read_text()
    assert "## Do the masks of each kind settle early?" in readme and "| heads | 12 | 0.3 |" in readme
    assert "## Do the masks of each kind settle early? (slim-kind)" in readme
    assert "`slim-kind` (heads=whole, residual=prune, budget=kind)" in readme
    assert "| pruned | settles at epoch | last change | of |" in readme
    # a budget per kind: 28 of 96 channels, 460 of 1,536 units, 3 of 12 heads at p = 0.3
    assert "| ratio | method | channels | units | heads |" in readme
    assert "| 0.3 | eb-kind | 29.2 % | 29.9 % | 25.0 % |" in readme
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"mask_distance_by_kind.png", "mask_distance_by_kind-slim-kind.png"} <= set(written)
    (out / "README.md").write_text("older")
    S.rewrite_results(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written


def test_a_settings_layout_is_checked_and_widths_keeps_the_multiples_of_8_rule(monkeypatch):
    raw = json.loads((common.ROOT / "configs" / "converged.json").read_text())
    with pytest.raises(ValueError, match=r"unknown layout 'nhwc'; choose from \['auto', 'widths'\]"):
        S.suite_from_dict({**raw, "layout": "nhwc"}, "converged")
    seen = []

    class Spy:                                     # the Trainer common.train would build
        def __init__(self, model, *args, layout=None, **kwargs):
            seen.append(layout)
            raise KeyboardInterrupt
    monkeypatch.setattr(common, "Trainer", Spy)
    data = common.Data([None], None)              # one batch: nothing is trained
    widths, auto = S.load_suite("converged").setting, S.load_suite("mini").setting
    for setting, net in ((widths, nn.Conv2d(3, 27, 3)), (widths, nn.Conv2d(8, 32, 3)),
                         (auto, nn.Conv2d(3, 27, 3))):
        with pytest.raises(KeyboardInterrupt):
            common.train(net, setting, data, 0, 1)
    # odd widths stay contiguous and multiples of 8 go channels_last, whatever the threads;
    # "auto" leaves the choice to the Trainer (channels_last for any conv net on one thread)
    assert seen == [torch.contiguous_format, torch.channels_last, None]


def test_the_progress_line_says_when_a_rule_never_drew():
    from benchmarks.suite import runner
    lines = []
    row = {"method": "eb", "ratio": 0.5, "seed": 1, "test_acc": 61.25, "draw_epoch": 7}
    for drawn in (True, False):
        runner._report(lines.append, 0.0, {**row, "drawn": drawn}, 2, 9)
    assert lines[0].endswith("2/9 eb p=0.5 seed 1: 61.25 %, drawn at epoch 7")
    assert lines[1].endswith("2/9 eb p=0.5 seed 1: 61.25 %, not drawn: the mask of epoch 7")
