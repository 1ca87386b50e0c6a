"""bf16 against float32 matrix products on this CPU: is ``--bf16`` worth it here?

bf16 autocast is faster than float32 on a CPU with native bf16 (AVX512-BF16 or AMX) and
several times slower on one without it, where oneDNN emulates bf16. This times
``F.linear`` at the shapes of SmolLM2-135M's decoder projections (a batch of 4 x 512 tokens;
hidden 576, key/value 192, MLP 1536), forward and the two products of its backward, in
float32 and in bf16, in interleaved rounds, and prints the medians and their ratio beside
what ``dpp.experiments.lm.methods.cpu_has_native_bf16`` says of the CPU.

Usage:
    python benchmarks/bench_bf16.py [--threads 2] [--rounds 5] [--tokens 2048]
"""

from __future__ import annotations

import argparse
import datetime
import statistics

import torch
import torch.nn.functional as F

from dpp.experiments.lm.methods import cpu_has_native_bf16
from timing import cpu_name, median_ms

DTYPES = (torch.float32, torch.bfloat16)
SHAPES = {  # (in_features, out_features) of SmolLM2-135M's projections
    "q_proj / o_proj": (576, 576),
    "k_proj / v_proj": (576, 192),
    "gate_proj / up_proj": (576, 1536),
    "down_proj": (1536, 576),
}


def _products(tokens: int, fan_in: int, fan_out: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, fan_in, generator=g).to(dtype)
    w = torch.randn(fan_out, fan_in, generator=g).to(dtype)
    grad = torch.randn(tokens, fan_out, generator=g).to(dtype)

    def run() -> None:
        F.linear(x, w)  # forward
        grad.mm(w)  # input gradient
        grad.t().mm(x)  # weight gradient

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{datetime.date.today()}, {cpu_name()}, {args.threads} threads, "
        f"torch {torch.__version__}, "
        f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {cpu_has_native_bf16()}"
    )
    print("| projection (in -> out) | float32 ms | bf16 ms | bf16 / float32 |")
    print("|---|---|---|---|")
    ratios = []
    for name, (fan_in, fan_out) in SHAPES.items():
        fns = {dt: _products(args.tokens, fan_in, fan_out, dt) for dt in DTYPES}
        times: dict[torch.dtype, list[float]] = {dt: [] for dt in fns}
        for _ in range(args.rounds):
            for dt, fn in fns.items():
                times[dt].append(median_ms(fn, min_time=0.2, min_reps=5, max_reps=200, warmup=2))
        f32, b16 = statistics.median(times[torch.float32]), statistics.median(times[torch.bfloat16])
        ratios.append(b16 / f32)
        print(f"| {name} ({fan_in} -> {fan_out}) | {f32:.2f} | {b16:.2f} | {b16 / f32:.2f}x |")
    print(f"geometric mean bf16 / float32: {statistics.geometric_mean(ratios):.2f}x")


if __name__ == "__main__":
    main()
