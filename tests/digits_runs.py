"""Helpers shared by the tests that train runs on sklearn's digits (not a test module)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
from pathlib import Path
from typing import Any

import yaml

from dpp.experiments import cli
from dpp.experiments.runconfig import apply_overrides

ROOT = Path(__file__).resolve().parents[1]

#: A DPP LeNet-300-100 run on digits: 10% kept per neuron, half in fc3, one epoch.
DIGITS: dict[str, Any] = {
    "name": "digits",
    "seed": 0,
    "method": "dpp",
    "data": {"dataset": "digits", "batch_size": 64},
    "model": {"name": "lenet300"},
    "train": {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "device": "cpu"},
    "pruning": {
        "granularity": "weight",
        "density": 0.1,
        "overrides": {"fc3": {"density": 0.5}},
        "temperature": {"kind": "linear", "start": 2.0, "end": 0.5, "epochs": 2},
    },
    "log": {"progress": "off", "metrics_samples": 8},
}


def digits(*assignments: str) -> dict[str, Any]:
    """:data:`DIGITS` with ``--set``-style assignments applied (a copy)."""
    return apply_overrides(copy.deepcopy(DIGITS), list(assignments))


def write_config(path: Path, *assignments: str) -> Path:
    """Write :func:`digits` (with ``assignments``) as a YAML run config file."""
    path.write_text(yaml.safe_dump(digits(*assignments), sort_keys=False))
    return path


def train_argv(config: Path, out_dir: Path, *sets: str) -> list[str]:
    """``train --config CONFIG --set output_dir=OUT --set ...`` for ``dpp``."""
    argv = ["train", "--config", str(config), "--set", f"output_dir={out_dir}"]
    for item in sets:
        argv += ["--set", item]
    return argv


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``dpp ARGV`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def subprocess_env() -> dict[str, str]:
    """The environment for a ``python -m dpp`` child: this checkout's sources, one thread,
    no torchrun variables inherited."""
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    return {**inherited, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
