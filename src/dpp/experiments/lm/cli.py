"""``dpp lm``: the language-model benchmark's command line (also ``python -m dpp.experiments.lm``).

``dpp lm pretrain`` trains the dense model, ``dpp lm run`` one method of the mask phase,
``dpp lm grid`` a grid file and its table.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from .grid import grid_runs, results_table, settings_table
from .methods import METHODS, MaskRunConfig, is_claimed, run_method
from .model import ModelSpec
from .pretrain import PretrainConfig, pretrain


def _pretrain(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    if (run / "config.json").exists() and not args.overrides:
        cfg = PretrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    else:
        spec = ModelSpec(**{f.name: getattr(args, f.name) for f in fields(ModelSpec)})
        values = {f.name: getattr(args, f.name) for f in fields(PretrainConfig) if f.name != "spec"}
        cfg = PretrainConfig(spec=spec, **values)
    path = pretrain(cfg, run)
    print(f"dense model: {path}")
    return 0


def _add_fields(parser: argparse.ArgumentParser, *classes: type) -> None:
    """One ``--flag`` per scalar dataclass field with a default (type from the default)."""
    for cls in classes:
        for f in fields(cls):
            value = f.default
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                flag = f"--{f.name.replace('_', '-')}"
                parser.add_argument(
                    flag, type=type(value), default=value, help=f"(default {value})"
                )


def _run(args: argparse.Namespace) -> int:
    k, _, m = args.pattern.partition(":")
    values = {f.name: getattr(args, f.name) for f in fields(MaskRunConfig) if hasattr(args, f.name)}
    cfg = MaskRunConfig(**{**values, "k": int(k), "m": int(m)})
    result = run_method(cfg, Path(args.output_dir) / cfg.run_name())
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return 0


def _grid(args: argparse.Namespace) -> int:
    runs = grid_runs(args.grid)
    if args.dry_run:
        for out_dir, _ in runs:
            print(out_dir)
        return 0
    if args.table_only:
        print(settings_table(args.grid) if args.every_run else results_table(args.grid))
        return 0
    # Runs another process is running now go last (then wait for it and read its result).
    runs = [r for r in runs if not is_claimed(r[0])] + [r for r in runs if is_claimed(r[0])]
    for i, (out_dir, cfg) in enumerate(runs):
        result = run_method(cfg, out_dir)
        print(f"[{i + 1}/{len(runs)}] {out_dir}: val loss {result['val_loss']:.4f}", flush=True)
    print(results_table(args.grid))
    return 0


def register_cli(sub: Any) -> None:
    """Add ``lm`` and its subcommands to the ``dpp`` command line."""
    lm = sub.add_parser("lm", help="the language-model benchmark: pretrain, run, grid")
    inner = lm.add_subparsers(dest="lm_command", required=True)
    _add_commands(inner)


def _add_commands(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="train (or resume) the dense byte-level Llama")
    p.add_argument("--run-dir", required=True)
    _add_fields(p, PretrainConfig, ModelSpec)
    p.add_argument(
        "--overrides",
        action="store_true",
        help="use the flags even when the run directory has a config",
    )
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("run", help="one method of the mask phase on a pretrained model")
    p.add_argument("--dense-dir", required=True)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--pattern", default="2:4", help="k:m (default 2:4)")
    _add_fields(p, MaskRunConfig)
    p.add_argument("--output-dir", default="results/lm")
    p.set_defaults(func=_run)

    p = sub.add_parser("grid", help="every run of a grid file (resumable), then its table")
    p.add_argument("grid")
    p.add_argument("--dry-run", action="store_true", help="list the runs only")
    p.add_argument("--table-only", action="store_true", help="print the table of finished runs")
    p.add_argument(
        "--every-run", action="store_true", help="with --table-only: every run, not the best"
    )
    p.set_defaults(func=_grid)
