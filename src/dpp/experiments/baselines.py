"""Baseline pruning methods trained by the same trainer (filled in by the comparison work)."""

from __future__ import annotations

BASELINES: tuple[str, ...] = ()


def create_baseline(cfg, model, steps_per_epoch):  # noqa: ANN001, ANN201
    raise ValueError(f"unknown method {cfg.method!r}")
