"""Benchmark physical channel removal: finalized (masked, dense) vs shrunk CNNs on CPU.

Each model is pruned at ``filter`` granularity (50% of the channels of every convolution by
default; the classifier is left dense), finalized, and shrunk with :func:`dpp.export.shrink`.
Reports parameters, FLOPs (``torch.utils.flop_counter.FlopCounterMode``, a multiply-add
counts 2) and the median latency of a forward call of both models at each batch size, all
measured in the same run. Prints a markdown table; writes nothing.

Fresh models have BatchNorm shifts of 0, so every pruned channel is removable exactly;
``--random-bn`` draws trained-looking BatchNorm parameters and statistics instead, and shows
how many channels exact removal keeps (see ``dpp.export.shrink``); ``--link-bn`` prunes with
example inputs, so that the filter masks reach through the BatchNorms (``dpp.batchnorm``) and
every pruned channel is removable again.

Usage::

    PYTHONPATH=src python benchmarks/bench_shrink.py
    PYTHONPATH=src python benchmarks/bench_shrink.py --models vgg16 --batches 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import dpp
from dpp.experiments.models import create_model
from dpp.export import shrink
from timing import median_ms

CLASSIFIER = {"vgg16": "classifier", "resnet20": "fc", "resnet56": "fc", "resnet18": "fc"}


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet56"])
    ap.add_argument("--density", type=float, default=0.5, help="fraction of filters kept")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--random-bn", action="store_true")
    ap.add_argument(
        "--link-bn",
        action="store_true",
        help="prune with example inputs: filter masks carried through the BatchNorms",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing = {"min_time": args.min_time, "min_reps": args.min_reps}
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    print(
        f"# shrink on CPU: {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {date.today()}, load average at start "
        f"{os.getloadavg()[0]:.2f}\n"
    )
    rows = []
    for name in args.models:
        model = create_model(name)
        if args.random_bn:
            randomize_bn(model, gen)
        example = torch.randn(2, 3, args.size, args.size)
        pruner = dpp.prune(
            model,
            granularity="filter",
            density=args.density,
            exclude=[CLASSIFIER[name]],
            example_inputs=example if args.link_bn else None,
        )
        model.eval()
        pruner.finalize()
        small, report = shrink(pruner, example, report=True)
        print(f"## {name}\n\n```\n{report}\n```\n", file=sys.stderr)
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            with torch.inference_mode():
                err = (small(x) - model(x)).abs().max().item()
                t_dense = median_ms(model, x, **timing)
                t_small = median_ms(small, x, **timing)
            rows.append((name, batch, report, t_dense, t_small, err))
            print(f"{name} batch {batch}: {t_dense:.2f} ms -> {t_small:.2f} ms", file=sys.stderr)

    print(
        "| model | batch | params dense -> shrunk | GFLOPs/img dense -> shrunk | "
        "dense ms | shrunk ms | speedup | max abs diff |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for name, batch, rep, t_dense, t_small, err in rows:
        per_img = 2 * 1e9  # the report's FLOPs are for the 2-image example batch
        print(
            f"| {name} | {batch} | {rep.params_before / 1e6:.2f}M -> {rep.params_after / 1e6:.2f}M "
            f"| {rep.flops_before / per_img:.3f} -> {rep.flops_after / per_img:.3f} | "
            f"{t_dense:.2f} | {t_small:.2f} | {t_dense / t_small:.2f}x | {err:.2g} |"
        )
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
