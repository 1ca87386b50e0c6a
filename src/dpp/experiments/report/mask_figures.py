"""The mask images of one run: Linear masks, input pixels, convolutions, filters."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .masks import LayerMask, beta_text
from .plotting import DPI, Plotter
from .runs import ReportRun

__all__ = ["fig_conv_masks", "fig_filters", "fig_linear_mask", "fig_pixels"]

#: Heat maps larger than this are averaged over blocks of cells first.
MAX_MAP_ROWS, MAX_MAP_COLS = 400, 800

#: At most this many convolution panels in ``conv_masks.png``.
MAX_CONV_PANELS = 24


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


def _finish_map(
    p: Plotter,
    fig: Any,
    axes_image: tuple[Any, Any],
    path: Path,
    titles: tuple[str, str],
    label: str,
    shrink: float,
) -> None:
    """Title a single heat map, add its colour bar and the figure's title, save it."""
    ax, im = axes_image
    ax.set_title(titles[0], fontsize=10)
    fig.colorbar(im, ax=ax, label=label, shrink=shrink)
    fig.suptitle(titles[1])
    p.save(fig, path)


def fig_linear_mask(
    p: Plotter, run: ReportRun, layer: LayerMask, path: Path, input_shape: tuple[int, ...] | None
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
        title = (
            f"{layer.name}: probability that each weight is kept "
            f"({layer.k} of {layer.n} {unit})\n{beta_text(layer)}{note}"
        )
        suptitle = f"{run.label}: mask of {layer.name} ({rows}×{cols})"
        _finish_map(p, fig, (ax, im), path, (title, suptitle), "P(weight kept)", 0.95)
    return True


def fig_pixels(
    p: Plotter, run: ReportRun, layer: LayerMask, path: Path, input_shape: tuple[int, ...]
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
        ticks = {"xticks": range(0, w, step), "yticks": range(0, h, step)}
        ax.set(xlabel="pixel column", ylabel="pixel row", **ticks)
        chan = f" (summed over {c} channels)" if c > 1 else ""
        unused = int((counts == 0).sum())
        titles = (
            f"How many of the {neurons} {layer.name} neurons keep each pixel{chan}\n"
            f"deterministic masks; {unused} of {h * w} pixels unused",
            f"{run.label}: input pixels used by {layer.name}",
        )
        _finish_map(p, fig, (ax, im), path, titles, "neurons keeping the pixel", 0.9)
    return True


def fig_conv_masks(p: Plotter, run: ReportRun, layers: list[LayerMask], path: Path) -> bool:
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
        beta = beta_text(shown[0])
        fig.suptitle(
            f"{run.label}: convolution masks, C_out × C_in per layer{extra}\n{beta}",
            fontsize=11,
        )
        p.save(fig, path)
    return True


def fig_filters(p: Plotter, run: ReportRun, layers: list[LayerMask], path: Path) -> bool:
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
        ax2.set_title(f"Probability that each channel is kept\n{beta_text(layers[0])}", fontsize=10)
        fig.colorbar(im, ax=ax2, label="P(channel kept)", shrink=0.9)
        fig.suptitle(f"{run.label}: filter-level pruning")
        p.save(fig, path)
    return True
