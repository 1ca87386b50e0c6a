"""``python -m dpp.experiments.lm``: the language-model benchmark's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .grid import grid_runs, results_table
from .methods import METHODS, MaskRunConfig, run_method
from .model import ModelSpec
from .pretrain import PretrainConfig, pretrain


def _pretrain(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    if (run / "config.json").exists() and not args.overrides:
        cfg = PretrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    else:
        spec = ModelSpec(
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            intermediate=args.intermediate,
            seq=args.seq,
        )
        cfg = PretrainConfig(
            corpus=args.corpus,
            data_dir=args.data_dir,
            spec=spec,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            gap_every=args.gap_every,
        )
    path = pretrain(cfg, run)
    print(f"dense model: {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    k, _, m = args.pattern.partition(":")
    cfg = MaskRunConfig(
        dense_dir=args.dense_dir,
        method=args.method,
        k=int(k),
        m=int(m),
        prior=args.prior,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        logit_lr=args.logit_lr,
        noise_scale=args.noise_scale,
        prior_strength=args.prior_strength,
        seed=args.seed,
    )
    result = run_method(cfg, Path(args.output_dir) / cfg.label())
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return 0


def _grid(args: argparse.Namespace) -> int:
    runs = grid_runs(args.grid)
    for i, (out_dir, cfg) in enumerate(runs):
        if args.dry_run:
            print(out_dir)
            continue
        result = run_method(cfg, out_dir)
        print(f"[{i + 1}/{len(runs)}] {out_dir}: val loss {result['val_loss']:.4f}", flush=True)
    if not args.dry_run:
        print(results_table(args.grid))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpp.experiments.lm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="train (or resume) the dense byte-level Llama")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--corpus", default="cpython-stdlib")
    p.add_argument("--data-dir", default="runs/lm/data")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4900)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gap-every", type=int, default=700)
    p.add_argument(
        "--overrides",
        action="store_true",
        help="use the flags even when the run directory has a config",
    )
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("run", help="one method of the mask phase on a pretrained model")
    p.add_argument("--dense-dir", required=True)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--prior", default="wanda")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--logit-lr", type=float, default=5e-2)
    p.add_argument("--noise-scale", type=float, default=0.3)
    p.add_argument("--prior-strength", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="results/lm")
    p.set_defaults(func=_run)

    p = sub.add_parser("grid", help="every run of a grid file (resumable), then its table")
    p.add_argument("grid")
    p.add_argument("--dry-run", action="store_true", help="list the runs only")
    p.set_defaults(func=_grid)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
