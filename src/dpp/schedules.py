"""Schedules for the temperature and the noise scale of the sampler (method.md section 4)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SCHEDULE_KINDS", "Schedule"]

SCHEDULE_KINDS = ("constant", "linear", "exponential", "cosine", "cubic")


@dataclass(frozen=True)
class Schedule:
    """A scalar that moves from ``start`` to ``end`` over ``steps`` calls of ``Pruner.step()``.

    The value holds ``start`` for the first ``delay`` steps, then follows ``kind`` to
    ``end`` over the next ``steps`` steps, and holds ``end`` afterwards.

    Args:
        kind: ``"constant"``, ``"linear"``, ``"exponential"`` (geometric; ``start`` and
            ``end`` must be > 0), ``"cosine"`` (half cosine) or ``"cubic"``
            (``end + (start - end) (1 - t)^3``: fast first, slow at the end, the gradual
            pruning schedule of Zhu & Gupta 2017).
        start: value at step 0.
        end: final value; required unless ``kind == "constant"``.
        steps: number of steps from ``start`` to ``end``; required unless constant.
        delay: steps to hold ``start`` before moving.

    Example:
        >>> from dpp import Schedule
        >>> tau = Schedule("linear", start=5.0, end=0.5, steps=100)
        >>> tau.value(0), tau.value(50), tau.value(1000)
        (5.0, 2.75, 0.5)
    """

    kind: str = "constant"
    start: float = 1.0
    end: float | None = None
    steps: int | None = None
    delay: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"unknown schedule kind {self.kind!r}; valid kinds: {', '.join(SCHEDULE_KINDS)}"
            )
        if self.delay < 0:
            raise ValueError(f"schedule delay must be >= 0, got {self.delay}")
        if self.kind == "constant":
            return
        if self.end is None or self.steps is None:
            raise ValueError(
                f"a {self.kind!r} schedule needs both 'end' and 'steps' "
                f"(got end={self.end}, steps={self.steps})"
            )
        if self.steps < 1:
            raise ValueError(f"schedule steps must be >= 1, got {self.steps}")
        if self.kind == "exponential" and not (self.start > 0 and self.end > 0):
            raise ValueError(
                "an exponential schedule needs start > 0 and end > 0 "
                f"(got start={self.start}, end={self.end}); use 'linear' or 'cosine' to reach 0"
            )

    def value(self, step: int) -> float:
        """The scheduled value after ``step`` calls of ``Pruner.step()``."""
        if self.kind == "constant":
            return float(self.start)
        assert self.end is not None and self.steps is not None
        t = min(max(step - self.delay, 0) / self.steps, 1.0)
        if self.kind == "linear":
            return float(self.start + (self.end - self.start) * t)
        if self.kind == "exponential":
            return float(self.start * (self.end / self.start) ** t)
        if self.kind == "cubic":
            return float(self.end + (self.start - self.end) * (1.0 - t) ** 3)
        return float(self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: Schedule | float | int | dict[str, Any], name: str) -> Schedule:
        """Accept a Schedule, a plain number (constant) or a dict of Schedule fields."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, bool):
            raise TypeError(f"{name} must be a number, a dict or a dpp.Schedule, got a bool")
        if isinstance(value, (int, float)):
            return cls("constant", float(value))
        if isinstance(value, dict):
            unknown = set(value) - {"kind", "start", "end", "steps", "delay"}
            if unknown:
                raise ValueError(
                    f"unknown key(s) {sorted(unknown)} in {name}; "
                    "valid keys: kind, start, end, steps, delay"
                )
            return cls(**value)
        raise TypeError(
            f"{name} must be a number, a dict or a dpp.Schedule, got {type(value).__name__}"
        )
