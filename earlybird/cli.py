"""The ``earlybird`` command: search, prune, retrain, train, run and demo.

Settings of a run folder live in its ``config.yaml``: ``prune`` and ``retrain`` read them from
``--save``, so only the options given on their command line change anything.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .criteria import CRITERIA
from .data import DATASETS
from .errors import EarlyBirdError
from .pipeline import MODES, RunConfig
from .precision import PRECISIONS, ROUNDINGS
from .train import ARCHS

__all__ = ["main", "parser"]

DEMO = dict(save="runs/demo", dataset="cifar10-subset", arch="vgg", depth=11, width=0.25,
            epochs=20, lr=0.1, batch_size=128, test_batch_size=500, sparsity_regularization=True,
            s=1e-4, ratios=[0.3, 0.5, 0.7], full=True)


def _run_options(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS                       # only options given on the command line count
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=S,
                   help="default cifar10-subset: the shipped 10,000/2,000-image CIFAR-10 subset")
    g.add_argument("--data", default=S, help="dataset folder or archive (e.g. the full CIFAR-10 "
                   "JPEG .tar.gz for cifar10-subset; train/ and val/ folders for imagenet)")
    g.add_argument("--download", action="store_true", default=S, help="download CIFAR (online)")
    g.add_argument("--train-images", type=int, default=S, help="use this many training images")
    g.add_argument("--test-images", type=int, default=S, help="use this many test images")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=S, help=f"{' | '.join(ARCHS)} | any timm model name")
    g.add_argument("--depth", type=int, default=S, help="VGG 11/13/16/19, PreResNet 20..164")
    g.add_argument("--width", type=float, default=S, help="channel multiplier of vgg/preresnet")
    g.add_argument("--num-classes", type=int, default=S)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=S, help="length of the schedule (160)")
    g.add_argument("--schedule", type=int, nargs="+", default=S,
                   help="epochs where the lr decays (default 50%% and 75%% of --epochs)")
    g.add_argument("--gamma", type=float, default=S, help="lr decay factor (0.1)")
    g.add_argument("--lr", type=float, default=S, help="initial learning rate (0.1)")
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--weight-decay", type=float, default=S)
    g.add_argument("--batch-size", type=int, default=S, help="global batch size (256)")
    g.add_argument("--test-batch-size", type=int, default=S)
    g.add_argument("--sparsity-regularization", action="store_true", default=S,
                   help="L1 penalty on norm scales (network slimming)")
    g.add_argument("--s", type=float, default=S, help="slimming strength (1e-4)")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--workers", type=int, default=S, help="DataLoader workers (ImageFolder)")
    g = p.add_argument_group("early-bird")
    g.add_argument("--ratios", type=float, nargs="+", default=S, help="(0.3 0.5 0.7)")
    g.add_argument("--epsilon", type=float, default=S, help="mask-distance threshold (0.1)")
    g.add_argument("--window", type=int, default=S, help="masks compared (5)")
    g.add_argument("--criterion", choices=sorted(CRITERIA), default=S,
                   help="detection rule (plateau); reference is the released code's rule; see the "
                        "README's detection-rule section")
    g.add_argument("--span", type=int, default=S, help="plateau rule: span compared, in the "
                   "check counter (optimizer steps with --check-every, else epochs); default "
                   "(window-1)//2 checks")
    g.add_argument("--check-every", type=int, default=S,
                   help="check every N optimizer steps (default: once per epoch)")
    g.add_argument("--full", action="store_true", default=S,
                   help="search: train the dense model to --epochs even after every ticket")
    g = p.add_argument_group("precision")
    g.add_argument("--search-precision", choices=PRECISIONS, default=S,
                   help="fp32 (default) | bf16 autocast | q8: 8-bit training simulated by qtorch")
    g.add_argument("--retrain-precision", choices=PRECISIONS, default=S)
    for name in ("weight", "grad", "activate", "error", "momentum"):
        g.add_argument(f"--wl-{name}", type=int, default=S, help=f"q8 word length of {name}s (8)")
    g.add_argument("--rounding", choices=ROUNDINGS, default=S, help="q8 rounding (stochastic)")
    g.add_argument("--swa", action="store_true", default=S,
                   help="average the weights over the last epochs (SWALP) and refresh BN stats")
    g.add_argument("--swa-start", type=int, default=S, help="first averaged epoch (7/8 of --epochs)")
    p.add_argument("--save", default=S, help="run folder (runs/eb)")
    p.add_argument("--resume", action="store_true", help="continue this run; skip done stages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="earlybird", description="Early-bird tickets: find the "
                                  "small network early, then train only it.")
    sub = top.add_subparsers(dest="command", required=True)
    for name, text in [("search", "dense training with slimming until every ratio has a ticket"),
                       ("prune", "turn a ticket into a physically pruned model file"),
                       ("retrain", "train a pruned model (finetune from the ticket, or scratch)"),
                       ("train", "plain dense baseline"),
                       ("run", "search -> prune -> retrain in one go"),
                       ("demo", "EB Train on the shipped CIFAR-10 subset, 3 ratios, with a table")]:
        p = sub.add_parser(name, help=text, description=text)
        _run_options(p)
        if name in ("prune", "retrain"):
            p.add_argument("--ratio", type=float, required=True)
        if name == "prune":
            p.add_argument("--force", action="store_true", help="prune by the last mask")
        if name in ("retrain", "run", "demo"):
            p.add_argument("--mode", choices=MODES, default="finetune")
        if name == "retrain":
            p.add_argument("--start-epoch", type=int, default=None,
                           help="finetune from this epoch (default: the ticket's draw epoch)")
    p = sub.add_parser("report", help="ledger.json and plots of run folders, and a table "
                       "comparing their training cost", description="cost table and plots")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--no-plots", action="store_true", help="only the ledger and the table")
    p.add_argument("--backward-factor", type=float, default=3.0,
                   help="training FLOPs per sample = factor x forward FLOPs (3)")
    return top


def _config(args: argparse.Namespace) -> RunConfig:
    given = {k: v for k, v in vars(args).items() if k in RunConfig.__dataclass_fields__}
    base: dict[str, Any] = dict(DEMO) if args.command == "demo" else {}
    save = Path(given.get("save", base.get("save", RunConfig.save)))
    if args.command in ("prune", "retrain") or (args.resume and (save / "config.yaml").is_file()):
        import yaml
        if not (save / "config.yaml").is_file():
            raise FileNotFoundError(f"{save}/config.yaml not found; is --save a run folder "
                                    "written by `earlybird search`?")
        base = yaml.safe_load((save / "config.yaml").read_text())
    return RunConfig(**{**base, **given})


def _progress(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    def bar(items: Iterable, desc: str, total: int) -> Iterable:
        return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True,
                    mininterval=0.5 if sys.stderr.isatty() else 30)
    return bar


def _table(summary: dict[str, Any]) -> str:
    dense = summary["dense"]
    lines = [f"{'ratio':>5}  {'drawn at epoch':>14}  {'params':>9}  {'MFLOPs':>8}  "
             f"{'test acc':>8}",
             f"{'dense':>5}  {'-':>14}  {dense['params']:9,d}  {dense['flops'] / 1e6:8.2f}  "
             f"{dense['test_acc']:7.2f}%"]
    for row in summary["retrain"]:
        lines.append(f"{row['ratio']:5.2f}  {row['draw_epoch']:14.1f}  {row['params']:9,d}  "
                     f"{row['flops'] / 1e6:8.2f}  {row['test_acc']:7.2f}%")
    for r in summary["missing"]:
        lines.append(f"{r:5.2f}  {'no ticket':>14}")
    for r in summary.get("drawn_at_the_end", []):
        lines.append(f"{r:5.2f}  {'at the end':>14}  (nothing left to finetune)")
    return "\n".join(lines)


def _say(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":                # under torchrun only rank 0 prints
        print(text)


def _report(args: argparse.Namespace) -> None:
    from .ledger import build_ledger, LEDGER_FILE
    from .plots import write_plots
    from .runs import RunDir
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
    head = (f"{'run':24} {'method':30} {'p':>5} {'drawn':>6} {'test acc':>8} {'train FLOPs':>12} "
            f"{'energy est.':>11} {'measured':>10} {'wall-clock':>10} {'vs dense':>8}")
    lines = [head, "-" * len(head)]
    for run, p in rows:
        ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}"
        drawn = "-" if p["draw_epoch"] is None else f"{p['draw_epoch']:.1f}"
        measured = "-" if p["energy_j_measured"] is None else _si(p["energy_j_measured"], "J")
        saving = f"{dense['train_flops'] / p['train_flops']:.2f}x" if dense else "-"
        lines.append(f"{str(run)[-24:]:24} {p['method'][:30]:30} {ratio:>5} {drawn:>6} "
                     f"{p['test_acc']:7.2f}% {_si(p['train_flops'], 'FLOP'):>12} "
                     f"{_si(p['energy_j_estimated'], 'J'):>11} {measured:>10} "
                     f"{p['wall_s']:9.0f}s {saving:>8}")
    lines.append("FLOPs: one multiply-add = one FLOP (fvcore); training = 3x forward per sample; "
                 "energy est.: arithmetic only (Horowitz 2014, 45 nm)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from . import pipeline
    try:
        if args.command == "report":
            _report(args)
            return 0
        cfg = _config(args)
        progress = _progress(args.quiet)
        if args.command == "search":
            out = pipeline.search(cfg, resume=args.resume, progress=progress)
            drawn = ", ".join(f"p={r} at epoch {t['draw_epoch']:g}" for r, t in out["tickets"].items())
            _say(f"search: {out['epochs']} epochs, test acc {out['test_acc']:.2f}%, tickets: "
                 f"{drawn or 'none yet'}")
        elif args.command == "prune":
            out = pipeline.prune(cfg, args.ratio, force=args.force)
            _say(f"pruned p={args.ratio:g}: {out['dense_params']:,} -> {out['params']:,} params, "
                  f"{out['dense_flops'] / 1e6:.2f} -> {out['flops'] / 1e6:.2f} MFLOPs")
        elif args.command == "retrain":
            out = pipeline.retrain(cfg, args.ratio, args.mode, resume=args.resume,
                                   start_epoch=args.start_epoch, progress=progress)
            _say(f"retrain p={args.ratio:g} ({args.mode}, from epoch {out['start_epoch']}): "
                  f"test acc {out['test_acc']:.2f}% (best {out['best_acc']:.2f}%)")
        elif args.command == "train":
            out = pipeline.train_dense(cfg, resume=args.resume, progress=progress)
            _say(f"dense: test acc {out['test_acc']:.2f}% (best {out['best_acc']:.2f}%)")
        else:
            resume = args.resume or (args.command == "demo" and Path(cfg.save, "config.yaml").is_file())
            summary = pipeline.run(cfg, args.mode, resume=resume, progress=progress)
            _say(_table(summary))
            _say(f"run folder: {cfg.save} (config.yaml, log.jsonl, ledger.json, summary.json, "
                 "pruned-*.pt)")
            if args.command == "demo":
                from .plots import write_plots
                pngs = write_plots(cfg.save)
                _say(f"plots: {', '.join(str(p) for p in pngs)}")
                _say(f"cost table: earlybird report {cfg.save}")
    except (ValueError, FileNotFoundError, FileExistsError, EarlyBirdError) as exc:
        print(f"earlybird {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
