"""``dpp demo``: the main job. LeNet-300-100 with DPP at 95% per-neuron sparsity.

Trains on Fashion-MNIST when its files are found (``$DPP_DATA``, the user cache or the
Debian package), otherwise on scikit-learn's 8x8 digits, and says which. An explicit
``--data-dir`` without the files is an error, not a reason to train on digits. The
last layer (100 -> 10) keeps 50% of its inputs: with only 100 inputs per class, 5 of 100
would starve the classifier. Ends with a table: parameters dense and kept, per-layer k/n,
test accuracy and the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data import DatasetNotFoundError, find_dataset_dir
from .runconfig import RunConfig, load_config_file

__all__ = ["demo_config", "run_demo"]

DEMO_CONFIG = Path(__file__).with_name("demo.toml")


def demo_config(dataset: str | None = None, data_dir: str | None = None) -> tuple[RunConfig, str]:
    """The demo's run config and a sentence saying which data it uses."""
    data: dict[str, Any] = load_config_file(DEMO_CONFIG)
    note = ""
    if dataset is None:
        try:
            where = find_dataset_dir("fashion-mnist", data_dir)
            dataset, note = "fashion-mnist", f"Fashion-MNIST found in {where}"
        except DatasetNotFoundError:
            if data_dir is not None:  # an explicit directory is used alone, or fails
                raise
            dataset = "digits"
            note = (
                "Fashion-MNIST not found (apt-get install dataset-fashion-mnist, or "
                "dpp data download fashion-mnist): training on scikit-learn's 8x8 digits instead"
            )
    else:
        note = f"dataset {dataset} (asked for)"
    data["data"] = {**data.get("data", {}), "dataset": dataset, "data_dir": data_dir}
    if dataset == "digits":
        # 1,438 small images: more epochs, smaller batches, same sparsity.
        data["data"]["batch_size"] = 32
        data["train"] = {**data["train"], "epochs": 40}
        data["name"] = "demo-lenet300-digits-w95"
    return RunConfig.from_dict(data), note


def _with_epochs(cfg: RunConfig, epochs: int) -> RunConfig:
    """The same run with another epoch budget; epoch-based schedules scale with it."""
    data = cfg.to_dict()
    scale = epochs / data["train"]["epochs"]
    data["train"]["epochs"] = epochs
    for key in ("temperature", "noise_scale", "sparsity_ramp"):
        sched = data["pruning"].get(key)
        if isinstance(sched, dict):
            for field in ("epochs", "delay_epochs"):
                if field in sched:
                    sched[field] = sched[field] * scale
    return RunConfig.from_dict(data)


def run_demo(
    *,
    data_dir: str | None = None,
    output_dir: str = "runs",
    epochs: int | None = None,
    quiet: bool = False,
    dataset: str | None = None,
) -> int:
    from .trainer import run_summary_table, train

    cfg, note = demo_config(dataset, data_dir)
    cfg.output_dir = output_dir
    if epochs is not None:
        cfg = _with_epochs(cfg, epochs)
    print(f"dpp demo: {note}")
    print(
        "dpp demo: LeNet-300-100, DPP weight-level k-of-n, 95% sparsity per neuron in fc1 "
        f"and fc2, 50% kept in fc3; {cfg.train.epochs} epochs"
    )
    result = train(cfg, quiet=quiet)
    print()
    print(run_summary_table(result.summary))
    return 0
