"""``dpp lm``: the language-model benchmark's command line (also ``python -m dpp.experiments.lm``).

``dpp lm prune`` takes a local causal LM to a pruned checkpoint and its perplexity table,
``dpp lm eval`` evaluates any checkpoint, ``dpp lm pretrain`` trains the byte-level model,
``dpp lm run`` runs one method of the benchmark and ``dpp lm grid`` a grid file and its table.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import math
import re
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .grid import grid_runs, results_table, settings_table
from .methods import METHODS, MaskRunConfig, is_claimed, run_method
from .model import ModelSpec
from .pretrain import PretrainConfig, pretrain

_SKIPPED = {"model", "method", "k", "m", "seed"}
"""Run fields with a flag of their own (or none)."""


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


def _corpora(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# A Sphinx cross-reference, :role:`~module.name` or :role:`name`: its last dotted part.
_ROLE = re.compile(r":\w+:`(~?)([^`]+)`")


def _field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal under it), on one line."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source at hand: flags without their docs
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, doc in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            text = _ROLE.sub(lambda m: m.group(2).split(".")[-1], doc.value.value)
            docs[node.target.id] = " ".join(text.replace("``", "").split())
    return docs


def _add_fields(
    parser: argparse.ArgumentParser,
    *classes: type,
    skip: set[str] = frozenset(),
    defaults: dict[str, Any] | None = None,
):
    """One ``--flag`` per dataclass field with a plain default (type from the default;
    ``--x/--no-x`` for a bool, a comma-separated list for a tuple), its help the field's
    docstring and its default; ``defaults`` replaces a field's default for this command."""
    defaults = defaults or {}
    for cls in classes:
        docs = _field_docs(cls)
        for f in fields(cls):
            value = defaults.get(f.name, f.default)
            if f.name in skip:
                continue
            flag = f"--{f.name.replace('_', '-')}"
            if isinstance(value, bool):
                kind: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
                shown = "on" if value else "off"
            elif isinstance(value, tuple):
                kind, shown = {"type": _corpora}, ",".join(value)
            elif isinstance(value, (int, float, str)):
                kind, shown = {"type": type(value)}, str(value)
            else:
                continue
            text = f"{docs[f.name]} " if f.name in docs else ""
            help_text = f"{text}(default {shown or 'empty'})"
            if isinstance(value, bool) and sys.version_info < (3, 11):
                help_text = text.strip()  # 3.10's BooleanOptionalAction adds the default
            parser.add_argument(flag, default=value, help=help_text.replace("%", "%%"), **kind)


def _pattern(text: str) -> tuple[int, int]:
    k, sep, m = text.partition(":")
    if not sep or not k.isdigit() or not m.isdigit():
        raise ConfigError(f"--pattern must be k:m, e.g. 2:4; got {text!r}")
    return int(k), int(m)


def _config(args: argparse.Namespace, **changes: Any) -> MaskRunConfig:
    k, m = _pattern(args.pattern)
    values = {f.name: getattr(args, f.name) for f in fields(MaskRunConfig) if hasattr(args, f.name)}
    model = getattr(args, "model", None) or getattr(args, "dense_dir", None)
    if model is None:
        raise ConfigError("name the dense model: --model PATH")
    return MaskRunConfig(**{**values, "model": model, "k": k, "m": m, **changes})


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    result = run_method(cfg, Path(args.output_dir) / cfg.run_name())
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "curve")}, indent=1))
    return 0


def _table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown: validation loss and perplexity per corpus (and their mean) of each row."""
    corpora = list(rows[0][1]["val"])
    head = ["model", *(f"{c} loss | {c} ppl" for c in corpora)]
    if len(corpora) > 1:
        head.append("mean loss")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (1 + 2 * len(corpora))]
    if len(corpora) > 1:
        lines[-1] += "---|"
    for name, record in rows:
        cells = [name]
        for corpus in corpora:
            loss = record["val"][corpus]["val_loss"]
            cells.append(f"{loss:.4f} | {math.exp(loss):.3f}")
        if len(corpora) > 1:
            cells.append(f"{record['val_loss']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _prune(args: argparse.Namespace) -> int:
    probe = _config(args, steps=1)
    seq = probe.seq
    if seq == 0:
        from .data import DEFAULT_SEQ, byte_level_config

        pcfg = byte_level_config(probe.model)
        seq = pcfg.spec.seq if pcfg is not None else DEFAULT_SEQ
    per_step = probe.batch * seq
    if probe.trains:
        if args.tokens < per_step:
            raise ConfigError(
                f"--tokens {args.tokens} is less than one step of --batch {probe.batch} x "
                f"--seq {seq} = {per_step} tokens: give at least {per_step}, or a smaller batch"
            )
        steps = args.tokens // per_step
    else:
        steps = probe.steps
    cfg = dataclasses.replace(probe, steps=steps)
    out = Path(args.out)
    result = run_method(cfg, out)
    rows = [("dense, as loaded", result["pretrained"]), (f"{cfg.method} {cfg.k}:{cfg.m}", result)]
    print(_table(rows))
    print(
        f"\n{result['tokens']:,} training tokens ({steps} steps of {per_step}), "
        f"{result['seconds'] / 60:.1f} min. Run directory: {out}"
    )
    files = result.get("files", {})
    if "model" in files:
        print(f"pruned checkpoint: {out / files['model']} (a plain Hugging Face model)")
    if "masks" in files:
        print(f"mask file: {out / files['masks']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .data import load_data
    from .methods import evaluate_corpora, summarize
    from .source import load_causal_lm

    loaded = load_causal_lm(args.model)
    data = load_data(
        loaded,
        args.corpora,
        model_path=args.model,
        batch=1,
        seq=args.seq,
        eval_windows=args.eval_windows,
        calibration_batches=1,
        data_dir=args.data_dir,
    )
    val = evaluate_corpora(loaded.model, data)
    record = {**summarize(val), "val": val}
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(_table([(loaded.name, record)]))
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
    lm = sub.add_parser("lm", help="language models: prune, eval, and the benchmark")
    inner = lm.add_subparsers(dest="lm_command", required=True)
    _add_commands(inner)


def _add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a local causal LM (HF directory, GGUF file or byte-level run) k:m",
        description=(
            "One method for a token budget: the pruned model as a plain Hugging Face "
            "checkpoint (OUT/model), its mask file and its validation loss and perplexity "
            "on every corpus, beside the dense model's."
        ),
    )
    p.add_argument("--model", required=True, help="save_pretrained dir, .gguf file, or run dir")
    p.add_argument("--method", default="dpp-mask", choices=METHODS, help="(default dpp-mask)")
    p.add_argument("--pattern", default="2:4", help="k:m (default 2:4)")
    p.add_argument("--tokens", type=int, default=250_000, help="training tokens (default 250000)")
    p.add_argument("--out", required=True, help="the run directory (resumes when interrupted)")
    p.add_argument("--seed", type=int, default=0)
    _add_fields(
        p,
        MaskRunConfig,
        skip=_SKIPPED | {"steps"},
        defaults={"batch": 4, "corpora": ("cpython-stdlib", "python-docs")},
    )
    p.set_defaults(func=_prune)

    p = sub.add_parser("eval", help="validation loss and perplexity of any local causal LM")
    p.add_argument("--model", required=True, help="save_pretrained dir, .gguf file, or run dir")
    p.add_argument(
        "--corpora",
        type=_corpora,
        default=("cpython-stdlib", "python-docs"),
        help="comma-separated (default cpython-stdlib,python-docs)",
    )
    p.add_argument("--seq", type=int, default=0, help="tokens per window (default 512)")
    p.add_argument("--eval-windows", type=int, default=0, help="windows per corpus (default 32)")
    p.add_argument("--data-dir", default="", help="prepared corpora (default runs/lm/data)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_eval)

    p = sub.add_parser("pretrain", help="train (or resume) the dense byte-level Llama")
    p.add_argument("--run-dir", required=True)
    _add_fields(p, PretrainConfig, ModelSpec)
    p.add_argument(
        "--overrides",
        action="store_true",
        help="use the flags even when the run directory has a config",
    )
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("run", help="one method of the benchmark (a grid's row)")
    p.add_argument("--model", help="the dense model: run dir, save_pretrained dir or .gguf file")
    p.add_argument("--dense-dir", help=argparse.SUPPRESS)  # the flag's older name
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--pattern", default="2:4", help="k:m (default 2:4)")
    p.add_argument("--seed", type=int, default=0)
    _add_fields(p, MaskRunConfig, skip=_SKIPPED)
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
