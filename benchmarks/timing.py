"""Timing helpers shared by the benchmark scripts (run by hand; the tests never time anything)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from collections.abc import Callable


def median_ms(
    fn: Callable[..., object],
    *args: object,
    min_time: float = 0.3,
    min_reps: int = 20,
    max_reps: int = 2000,
    warmup: int = 3,
) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds, after ``warmup`` calls.

    Calls ``fn`` at least ``min_reps`` times and for at least ``min_time`` seconds, at most
    ``max_reps`` times.
    """
    for _ in range(warmup):
        fn(*args)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
        if len(times) >= max_reps:
            break
    return statistics.median(times) * 1e3


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` prints it (``platform`` as a fallback)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine() or "unknown"
