"""The section model of a report page: blocks (paragraph, table, figure) in sections.

The page is built once from the runs (:func:`report_page`); :mod:`.render` turns the same
:class:`Page` into HTML or Markdown, so both formats always show the same content.
Paragraph text may hold ``code`` spans in backticks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from .runs import ReportRun, num

__all__ = [
    "Block",
    "Figure",
    "Page",
    "Paragraph",
    "Section",
    "Table",
    "report_page",
    "run_section",
]


@dataclass(frozen=True)
class Paragraph:
    """A paragraph; ``note`` marks a warning (e.g. a figure that was skipped)."""

    text: str
    note: bool = False


@dataclass(frozen=True)
class Table:
    """A table of pre-formatted cells; the first column is left-aligned, the rest right."""

    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    """A PNG shown with its title and caption; ``file`` is relative to the page."""

    file: str
    title: str
    caption: str


Block = Paragraph | Table | Figure


@dataclass
class Section:
    """A titled part of the page; ``anchor`` is its HTML id."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str | None = None


@dataclass
class Page:
    """A whole report: ``title`` (the heading), ``intro`` blocks, then the sections."""

    title: str
    head_title: str
    intro: list[Block]
    sections: list[Section]


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}×"


def summary_table(runs: list[ReportRun]) -> Table:
    """One row per run: method, model, dataset, epochs, accuracy, parameters, compression."""
    header = [
        "run",
        "method",
        "model",
        "dataset",
        "epochs",
        "test acc.",
        "params kept",
        "param. compr.",
        "storage compr.",
    ]
    rows = []
    for r in runs:
        done = r.last.get("epoch")
        epochs = f"{done}" if r.finished else f"{done}/{r.epochs_total or '?'} (unfinished)"
        params = "–"
        if r.params is not None and r.params[0]:
            dense, kept = r.params
            params = f"{kept:,} / {dense:,} ({100 * kept / dense:.2f}%)"
        name = r.label + (" (reference)" if r.reference else "")
        rows.append(
            [
                name,
                r.method,
                r.model,
                r.dataset,
                epochs,
                _fmt_pct(r.test_acc),
                params,
                _times(r.param_compression),
                _times(r.storage_compression),
            ]
        )
    return Table(header, rows)


def _is_dense_row(row: dict) -> bool:
    return row.get("k") in ("-", None)


def layer_table(run: ReportRun) -> Table | None:
    """One row per layer of the run's summary, with its final mask metrics; ``None``
    when the summary has no layers."""
    header = [
        "layer",
        "type",
        "granularity",
        "k / n",
        "density",
        "weights kept",
        "confidence",
        "diversity",
    ]
    mm = (run.last.get("mask_metrics") or {}).get("layers") or {}
    rows = []
    for r in (run.summary or {}).get("layers") or []:
        m = mm.get(r.get("layer"), {})
        kn = "dense" if _is_dense_row(r) else f"{r.get('k')} / {r.get('n')}"
        conf, div = num(m.get("confidence")), num(m.get("diversity"))
        rows.append(
            [
                str(r.get("layer")),
                str(r.get("type", "")),
                str(r.get("granularity", "")),
                kn,
                f"{float(r.get('density') or 1.0):.3f}",
                f"{int(r.get('kept') or 0):,} / {int(r.get('weights') or 0):,}",
                "–" if conf is None else f"{conf:.3f}",
                "–" if div is None else f"{div:.3f}",
            ]
        )
    return Table(header, rows) if rows else None


def run_facts(run: ReportRun) -> str:
    """One line: directory, granularity and density, overrides, optimizer, time per epoch."""
    cfg = run.config
    pruning = cfg.get("pruning") or {}
    train = cfg.get("train") or {}
    bits = [f"directory `{run.path}`"]
    if run.method != "dense" and pruning:
        gran = pruning.get("granularity", "weight")
        dens = pruning.get("density", pruning.get("k"))
        bits.append(f"granularity {gran}, density {dens}")
        if pruning.get("overrides"):
            bits.append(f"overrides {json.dumps(pruning['overrides'])}")
    if train:
        bits.append(
            f"{train.get('optimizer', '?')} lr {train.get('lr', '?')}"
            + (f", logit lr {train['logit_lr']}" if train.get("logit_lr") else "")
        )
    sec = num((run.summary or {}).get("seconds_per_epoch"))
    if sec is not None:
        bits.append(f"{sec:.1f} s per epoch")
    return "; ".join(bits)


def run_section(run: ReportRun, figures: list[Figure], notes: list[str]) -> Section:
    """The section of one run: its facts, its layer table, notes, then its figures."""
    blocks: list[Block] = [
        Paragraph(f"{run.method} · {run.model} · {run.dataset} — {run_facts(run)}")
    ]
    table = layer_table(run)
    if table is not None:
        blocks.append(table)
    blocks += [Paragraph(note, note=True) for note in notes]
    blocks += figures
    return Section(run.label, blocks, anchor=run.slug)


_PARAMS_NOTE = (
    "Params kept counts every parameter of the model (biases and BatchNorm included, mask "
    "logits excluded). Storage compression is dense fp32 over the packed k-of-n format, "
    "indices included."
)


def report_page(runs: list[ReportRun], overview: list[Figure], sections: list[Section]) -> Page:
    """The whole page: when and how it was made, the summary of ``runs`` with the
    ``overview`` figures, then one section per run."""
    summary = Section("Summary", [summary_table(runs), Paragraph(_PARAMS_NOTE), *overview])
    generated = f"Generated {datetime.now().strftime('%Y-%m-%d %H:%M')} by `dpp report`."
    return Page(
        title="Dynamic Probabilistic Pruning report",
        head_title="dpp report: " + ", ".join(r.label for r in runs),
        intro=[Paragraph(generated)],
        sections=[summary, *sections],
    )
