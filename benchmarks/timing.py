"""Timing helpers shared by the benchmark scripts (run by hand; the tests never time anything)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from dpp.experiments.machine import cpu_name

__all__ = ["cpu_name", "interleaved_seconds", "median_ms"]


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


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of each function, timed once per round in turn (so that a slow spell of
    the machine hits every variant), after ``warmup`` calls of each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times
