"""Benchmark of two cheaper-looking variants of DPP's Gumbel draw, at 2:4 on CPU.

The profiled SmolLM2 step (docs/benchmarks.md, "Step time on a CPU with native bf16") spends
about 1.1 s of its 3.8 s over dense fine-tuning on Gumbel noise, which small groups draw
twice a step: in the forward pass, and again in the backward pass from the generator's
saved state instead of keeping float32 scores for it. Interleaved in one process, medians
of ``--rounds`` rounds:

* noise: :func:`dpp.sampling.gumbel_noise` (``rand``, ``clamp``, two ``log`` and two
  negations) against ``-log(E)`` with ``E`` from ``Tensor.exponential_`` (one draw, one
  ``log``; ``E`` clamped away from 0);
* ``gumbel_topk`` forward + backward as by default (the backward redraws the noise) against
  ``keep_scores=True`` (the float32 scores kept for the backward).

Usage:
    python benchmarks/bench_noise.py [--groups G] [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from datetime import datetime, timezone

import torch

import dpp
import dpp.sampling as sampling
from timing import cpu_name, interleaved_seconds


def exponential_gumbel(shape: tuple[int, ...]) -> torch.Tensor:
    """Gumbel(0, 1) noise as ``-log(E)``, ``E ~ Exponential(1)``."""
    e = torch.empty(shape).exponential_()
    return e.clamp_(min=torch.finfo(e.dtype).tiny).log_().neg_()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=4 * 2**20, help="2:4 groups (rows of 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.groups, 4)
    torch.manual_seed(0)
    logits = (torch.randn(shape) * 0.5).requires_grad_(True)
    grad = torch.randn(shape)

    def fwd_bwd(keep_scores: bool) -> None:
        logits.grad = None
        dpp.gumbel_topk(logits, 2, tau=1.0, noise_scale=0.3, keep_scores=keep_scores).backward(grad)

    fns: dict[str, Callable[[], object]] = {
        "gumbel_noise": lambda: sampling.gumbel_noise(shape),
        "exponential_ noise": lambda: exponential_gumbel(shape),
        "gumbel_topk fwd+bwd, noise redrawn": lambda: fwd_bwd(False),
        "gumbel_topk fwd+bwd, scores kept": lambda: fwd_bwd(True),
    }
    seconds = interleaved_seconds(fns, args.rounds)
    ms = {name: statistics.median(ts) * 1e3 for name, ts in seconds.items()}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"{args.groups} x 4, k = 2: {args.rounds} interleaved rounds, "
        f"{torch.get_num_threads()} threads, {cpu_name()}, torch {torch.__version__}, {now}"
    )
    print()
    print("| variant | median (ms) | / first of its pair |")
    print("|---|---|---|")
    names = list(ms)
    for i, name in enumerate(names):
        base = ms[names[i - i % 2]]
        print(f"| {name} | {ms[name]:.1f} | {ms[name] / base:.2f}x |")


if __name__ == "__main__":
    main()
