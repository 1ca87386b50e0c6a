"""The ``dpp`` command line: train, eval, summary, data, demo, report, export, compare, lm
(``dpp --help``)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any

from .errors import UserError

__all__ = ["main"]


def _cmd_train(args: argparse.Namespace) -> int:
    from .runconfig import load_run_config
    from .trainer import run_summary_table, train

    if args.resume:
        if args.config or args.set:
            raise UserError("--resume continues the saved config; drop --config/--set")
        result = train(
            resume=args.resume, quiet=args.quiet, stop_after_epochs=args.stop_after_epochs
        )
    else:
        cfg = load_run_config(args.config, args.set)
        result = train(
            cfg, run_dir=args.run_dir, quiet=args.quiet, stop_after_epochs=args.stop_after_epochs
        )
    if result.summary and result.run_dir is not None:
        print()
        print(run_summary_table(result.summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .trainer import evaluate, load_run

    run = load_run(args.run, device=args.device)
    assert run.splits is not None
    device = next(run.model.parameters()).device
    results: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        ds = getattr(run.splits, split)
        if ds is None or (split == "train" and not args.train):
            continue
        loss, acc = evaluate(run.model, ds, batch_size=run.cfg.data.eval_batch_size, device=device)
        results[split] = {"loss": loss, "acc": acc, "n": len(ds)}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        from .tables import format_table

        rows = [
            [split, f"{100 * r['acc']:.2f}%", f"{r['loss']:.4f}", f"{r['n']:,}"]
            for split, r in results.items()
        ]
        print(format_table(rows, ["split", "accuracy", "loss", "images"]))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from .trainer import load_run

    run = load_run(args.run, load_data=False)
    pruner = run.pruner
    print(
        f"run {run.path.parent}: {run.cfg.method} {run.cfg.model.name} on {run.cfg.data.dataset}, "
        f"epoch {run.checkpoint['epoch']}/{run.cfg.train.epochs}"
    )
    history = run.checkpoint.get("history") or []
    if history:
        print(
            f"test accuracy {100 * history[-1]['test_acc']:.2f}% after epoch {history[-1]['epoch']}"
        )
    if pruner is None:
        print("dense model (no pruning)")
        return 0
    print(pruner.summary())
    try:
        from dpp.storage import storage_report
    except ImportError:  # pragma: no cover
        return 0
    report = storage_report(run.model)
    print()
    print(report.format_table())
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import DOWNLOADABLE, canonical_name, download, list_datasets
    from .tables import format_table

    if args.action == "list":
        rows = [
            [row["name"], row["path"] if row["found"] else "not found"]
            for row in list_datasets(args.data_dir)
        ]
        print(format_table(rows, fmt="plain", align="ll"))
        return 0
    if not args.name:
        raise UserError(f"name a dataset to download ({', '.join(DOWNLOADABLE)})")
    try:
        canonical_name(args.name)
    except ValueError as err:
        raise UserError(str(err)) from None
    path = download(args.name, args.data_dir or args.root)
    print(f"{args.name} ready in {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        epochs=args.epochs,
        quiet=args.quiet,
        dataset=args.dataset,
    )


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if _count(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpp",
        description="Dynamic Probabilistic Pruning: train, evaluate and inspect k-of-n pruned "
        "models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a config file")
    p.add_argument("--config", "-c", help="run config (.toml, .yaml or .json); see configs/")
    p.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=0.01 --set pruning.density=0.05",
    )
    p.add_argument(
        "--resume", metavar="RUN_OR_CKPT", help="continue an interrupted run bit-exactly"
    )
    p.add_argument("--run-dir", help="write the run here (default: <output_dir>/<name>-<time>)")
    p.add_argument("--stop-after-epochs", type=_count, help="stop after N epochs (resume later)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's model with deterministic masks")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--train", action="store_true", help="also evaluate on the training split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("summary", help="per-layer table and storage of a run")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("data", help="list or download datasets")
    p.add_argument("action", choices=["list", "download"])
    p.add_argument("name", nargs="?", help="dataset to download")
    p.add_argument("--root", help="the same as --data-dir (for download)")
    p.add_argument(
        "--data-dir",
        help="list: look only here; download: into DATA_DIR/<name>, where "
        "--data-dir DATA_DIR (data.data_dir) finds it (default: $DPP_DATA or the user cache)",
    )
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("demo", help="the main job: LeNet-300-100 at 95%% sparsity, with a report")
    p.add_argument("--data-dir", help="directory with Fashion-MNIST IDX files")
    p.add_argument("--dataset", choices=["fashion-mnist", "digits"], help="force a dataset")
    p.add_argument("--output-dir", default="runs", help="where run directories go")
    p.add_argument("--epochs", type=_positive, help="override the demo's epoch budget")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd_demo)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Any]:
    """Subcommands defined beside their implementation: report, export, compare, lm."""
    from .compare import register_cli as compare_cli
    from .export_cli import register_cli as export_cli
    from .lm.cli import register_cli as lm_cli
    from .report import register_cli as report_cli

    return [report_cli, export_cli, compare_cli, lm_cli]


# What the machine refuses (a path not writable, a full or read-only disk): the user's to
# fix, not a bug. Other OSErrors keep their traceback.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def _is_environment_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and (
        isinstance(err, PermissionError) or err.errno in _ENVIRONMENT_ERRNOS
    )


# Optional packages and the extra that installs each: missing, they are the user's to install.
_OPTIONAL = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "torch_pruning": "shrink",
    "matplotlib": "plot",
    "tensorboard": "tensorboard",
    "sklearn": "digits",
    "transformers": "hf",
    "accelerate": "hf",
}


def _missing_extra(err: BaseException) -> str | None:
    """``pip install 'dpp[EXTRA]'`` for a missing optional package, else ``None``."""
    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    extra = _OPTIONAL.get(err.name.split(".")[0])
    return None if extra is None else f"pip install 'dpp[{extra}]'"


def main(argv: list[str] | None = None) -> int:
    """Run ``dpp ARGV``; returns the exit code.

    A user's mistake (:class:`~dpp.experiments.errors.UserError`: a bad config, a missing or
    damaged file, a bad run directory; a dataset error; a path the machine will not let us
    write) is one line on stderr and exit code 2 (``DPP_DEBUG=1`` shows its traceback too);
    anything else is a bug and keeps its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import DatasetError
    from .errors import ConfigError

    try:
        return int(args.func(args) or 0)
    except (UserError, DatasetError, OSError) as err:
        users = isinstance(err, (UserError, DatasetError)) or _is_environment_error(err)
        if os.environ.get("DPP_DEBUG") or not users:
            raise
        kind = "config error: " if isinstance(err, ConfigError) else ""
        print(f"dpp {args.command}: {kind}{err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        fix = _missing_extra(err)
        if os.environ.get("DPP_DEBUG") or fix is None:
            raise
        print(f"dpp {args.command}: needs the package {err.name!r}: {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; resume with: dpp train --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
