"""Print the markdown tables of docs/results.md and docs/comparison.md from the grid results.

Reads ``results/<grid>/<run>/summary.json`` (written by ``dpp compare``; the run directories'
``config.yaml``, ``metrics.jsonl`` and ``summary.json`` are committed) and prints:

- ``dense-vs-dpp``: dense against DPP at 90/95/98% for LeNet-300-100 and LeNet-5;
- ``quantization``: DPP at 95% with 32, 8, 4, 3, 2 bits and binary, accuracy and compression;
- ``comparison``: every method of the comparison grids;
- ``summary``: the README's lines (LeNet-300-100, DPP against the baselines);
- ``tuning``: the knobs of the tuning grid;
- ``mask-metrics``: confidence and diversity over epochs of the DPP 95% LeNet-300-100 runs.

Usage:
    python scripts/results_tables.py [TABLE ...]
    python scripts/results_tables.py --update-docs   # rewrite the table blocks of the docs

``--update-docs`` also rewrites the blocks of ``dpp lm grid FILE --table-only [--every-run]``
(the language-model grids of docs/llm.md) with that command's table.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from pathlib import Path

from dpp.experiments.lm.grid import results_table, settings_table
from dpp.experiments.tables import format_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def _md(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table, every column left-aligned."""
    return format_table(rows, header, fmt="markdown", align="l" * len(header))


def _summaries(grid: str, prefix: str) -> list[dict]:
    pattern = re.compile(rf"{re.escape(prefix)}-s\d+")
    out = []
    for path in sorted((RESULTS / grid).glob("*/summary.json")):
        if pattern.fullmatch(path.parent.name):
            out.append(json.loads(path.read_text()))
    return out


def _acc(summaries: list[dict]) -> str:
    accs = [100 * s["test_acc"] for s in summaries]
    if not accs:
        return "(not run)"
    if len(accs) == 1:
        return f"{accs[0]:.2f} (1 seed)"
    text = f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}"
    return text if len(accs) >= 3 else f"{text} ({len(accs)} seeds)"


def _mean(summaries: list[dict]) -> float | None:
    return statistics.fmean(100 * s["test_acc"] for s in summaries) if summaries else None


def _vs_dense(runs: list[dict], dense: list[dict]) -> str:
    """Mean accuracy difference to the dense reference, in points (``-`` without one)."""
    return f"{_mean(runs) - _mean(dense):+.2f}" if runs and dense else "-"


def _compression(summaries: list[dict]) -> str:
    if not summaries or not summaries[0].get("storage"):
        return "-"
    return f"{summaries[0]['storage']['total']['compression_ratio']:.1f}x"


def _kept(summaries: list[dict]) -> str:
    if not summaries:
        return "-"
    s = summaries[0]
    return f"{s['params_kept']:,} / {s['params_dense']:,}"


def _command(grid: str, prefix: str) -> str:
    """The command that (re)runs the seeds of one table row: the grid, restricted to the row."""
    return f"`dpp compare configs/grids/{grid.replace('-', '_')}.toml --only '^{prefix}-s\\d'`"


def dense_vs_dpp() -> str:
    header = [
        "model",
        "method",
        "sparsity per neuron",
        "test accuracy (%)",
        "vs dense",
        "parameters kept",
        "epochs",
        "command",
    ]
    rows = []
    for grid, model, epochs in (
        ("lenet300-fmnist", "LeNet-300-100", 20),
        ("lenet5-fmnist", "LeNet-5-Caffe", 10),
    ):
        dense = _summaries(grid, "reference-dense")
        ref = _command(grid, "reference-dense")
        rows.append([model, "dense", "0%", _acc(dense), "-", _kept(dense), str(epochs), ref])
        for pct in ("90", "95", "98"):
            for label, slug in (("DPP", "dpp"), ("DPP, sparsity ramp", "dpp-sparsity-ramp")):
                runs = _summaries(grid, f"{pct}-{slug}")
                if runs:
                    rows.append(
                        [
                            model,
                            label,
                            f"{pct}%",
                            _acc(runs),
                            _vs_dense(runs, dense),
                            _kept(runs),
                            str(epochs),
                            _command(grid, f"{pct}-{slug}"),
                        ]
                    )
    return _md(rows, header)


def quantization() -> str:
    header = [
        "model",
        "weights",
        "test accuracy (%)",
        "vs dense",
        "compression vs dense fp32",
        "command",
    ]
    rows = []
    for model, cmp_grid, q_grid in (
        ("LeNet-300-100", "lenet300-fmnist", "quant-lenet300-fmnist"),
        ("LeNet-5-Caffe", "lenet5-fmnist", "quant-lenet5-fmnist"),
    ):
        dense = _summaries(cmp_grid, "reference-dense")
        settings = [("float (32)", cmp_grid, "95-dpp")] + [
            (label, q_grid, f"{slug}-dpp")
            for label, slug in (
                ("8-bit", "8-bit"),
                ("4-bit", "4-bit"),
                ("3-bit", "3-bit"),
                ("2-bit", "2-bit"),
                ("binary", "binary"),
                ("4-bit, fc1 97%", "4-bit-fc1-97"),
                ("4-bit, fc1 98%", "4-bit-fc1-98"),
            )
        ]
        ref = _command(cmp_grid, "reference-dense")
        rows.append([model, "dense fp32", _acc(dense), "-", "1.0x", ref])
        for label, grid, prefix in settings:
            runs = _summaries(grid, prefix)
            if runs:
                rows.append(
                    [
                        model,
                        label,
                        _acc(runs),
                        _vs_dense(runs, dense),
                        _compression(runs),
                        _command(grid, prefix),
                    ]
                )
    return _md(rows, header)


def _grid_table(grid: str, settings: list[str], methods: list[tuple[str, str]]) -> str:
    header = ["setting", "method", "test accuracy (%)", "kept weights / params", "storage"]
    rows = []
    dense = _summaries(grid, "reference-dense")
    if dense:
        rows.append(["-", "dense", _acc(dense), _kept(dense), "1.0x"])
    for setting in settings:
        for label, slug in methods:
            runs = _summaries(grid, f"{setting}-{slug}")
            if runs:
                name = f"{setting.replace('-', ':')}{'%' if setting.isdigit() else ''}"
                rows.append([name, label, _acc(runs), _kept(runs), _compression(runs)])
    return _md(rows, header)


METHODS = [
    ("global magnitude, unstructured (b)", "global-magnitude-unstructured-ft"),
    ("one-shot magnitude k-of-n + FT (c)", "one-shot-magnitude-k-of-n-ft"),
    ("gradual magnitude k-of-n (d)", "gradual-magnitude-k-of-n"),
    ("SR-STE (e)", "sr-ste"),
    ("random fixed k-of-n (f)", "random-fixed-k-of-n"),
    ("DPP from scratch (g)", "dpp"),
    ("DPP from dense (g)", "dpp-from-dense"),
    ("DPP, sparsity ramp", "dpp-sparsity-ramp"),
]


def comparison() -> str:
    return (
        "LeNet-300-100 (20 epochs, 3 seeds):\n\n"
        + _grid_table("lenet300-fmnist", ["90", "95", "98", "2-4"], METHODS)
        + "\n\nLeNet-5-Caffe (10 epochs, 1 seed; dense and DPP from scratch 3 seeds):\n\n"
        + _grid_table("lenet5-fmnist", ["90", "95", "98"], METHODS)
    )


def summary() -> str:
    """The README's few lines: LeNet-300-100 on Fashion-MNIST, DPP against the baselines."""
    grid = "lenet300-fmnist"
    settings = ["90", "95", "98", "2-4"]
    header = ["LeNet-300-100, Fashion-MNIST, 20 epochs, 3 seeds"] + [
        f"{s.replace('-', ':')}{'%' if s.isdigit() else ''}" for s in settings
    ]
    dense = _summaries(grid, "reference-dense")
    rows = [["dense"] + [_acc(dense) for _ in settings]]
    for label, slug in (("DPP", "dpp"), ("DPP, sparsity ramp", "dpp-sparsity-ramp")):
        rows.append([label] + [_acc(_summaries(grid, f"{s}-{slug}")) for s in settings])
    best = []
    for setting in settings:
        candidates = [
            (_mean(runs), letter, runs)
            for letter, slug in (
                ("c", "one-shot-magnitude-k-of-n-ft"),
                ("d", "gradual-magnitude-k-of-n"),
                ("e", "sr-ste"),
            )
            if (runs := _summaries(grid, f"{setting}-{slug}"))
        ]
        if candidates:
            _, letter, runs = max(candidates, key=lambda c: c[0])
            best.append(f"{_acc(runs)} ({letter})")
        else:
            best.append("(not run)")
    rows.append(["best structured baseline (c, d, e)", *best])
    rows.append(
        ["random fixed k-of-n (f)"]
        + [_acc(_summaries(grid, f"{s}-random-fixed-k-of-n")) for s in settings]
    )
    return _md(rows, header)


def tuning() -> str:
    from dpp.experiments.compare import load_grid

    grid = load_grid(ROOT / "configs" / "grids" / "tune_dpp.toml")
    rows = []
    for method in grid.methods:
        cells = []
        for setting in ("95%", "98%"):
            spec = next(r for r in grid.runs if r.method == method and r.setting == setting)
            path = RESULTS / "tune-dpp" / spec.run_id / "summary.json"
            acc = json.loads(path.read_text())["test_acc"] if path.is_file() else None
            cells.append(f"{100 * acc:.2f}" if acc is not None else "(not run)")
        rows.append([method, *cells])
    return _md(rows, ["knob changed (LeNet-300-100, 10 epochs, seed 0)", "95%", "98%"])


LAYERS = ("fc1", "fc2", "fc3")


def mask_metrics() -> str:
    header = ["epoch"] + [f"{layer} {key}." for key in ("conf", "div") for layer in LAYERS]
    header.append("test acc. (%)")
    rows = []
    runs = sorted(
        p
        for p in (RESULTS / "lenet300-fmnist").glob("*/metrics.jsonl")
        if re.fullmatch(r"95-dpp-s\d+", p.parent.name)
    )
    records = [[json.loads(line) for line in path.read_text().splitlines()] for path in runs]
    records = [[r for r in rs if r.get("event") == "epoch"] for rs in records]
    if not records:
        return "(not run)"
    for epoch in (1, 2, 5, 10, 15, 20):
        per_run = [rs[epoch - 1] for rs in records if len(rs) >= epoch]
        if not per_run:
            continue

        def mean(layer: str, key: str, per_run: list = per_run) -> str:
            values = [r["mask_metrics"]["layers"][layer][key] for r in per_run]
            return f"{statistics.fmean(values):.3f}"

        acc = statistics.fmean(100 * r["test_acc"] for r in per_run)
        cells = [mean(layer, key) for key in ("confidence", "diversity") for layer in LAYERS]
        rows.append([str(epoch), *cells, f"{acc:.2f}"])
    return _md(rows, header)


TABLES = {
    "dense-vs-dpp": dense_vs_dpp,
    "quantization": quantization,
    "comparison": comparison,
    "summary": summary,
    "tuning": tuning,
    "mask-metrics": mask_metrics,
}


DOCS = (
    ROOT / "docs" / "results.md",
    ROOT / "docs" / "comparison.md",
    ROOT / "docs" / "llm.md",
    ROOT / "README.md",
)
BLOCK = re.compile(
    r"(<!-- python scripts/results_tables.py ([a-z-]+) -->\n)(.*?)(<!-- end of table -->)",
    flags=re.S,
)
LM_BLOCK = re.compile(
    r"(<!-- dpp lm grid (\S+\.toml) --table-only( --every-run)? -->\n)(.*?)(<!-- end of table -->)",
    flags=re.S,
)


def _lm_table(match: re.Match) -> str:
    """A ``dpp lm grid FILE --table-only [--every-run]`` block, regenerated."""
    grid = match.group(2)  # its output_dir is relative to the repository root (the cwd)
    table = settings_table(grid) if match.group(3) else results_table(grid)
    return match.group(1) + table + "\n" + match.group(5)


def refreshed(text: str) -> str:
    """``text`` (a doc) with every table block regenerated from the committed results; run
    from the repository root (the LM grids' output directories are relative to it)."""
    text = BLOCK.sub(lambda m: m.group(1) + TABLES[m.group(2)]() + "\n" + m.group(4), text)
    return LM_BLOCK.sub(_lm_table, text)


def update_docs() -> None:
    """Regenerate every table block of the docs in place."""
    os.chdir(ROOT)
    for doc in DOCS:
        if not doc.exists():
            continue
        text = doc.read_text()
        new = refreshed(text)
        if new != text:
            doc.write_text(new)
            print(f"updated {doc.relative_to(ROOT)}")


def main(argv: list[str]) -> None:
    if argv == ["--update-docs"]:
        update_docs()
        return
    names = argv or list(TABLES)
    for name in names:
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r}; valid: {', '.join(TABLES)}")
        print(f"<!-- python scripts/results_tables.py {name} -->")
        print(TABLES[name]())
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
