"""The figures that compare runs: accuracy against compression, test accuracy over epochs."""

from __future__ import annotations

from pathlib import Path

from .plotting import Plotter, integer_epochs, marker
from .runs import ReportRun, epochs_of, series

__all__ = ["fig_accuracy_vs_compression", "fig_test_accuracy"]


def fig_accuracy_vs_compression(
    p: Plotter, runs: list[ReportRun], dense: ReportRun | None, path: Path
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
    p: Plotter, runs: list[ReportRun], dense: ReportRun | None, path: Path
) -> bool:
    everything = runs + ([dense] if dense is not None and dense not in runs else [])
    with p.rc():
        fig = p.figure((7.5, 4.0))
        ax = fig.subplots()
        for i, run in enumerate(everything):
            ys = series(run, "test_acc", 100.0)
            if ys is None:
                continue
            style = "--" if run.method == "dense" else "-"
            ax.plot(
                epochs_of(run), ys, ls=style, color=f"C{i % 10}", label=run.label, **marker(len(ys))
            )
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Test accuracy over epochs (deterministic masks; dashed: dense)")
        integer_epochs(ax)
        ax.legend(loc="lower right", ncol=1 if len(everything) <= 8 else 2, fontsize=8)
        p.save(fig, path)
    return True
