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
    args = ap.parse_args(argv)

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


if __name__ == "__main__":
    main()
