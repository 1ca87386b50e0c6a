"""Reading a run directory for the report: epoch records, summary and config, and the
per-epoch series the figures plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = [
    "ReportError",
    "ReportRun",
    "RunMissingError",
    "epochs_of",
    "layer_names",
    "layer_rows",
    "num",
    "read_run",
    "series",
    "series_nested",
]


class ReportError(UserError, ValueError):
    """A report cannot be made as asked: an unreadable run file (named) or a bad argument."""


class RunMissingError(UserError, FileNotFoundError):
    """A path given to the report is not a run directory; the message names it."""


@dataclass
class ReportRun:
    """What the report reads from one run directory."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None
    label: str = ""
    slug: str = ""
    params: tuple[int, int] | None = None  # (dense, kept)
    reference: bool = False  # given with --dense

    @property
    def name(self) -> str:
        return str(self._get("name") or self.path.name)

    @property
    def method(self) -> str:
        return str(self._get("method") or "?")

    @property
    def model(self) -> str:
        return str(self._get("model") or (self.config.get("model") or {}).get("name") or "?")

    @property
    def dataset(self) -> str:
        return str(self._get("dataset") or (self.config.get("data") or {}).get("dataset") or "?")

    @property
    def epochs_total(self) -> int | None:
        value = self._get("epochs") or (self.config.get("train") or {}).get("epochs")
        return int(value) if value is not None else None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1]

    @property
    def test_acc(self) -> float | None:
        if self.summary is not None and "test_acc" in self.summary:
            return float(self.summary["test_acc"])
        return num(self.last.get("test_acc"))

    @property
    def storage_compression(self) -> float | None:
        storage = (self.summary or {}).get("storage") or {}
        value = storage.get("compression")
        if value is None:
            value = (storage.get("total") or {}).get("compression_ratio")
        return num(value)

    @property
    def param_compression(self) -> float | None:
        if self.params is None or self.params[1] <= 0:
            return None
        return self.params[0] / self.params[1]

    def _get(self, key: str) -> Any:
        if self.summary is not None and self.summary.get(key) is not None:
            return self.summary[key]
        if key == "epochs":
            return None
        return self.config.get(key)


def num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_run(path: str | Path) -> ReportRun:
    """Read a run directory's ``metrics.jsonl``, ``summary.json`` and ``config.yaml``.

    Raises:
        FileNotFoundError: ``path`` is not a directory, or has no ``metrics.jsonl``.
        ValueError: a file of the run cannot be parsed, or it holds no epoch record.
    """
    path = Path(path)
    if not path.exists():
        raise RunMissingError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunMissingError(
            f"{path} is not a run directory (a directory written by dpp train is expected)"
        )
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise RunMissingError(
            f"{path} is not a run directory: it has no metrics.jsonl "
            "(expected the output directory of dpp train)"
        )
    by_epoch: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] | None = None
    for lineno, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{metrics}, line {lineno}: not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise ReportError(f"{metrics}, line {lineno}: expected a JSON object")
        if record.get("event") == "epoch" and "epoch" in record:
            by_epoch[int(record["epoch"])] = record  # a resumed run's later record wins
        elif record.get("event") == "final":
            final = record
    if not by_epoch:
        raise ReportError(f"run directory {path}: metrics.jsonl holds no epoch record yet")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path / 'summary.json'}: not valid JSON ({err})") from None
    elif final is not None:
        summary = final
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise ReportError(f"{path / 'config.yaml'}: not valid YAML ({err})") from None
    history = [by_epoch[e] for e in sorted(by_epoch)]
    run = ReportRun(path=path, config=config, history=history, summary=summary)
    if summary is not None and "params_dense" in summary and "params_kept" in summary:
        run.params = (int(summary["params_dense"]), int(summary["params_kept"]))
    return run


def epochs_of(run: ReportRun) -> list[int]:
    """The epoch numbers of the run's records, in order."""
    return [int(r["epoch"]) for r in run.history]


def series(run: ReportRun, key: str, scale: float = 1.0) -> list[float] | None:
    """``record[key] * scale`` per epoch (NaN where missing); ``None`` if never recorded."""
    values = [num(r.get(key)) for r in run.history]
    if all(v is None for v in values):
        return None
    return [math.nan if v is None else v * scale for v in values]


def layer_names(run: ReportRun) -> list[str]:
    """The pruned layers of the last epoch record's sparsity."""
    sp = run.last.get("sparsity") or {}
    return list((sp.get("layers") or {}).keys())


def layer_rows(run: ReportRun) -> dict[str, dict[str, Any]]:
    """The summary's per-layer rows by layer name."""
    return {r["layer"]: r for r in (run.summary or {}).get("layers") or [] if "layer" in r}


def series_nested(run: ReportRun, keys: tuple[str, ...], scale: float = 1.0) -> list[float] | None:
    """Like :func:`series` for a value nested under ``keys`` in each record."""
    out = []
    for r in run.history:
        value: Any = r
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        v = num(value)
        out.append(math.nan if v is None else v * scale)
    if all(math.isnan(v) for v in out):
        return None
    return out
