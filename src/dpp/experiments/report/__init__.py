"""``dpp report``: PNG figures and one HTML (or Markdown) page for one or more run directories.

Usage::

    dpp report runs/demo-lenet300-fmnist-w95-20250101-120000
    dpp report runs/a runs/b runs/c --dense runs/dense --out reports/sweep --format md

What it reads from every run directory (written by ``dpp train``, see docs/architecture.md):
``metrics.jsonl`` (epoch records, required), ``summary.json`` (final numbers, optional for
an unfinished run), ``config.yaml`` and ``checkpoint.pt`` (the final logits, through
:func:`~dpp.experiments.trainer.load_run`, for the mask images).

What it writes (one run: into ``<run>/report``; several: ``reports/<timestamp>``, with each
run's figures in a sub-directory named after the run directory):

===============================  ===============================================================
file                             shows
===============================  ===============================================================
``report.html`` / ``.md``        the page: summary table, per-layer tables, every figure
``curves.png``                   loss, accuracy and the temperature / noise-scale schedules
``sparsity.png``                 final sparsity per layer (and total over epochs if it changes)
``mask_metrics.png``             confidence and diversity per layer over epochs
``mask_<layer>.png``             Linear layers: inclusion probability of every weight
``pixels_<layer>.png``           first layer on images: how many neurons keep each pixel
``conv_masks.png``               convolutions: expected fraction of every kernel kept
``filters.png``                  filter-level layers: channels kept, inclusion per channel
``accuracy_vs_compression.png``  several runs: test accuracy against compression (log x)
``test_accuracy.png``            several runs: test accuracy over epochs
===============================  ===============================================================

The package, one concept per module: ``runs`` (reading a run directory), ``masks`` (the
final masks from the checkpoint), ``plotting`` (Agg canvases, style, PNG output),
``run_figures`` / ``mask_figures`` / ``overview_figures`` (the figures), ``sections`` (the
page as sections of paragraphs, tables and figures), ``render`` (that one page as HTML or
Markdown), ``build`` (:func:`make_report`) and ``cli``.

Inclusion probabilities are those of one training-mode draw at the run's final noise scale
(``dpp.metrics.inclusion_probabilities``, Monte Carlo with a fixed seed where no exact form
applies): with a noise scale of 0 they are the deterministic top-k mask itself.
matplotlib is an optional dependency (``pip install 'dpp[plot]'``); pyplot is never
imported.
"""

from __future__ import annotations

from .build import DEFAULT_SAMPLES, ReportResult, make_report
from .cli import register_cli
from .plotting import MissingPlotDependencyError
from .runs import ReportError, ReportRun, read_run

__all__ = [
    "DEFAULT_SAMPLES",
    "MissingPlotDependencyError",
    "ReportError",
    "ReportResult",
    "ReportRun",
    "make_report",
    "read_run",
    "register_cli",
]
