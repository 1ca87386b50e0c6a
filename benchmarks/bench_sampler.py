"""Benchmark of the DPP sampler: ``gumbel_topk`` forward+backward against one ``torch.topk``.

Every shape is timed side by side in the same process: one ``torch.topk`` of the logits
(the floor any top-k sampler pays), ``gumbel_topk`` forward only, ``gumbel_topk``
forward+backward (closed-form relaxation, hand-written backward), and the literal loop of
k softmaxes (:func:`dpp.sampling.relaxed_topk_reference`) with a Gumbel top-k forward,
where its O(k n) activations fit in ``--loop-memory-gb``. Times are medians of repeated
runs after a warm-up; the table reports ratios to ``topk`` measured in the same run.

Usage:
    python benchmarks/bench_sampler.py [--threads N] [--repeats R] [--markdown]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import dpp
from dpp.sampling import gumbel_noise, relaxed_topk_reference
from timing import cpu_name, median_ms

SHAPES = [
    # (groups, n, k): a 512x4608 conv layer (3x3x512 fan-in) at 10%; LeNet-300-100's fc1
    # and fc2 at 5%; a transformer MLP at 2:4-like density; N:M blocks.
    (512, 4608, 461),
    (300, 784, 39),
    (100, 300, 15),
    (3072, 768, 77),
    (4096 * 256, 4, 2),
]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    return median_ms(fn, min_reps=repeats, max_reps=10 * repeats)


def _literal_loop(logits: torch.Tensor, k: int, grad: torch.Tensor) -> None:
    z = logits + gumbel_noise(logits.shape)
    idx = z.detach().topk(k, dim=-1).indices
    hard = torch.zeros_like(z).scatter_(-1, idx, 1.0)
    soft = relaxed_topk_reference(z, k, 1.0)
    mask = hard + (soft - soft.detach())
    mask.backward(grad)


def bench_shape(groups: int, n: int, k: int, repeats: int, loop_gb: float) -> dict[str, float]:
    torch.manual_seed(0)
    logits = torch.randn(groups, n) * 0.5
    leaf = logits.clone().requires_grad_(True)
    grad = torch.randn(groups, n)
    out: dict[str, float] = {}
    out["topk"] = _median_ms(lambda: logits.topk(k, dim=-1), repeats)

    def forward() -> None:
        with torch.no_grad():
            dpp.gumbel_topk(logits, k, tau=1.0)

    def forward_backward() -> None:
        leaf.grad = None
        dpp.gumbel_topk(leaf, k, tau=1.0).backward(grad)

    out["gumbel_topk fwd"] = _median_ms(forward, repeats)
    out["gumbel_topk fwd+bwd"] = _median_ms(forward_backward, repeats)
    # The literal loop keeps k softmaxes of [groups, n] float32 alive for the backward.
    loop_bytes = 4 * groups * n * k * 2
    if loop_bytes <= loop_gb * 2**30:

        def loop() -> None:
            leaf.grad = None
            _literal_loop(leaf, k, grad)

        out["literal loop fwd+bwd"] = _median_ms(loop, max(1, repeats // 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--loop-memory-gb", type=float, default=10.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
    print()
    print(
        "| groups x n | k | topk (ms) | fwd (ms) | fwd+bwd (ms) | fwd+bwd / topk "
        "| literal loop (ms) | loop / fwd+bwd |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for groups, n, k in SHAPES:
        r = bench_shape(groups, n, k, args.repeats, args.loop_memory_gb)
        loop = r.get("literal loop fwd+bwd")
        loop_cells = (
            f"{loop:.1f} | {loop / r['gumbel_topk fwd+bwd']:.0f}x" if loop else "(memory) | -"
        )
        print(
            f"| {groups} x {n} | {k} | {r['topk']:.2f} | {r['gumbel_topk fwd']:.2f} "
            f"| {r['gumbel_topk fwd+bwd']:.2f} | {r['gumbel_topk fwd+bwd'] / r['topk']:.1f}x "
            f"| {loop_cells} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
