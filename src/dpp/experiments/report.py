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


Inclusion probabilities are those of one training-mode draw at the run's final noise scale
(``dpp.metrics.inclusion_probabilities``, Monte Carlo with a fixed seed where no exact form
applies): with a noise scale of 0 they are the deterministic top-k mask itself.

matplotlib is an optional dependency (``pip install 'dpp[plot]'``). Figures are drawn on
``matplotlib.figure.Figure`` objects with the non-interactive Agg canvas, so the report
never needs a display and never changes the backend of the calling program (pyplot is not
imported).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "MissingPlotDependencyError",
    "ReportResult",
    "ReportRun",
    "make_report",
    "read_run",
    "register_cli",
]

DPI = 110
#: Monte Carlo draws for the inclusion-probability maps (where no exact form applies).
DEFAULT_SAMPLES = 256
#: Heat maps larger than this are averaged over blocks of cells first.
MAX_MAP_ROWS, MAX_MAP_COLS = 400, 800
#: A PNG larger than this (bytes) is saved again with fewer palette colours.
MAX_PNG_BYTES = 140_000
#: At most this many convolution panels in ``conv_masks.png``.
MAX_CONV_PANELS = 24
#: Per-layer line plots up to this many layers; heat maps (layer x epoch) beyond.
MAX_LINE_LAYERS = 10

_RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "image.cmap": "viridis",
    "legend.framealpha": 0.85,
}
_SPLIT_COLORS = {"train": "C0", "val": "C2", "test": "C1"}


class MissingPlotDependencyError(RuntimeError):
    """matplotlib (the ``plot`` extra) is not installed."""


def _matplotlib() -> tuple[Any, Any, Any]:
    """``(matplotlib, Figure, FigureCanvasAgg)``, or a clear error when it is missing."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPlotDependencyError(
            "dpp report draws its figures with matplotlib, which is not installed: "
            "pip install 'dpp[plot]' (or pip install matplotlib)"
        ) from None
    return matplotlib, Figure, FigureCanvasAgg


# ----------------------------------------------------------------------------- reading runs
@dataclass
class ReportRun:
    """What the report reads from one run directory."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None
    label: str = ""
    slug: str = ""
    params: tuple[int, int] | None = None  # (dense, kept)
    reference: bool = False  # given with --dense

    @property
    def name(self) -> str:
        return str(self._get("name") or self.path.name)

    @property
    def method(self) -> str:
        return str(self._get("method") or "?")

    @property
    def model(self) -> str:
        return str(self._get("model") or (self.config.get("model") or {}).get("name") or "?")

    @property
    def dataset(self) -> str:
        return str(self._get("dataset") or (self.config.get("data") or {}).get("dataset") or "?")

    @property
    def epochs_total(self) -> int | None:
        value = self._get("epochs") or (self.config.get("train") or {}).get("epochs")
        return int(value) if value is not None else None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1]

    @property
    def test_acc(self) -> float | None:
        if self.summary is not None and "test_acc" in self.summary:
            return float(self.summary["test_acc"])
        return _num(self.last.get("test_acc"))

    @property
    def storage_compression(self) -> float | None:
        storage = (self.summary or {}).get("storage") or {}
        value = storage.get("compression")
        if value is None:
            value = (storage.get("total") or {}).get("compression_ratio")
        return _num(value)

    @property
    def param_compression(self) -> float | None:
        if self.params is None or self.params[1] <= 0:
            return None
        return self.params[0] / self.params[1]

    def _get(self, key: str) -> Any:
        if self.summary is not None and self.summary.get(key) is not None:
            return self.summary[key]
        if key == "epochs":
            return None
        return self.config.get(key)


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_run(path: str | Path) -> ReportRun:
    """Read a run directory's ``metrics.jsonl``, ``summary.json`` and ``config.yaml``.

    Raises:
        FileNotFoundError: ``path`` is not a directory, or has no ``metrics.jsonl``.
        ValueError: a file of the run cannot be parsed, or it holds no epoch record.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a run directory (a directory written by dpp train is expected)"
        )
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(
            f"{path} is not a run directory: it has no metrics.jsonl "
            "(expected the output directory of dpp train)"
        )
    by_epoch: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] | None = None
    for lineno, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{metrics}, line {lineno}: not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{metrics}, line {lineno}: expected a JSON object")
        if record.get("event") == "epoch" and "epoch" in record:
            by_epoch[int(record["epoch"])] = record  # a resumed run's later record wins
        elif record.get("event") == "final":
            final = record
    if not by_epoch:
        raise ValueError(f"run directory {path}: metrics.jsonl holds no epoch record yet")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path / 'summary.json'}: not valid JSON ({err})") from None
    elif final is not None:
        summary = final
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path / 'config.yaml'}: not valid YAML ({err})") from None
    history = [by_epoch[e] for e in sorted(by_epoch)]
    run = ReportRun(path=path, config=config, history=history, summary=summary)
    if summary is not None and "params_dense" in summary and "params_kept" in summary:
        run.params = (int(summary["params_dense"]), int(summary["params_kept"]))
    return run


# ----------------------------------------------------------------------------- masks
@dataclass
class LayerMask:
    """One pruned layer's final mask data, as numpy arrays."""

    name: str
    kind: str  # "linear" or "conv"
    granularity: str
    k: int
    n: int
    groups: int
    weight_shape: tuple[int, ...]
    noise_scale: float | None
    estimator: str
    candidate_prob: Any  # numpy, mask_shape squeezed: [out, in] / [C_out, C_in] / [C_out]
    kept: Any  # numpy bool, shaped like the weight (deterministic mask)


@dataclass
class MaskData:
    layers: list[LayerMask]
    input_shape: tuple[int, ...] | None
    first_layer: str | None  # the model's first Linear/Conv, if it is pruned
    error: str | None = None


def _mask_data(run: ReportRun, samples: int, seed: int) -> MaskData:
    """Final inclusion probabilities and deterministic masks of a run (via its checkpoint)."""
    if run.method == "dense":
        return MaskData([], None, None)
    if not (run.path / "checkpoint.pt").is_file():
        return MaskData([], None, None, "no checkpoint.pt (the run was made with checkpoints off)")
    import torch
    from torch import nn

    from dpp.metrics import inclusion_probabilities

    from .data import dataset_info
    from .trainer import load_run

    loaded = load_run(run.path, load_data=False)
    pruner = loaded.pruner
    model = loaded.model
    if run.params is None:
        run.params = (
            pruner.parameter_counts()
            if pruner is not None
            else (sum(p.numel() for p in model.parameters()),) * 2
        )
    if pruner is None:
        return MaskData([], None, None)
    try:
        input_shape: tuple[int, ...] | None = tuple(
            dataset_info(loaded.cfg.data.dataset).input_shape
        )
    except ValueError:
        input_shape = None
    first = next(
        (
            name
            for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ),
        None,
    )
    layers = []
    with torch.no_grad():
        for name, layer in pruner.layers.items():
            lay = layer.dpp_layout
            source = layer.dpp
            if lay is None or source is None:
                continue
            try:
                pi = inclusion_probabilities(layer, samples=samples, seed=seed)
                estimator = "fixed" if not hasattr(source, "logits") else "computed"
            except (TypeError, ValueError):  # an unsupported mask source: its own mask
                pi = source.deterministic(layer.weight).float()
                estimator = "deterministic"
            beta = getattr(source, "noise_scale", None)
            pi = pi.float()
            is_linear = isinstance(layer, nn.Linear)
            out_ch = lay.weight_shape[0]
            if lay.granularity == "filter":
                prob = pi.reshape(out_ch)
            elif lay.granularity == "kernel":
                prob = pi.reshape(out_ch, lay.weight_shape[1])
            elif is_linear:  # weight or block: one probability per weight
                prob = pi.reshape(out_ch, -1)
            else:  # conv weight or block: mean over the kernel positions -> [C_out, C_in/g]
                prob = pi.reshape(out_ch, lay.weight_shape[1], -1).mean(-1)
            kept = layer.dpp_masks()
            layers.append(
                LayerMask(
                    name=name,
                    kind="linear" if is_linear else "conv",
                    granularity=lay.granularity,
                    k=lay.k,
                    n=lay.n,
                    groups=lay.num_groups,
                    weight_shape=tuple(lay.weight_shape),
                    noise_scale=None if beta is None else float(beta),
                    estimator=estimator,
                    candidate_prob=prob.double().cpu().numpy(),
                    kept=kept.cpu().numpy() if kept is not None else None,
                )
            )
    return MaskData(layers, input_shape, first if first in pruner.layers else None)


# ----------------------------------------------------------------------------- figures
@dataclass
class _Figure:
    file: str  # relative to the page
    title: str
    caption: str


class _Plotter:
    """Draws figures on Agg canvases and saves them as small palette PNGs."""

    def __init__(self) -> None:
        self.mpl, self.Figure, self.Canvas = _matplotlib()

    def figure(self, figsize: tuple[float, float]) -> Any:
        with self.mpl.rc_context(_RC):
            fig = self.Figure(figsize=figsize, dpi=DPI, layout="constrained")
            self.Canvas(fig)
        return fig

    def save(self, fig: Any, path: Path) -> None:
        buf = io.BytesIO()
        with self.mpl.rc_context(_RC):
            fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
        buf.seek(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a matplotlib dependency
            path.write_bytes(buf.getvalue())
            return
        # A 256-colour palette: the figures are flat colours, antialiased text and colormaps
        # with at most 256 entries, so nothing visible is lost (the max-coverage quantizer
        # keeps colorbar gradients smooth) and the files are 2-3x smaller than RGB; they are
        # committed as examples. Saving through PIL also drops matplotlib's version
        # metadata, so the bytes depend on the data only.
        with Image.open(buf) as img:
            rgb = img.convert("RGB")
        # A heat map of nearly random probabilities hardly compresses: fewer colours then.
        for colors in (256, 64, 32, 16):
            out = io.BytesIO()
            pal = rgb.quantize(colors=colors, method=Image.Quantize.MAXCOVERAGE, dither=0)
            pal.save(out, format="PNG", optimize=True)
            if out.tell() <= MAX_PNG_BYTES:
                break
        path.write_bytes(out.getvalue())

    def rc(self) -> Any:
        return self.mpl.rc_context(_RC)


def _epochs(run: ReportRun) -> list[int]:
    return [int(r["epoch"]) for r in run.history]


def _series(run: ReportRun, key: str, scale: float = 1.0) -> list[float] | None:
    values = [_num(r.get(key)) for r in run.history]
    if all(v is None for v in values):
        return None
    return [math.nan if v is None else v * scale for v in values]


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _marker(n: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 3} if n <= 30 else {}


def fig_curves(p: _Plotter, run: ReportRun, path: Path) -> bool:
    epochs = _epochs(run)
    sched = [k for k in ("temperature", "noise_scale") if _series(run, k) is not None]
    panels = 2 + bool(sched)
    with p.rc():
        fig = p.figure((4.0 * panels, 3.3))
        axes = fig.subplots(1, panels, squeeze=False)[0]
        ax = axes[0]
        for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
            ys = _series(run, f"{split}_loss")
            if ys is not None:
                ax.plot(epochs, ys, color=_SPLIT_COLORS[split], label=label, **_marker(len(ys)))
        ax.set_title("Loss")
        ax.set_ylabel("cross-entropy (nats)")
        _integer_epochs(ax)
        ax.legend()
        ax = axes[1]
        for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
            ys = _series(run, f"{split}_acc", 100.0)
            if ys is not None:
                ax.plot(epochs, ys, color=_SPLIT_COLORS[split], label=label, **_marker(len(ys)))
        ax.set_title("Accuracy")
        ax.set_ylabel("accuracy (%)")
        _integer_epochs(ax)
        ax.legend(loc="lower right")
        if sched:
            ax = axes[2]
            names = {"temperature": "temperature τ", "noise_scale": "noise scale β"}
            for i, key in enumerate(sched):
                ys = _series(run, key)
                assert ys is not None
                ax.plot(epochs, ys, color=f"C{4 + i}", label=names[key], **_marker(len(ys)))
            ax.set_title("Mask sampling schedule (end of epoch)")
            ax.set_ylabel("value (dimensionless)")
            ax.set_ylim(bottom=0)
            _integer_epochs(ax)
            ax.legend()
        fig.suptitle(f"{run.label}: training curves")
        p.save(fig, path)
    return True


def _layer_names(run: ReportRun) -> list[str]:
    sp = run.last.get("sparsity") or {}
    return list((sp.get("layers") or {}).keys())


def _layer_rows(run: ReportRun) -> dict[str, dict[str, Any]]:
    return {r["layer"]: r for r in (run.summary or {}).get("layers") or [] if "layer" in r}


def fig_sparsity(p: _Plotter, run: ReportRun, path: Path) -> bool:
    names = _layer_names(run)
    if not names:
        return False
    final = [100.0 * float(run.last["sparsity"]["layers"][n]) for n in names]
    totals = _series_nested(run, ("sparsity", "total"), 100.0)
    changes = totals is not None and (max(totals) - min(totals)) > 1e-6
    rows = _layer_rows(run)
    labels = []
    for name in names:
        r = rows.get(name)
        labels.append(f"{name}  ({r['k']}/{r['n']})" if r and r.get("k") != "-" else name)
    height = max(2.4, 0.28 * len(names) + 1.3)
    with p.rc():
        fig = p.figure((9.0 if changes else 6.5, height))
        axes = fig.subplots(1, 2 if changes else 1, squeeze=False)[0]
        ax = axes[0]
        ypos = list(range(len(names)))
        bars = ax.barh(ypos, final, color="C0", height=0.7)
        ax.set_yticks(ypos, labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("sparsity (% of the layer's weights pruned)")
        ax.set_title("Final sparsity per layer (k/n kept per group)")
        ax.grid(axis="y", visible=False)
        for bar, value in zip(bars, final, strict=True):
            inside = value > 80
            ax.text(
                value - 1 if inside else value + 1,
                bar.get_y() + bar.get_height() / 2,
                f"{value:.1f}%",
                va="center",
                ha="right" if inside else "left",
                color="white" if inside else "black",
                fontsize=8,
            )
        total = _num((run.last.get("sparsity") or {}).get("total"))
        if total is not None:
            ax.axvline(100 * total, color="C3", ls="--", lw=1.2, label=f"total\n{100 * total:.1f}%")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if changes:
            assert totals is not None
            ax = axes[1]
            ax.plot(_epochs(run), totals, color="C3", **_marker(len(totals)))
            ax.set_title("Total sparsity over epochs")
            ax.set_ylabel("sparsity of the pruned layers (%)")
            _integer_epochs(ax)
        fig.suptitle(f"{run.label}: sparsity")
        p.save(fig, path)
    return True


def _series_nested(run: ReportRun, keys: tuple[str, ...], scale: float = 1.0) -> list[float] | None:
    out = []
    for r in run.history:
        value: Any = r
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        v = _num(value)
        out.append(math.nan if v is None else v * scale)
    if all(math.isnan(v) for v in out):
        return None
    return out


def fig_mask_metrics(p: _Plotter, run: ReportRun, path: Path) -> bool:
    layer_names: list[str] = []
    for r in run.history:
        for name in (r.get("mask_metrics") or {}).get("layers") or {}:
            if name not in layer_names:
                layer_names.append(name)
    if not layer_names:
        return False
    epochs = _epochs(run)
    metrics = ("confidence", "diversity")
    titles = {
        "confidence": "Confidence (1: every group always keeps the same k)",
        "diversity": "Diversity (0: all groups keep the same k)",
    }
    data = {
        (m, name): _series_nested(run, ("mask_metrics", "layers", name, m))
        for m in metrics
        for name in layer_names
    }
    with p.rc():
        if len(layer_names) <= MAX_LINE_LAYERS:
            fig = p.figure((9.0, 3.6 + 0.25 * math.ceil(len(layer_names) / 5)))
            axes = fig.subplots(1, 2)
            for ax, m in zip(axes, metrics, strict=True):
                for i, name in enumerate(layer_names):
                    ys = data[(m, name)]
                    if ys is not None:
                        ax.plot(epochs, ys, color=f"C{i}", label=name, **_marker(len(ys)))
                model_ys = _series_nested(run, ("mask_metrics", "model", m))
                if model_ys is not None and len(layer_names) > 1:
                    ax.plot(epochs, model_ys, color="black", ls="--", lw=1.2, label="model")
                ax.set_ylim(-0.03, 1.03)
                ax.set_title(titles[m], fontsize=10)
                ax.set_ylabel(f"{m} (0 to 1)")
                _integer_epochs(ax)
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(
                handles,
                labels,
                loc="outside lower center",
                ncol=min(len(labels), 6),
                title="layer",
            )
        else:
            import numpy as np

            fig = p.figure((10.0, max(3.5, 0.22 * len(layer_names) + 1.6)))
            axes = fig.subplots(1, 2)
            im = None
            for ax, m in zip(axes, metrics, strict=True):
                grid = np.array(
                    [data[(m, name)] or [math.nan] * len(epochs) for name in layer_names]
                )
                im = ax.imshow(
                    grid,
                    aspect="auto",
                    interpolation="nearest",
                    vmin=0,
                    vmax=1,
                    cmap="viridis",
                    extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(layer_names) - 0.5, -0.5),
                )
                ax.set_yticks(range(len(layer_names)), layer_names if ax is axes[0] else [])
                ax.set_title(titles[m], fontsize=10)
                ax.grid(False)
                _integer_epochs(ax)
            fig.colorbar(im, ax=axes, label="value (0 to 1)", shrink=0.9)
        fig.suptitle(f"{run.label}: mask confidence and diversity per layer (method.md §6)")
        p.save(fig, path)
    return True


def _downsample(arr: Any, max_rows: int, max_cols: int) -> tuple[Any, int, int]:
    """Average ``arr`` over blocks so that it fits ``max_rows x max_cols``."""
    import numpy as np

    rows, cols = arr.shape
    fr, fc = math.ceil(rows / max_rows), math.ceil(cols / max_cols)
    if fr == 1 and fc == 1:
        return arr, 1, 1
    pad = np.full((math.ceil(rows / fr) * fr, math.ceil(cols / fc) * fc), np.nan)
    pad[:rows, :cols] = arr
    out = np.nanmean(pad.reshape(pad.shape[0] // fr, fr, pad.shape[1] // fc, fc), axis=(1, 3))
    return out, fr, fc


def _beta_text(layer: LayerMask) -> str:
    if layer.estimator == "fixed":
        return "fixed mask"
    if layer.estimator == "deterministic" or layer.noise_scale is None:
        return "deterministic mask"
    if layer.noise_scale == 0:
        return "noise scale β = 0: the deterministic top-k"
    return f"noise scale β = {layer.noise_scale:.3g}"


def fig_linear_mask(
    p: _Plotter, run: ReportRun, layer: LayerMask, path: Path, input_shape: tuple[int, ...] | None
) -> bool:
    arr, fr, fc = _downsample(layer.candidate_prob, MAX_MAP_ROWS, MAX_MAP_COLS)
    rows, cols = layer.candidate_prob.shape
    # A whole number of screen pixels per cell (the map is at most MAX_MAP_ROWS x
    # MAX_MAP_COLS), so nearest-neighbour drawing drops no row or column.
    sx = max(1, min(880 // arr.shape[1], 12))
    sy = max(1, min(440 // arr.shape[0], 12))
    width = max(7.5, sx * arr.shape[1] / DPI + 2.3)
    height = max(2.6, sy * arr.shape[0] / DPI + 1.6)
    unit = "per neuron" if layer.granularity == "weight" else f"per block of {layer.n}"
    if layer.granularity == "filter":
        unit = "neurons of the layer"
    with p.rc():
        fig = p.figure((width, height))
        ax = fig.subplots()
        im = ax.imshow(
            arr,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=0,
            vmax=1,
            extent=(-0.5, cols - 0.5, rows - 0.5, -0.5),
        )
        ax.grid(False)
        xlabel = f"input feature (0 to {cols - 1})"
        if input_shape is not None and math.prod(input_shape) == cols and len(input_shape) == 3:
            c, h, w = input_shape
            xlabel = f"input pixel (row-major {h}×{w}" + (f"×{c} channels)" if c > 1 else ")")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"output neuron (0 to {rows - 1})")
        note = f"; averaged over {fr}×{fc} cells" if fr * fc > 1 else ""
        ax.set_title(
            f"{layer.name}: probability that each weight is kept "
            f"({layer.k} of {layer.n} {unit})\n{_beta_text(layer)}{note}",
            fontsize=10,
        )
        fig.colorbar(im, ax=ax, label="P(weight kept)", shrink=0.95)
        fig.suptitle(f"{run.label}: mask of {layer.name} ({rows}×{cols})")
        p.save(fig, path)
    return True


def fig_pixels(
    p: _Plotter, run: ReportRun, layer: LayerMask, path: Path, input_shape: tuple[int, ...]
) -> bool:
    c, h, w = input_shape
    counts = layer.kept.reshape(layer.kept.shape[0], c, h, w).sum(axis=(0, 1))
    neurons = layer.kept.shape[0]
    with p.rc():
        fig = p.figure((5.2, 4.3))
        ax = fig.subplots()
        im = ax.imshow(counts, cmap="magma", interpolation="nearest", vmin=0)
        ax.grid(False)
        step = 7 if h >= 20 else (2 if h > 10 else 1)
        ax.set_xticks(range(0, w, step))
        ax.set_yticks(range(0, h, step))
        ax.set_xlabel("pixel column")
        ax.set_ylabel("pixel row")
        chan = f" (summed over {c} channels)" if c > 1 else ""
        ax.set_title(
            f"How many of the {neurons} {layer.name} neurons keep each pixel{chan}\n"
            f"deterministic masks; {int((counts == 0).sum())} of {h * w} pixels unused",
            fontsize=10,
        )
        fig.colorbar(im, ax=ax, label="neurons keeping the pixel", shrink=0.9)
        fig.suptitle(f"{run.label}: input pixels used by {layer.name}")
        p.save(fig, path)
    return True


def fig_conv_masks(p: _Plotter, run: ReportRun, layers: list[LayerMask], path: Path) -> bool:
    shown = layers[:MAX_CONV_PANELS]
    if not shown:
        return False
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    with p.rc():
        fig = p.figure((2.6 * ncols + 1.0, 2.5 * nrows + 0.9))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        im = None
        for i, ax in enumerate(axes.flat):
            if i >= len(shown):
                ax.set_visible(False)
                continue
            layer = shown[i]
            im = ax.imshow(
                layer.candidate_prob,
                aspect="auto",
                interpolation="nearest",
                cmap="viridis",
                vmin=0,
                vmax=1,
            )
            ax.grid(False)
            what = {"kernel": "kernels", "weight": "weights", "block": f"of {layer.n}"}
            ax.set_title(
                f"{layer.name}\n{layer.granularity}: {layer.k}/{layer.n} "
                f"{what.get(layer.granularity, '')}",
                fontsize=9,
            )
            if i % ncols == 0:
                ax.set_ylabel("output channel")
            if i // ncols == nrows - 1 or i + ncols >= len(shown):
                ax.set_xlabel("input channel")
            ax.tick_params(labelsize=8)
        fig.colorbar(
            im, ax=axes, label="expected fraction of the kernel kept", shrink=0.8, aspect=30
        )
        extra = (
            f" (first {MAX_CONV_PANELS} of {len(layers)} layers)"
            if len(layers) > len(shown)
            else ""
        )
        beta = _beta_text(shown[0])
        fig.suptitle(
            f"{run.label}: convolution masks, C_out × C_in per layer{extra}\n{beta}",
            fontsize=11,
        )
        p.save(fig, path)
    return True


def fig_filters(p: _Plotter, run: ReportRun, layers: list[LayerMask], path: Path) -> bool:
    if not layers:
        return False
    import numpy as np

    names = [lay.name for lay in layers]
    kept = [lay.k for lay in layers]
    total = [lay.n for lay in layers]
    width = max(total)
    grid = np.full((len(layers), width), np.nan)
    for i, lay in enumerate(layers):
        grid[i, : lay.n] = lay.candidate_prob.reshape(-1)
    height = max(2.4, 0.35 * len(layers) + 1.4)
    with p.rc():
        fig = p.figure((10.0, height))
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.6])
        ypos = list(range(len(layers)))
        ax1.barh(ypos, kept, color="C0", label="kept", height=0.7)
        ax1.barh(
            ypos,
            [t - k for t, k in zip(total, kept, strict=True)],
            left=kept,
            color="0.8",
            label="pruned",
            height=0.7,
        )
        for y, k, t in zip(ypos, kept, total, strict=True):
            ax1.text(t, y, f" {k}/{t}", va="center", ha="left", fontsize=8)
        ax1.set_yticks(ypos, names)
        ax1.invert_yaxis()
        ax1.set_xlim(0, width * 1.25)
        ax1.set_xlabel("output channels")
        ax1.set_title("Channels kept (blue) and pruned (grey)")
        ax1.grid(axis="y", visible=False)
        cmap = p.mpl.colormaps["viridis"].with_extremes(bad="white")
        im = ax2.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1)
        ax2.grid(False)
        ax2.set_yticks(ypos, [])
        ax2.set_xlabel("output channel")
        ax2.set_title(
            f"Probability that each channel is kept\n{_beta_text(layers[0])}", fontsize=10
        )
        fig.colorbar(im, ax=ax2, label="P(channel kept)", shrink=0.9)
        fig.suptitle(f"{run.label}: filter-level pruning")
        p.save(fig, path)
    return True


def fig_accuracy_vs_compression(
    p: _Plotter, runs: list[ReportRun], dense: ReportRun | None, path: Path
) -> bool:
    pruned = [r for r in runs if r.method != "dense" and r.test_acc is not None]
    with_params = [r for r in pruned if r.param_compression is not None]
    with_storage = [r for r in pruned if r.storage_compression is not None]
    axes_spec = []
    if with_params:
        axes_spec.append(
            (
                "param_compression",
                "parameter compression (dense / kept, ×)",
                "Test accuracy vs parameters kept",
                with_params,
            )
        )
    if with_storage:
        axes_spec.append(
            (
                "storage_compression",
                "storage compression (dense fp32 / packed k-of-n, ×)",
                "Test accuracy vs storage",
                with_storage,
            )
        )
    if not axes_spec:
        return False
    markers = "osD^v<>PX*"
    groups = sorted({(r.method, r.model, r.dataset) for r in pruned})
    one_setup = len({(m, d) for _, m, d in groups}) == 1

    def group_label(g: tuple[str, str, str]) -> str:
        return g[0] if one_setup else f"{g[0]} · {g[1]} · {g[2]}"

    from matplotlib.ticker import FuncFormatter, LogLocator

    with p.rc():
        fig = p.figure((5.0 * len(axes_spec), 4.3))
        axes = fig.subplots(1, len(axes_spec), squeeze=False)[0]
        for ax, (attr, xlabel, title, rows) in zip(axes, axes_spec, strict=True):
            xs_all = []
            for gi, g in enumerate(groups):
                pts = sorted(
                    (
                        (getattr(r, attr), 100 * r.test_acc, r)
                        for r in rows
                        if (r.method, r.model, r.dataset) == g
                    ),
                    key=lambda t: t[0],
                )
                if not pts:
                    continue
                xs = [t[0] for t in pts]
                xs_all += xs
                ax.plot(
                    xs,
                    [t[1] for t in pts],
                    marker=markers[gi % len(markers)],
                    ls="-" if len(pts) > 1 else "none",
                    lw=1,
                    ms=6,
                    color=f"C{gi % 10}",
                    label=group_label(g),
                )
                if len(rows) <= 12:
                    for j, (x, y, r) in enumerate(pts):
                        ax.annotate(
                            r.label,
                            (x, y),
                            textcoords="offset points",
                            xytext=(5, 6 if j % 2 == 0 else -12),
                            fontsize=8,
                        )
            if dense is not None and dense.test_acc is not None:
                ax.axhline(
                    100 * dense.test_acc,
                    color="0.3",
                    ls="--",
                    lw=1.2,
                    label=f"dense reference ({dense.label}): {100 * dense.test_acc:.2f}%",
                )
                xs_all.append(1.0)
            ax.set_xscale("log")
            lo, hi = min(xs_all), max(xs_all)
            ax.set_xlim(lo / 1.3, hi * 1.8)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xlabel(xlabel + ", log scale")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(title)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3))
        fig.suptitle("Accuracy against compression")
        p.save(fig, path)
    return True


def fig_test_accuracy(
    p: _Plotter, runs: list[ReportRun], dense: ReportRun | None, path: Path
) -> bool:
    everything = runs + ([dense] if dense is not None and dense not in runs else [])
    with p.rc():
        fig = p.figure((7.5, 4.0))
        ax = fig.subplots()
        for i, run in enumerate(everything):
            ys = _series(run, "test_acc", 100.0)
            if ys is None:
                continue
            style = "--" if run.method == "dense" else "-"
            ax.plot(
                _epochs(run), ys, ls=style, color=f"C{i % 10}", label=run.label, **_marker(len(ys))
            )
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Test accuracy over epochs (deterministic masks; dashed: dense)")
        _integer_epochs(ax)
        ax.legend(loc="lower right", ncol=1 if len(everything) <= 8 else 2, fontsize=8)
        p.save(fig, path)
    return True


# ----------------------------------------------------------------------------- the report
@dataclass
class _RunSection:
    run: ReportRun
    figures: list[_Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    masks: MaskData | None = None


@dataclass
class ReportResult:
    """What :func:`make_report` wrote."""

    page: Path
    figures: list[Path]

    @property
    def files(self) -> list[Path]:
        return [self.page, *self.figures]


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
        FileNotFoundError, ValueError: a run directory is missing or unreadable (the
            message names it).
    """
    if fmt not in ("html", "md"):
        raise ValueError(f"format must be 'html' or 'md', got {fmt!r}")
    if not runs:
        raise ValueError("dpp report needs at least one run directory")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    plotter = _Plotter()  # fail before any work when matplotlib is missing
    say = log or (lambda msg: None)
    loaded = [read_run(r) for r in runs]
    dense_run = read_run(dense) if dense is not None else None
    if dense_run is not None:
        dense_run.reference = True
    _label_runs(loaded + ([dense_run] if dense_run is not None else []))
    reference = dense_run or next((r for r in loaded if r.method == "dense"), None)

    out_dir = Path(out) if out is not None else _default_out(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    multi = len(loaded) > 1
    written: list[Path] = []

    def emit(ok: bool, target: Path, figs: list[_Figure], title: str, caption: str) -> None:
        if ok:
            written.append(target)
            figs.append(_Figure(target.relative_to(out_dir).as_posix(), title, caption))

    sections = []
    for run in loaded:
        say(f"report: {run.path}")
        sec = _RunSection(run)
        fig_dir = out_dir / run.slug if multi else out_dir
        figs = sec.figures
        emit(
            fig_curves(plotter, run, fig_dir / "curves.png"),
            fig_dir / "curves.png",
            figs,
            "Training curves",
            "Loss and accuracy per epoch. Training values are averaged over the epoch with "
            "sampled masks; validation and test use the deterministic top-k masks at the end "
            "of the epoch. Right: temperature τ of the relaxation and noise scale β of the "
            "Gumbel perturbation at the end of each epoch.",
        )
        emit(
            fig_sparsity(plotter, run, fig_dir / "sparsity.png"),
            fig_dir / "sparsity.png",
            figs,
            "Sparsity per layer",
            "Fraction of each pruned layer's weights that the final deterministic mask "
            "removes; k/n is the number of candidates kept per group. The dashed line is "
            "the total over the pruned layers.",
        )
        emit(
            fig_mask_metrics(plotter, run, fig_dir / "mask_metrics.png"),
            fig_dir / "mask_metrics.png",
            figs,
            "Mask confidence and diversity",
            "Confidence: how sure each group is of its k candidates (1: always the same k, "
            "0: uniform), averaged over the layer's groups. Diversity: how much the groups' "
            "choices spread over all n candidates (0: every group keeps the same k). Both "
            "from inclusion probabilities of one training-mode draw (method.md section 6). A "
            "filter-level layer has a single group: its diversity is 0 by definition.",
        )
        try:
            sec.masks = _mask_data(run, samples, seed)
        except Exception as err:  # the run's figures above are still useful
            message = f"{type(err).__name__}: {err}"
            if len(message) > 300:
                message = message[:300] + " ..."
            sec.masks = MaskData([], None, None, message)
        if sec.masks.error:
            sec.notes.append(f"Mask images skipped: {sec.masks.error}")
            print(
                f"dpp report: {run.path}: mask images skipped: {sec.masks.error}", file=sys.stderr
            )
        md = sec.masks
        conv, filters = [], []
        for layer in md.layers:
            if layer.granularity == "filter":
                filters.append(layer)
            elif layer.kind == "conv":
                conv.append(layer)
            else:
                target = fig_dir / f"mask_{_slug(layer.name)}.png"
                emit(
                    fig_linear_mask(plotter, run, layer, target, md.input_shape),
                    target,
                    figs,
                    f"Mask of {layer.name}",
                    f"Probability that each weight of {layer.name} is kept by one "
                    f"training-mode draw of the mask ({_beta_text(layer)}), from the final "
                    "logits. Rows are output neurons, columns inputs; bright columns are "
                    "inputs that many neurons keep.",
                )
                if (
                    layer.name == md.first_layer
                    and layer.kept is not None
                    and md.input_shape is not None
                    and len(md.input_shape) == 3
                    and md.input_shape[1] * md.input_shape[2] > 1
                    and math.prod(md.input_shape) == layer.kept.shape[1]
                ):
                    target = fig_dir / f"pixels_{_slug(layer.name)}.png"
                    emit(
                        fig_pixels(plotter, run, layer, target, md.input_shape),
                        target,
                        figs,
                        f"Input pixels kept by {layer.name}",
                        "How many first-layer neurons keep each input pixel under the final "
                        "deterministic masks: the layer learns where the information is.",
                    )
        if conv:
            target = fig_dir / "conv_masks.png"
            emit(
                fig_conv_masks(plotter, run, conv, target),
                target,
                figs,
                "Convolution masks",
                "For every pruned convolution, an output channel × input channel map of the "
                "expected fraction of each kernel that is kept (kernel level: the probability "
                "that the kernel is kept; weight or block level: the mean over its positions).",
            )
        if filters:
            target = fig_dir / "filters.png"
            emit(
                fig_filters(plotter, run, filters, target),
                target,
                figs,
                "Filter-level pruning",
                "Left: output channels kept per filter-level layer. Right: probability that "
                "each channel is kept (white: beyond the layer's channel count).",
            )
        sections.append(sec)

    overview: list[_Figure] = []
    if len(loaded) + (dense_run is not None) > 1:
        target = out_dir / "accuracy_vs_compression.png"
        emit(
            fig_accuracy_vs_compression(plotter, loaded, reference, target),
            target,
            overview,
            "Accuracy against compression",
            "Final test accuracy of every pruned run against its compression, log scale. "
            "Parameters: dense parameter count over parameters kept. Storage: dense fp32 bits "
            "over the packed k-of-n format (values and indices). Dashed: the dense "
            "reference." + ("" if reference is not None else " (No dense reference run.)"),
        )
        target = out_dir / "test_accuracy.png"
        emit(
            fig_test_accuracy(plotter, loaded, dense_run, target),
            target,
            overview,
            "Test accuracy over epochs",
            "Test accuracy of every run per epoch.",
        )

    all_runs = loaded + ([dense_run] if dense_run is not None else [])
    page = out_dir / ("report.html" if fmt == "html" else "report.md")
    text = (_html if fmt == "html" else _markdown)(all_runs, sections, overview, reference)
    page.write_text(text, encoding="utf-8")
    return ReportResult(page, written)


# ----------------------------------------------------------------------------- page
def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _summary_rows(runs: list[ReportRun]) -> tuple[list[str], list[list[str]]]:
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
        total = r.epochs_total
        done = r.last.get("epoch")
        epochs = f"{done}" if r.finished else f"{done}/{total or '?'} (unfinished)"
        params = "–"
        if r.params is not None:
            dense, kept = r.params
            params = f"{kept:,} / {dense:,} ({100 * kept / dense:.2f}%)" if dense else "–"
        pc = r.param_compression
        sc = r.storage_compression
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
                "–" if pc is None else f"{pc:.1f}×",
                "–" if sc is None else f"{sc:.1f}×",
            ]
        )
    return header, rows


def _layer_table(run: ReportRun) -> tuple[list[str], list[list[str]]]:
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
        kn = "dense" if r.get("k") == "-" else f"{r.get('k')} / {r.get('n')}"
        conf, div = _num(m.get("confidence")), _num(m.get("diversity"))
        rows.append(
            [
                str(r.get("layer")),
                str(r.get("type", "")),
                str(r.get("granularity", "")),
                kn,
                f"{float(r.get('density', 1.0)):.3f}",
                f"{int(r.get('kept', 0)):,} / {int(r.get('weights', 0)):,}",
                "–" if conf is None else f"{conf:.3f}",
                "–" if div is None else f"{div:.3f}",
            ]
        )
    return header, rows


def _run_facts(run: ReportRun) -> str:
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
    sec = (run.summary or {}).get("seconds_per_epoch")
    if _num(sec) is not None:
        bits.append(f"{sec:.1f} s per epoch")
    return "; ".join(bits)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _html_figure(fig: _Figure) -> str:
    src = html.escape(fig.file, quote=True)
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(fig.title, quote=True)}" '
        f'loading="lazy"></a><figcaption><b>{html.escape(fig.title)}.</b> '
        f"{html.escape(fig.caption)}</figcaption></figure>"
    )


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}
h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:900px}.note{color:#a40}code{font-size:.95em}
"""


def _html(
    runs: list[ReportRun],
    sections: list[_RunSection],
    overview: list[_Figure],
    reference: ReportRun | None,
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>dpp report: {html.escape(', '.join(r.label for r in runs))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Dynamic Probabilistic Pruning report</h1>",
        f"<p>Generated {datetime.now().strftime('%Y-%m-%d %H:%M')} by <code>dpp report</code>.</p>",
        "<h2>Summary</h2>",
        _html_table(*_summary_rows(runs)),
        "<p>Params kept counts every parameter of the model (biases and BatchNorm included, "
        "mask logits excluded). Storage compression is dense fp32 over the packed k-of-n "
        "format, indices included.</p>",
    ]
    for fig in overview:
        parts.append(_html_figure(fig))
    for sec in sections:
        run = sec.run
        parts.append(f'<h2 id="{html.escape(run.slug, quote=True)}">{html.escape(run.label)}</h2>')
        facts = _run_facts(run).replace("`", "")
        parts.append(
            f"<p>{html.escape(run.method)} · {html.escape(run.model)} · "
            f"{html.escape(run.dataset)} — {html.escape(facts)}</p>"
        )
        header, rows = _layer_table(run)
        if rows:
            parts.append(_html_table(header, rows))
        for note in sec.notes:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        for fig in sec.figures:
            parts.append(_html_figure(fig))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_figure(fig: _Figure) -> str:
    return f"![{fig.title}]({fig.file})\n\n*{fig.title}.* {fig.caption}"


def _markdown(
    runs: list[ReportRun],
    sections: list[_RunSection],
    overview: list[_Figure],
    reference: ReportRun | None,
) -> str:
    parts = [
        "# Dynamic Probabilistic Pruning report",
        f"Generated {datetime.now().strftime('%Y-%m-%d %H:%M')} by `dpp report`.",
        "## Summary",
        _md_table(*_summary_rows(runs)),
        "Params kept counts every parameter of the model (biases and BatchNorm included, mask "
        "logits excluded). Storage compression is dense fp32 over the packed k-of-n format, "
        "indices included.",
    ]
    parts += [_md_figure(f) for f in overview]
    for sec in sections:
        run = sec.run
        parts.append(f"## {run.label}")
        parts.append(f"{run.method} · {run.model} · {run.dataset} — {_run_facts(run)}")
        header, rows = _layer_table(run)
        if rows:
            parts.append(_md_table(header, rows))
        parts += [f"> {note}" for note in sec.notes]
        parts += [_md_figure(f) for f in sec.figures]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- CLI
def _cmd_report(args: argparse.Namespace) -> int:
    try:
        result = make_report(
            args.runs,
            out=args.out,
            fmt=args.format,
            samples=args.samples,
            dense=args.dense,
            seed=args.seed,
            log=None if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
        )
    except MissingPlotDependencyError as err:
        print(f"dpp report: {err}", file=sys.stderr)
        return 2
    print(f"report written to {result.page}")
    if not args.quiet:
        for path in result.figures:
            print(f"  {path}")
    return 0


def register_cli(sub: Any) -> None:
    """Add ``dpp report`` to the ``dpp`` command line (called by ``cli.build_parser``)."""
    p = sub.add_parser(
        "report",
        help="figures and an HTML/Markdown page for one or more runs",
        description="Write PNG figures (training curves, sparsity, mask metrics, mask images, "
        "accuracy against compression for several runs) and one page that shows them.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of dpp train")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default: RUN_DIR/report for one run, reports/<timestamp> "
        "for several)",
    )
    p.add_argument("--format", choices=["html", "md"], default="html", help="page format")
    p.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"Monte Carlo draws for the inclusion probabilities of the mask images "
        f"(default {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "--dense",
        metavar="RUN_DIR",
        help="dense reference run (default: any given run whose method is dense)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the page's path")
    p.set_defaults(func=_cmd_report)
