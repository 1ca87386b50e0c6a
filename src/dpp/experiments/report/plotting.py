"""Drawing figures without pyplot: Agg canvases, one style, small palette PNGs.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the non-interactive Agg
canvas, so the report never needs a display and never changes the backend of the calling
program (pyplot is not imported). matplotlib is an optional dependency
(``pip install 'dpp[plot]'``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_bytes

__all__ = ["DPI", "MissingPlotDependencyError", "Plotter"]

DPI = 110

#: A PNG larger than this (bytes) is saved again with fewer palette colours.
MAX_PNG_BYTES = 140_000

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
SPLIT_COLORS = {"train": "C0", "val": "C2", "test": "C1"}


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


class Plotter:
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
            atomic_write_bytes(path, buf.getvalue())
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
        atomic_write_bytes(path, out.getvalue())

    def rc(self) -> Any:
        return self.mpl.rc_context(_RC)


def integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def marker(n: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 3} if n <= 30 else {}
