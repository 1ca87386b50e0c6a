"""Benchmark k-of-n Linear inference on CPU: dense ``F.linear`` vs torch CSR vs ``KOfNLinear``.

Square ``[n, n]`` weights keeping a fraction ``density`` of every row (``weight`` granularity,
random masks), inputs ``[batch, n]``. Every time is the median of repeated calls, all measured
in the same run. Prints markdown tables; writes nothing.

Usage::

    PYTHONPATH=src python benchmarks/bench_kofn.py                    # the full grid
    PYTHONPATH=src python benchmarks/bench_kofn.py --sizes 4096 --densities 0.05 --batches 1
    PYTHONPATH=src python benchmarks/bench_kofn.py --threads 1

Columns: ``dense`` (``F.linear`` with the masked dense weight), ``CSR`` (``weight.to_sparse_csr()``
of that weight: ``torch.mv`` for batch 1, ``csr @ x.T`` otherwise), ``k-of-n`` (``KOfNLinear``
with ``method="auto"``, the chosen formulation in brackets), then every formulation of
``KOfNLinear`` on its own, and the speedups of ``k-of-n`` over dense and over CSR.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from datetime import date

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from dpp.export.kofn import KOfNLinear
from timing import cpu_name, median_ms

FORMULATIONS = ("csr", "embedding_bag", "gather", "dense")
GATHER_LIMIT = 8 * 2**20  # elements of [B, out, r] beyond which "gather" is not timed (slow)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05, 0.02])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--min-time", type=float, default=0.25, help="seconds per measurement")
    ap.add_argument("--min-reps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stack-mib",
        type=float,
        default=None,
        help="instead of the grid: time a stack of distinct layers whose k-of-n data "
        "(values + int32 indices) totals at least this many MiB, one pass through all of them "
        "per call, next to one layer called repeatedly (the cache-resident case)",
    )
    args = ap.parse_args(argv)
    if args.stack_mib is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        stack_bench(args)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    timing = {"min_time": args.min_time, "min_reps": args.min_reps}
    torch.manual_seed(args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# k-of-n Linear on CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {date.today()}, "
        f"load average at start {load:.2f}\n"
    )
    main_rows = []
    method_rows = []
    for n in args.sizes:
        for density in args.densities:
            k = max(1, round(density * n))
            weight = torch.randn(n, n)
            idx = torch.rand(n, n).argsort(dim=1)[:, :k].sort(dim=1).values
            mask = torch.zeros(n, n, dtype=torch.bool).scatter_(1, idx, True)
            w = weight * mask
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                csr = w.to_sparse_csr()
            layer = KOfNLinear.from_dense(w, mask)
            for batch in args.batches:
                x = torch.randn(batch, n)
                ref = F.linear(x, w)
                times = {}
                with torch.inference_mode():
                    times["dense_torch"] = median_ms(F.linear, x, w, **timing)
                    if batch == 1:
                        xv = x[0]
                        times["csr_torch"] = median_ms(torch.mv, csr, xv, **timing)
                    else:
                        xt = x.t()
                        times["csr_torch"] = median_ms(torch.matmul, csr, xt, **timing)
                    for method in FORMULATIONS:
                        if method == "gather" and batch * n * k > GATHER_LIMIT:
                            times[method] = float("nan")
                            continue
                        layer.method = method
                        y = layer(x)
                        err = (y - ref).abs().max().item()
                        tol = 1e-4 * max(1.0, ref.abs().max().item())
                        if err > tol:
                            raise AssertionError(f"{method} differs from dense by {err}")
                        times[method] = median_ms(layer, x, **timing)
                    layer.method = "auto"
                    chosen = layer._choose(batch)
                    times["auto"] = median_ms(layer, x, **timing)
                main_rows.append((n, density, batch, times, chosen))
                method_rows.append((n, density, batch, times))
                print(
                    f"n={n} density={density} batch={batch}: dense {times['dense_torch']:.3f} ms, "
                    f"CSR {times['csr_torch']:.3f} ms, k-of-n {times['auto']:.3f} ms ({chosen})",
                    file=sys.stderr,
                    flush=True,
                )

    print("| n | density | batch | dense ms | CSR ms | k-of-n ms | k-of-n / dense | k-of-n / CSR |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    for n, density, batch, t, chosen in main_rows:
        print(
            f"| {n} | {density:g} | {batch} | {t['dense_torch']:.3f} | {t['csr_torch']:.3f} | "
            f"{t['auto']:.3f} ({chosen}) | {t['dense_torch'] / t['auto']:.2f}x faster | "
            f"{t['csr_torch'] / t['auto']:.2f}x faster |"
        )
    print(
        "\nEvery formulation of KOfNLinear (ms; `nan`: gather not timed, its [B, out, r] "
        "intermediate exceeds 8M elements):\n"
    )
    print("| n | density | batch | " + " | ".join(FORMULATIONS) + " |")
    print("|---:|---:|---:|" + "---:|" * len(FORMULATIONS))
    for n, density, batch, t in method_rows:
        cells = " | ".join(f"{t[m]:.3f}" for m in FORMULATIONS)
        print(f"| {n} | {density:g} | {batch} | {cells} |")
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at end {end_load:.2f}")


def l3_mib() -> float | None:
    """The L3 size lscpu reports, in MiB (``None`` if it cannot be read)."""
    import re
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"L3 cache:\s*([\d.]+)\s*([KMG])i?B", out)
    if not m:
        return None
    return float(m.group(1)) * {"K": 1 / 1024, "M": 1.0, "G": 1024.0}[m.group(2)]


def _each(kind: str, items: list, x: torch.Tensor) -> None:
    """Apply every weight / CSR matrix / layer of a stack to ``x``."""
    for item in items:
        if kind == "dense":
            F.linear(x, item)
        elif kind == "csr":
            torch.mv(item, x) if x.dim() == 1 else torch.matmul(item, x)
        else:
            item(x)


def stack_bench(args: argparse.Namespace) -> None:
    """One layer called repeatedly against a stack larger than the cache, with the
    bytes-moved limit: dense fp32 (4 n bytes per output) against k values plus indices."""
    timing = {"min_time": args.min_time, "min_reps": 3}
    torch.manual_seed(args.seed)
    l3 = l3_mib()
    print(
        f"# k-of-n Linear, stack vs single layer: {cpu_name()}, L3 {l3} MiB (lscpu), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {date.today()}, "
        f"load average at start {os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| n | density | batch | layers | k-of-n MiB | dense ms/layer | CSR ms/layer | "
        "k-of-n ms/layer | vs dense | limit int32 / int16 idx | vs CSR |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for n in args.sizes:
        for density in args.densities:
            k = max(1, round(density * n))
            sparse_mib = n * k * 8 / 2**20  # fp32 values + int32 indices
            layers = max(1, math.ceil(args.stack_mib / sparse_mib))
            ws, csrs, kofns = [], [], []
            for _ in range(layers):
                idx = torch.rand(n, n).argsort(dim=1)[:, :k].sort(dim=1).values
                mask = torch.zeros(n, n, dtype=torch.bool).scatter_(1, idx, True)
                w = torch.randn(n, n) * mask
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    csrs.append(w.to_sparse_csr())
                kofns.append(KOfNLinear.from_dense(w, mask))
                ws.append(w)
            for batch in args.batches:
                x = torch.randn(batch, n)
                xt = x[0] if batch == 1 else x.t()
                for count in sorted({1, layers}):
                    with torch.inference_mode():
                        t_dense = median_ms(_each, "dense", ws[:count], x, **timing)
                        t_csr = median_ms(_each, "csr", csrs[:count], xt, **timing)
                        t_kofn = median_ms(_each, "layer", kofns[:count], x, **timing)
                    d, c, q = (t / count for t in (t_dense, t_csr, t_kofn))
                    limit32 = 4 * n / (k * 8)
                    limit16 = 4 * n / (k * 6)
                    print(
                        f"| {n} | {density:g} | {batch} | {count} | {count * sparse_mib:.0f} | "
                        f"{d:.3f} | {c:.3f} | {q:.3f} ({kofns[0]._choose(batch)}) | "
                        f"{d / q:.1f}x | {limit32:.1f}x / {limit16:.1f}x | {c / q:.2f}x |",
                        flush=True,
                    )
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
