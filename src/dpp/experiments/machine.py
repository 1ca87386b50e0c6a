"""What a run ran on, recorded beside its timings.

A result's wall time means little without the machine: tables divide one run's step time
by another's only when both ran on the same machine (:func:`same_machine`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_name", "describe", "same_machine"]

_IDENTITY = ("cpu", "cpu_capability", "logical_cpus", "threads", "accelerator")
"""The fields that make two descriptions the same machine for timing (not the versions)."""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine this process computes on: CPU model, ATen's CPU capability (``AVX2``,
    ``AVX512``...), logical CPUs, torch's intra-op threads, the accelerator's name (``None``
    on CPU) and the torch version."""
    device = torch.device(device)
    accelerator = None
    if device.type == "cuda":
        accelerator = torch.cuda.get_device_name(device)
    elif device.type != "cpu":
        accelerator = device.type
    return {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "accelerator": accelerator,
        "torch": str(torch.__version__),
    }


def same_machine(*machine_lists: list[dict[str, Any]] | None) -> bool | None:
    """Whether every process of every run listed ran on one machine: ``None`` when a run
    has no record (results written before machines were recorded)."""
    if any(not machines for machines in machine_lists):
        return None
    identities = {
        tuple(m.get(key) for key in _IDENTITY) for machines in machine_lists for m in machines
    }
    return len(identities) == 1
