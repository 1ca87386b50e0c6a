"""``make_report``: draw every figure of the runs, build the page, write it.

One run: into ``<run>/report``; several: ``reports/<timestamp>``, with each run's figures
in a sub-directory named after the run directory.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from .mask_figures import fig_conv_masks, fig_filters, fig_linear_mask, fig_pixels
from .masks import LayerMask, MaskData, beta_text, mask_data
from .overview_figures import fig_accuracy_vs_compression, fig_test_accuracy
from .plotting import Plotter
from .render import FORMATS, render
from .run_figures import fig_curves, fig_mask_metrics, fig_sparsity
from .runs import ReportError, ReportRun, read_run
from .sections import Figure, Section, report_page, run_section

__all__ = ["DEFAULT_SAMPLES", "ReportResult", "make_report"]

#: Monte Carlo draws for the inclusion-probability maps (where no exact form applies).
DEFAULT_SAMPLES = 256

#: The figures every run gets: (file, drawing function, title, caption).
RUN_FIGURES: list[tuple[str, Callable[..., bool], str, str]] = [
    (
        "curves.png",
        fig_curves,
        "Training curves",
        "Loss and accuracy per epoch. Training values are averaged over the epoch with "
        "sampled masks; validation and test use the deterministic top-k masks at the end "
        "of the epoch. Right: temperature τ of the relaxation and noise scale β of the "
        "Gumbel perturbation at the end of each epoch.",
    ),
    (
        "sparsity.png",
        fig_sparsity,
        "Sparsity per layer",
        "Fraction of each pruned layer's weights that the final deterministic mask "
        "removes; k/n is the number of candidates kept per group. The dashed line is "
        "the total over the pruned layers.",
    ),
    (
        "mask_metrics.png",
        fig_mask_metrics,
        "Mask confidence and diversity",
        "Confidence: how sure each group is of its k candidates (1: always the same k, "
        "0: uniform), averaged over the layer's groups. Diversity: how much the groups' "
        "choices spread over all n candidates (0: every group keeps the same k). Both "
        "from inclusion probabilities of one training-mode draw (method.md section 6). A "
        "filter-level layer has a single group: its diversity is 0 by definition.",
    ),
]

_PIXELS_CAPTION = (
    "How many first-layer neurons keep each input pixel under the final deterministic "
    "masks: the layer learns where the information is."
)
_CONV_CAPTION = (
    "For every pruned convolution, an output channel × input channel map of the expected "
    "fraction of each kernel that is kept (kernel level: the probability that the kernel is "
    "kept; weight or block level: the mean over its positions)."
)
_FILTERS_CAPTION = (
    "Left: output channels kept per filter-level layer. Right: probability that each "
    "channel is kept (white: beyond the layer's channel count)."
)
_COMPRESSION_CAPTION = (
    "Final test accuracy of every pruned run against its compression, log scale. "
    "Parameters: dense parameter count over parameters kept. Storage: dense fp32 bits "
    "over the packed k-of-n format (values and indices). Dashed: the dense reference."
)


@dataclass
class ReportResult:
    """What :func:`make_report` wrote."""

    page: Path
    figures: list[Path]

    @property
    def files(self) -> list[Path]:
        return [self.page, *self.figures]


class _Figures:
    """Draws figures into the output directory and collects them for the page."""

    def __init__(self, plotter: Plotter, out_dir: Path) -> None:
        self.plotter = plotter
        self.out_dir = out_dir
        self.written: list[Path] = []

    def add(
        self,
        shown: list[Figure],
        target: Path,
        draw: Callable[..., bool],
        title: str,
        caption: str,
    ) -> None:
        """Call ``draw(path=target)``; when it drew something, show it in ``shown``."""
        if draw(path=target):
            self.written.append(target)
            shown.append(Figure(target.relative_to(self.out_dir).as_posix(), title, caption))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


def _label_runs(runs: list[ReportRun]) -> None:
    names = [r.name for r in runs]
    slugs: set[str] = set()
    for r in runs:
        r.label = r.name if names.count(r.name) == 1 else r.path.name
        slug = _slug(r.path.name)
        base, i = slug, 1
        while slug in slugs:
            i += 1
            slug = f"{base}-{i}"
        slugs.add(slug)
        r.slug = slug


def _default_out(runs: list[str | Path]) -> Path:
    if len(runs) == 1:
        return Path(runs[0]) / "report"
    return Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _read_masks(run: ReportRun, samples: int, seed: int) -> MaskData:
    """The run's masks, or an empty :class:`MaskData` whose ``error`` says why not."""
    try:
        return mask_data(run, samples, seed)
    except Exception as err:  # the run's other figures are still useful; the page says so
        message = f"{type(err).__name__}: {err}"
        return MaskData([], None, None, message[:300] + (" ..." if len(message) > 300 else ""))


def _shows_pixels(layer: LayerMask, md: MaskData) -> bool:
    """Whether ``layer`` is the first layer on images, so its kept pixels make a map."""
    shape = md.input_shape
    return (
        layer.name == md.first_layer
        and layer.kept is not None
        and shape is not None
        and len(shape) == 3
        and shape[1] * shape[2] > 1
        and math.prod(shape) == layer.kept.shape[1]
    )


def _mask_figures(
    figs: _Figures, run: ReportRun, md: MaskData, fig_dir: Path, shown: list[Figure]
) -> None:
    p = figs.plotter
    linear = [lay for lay in md.layers if lay.granularity != "filter" and lay.kind != "conv"]
    conv = [lay for lay in md.layers if lay.granularity != "filter" and lay.kind == "conv"]
    filters = [lay for lay in md.layers if lay.granularity == "filter"]
    for layer in linear:
        figs.add(
            shown,
            fig_dir / f"mask_{_slug(layer.name)}.png",
            partial(fig_linear_mask, p, run, layer, input_shape=md.input_shape),
            f"Mask of {layer.name}",
            f"Probability that each weight of {layer.name} is kept by one training-mode draw "
            f"of the mask ({beta_text(layer)}), from the final logits. Rows are output "
            "neurons, columns inputs; bright columns are inputs that many neurons keep.",
        )
        if _shows_pixels(layer, md):
            assert md.input_shape is not None
            shape = md.input_shape
            figs.add(
                shown,
                fig_dir / f"pixels_{_slug(layer.name)}.png",
                partial(fig_pixels, p, run, layer, input_shape=shape),
                f"Input pixels kept by {layer.name}",
                _PIXELS_CAPTION,
            )
    if conv:
        draw = partial(fig_conv_masks, p, run, conv)
        figs.add(shown, fig_dir / "conv_masks.png", draw, "Convolution masks", _CONV_CAPTION)
    if filters:
        draw = partial(fig_filters, p, run, filters)
        figs.add(shown, fig_dir / "filters.png", draw, "Filter-level pruning", _FILTERS_CAPTION)


def _run_section(figs: _Figures, run: ReportRun, fig_dir: Path, samples: int, seed: int) -> Section:
    shown: list[Figure] = []
    for name, draw, title, caption in RUN_FIGURES:
        figs.add(shown, fig_dir / name, partial(draw, figs.plotter, run), title, caption)
    md = _read_masks(run, samples, seed)
    notes = []
    if md.error:
        notes.append(f"Mask images skipped: {md.error}")
        print(f"dpp report: {run.path}: mask images skipped: {md.error}", file=sys.stderr)
    _mask_figures(figs, run, md, fig_dir, shown)
    return run_section(run, shown, notes)


def make_report(
    runs: list[str | Path],
    *,
    out: str | Path | None = None,
    fmt: str = "html",
    samples: int = DEFAULT_SAMPLES,
    dense: str | Path | None = None,
    seed: int = 0,
    log: Any = None,
) -> ReportResult:
    """Write the figures and the page of a report on ``runs``.

    Args:
        runs: one or more run directories written by ``dpp train``.
        out: output directory (default: ``<run>/report`` for one run,
            ``reports/<timestamp>`` for several).
        fmt: ``"html"`` (``report.html``) or ``"md"`` (``report.md``).
        samples: Monte Carlo draws for the inclusion probabilities of the mask images.
        dense: a dense reference run (its accuracy is the horizontal line of the
            accuracy-vs-compression figure); by default a run whose method is ``"dense"``.
        seed: seed of the Monte Carlo draws (the report is deterministic).
        log: a callable taking a string for progress messages (default: silent).

    Returns:
        :class:`ReportResult` with the page and the PNG files.

    Raises:
        MissingPlotDependencyError: matplotlib is not installed.
        ReportError, FileNotFoundError: a bad argument, or a run directory that is missing
            or unreadable (the message names it).
    """
    if fmt not in FORMATS:
        raise ReportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not runs:
        raise ReportError("dpp report needs at least one run directory")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ReportError(f"samples must be a positive int, got {samples!r}")
    plotter = Plotter()  # fail before any work when matplotlib is missing
    say = log or (lambda msg: None)
    loaded = [read_run(r) for r in runs]
    dense_run = read_run(dense) if dense is not None else None
    if dense_run is not None:
        dense_run.reference = True
    _label_runs(loaded + ([dense_run] if dense_run is not None else []))
    reference = dense_run or next((r for r in loaded if r.method == "dense"), None)

    out_dir = Path(out) if out is not None else _default_out(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = _Figures(plotter, out_dir)
    sections = []
    for run in loaded:
        say(f"report: {run.path}")
        fig_dir = out_dir / run.slug if len(loaded) > 1 else out_dir
        sections.append(_run_section(figs, run, fig_dir, samples, seed))

    overview: list[Figure] = []
    if len(loaded) + (dense_run is not None) > 1:
        no_ref = "" if reference is not None else " (No dense reference run.)"
        figs.add(
            overview,
            out_dir / "accuracy_vs_compression.png",
            partial(fig_accuracy_vs_compression, plotter, loaded, reference),
            "Accuracy against compression",
            _COMPRESSION_CAPTION + no_ref,
        )
        figs.add(
            overview,
            out_dir / "test_accuracy.png",
            partial(fig_test_accuracy, plotter, loaded, dense_run),
            "Test accuracy over epochs",
            "Test accuracy of every run per epoch.",
        )

    all_runs = loaded + ([dense_run] if dense_run is not None else [])
    page = out_dir / FORMATS[fmt]
    atomic_write_text(page, render(report_page(all_runs, overview, sections), fmt))
    return ReportResult(page, figs.written)
