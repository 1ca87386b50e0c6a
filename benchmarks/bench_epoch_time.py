"""Training time per epoch of every method, side by side, with the real trainer.

Each method trains one epoch of the same model on the same data with ``dpp train``'s
trainer (``train_seconds`` of the epoch record: the training loop only, no evaluation),
in rounds that interleave the methods so that a slow spell of the machine hits all of them;
the table reports the median over rounds and the ratio to dense measured in the same run.
DPP is timed with and without the per-epoch mask metrics (confidence and diversity), whose
cost is reported separately.

Usage:
    python benchmarks/bench_epoch_time.py --config configs/lenet300_fmnist_w95.toml [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dpp.experiments.runconfig import RunConfig, apply_overrides, load_config_file
from dpp.experiments.trainer import train

METHODS = {
    "dense": ["method=dense"],
    "DPP": ["method=dpp"],
    "DPP + mask metrics": ["method=dpp", "log.mask_metrics=true"],
    "random fixed k-of-n": ["method=random_kofn"],
    "one-shot magnitude k-of-n": ["method=magnitude_kofn", "train.init_from={dense}"],
    "global magnitude": ["method=magnitude_global", "train.init_from={dense}"],
    "gradual magnitude k-of-n": ["method=gradual_kofn", "baseline.end_epoch=1"],
    "SR-STE": ["method=srste"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/lenet300_fmnist_w95.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = apply_overrides(
        load_config_file(args.config),
        [
            "train.epochs=1",
            "log.progress=off",
            "log.mask_metrics=false",
            "log.checkpoint=true",
            *args.set,
        ],
    )
    tmp = Path(tempfile.mkdtemp(prefix="dpp-bench-"))
    dense_dir = tmp / "dense-start"
    train(
        RunConfig.from_dict(apply_overrides(base, ["method=dense"])), run_dir=dense_dir, quiet=True
    )

    times: dict[str, list[float]] = {name: [] for name in METHODS}
    metrics: list[float] = []
    for r in range(args.rounds):
        for name, sets in METHODS.items():
            sets = [s.replace("{dense}", str(dense_dir)) for s in sets]
            cfg = RunConfig.from_dict(apply_overrides(base, sets))
            result = train(cfg, run_dir=tmp / f"{r}-{name.replace(' ', '_')}", quiet=True)
            record = result.history[-1]
            times[name].append(record["train_seconds"])
            if "metrics_seconds" in record:
                metrics.append(record["metrics_seconds"])
            print(f"round {r + 1} {name}: {record['train_seconds']:.2f}s", flush=True)

    dense = statistics.median(times["dense"])
    print()
    print(
        f"{RunConfig.from_dict(base).model.name}, {RunConfig.from_dict(base).data.dataset}, "
        f"batch {RunConfig.from_dict(base).data.batch_size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}; "
        f"median of {args.rounds} rounds, {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| method | s/epoch (training loop) | relative to dense |")
    print("|---|---|---|")
    for name, values in times.items():
        if name == "DPP + mask metrics":
            continue
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {med / dense:.2f}x |")
    if metrics:
        print()
        print(
            f"mask metrics (confidence, diversity; 64 draws per layer): "
            f"{statistics.median(metrics):.2f}s per epoch on top of training"
        )


if __name__ == "__main__":
    main()
