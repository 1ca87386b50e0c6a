"""Every row of issue 13's table in one run: DPP training step against dense, sampler before/after.

Workloads (Adam, one step = forward, loss, backward, optimizer step, ``pruner.step()``):

- LeNet-300-100, batch 64, 95% per neuron (fc3 50%), as configs/lenet300_fmnist_w95.toml;
- LeNet-5, batch 64, 95% per neuron (conv1 and fc2 50%), as configs/lenet5_fmnist_w95.toml;
- a transformer MLP block (1024 -> 4096 -> GELU -> 1024, 1024 tokens), 2:4;
- a stack of four layers 1024x4096 / 4096x1024 / 1024x4096 / 4096x1024 (2048 tokens), 2:4;
- the same stack at 95% per neuron;
- ``gumbel_topk`` forward+backward at 1M groups of 4, k = 2, against one ``torch.topk``.

Every workload is timed as dense, DPP with the sampler of ``--before`` (a git revision of
``src/dpp/sampling.py``, loaded from git into this process) and DPP with the working tree's
sampler, plus the variants named by ``--variants`` (``resample10``: ``resample_every=10``;
``compiled``: the whole step under ``torch.compile``). The variants of one workload run in
rounds, interleaved, so that a slow spell of a shared machine hits all of them; the table
gives the median step time over all rounds and its ratio to dense from the same rounds.

Usage:
    python benchmarks/bench_step.py [--threads 2] [--rounds 5] [--before 6c230cd]
        [--only lenet300,block24] [--variants resample10,compiled]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import dpp
import dpp.masks
from dpp.experiments.models import create_model
from timing import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def load_sampler(rev: str) -> types.ModuleType:
    """``src/dpp/sampling.py`` of git revision ``rev`` as a module of its own."""
    src = subprocess.run(
        ["git", "show", f"{rev}:src/dpp/sampling.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mod = types.ModuleType(f"sampling_{rev}")
    sys.modules[mod.__name__] = mod  # torch.compile looks modules up by name
    exec(compile(src, f"{rev}:src/dpp/sampling.py", "exec"), mod.__dict__)
    return mod


class SamplerSwitch:
    """Makes every DPPMask draw with a given ``gumbel_topk`` while active."""

    def __init__(self, fn: Callable | None) -> None:
        self.fn = fn
        self.saved: Callable | None = None

    def __enter__(self) -> None:
        if self.fn is not None:
            self.saved = dpp.masks.gumbel_topk
            dpp.masks.gumbel_topk = self.fn

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            dpp.masks.gumbel_topk = self.saved


def mlp_block() -> nn.Module:
    return nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024))


def stack() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1024, 4096),
        nn.Linear(4096, 1024),
        nn.Linear(1024, 4096),
        nn.Linear(4096, 1024),
    )


# name: (label, model factory, input, target kind, prune kwargs)
WORKLOADS: dict[str, tuple[str, Callable[[], nn.Module], tuple[int, ...], str, dict]] = {
    "lenet300": (
        "LeNet-300-100, batch 64, 95% per neuron",
        lambda: create_model("lenet300"),
        (64, 1, 28, 28),
        "class",
        {"density": 0.05, "overrides": {"fc3": {"density": 0.5}}},
    ),
    "lenet5": (
        "LeNet-5, batch 64, 95% per neuron",
        lambda: create_model("lenet5"),
        (64, 1, 28, 28),
        "class",
        {"density": 0.05, "overrides": {"conv1": {"density": 0.5}, "fc2": {"density": 0.5}}},
    ),
    "block24": (
        "Transformer MLP block (1024-4096-1024, 1024 tokens), 2:4",
        mlp_block,
        (1024, 1024),
        "regress",
        {"granularity": "block", "block_size": 4, "k": 2},
    ),
    "stack24": (
        "Stack of four 1024x4096 / 4096x1024 layers, 2048 tokens, 2:4",
        stack,
        (2048, 1024),
        "regress",
        {"granularity": "block", "block_size": 4, "k": 2},
    ),
    "stack95": (
        "The same stack at 95% per neuron",
        stack,
        (2048, 1024),
        "regress",
        {"density": 0.05},
    ),
}


def make_step(
    name: str, variant: str, before: types.ModuleType
) -> tuple[Callable[[], None], SamplerSwitch]:
    _, factory, shape, target, kwargs = WORKLOADS[name]
    torch.manual_seed(0)
    model = factory()
    pruner = None
    if variant != "dense":
        extra = {"resample_every": 10} if variant == "resample10" else {}
        pruner = dpp.prune(model, noise_scale=0.3, **kwargs, **extra)
    params = pruner.param_groups(lr=1e-3, logit_lr=1e-2) if pruner else model.parameters()
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    x = torch.randn(shape)
    with torch.no_grad():
        out_shape = model.eval()(x[:2]).shape[1:]
    model.train()
    y = (
        torch.randint(0, 10, (shape[0],))
        if target == "class"
        else torch.randn(shape[0], *out_shape)
    )

    def loss_fn() -> torch.Tensor:
        out = model(x)
        if target == "class":
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out, y)

    if variant == "compiled":
        loss_fn = torch.compile(loss_fn)

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pruner is not None:
            pruner.step()

    switch = SamplerSwitch(before.gumbel_topk if variant == "before" else None)
    return step, switch


def sampler_calls(before: types.ModuleType, compiled: bool) -> dict[str, Callable[[], None]]:
    """fwd+bwd of gumbel_topk at (1M, 4), k = 2 (before, after and, with ``compiled``, after
    under ``torch.compile``), and one torch.topk."""
    torch.manual_seed(0)
    logits = (torch.randn(1 << 20, 4) * 0.5).requires_grad_()
    grad = torch.randn(1 << 20, 4)
    plain = logits.detach()

    def run(fn: Callable) -> Callable[[], None]:
        def call() -> None:
            logits.grad = None
            fn(logits, 2, tau=1.0, noise_scale=1.0).backward(grad)

        return call

    calls = {
        "topk": lambda: plain.topk(2, dim=-1),
        "before": run(before.gumbel_topk),
        "after": run(dpp.gumbel_topk),
    }
    if compiled:
        calls["compiled"] = run(torch.compile(dpp.gumbel_topk))
    return calls


def time_rounds(
    calls: dict[str, tuple[Callable[[], None], SamplerSwitch | None]],
    rounds: int,
    min_time: float,
    warmup: int,
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {v: [] for v in calls}
    for fn, switch in calls.values():
        with switch or SamplerSwitch(None):
            for _ in range(warmup):
                fn()
    for _ in range(rounds):
        for v, (fn, switch) in calls.items():
            with switch or SamplerSwitch(None):
                start = time.perf_counter()
                while True:
                    t = time.perf_counter()
                    fn()
                    times[v].append(time.perf_counter() - t)
                    if time.perf_counter() - start >= min_time and len(times[v]) >= 1:
                        break
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per variant/round")
    parser.add_argument("--before", default="6c230cd", help="git revision of the old sampler")
    parser.add_argument("--only", default=None, help="comma-separated workloads (and sampler)")
    parser.add_argument("--variants", default="", help="extra variants: resample10,compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    before = load_sampler(args.before)
    extra = [v for v in args.variants.split(",") if v]
    names = [*WORKLOADS, "sampler"] if args.only is None else args.only.split(",")
    print(
        f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"before = {args.before}, after = working tree; {args.rounds} interleaved rounds of "
        f">= {args.min_time}s per variant; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    rows = []
    for name in names:
        if name == "sampler":
            sampler = sampler_calls(before, "compiled" in extra)
            calls = {v: (fn, None) for v, fn in sampler.items()}
            times = time_rounds(calls, args.rounds, args.min_time, warmup=2)
            med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
            label = "`gumbel_topk` fwd+bwd, 1M groups of 4, k=2 / one `torch.topk`"
            ex = {v: med[v] for v in extra if v in med}
            rows.append((label, med["topk"], med["before"], med["after"], ex))
            print(f"  {name}: {med}", flush=True)
            continue
        variants = ["dense", "before", "after", *extra]
        calls = {v: make_step(name, v, before) for v in variants}
        times = time_rounds(calls, args.rounds, args.min_time, warmup=3)
        med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
        rows.append(
            (
                WORKLOADS[name][0],
                med["dense"],
                med["before"],
                med["after"],
                {v: med[v] for v in extra},
            )
        )
        print(f"  {name}: " + ", ".join(f"{v} {m:.2f} ms" for v, m in med.items()), flush=True)
    print()
    head = "| workload | dense (ms) | before (ms) | after (ms) | before / dense | after / dense |"
    sep = "|---|---|---|---|---|---|"
    for v in extra:
        head += f" {v} / dense |"
        sep += "---|"
    print(head)
    print(sep)
    for label, dense, b, a, ex in rows:
        line = (
            f"| {label} | {dense:.2f} | {b:.2f} | {a:.2f} | {b / dense:.2f}x | {a / dense:.2f}x |"
        )
        for v in extra:
            line += f" {ex[v] / dense:.2f}x |" if v in ex else " - |"
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
