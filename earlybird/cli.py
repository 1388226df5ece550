"""The ``earlybird`` command: search, prune, retrain, train, run and demo.

Settings of a run folder live in its ``config.yaml``: ``prune`` and ``retrain`` read them from
``--save``, so only the options given on their command line change anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .training import distributed
from .training.distributed import dist_env
from .errors import ConfigError, EarlyBirdError
from .extras import require
from .costs.flops import BACKWARD_FACTOR
from .pipeline import MODES, RunConfig
from .settings import Leaf, leaves

__all__ = ["main", "parser", "report_table", "flag", "DEMO"]

DEMO: dict[str, Any] = {
    "save": "runs/demo",
    "dataset": "cifar10-subset",
    "arch": "vgg",
    "depth": 11,
    "width": 0.125,
    "recipe": {"epochs": 16, "lr": 0.1},
    "batch_size": 128,
    "test_batch_size": 500,
    "sparsity_regularization": True,
    "full": True,
    "earlybird": {"sparsity": 1e-4, "ratios": [0.3, 0.5, 0.7]},
}
GROUPS = ("data", "model", "training", "early-bird", "8-bit training (q8)", "precision")


def flag(name: str) -> str:
    """The CLI spelling of a setting: ``wl_weight`` -> ``--wl-weight``."""
    return "--" + name.replace("_", "-")


def _option(group: Any, leaf: Leaf) -> None:
    """One option per leaf setting; help, choices and default come from its field."""
    meta, default = leaf.field.metadata, leaf.default
    shown = " ".join(map(str, default)) if leaf.many and default is not None else default
    kwargs: dict[str, Any] = {
        "default": argparse.SUPPRESS,
        "dest": ".".join(leaf.path),
        "help": f"{meta.get('help', '')} (default {shown})".replace("%", "%%"),
    }
    if leaf.kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
    else:
        kwargs["type"] = leaf.kind
        if leaf.many:
            kwargs["nargs"] = "+"
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
    group.add_argument(flag(leaf.name), *meta.get("flags", ()), **kwargs)


def _run_options(p: argparse.ArgumentParser) -> None:
    """Every leaf of :class:`RunConfig` becomes an option; only those given on the command
    line count (``prune`` and ``retrain`` read the rest from the run folder)."""
    found = list(leaves(RunConfig))
    names = [leaf.name for leaf in found]
    assert len(set(names)) == len(names), "two settings share a CLI name"
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    for leaf in found:
        _option(groups.get(leaf.group or "", p), leaf)
    p.add_argument("--resume", action="store_true", help="continue this run; skip done stages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    """The ``earlybird`` command line: one sub-command per stage, options from the settings."""
    top = argparse.ArgumentParser(
        prog="earlybird", description="Early-bird tickets: find the small network early, then train only it."
    )
    sub = top.add_subparsers(dest="command", required=True)
    for name, text in [
        ("search", "dense training with slimming until every ratio has a ticket"),
        ("prune", "turn a ticket into a physically pruned model file"),
        ("retrain", "train a pruned model (finetune from the ticket, or scratch)"),
        ("train", "plain dense baseline"),
        ("run", "search -> prune -> retrain in one go"),
        ("demo", "EB Train on the shipped CIFAR-10 subset, 3 ratios, with a table"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        _run_options(p)
        if name in ("prune", "retrain"):
            p.add_argument("--ratio", type=float, required=True)
        if name == "prune":
            p.add_argument("--force", action="store_true", help="prune by the last mask")
        if name in ("retrain", "run", "demo"):
            p.add_argument("--mode", choices=MODES, default="finetune")
        if name == "retrain":
            p.add_argument(
                "--start-epoch",
                type=int,
                default=None,
                help="finetune from this epoch (default: the ticket's draw epoch)",
            )
    p = sub.add_parser(
        "report",
        help="ledger.json and plots of run folders, and a table comparing their training cost",
        description="cost table and plots",
    )
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--no-plots", action="store_true", help="only the ledger and the table")
    p.add_argument(
        "--backward-factor",
        type=float,
        default=BACKWARD_FACTOR,
        help=f"training FLOPs per sample = factor x forward FLOPs ({BACKWARD_FACTOR:g})",
    )
    return top


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"earlybird.ratios": v}`` -> ``{"earlybird": {"ratios": v}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *outer, last = key.split(".")
        into = out
        for part in outer:
            into = into.setdefault(part, {})
        into[last] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _config(args: argparse.Namespace) -> RunConfig:
    given = _nest({k: v for k, v in vars(args).items() if k.split(".")[0] in RunConfig.__dataclass_fields__})
    base: dict[str, Any] = dict(DEMO) if args.command == "demo" else {}  # unresolved: the
    # demo's schedule follows --epochs
    save = Path(given.get("save", base.get("save", RunConfig.save)))
    if args.command in ("prune", "retrain") or (args.resume and (save / "config.yaml").is_file()):
        import yaml

        if not (save / "config.yaml").is_file():
            raise FileNotFoundError(
                f"{save}/config.yaml not found; is --save a run folder written by `earlybird search`?"
            )
        base = RunConfig.from_dict(yaml.safe_load((save / "config.yaml").read_text())).as_dict()
    return RunConfig.from_dict(_merge(base, given), "the command line")


def _progress(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    def bar(items: Iterable, desc: str, total: int) -> Iterable:
        return tqdm(
            items,
            desc=desc,
            total=total,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30,
        )

    return bar


def _table(summary: dict[str, Any]) -> str:
    dense = summary["dense"]
    lines = [
        f"{'ratio':>5}  {'drawn at epoch':>14}  {'params':>9}  {'MFLOPs':>8}  {'test acc':>8}",
        f"{'dense':>5}  {'-':>14}  {dense['params']:9,d}  {dense['flops'] / 1e6:8.2f}  "
        f"{dense['test_acc']:7.2f}%",
    ]
    for row in summary["retrain"]:
        lines.append(
            f"{row['ratio']:5.2f}  {row['draw_epoch']:14.1f}  {row['params']:9,d}  "
            f"{row['flops'] / 1e6:8.2f}  {row['test_acc']:7.2f}%"
        )
    for r in summary["missing"]:
        lines.append(f"{r:5.2f}  {'no ticket':>14}")
    for r in summary.get("drawn_at_the_end", []):
        lines.append(f"{r:5.2f}  {'at the end':>14}  (nothing left to finetune)")
    return "\n".join(lines)


def _say(text: str) -> None:
    if dist_env().main:  # under torchrun only rank 0 prints
        print(text)


def _report(args: argparse.Namespace) -> None:
    from .costs.ledger import build_ledger, LEDGER_FILE
    from .costs.plots import write_plots
    from .run.runs import RunDir

    rows = []
    for run in args.runs:
        ledger = build_ledger(run, args.backward_factor)
        RunDir(run).write_json(Path(run) / LEDGER_FILE, ledger)
        rows += [(run, p) for p in ledger["pipelines"]]
        if not args.no_plots:
            for png in write_plots(run):
                _say(f"wrote {png}")
    _say(report_table(rows))


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def report_table(rows: list[tuple[str, dict]]) -> str:
    """Rows (run, pipeline) as a Table-2-style text table; savings are against the first
    dense pipeline among the rows."""
    dense = next((p for _, p in rows if p["method"].startswith("dense")), None)
    head = (
        f"{'run':24} {'method':30} {'p':>5} {'drawn':>6} {'test acc':>8} {'train FLOPs':>12} "
        f"{'energy est.':>11} {'measured':>10} {'wall-clock':>10} {'vs dense':>8}"
    )
    lines = [head, "-" * len(head)]
    for run, p in rows:
        ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}"
        drawn = "-" if p["draw_epoch"] is None else f"{p['draw_epoch']:.1f}"
        measured = "-" if p["energy_j_measured"] is None else _si(p["energy_j_measured"], "J")
        saving = f"{dense['train_flops'] / p['train_flops']:.2f}x" if dense else "-"
        lines.append(
            f"{str(run)[-24:]:24} {p['method'][:30]:30} {ratio:>5} {drawn:>6} "
            f"{p['test_acc']:7.2f}% {_si(p['train_flops'], 'FLOP'):>12} "
            f"{_si(p['energy_j_estimated'], 'J'):>11} {measured:>10} "
            f"{p['wall_s']:9.0f}s {saving:>8}"
        )
    lines.append(
        f"FLOPs: one multiply-add = one FLOP (fvcore); training = {BACKWARD_FACTOR:g}x "
        "forward per sample; energy est.: arithmetic only (Horowitz 2014, 45 nm)"
    )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``earlybird`` command; returns the exit code (2: bad input, one line on stderr)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from . import pipeline

    try:
        if args.command == "demo" or (args.command == "report" and not args.no_plots):
            require("plots", f"earlybird {args.command} (its plots)")  # before any work
        if args.command == "report":
            _report(args)
            return 0
        cfg = _config(args)
        progress = _progress(args.quiet)
        if args.command == "search":
            out = pipeline.search(cfg, resume=args.resume, progress=progress)
            drawn = ", ".join(f"p={r} at epoch {t['draw_epoch']:g}" for r, t in out["tickets"].items())
            _say(
                f"search: {out['epochs']} epochs, test acc {out['test_acc']:.2f}%, tickets: "
                f"{drawn or 'none yet'}"
            )
        elif args.command == "prune":
            out = pipeline.prune(cfg, args.ratio, force=args.force)
            _say(
                f"pruned p={args.ratio:g}: {out['dense_params']:,} -> {out['params']:,} params, "
                f"{out['dense_flops'] / 1e6:.2f} -> {out['flops'] / 1e6:.2f} MFLOPs"
            )
        elif args.command == "retrain":
            out = pipeline.retrain(
                cfg,
                args.ratio,
                args.mode,
                resume=args.resume,
                start_epoch=args.start_epoch,
                progress=progress,
            )
            _say(
                f"retrain p={args.ratio:g} ({args.mode}, from epoch {out['start_epoch']}): "
                f"test acc {out['test_acc']:.2f}% (best {out['best_acc']:.2f}%)"
            )
        elif args.command == "train":
            out = pipeline.train_dense(cfg, resume=args.resume, progress=progress)
            _say(f"dense: test acc {out['test_acc']:.2f}% (best {out['best_acc']:.2f}%)")
        else:
            resume = args.resume or (args.command == "demo" and Path(cfg.save, "config.yaml").is_file())
            summary = pipeline.run(cfg, args.mode, resume=resume, progress=progress)
            _say(_table(summary))
            _say(f"run folder: {cfg.save} (config.yaml, log.jsonl, ledger.json, summary.json, pruned-*.pt)")
            if args.command == "demo":
                from .costs.plots import write_plots

                pngs = write_plots(cfg.save)
                _say(f"plots: {', '.join(str(p) for p in pngs)}")
                _say(f"cost table: earlybird report {cfg.save}")
    except ConfigError as exc:  # settings named the way this command line spells them
        print(f"earlybird {args.command}: error: {exc.render(flag)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, EarlyBirdError) as exc:
        print(f"earlybird {args.command}: error: {exc}", file=sys.stderr)
        return 2
    distributed.leave()  # under torchrun: no rank exits while rank 0 still writes
    return 0


if __name__ == "__main__":
    sys.exit(main())
