"""Where a DPP training step spends its time: one LeNet-300-100 step, dense against DPP.

Times ``--steps`` Adam steps (fused) of a batch of 64 for the dense and the DPP model side by
side, then prints torch's profiler table of the DPP steps (self CPU time per operator).

Usage:
    python benchmarks/profile_step.py [--steps 200] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

import dpp
from dpp.experiments.models import create_model


def make_step(prune: bool):
    torch.manual_seed(0)
    model = create_model("lenet300")
    pruner = None
    if prune:
        pruner = dpp.prune(
            model, density=0.05, overrides={"fc3": {"density": 0.5}}, noise_scale=0.3
        )
    params = pruner.param_groups(lr=1e-3, logit_lr=1e-2) if pruner else model.parameters()
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pruner is not None:
            pruner.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for prune in (False, True):
        step = make_step(prune)
        for _ in range(10):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        print(
            f"{'DPP' if prune else 'dense'}: {ms:.2f} ms/step ({torch.get_num_threads()} threads)"
        )
    step = make_step(True)
    for _ in range(10):
        step()
    with torch.autograd.profiler.profile() as prof:
        for _ in range(50):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
