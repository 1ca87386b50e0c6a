"""A training step of the language-model benchmark's methods, against a dense step.

The model is the pretrained byte-level Llama of ``results/lm/dense`` (hidden 128, 4 layers),
pruned k:m in its 28 decoder projections; one step = forward and loss on a batch of
16 x 256 bytes, backward, AdamW step and, for DPP, ``pruner.step()``:

- ``dense``: dense continued (every weight trained);
- ``fixed mask + ft``: a one-shot mask kept fixed, weights trained (the ``+ft`` baselines);
- ``dpp mask-only``: DPP with the weights frozen (``pruner.freeze_weights()``);
- ``dpp joint``: DPP with masks and weights trained.

The variants run in interleaved rounds (each for ``--min-time`` seconds per round) so that a
slow spell of a shared machine hits all of them; the table gives the median step time and
its ratio to the dense median.

Usage:
    python benchmarks/bench_lm_step.py [--dense-dir results/lm/dense] [--pattern 2:4]
        [--threads 2] [--rounds 5] [--min-time 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import dpp
from dpp.experiments.lm.methods import DECODER
from dpp.experiments.lm.pretrain import load_dense
from timing import cpu_name


def make_step(variant: str, dense_dir: str, k: int, m: int) -> Callable[[], None]:
    model, cfg = load_dense(dense_dir)
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (16, cfg.spec.seq), generator=g)
    pruner = None
    if variant != "dense":
        kwargs = {"logit_init": "magnitude", "logit_init_std": 3.0, "noise_scale": 0.3}
        if variant == "fixed mask + ft":

            def source(name, module, layout):
                scores = layout.candidate_scores(module.weight.detach().abs())
                keep = scores >= scores.topk(k, dim=-1).values[..., -1:]
                return dpp.FixedMask(layout, keep)

            kwargs = {"mask_source": source}
        pruner = dpp.prune(model, granularity="block", block_size=m, k=k, include=DECODER, **kwargs)
        if variant == "dpp mask-only":
            pruner.freeze_weights()
        groups = pruner.param_groups(lr=1e-3, logit_lr=5e-2)
    else:
        groups = [{"params": list(model.parameters())}]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0)

    def step() -> None:
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense-dir", default="results/lm/dense")
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds per variant/round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k, _, m = args.pattern.partition(":")
    variants = ["dense", "fixed mask + ft", "dpp mask-only", "dpp joint"]
    steps = {v: make_step(v, args.dense_dir, int(k), int(m)) for v in variants}
    print(
        f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"pattern {args.pattern}; {args.rounds} interleaved rounds of >= {args.min_time}s per "
        f"variant; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    for fn in steps.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, fn in steps.items():
            start = time.perf_counter()
            while time.perf_counter() - start < args.min_time:
                t = time.perf_counter()
                fn()
                times[v].append(time.perf_counter() - t)
    dense = statistics.median(times["dense"])
    print("\n| step (16 x 256 bytes) | median ms | / dense | steps timed |")
    print("|---|---|---|---|")
    for v in variants:
        med = statistics.median(times[v])
        print(f"| {v} | {med * 1e3:.1f} | {med / dense:.2f}x | {len(times[v])} |")


if __name__ == "__main__":
    main()
