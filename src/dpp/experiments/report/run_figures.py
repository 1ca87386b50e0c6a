"""The figures of one run: training curves, sparsity per layer, mask metrics."""

from __future__ import annotations

import math
from pathlib import Path

from .plotting import SPLIT_COLORS, Plotter, integer_epochs, marker
from .runs import ReportRun, epochs_of, layer_names, layer_rows, num, series, series_nested

__all__ = ["fig_curves", "fig_mask_metrics", "fig_sparsity"]

#: Per-layer line plots up to this many layers; heat maps (layer x epoch) beyond.
MAX_LINE_LAYERS = 10


def fig_curves(p: Plotter, run: ReportRun, path: Path) -> bool:
    epochs = epochs_of(run)
    sched = [k for k in ("temperature", "noise_scale") if series(run, k) is not None]
    panels = 2 + bool(sched)
    with p.rc():
        fig = p.figure((4.0 * panels, 3.3))
        axes = fig.subplots(1, panels, squeeze=False)[0]
        ax = axes[0]
        for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
            ys = series(run, f"{split}_loss")
            if ys is not None:
                ax.plot(epochs, ys, color=SPLIT_COLORS[split], label=label, **marker(len(ys)))
        ax.set_title("Loss")
        ax.set_ylabel("cross-entropy (nats)")
        integer_epochs(ax)
        ax.legend()
        ax = axes[1]
        for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
            ys = series(run, f"{split}_acc", 100.0)
            if ys is not None:
                ax.plot(epochs, ys, color=SPLIT_COLORS[split], label=label, **marker(len(ys)))
        ax.set_title("Accuracy")
        ax.set_ylabel("accuracy (%)")
        integer_epochs(ax)
        ax.legend(loc="lower right")
        if sched:
            ax = axes[2]
            names = {"temperature": "temperature τ", "noise_scale": "noise scale β"}
            for i, key in enumerate(sched):
                ys = series(run, key)
                assert ys is not None
                ax.plot(epochs, ys, color=f"C{4 + i}", label=names[key], **marker(len(ys)))
            ax.set_title("Mask sampling schedule (end of epoch)")
            ax.set_ylabel("value (dimensionless)")
            ax.set_ylim(bottom=0)
            integer_epochs(ax)
            ax.legend()
        fig.suptitle(f"{run.label}: training curves")
        p.save(fig, path)
    return True


def fig_sparsity(p: Plotter, run: ReportRun, path: Path) -> bool:
    names = layer_names(run)
    if not names:
        return False
    final = [100.0 * float(run.last["sparsity"]["layers"][n]) for n in names]
    totals = series_nested(run, ("sparsity", "total"), 100.0)
    changes = totals is not None and (max(totals) - min(totals)) > 1e-6
    rows = layer_rows(run)
    labels = []
    for name in names:
        r = rows.get(name)
        pruned = r is not None and r.get("k") not in ("-", None)  # "-" or None: a dense layer
        labels.append(f"{name}  ({r['k']}/{r['n']})" if pruned else name)
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
        total = num((run.last.get("sparsity") or {}).get("total"))
        if total is not None:
            ax.axvline(100 * total, color="C3", ls="--", lw=1.2, label=f"total\n{100 * total:.1f}%")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if changes:
            assert totals is not None
            ax = axes[1]
            ax.plot(epochs_of(run), totals, color="C3", **marker(len(totals)))
            ax.set_title("Total sparsity over epochs")
            ax.set_ylabel("sparsity of the pruned layers (%)")
            integer_epochs(ax)
        fig.suptitle(f"{run.label}: sparsity")
        p.save(fig, path)
    return True


def fig_mask_metrics(p: Plotter, run: ReportRun, path: Path) -> bool:
    layer_names: list[str] = []
    for r in run.history:
        for name in (r.get("mask_metrics") or {}).get("layers") or {}:
            if name not in layer_names:
                layer_names.append(name)
    if not layer_names:
        return False
    epochs = epochs_of(run)
    metrics = ("confidence", "diversity")
    titles = {
        "confidence": "Confidence (1: every group always keeps the same k)",
        "diversity": "Diversity (0: all groups keep the same k)",
    }
    data = {
        (m, name): series_nested(run, ("mask_metrics", "layers", name, m))
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
                        ax.plot(epochs, ys, color=f"C{i}", label=name, **marker(len(ys)))
                model_ys = series_nested(run, ("mask_metrics", "model", m))
                if model_ys is not None and len(layer_names) > 1:
                    ax.plot(epochs, model_ys, color="black", ls="--", lw=1.2, label="model")
                ax.set_ylim(-0.03, 1.03)
                ax.set_title(titles[m], fontsize=10)
                ax.set_ylabel(f"{m} (0 to 1)")
                integer_epochs(ax)
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
                integer_epochs(ax)
            fig.colorbar(im, ax=axes, label="value (0 to 1)", shrink=0.9)
        fig.suptitle(f"{run.label}: mask confidence and diversity per layer (method.md §6)")
        p.save(fig, path)
    return True
