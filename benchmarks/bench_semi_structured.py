"""Benchmark 2:4 semi-structured sparsity on an NVIDIA GPU: dense fp16 vs 2:4 Linear.

Needs a CUDA GPU of compute capability >= 8.0 (A100, H100, RTX 30xx/40xx); elsewhere it says
so and exits with status 2. Each Linear ``[out, in]`` is pruned 2:4 with DPP (``block``
granularity, ``block_size=4``, ``k=2``), converted with :func:`dpp.export.to_semi_structured`
and timed against the same layer dense in fp16 (CUDA events, median of repeated calls).

Usage::

    PYTHONPATH=src python benchmarks/bench_semi_structured.py
    PYTHONPATH=src python benchmarks/bench_semi_structured.py --shapes 4096x4096 --batches 4096
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import date

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import dpp
from dpp.export import to_semi_structured
from dpp.export.semi_structured import SemiStructuredError, _check_device


def cuda_ms(fn, *args, reps: int) -> float:
    """Median time of ``fn(*args)`` in milliseconds, by CUDA events."""
    for _ in range(10):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["4096x4096", "8192x8192", "11008x4096"],
                    help="OUTxIN of each Linear")  # fmt: skip
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 512, 4096])
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    ap.add_argument("--reps", type=int, default=100)
    args = ap.parse_args(argv)
    try:
        _check_device(torch.device("cuda"))
    except SemiStructuredError as exc:
        print(f"nothing measured: {exc}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    print(
        f"# 2:4 Linear on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{args.dtype}, {date.today()}\n"
    )
    print("| out x in | batch | dense ms | 2:4 ms | speedup | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape in args.shapes:
        out_f, in_f = (int(s) for s in shape.lower().split("x"))
        model = nn.Sequential(nn.Linear(in_f, out_f))
        pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
        with torch.no_grad():  # magnitude-like logits: any fixed 2:4 mask will do for timing
            pruner.layers["0"].dpp.logits.copy_(model[0].weight.abs().reshape(-1, 4))
        model.eval()
        pruner.finalize()
        sparse = to_semi_structured(pruner, dtype=dtype)
        dense = model.to("cuda", dtype)
        w = dense[0].weight.detach()
        b = dense[0].bias.detach()
        for batch in args.batches:
            x = torch.randn(batch, in_f, device="cuda", dtype=dtype)
            with torch.inference_mode():
                t_dense = cuda_ms(F.linear, x, w, b, reps=args.reps)
                t_sparse = cuda_ms(sparse, x, reps=args.reps)
                diff = (sparse(x) - F.linear(x, w, b)).abs().max().item()
            print(
                f"| {out_f} x {in_f} | {batch} | {t_dense:.4f} | {t_sparse:.4f} | "
                f"{t_dense / t_sparse:.2f}x | {diff:.3g} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
