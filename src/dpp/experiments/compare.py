"""``dpp compare GRID``: run a grid of methods x settings x seeds, resumably, and tabulate it.

A grid file (TOML or YAML) names a base run config and the axes::

    name = "lenet300-fmnist"
    base = "configs/lenet300_fmnist_w95.toml"
    output_dir = "results/lenet300-fmnist"
    seeds = [0, 1, 2]
    dense_epochs = 10          # length of the dense run that "from dense" methods start from
    set = ["train.epochs=20"]  # applied to every run

    [[settings]]               # the sparsity levels
    label = "95%"
    set = ["pruning.density=0.05"]

    [[methods]]
    label = "DPP"
    set = ["method=dpp"]

    [[methods]]
    label = "magnitude k-of-n (one-shot)"
    set = ["method=magnitude_kofn"]
    from_dense = true          # starts from the dense run of dense_epochs, trains the rest

Every run lives in ``<output_dir>/<run id>``; a finished run (``summary.json``) is skipped,
an interrupted one (``checkpoint.pt``) is resumed, so a grid spread over several sessions
loses nothing. A ``from_dense`` method trains ``epochs - dense_epochs`` epochs from the
dense checkpoint: the total epoch budget is the same for every method.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pydantic
from filelock import FileLock, Timeout

from .runconfig import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_config_file,
    validation_message,
)
from .tables import format_table

__all__ = ["Grid", "RunSpec", "load_grid", "results_table", "run_grid"]

_STRICT = pydantic.ConfigDict(extra="forbid", strict=True)
_Label = Annotated[str, pydantic.Field(min_length=1)]


class _SettingEntry(pydantic.BaseModel):
    """One ``[[settings]]`` table: a label and the ``--set`` assignments of that setting."""

    model_config = _STRICT
    label: _Label
    set: list[str] = []


class _MethodEntry(pydantic.BaseModel):
    """One ``[[methods]]`` table."""

    model_config = _STRICT
    label: _Label
    set: list[str] = []
    from_dense: bool = False
    reference: bool = False
    seeds: list[pydantic.NonNegativeInt] | None = None
    settings: list[str] | None = None


class _GridFile(pydantic.BaseModel):
    """The keys of a grid file, type-checked."""

    model_config = _STRICT
    name: _Label | None = None
    base: _Label
    output_dir: str | None = None
    seeds: list[pydantic.NonNegativeInt] = [0]
    dense_epochs: pydantic.PositiveInt | None = None
    set: list[str] = []
    settings: Annotated[list[_SettingEntry], pydantic.Field(min_length=1)]
    methods: Annotated[list[_MethodEntry], pydantic.Field(min_length=1)]


@dataclass
class RunSpec:
    """One run of the grid."""

    run_id: str
    setting: str
    method: str
    seed: int
    config: dict[str, Any]
    needs: str | None = None  # run id of the dense run it starts from

    def run_dir(self, grid: Grid) -> Path:
        return grid.output_dir / self.run_id


@dataclass
class Grid:
    name: str
    output_dir: Path
    runs: list[RunSpec]
    settings: list[str]
    methods: list[str]
    seeds: list[int]
    dense_runs: dict[str, RunSpec] = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_grid(path: str | Path) -> Grid:
    """Read a grid file and expand it into run specs (dense start runs first).

    Raises:
        ConfigError: naming the file and the dotted key, for a bad grid or a bad run config
            of one of its runs.
    """
    path = Path(path)
    try:
        grid = _GridFile.model_validate(load_config_file(path))
    except pydantic.ValidationError as err:
        raise ConfigError(f"{path}: {validation_message(err, _GridFile)}") from None
    base_path = Path(grid.base)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = path.parent / base_path
    base = apply_overrides(load_config_file(base_path), grid.set)
    name = grid.name or path.stem
    output_dir = Path(grid.output_dir or f"results/{_slug(name)}")
    epochs = RunConfig.from_dict(base).train.epochs
    dense_epochs = grid.dense_epochs
    labels = [s.label for s in grid.settings]

    dense_runs: dict[int, RunSpec] = {}
    all_seeds = sorted({*grid.seeds, *(x for m in grid.methods for x in m.seeds or [])})
    if dense_epochs is not None:
        for seed in all_seeds:
            cfg = apply_overrides(
                base, ["method=dense", f"seed={seed}", f"train.epochs={dense_epochs}"]
            )
            run_id = f"dense{dense_epochs}ep-s{seed}"
            cfg["name"] = run_id
            dense_runs[seed] = RunSpec(run_id, "-", "dense start", seed, cfg)
    runs: list[RunSpec] = []
    for i, method in enumerate(grid.methods):
        where = f"{path}: methods[{i}] ({method.label!r})"
        remaining = epochs  # the epochs this method trains
        if method.from_dense:
            if dense_epochs is None:
                raise ConfigError(f"{where}: from_dense needs the grid's dense_epochs")
            if not dense_epochs < epochs:
                raise ConfigError(f"{path}: dense_epochs must be between 0 and {epochs}")
            remaining = epochs - dense_epochs
        missing = sorted(set(method.settings or []) - set(labels))
        if missing:
            raise ConfigError(
                f"{where}: settings names unknown settings {missing}; "
                f"the grid's settings: {', '.join(labels)}"
            )
        # A reference method (dense) does not depend on the setting: one run per seed.
        settings = [_SettingEntry(label="reference")] if method.reference else grid.settings
        if method.settings is not None:  # only some of the settings
            settings = [s for s in settings if s.label in method.settings]
        for setting in settings:
            for seed in method.seeds if method.seeds is not None else grid.seeds:
                sets = [*setting.set, *method.set, f"seed={seed}"]
                needs = None
                if method.from_dense:
                    needs = dense_runs[seed].run_id
                    sets += [
                        f"train.epochs={remaining}",
                        f"train.init_from={output_dir / needs}",
                    ]
                cfg = apply_overrides(base, sets)
                run_id = f"{_slug(setting.label)}-{_slug(method.label)}-s{seed}"
                cfg["name"] = run_id
                try:
                    RunConfig.from_dict(cfg)  # validate early
                except ConfigError as err:
                    raise ConfigError(f"{where}, setting {setting.label!r}: {err}") from None
                runs.append(RunSpec(run_id, setting.label, method.label, seed, cfg, needs))
    used = {r.needs for r in runs if r.needs}
    dense_runs = {seed: spec for seed, spec in dense_runs.items() if spec.run_id in used}
    return Grid(
        name=name,
        output_dir=output_dir,
        runs=list(dense_runs.values()) + runs,
        settings=labels,
        methods=[m.label for m in grid.methods],
        seeds=list(grid.seeds),
        dense_runs={str(seed): spec for seed, spec in dense_runs.items()},
    )


def _status(spec: RunSpec, grid: Grid) -> str:
    run_dir = spec.run_dir(grid)
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoint.pt").is_file():
        return "partial"
    return "todo"


def _claim(run_dir: Path) -> FileLock | None:
    """Claim a run for this process, or ``None`` when another worker holds it.

    The claim is an ``flock`` on ``<run_dir>/.lock`` (through ``filelock``): the kernel
    drops it when its worker exits, however it exits, so a killed worker's run is taken
    (and resumed) by the next worker, and no two live workers ever hold one run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


#: Seconds a worker waits when every run left is claimed by others or waits on them.
POLL_SECONDS = 10.0


def run_grid(
    grid: Grid, *, only: str | None = None, quiet: bool = True, max_runs: int | None = None
) -> None:
    """Run every missing run of the grid (resuming partial ones).

    Several workers may run the same grid at once: each claims a run with a file lock
    (:func:`_claim`), and a run that starts from a dense run waits until that one is
    finished.
    """
    from .trainer import train

    done = 0
    while True:
        pending = [
            spec
            for spec in grid.runs
            if (not only or re.search(only, spec.run_id)) and _status(spec, grid) != "done"
        ]
        if not pending or (max_runs is not None and done >= max_runs):
            return
        progressed = False
        for spec in pending:
            if max_runs is not None and done >= max_runs:
                return
            if spec.needs and _status(grid_spec(grid, spec.needs), grid) != "done":
                continue
            run_dir = spec.run_dir(grid)
            if _status(spec, grid) == "done":
                continue
            lock = _claim(run_dir)
            if lock is None:
                continue
            try:
                status = _status(spec, grid)  # again: another worker may have finished it
                if status == "done":
                    continue
                t0 = time.perf_counter()
                print(f"[{time.strftime('%H:%M:%S')}] {spec.run_id} ({status})", flush=True)
                if status == "partial":
                    train(resume=run_dir, quiet=quiet)
                else:
                    train(RunConfig.from_dict(spec.config), run_dir=run_dir, quiet=quiet)
                summary = json.loads((run_dir / "summary.json").read_text())
                print(
                    f"    test {100 * summary['test_acc']:.2f}%  {time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
            finally:
                lock.release()
            done += 1
            progressed = True
        if not progressed:
            time.sleep(POLL_SECONDS)


def grid_spec(grid: Grid, run_id: str) -> RunSpec:
    return next(r for r in grid.runs if r.run_id == run_id)


def _load_summary(spec: RunSpec, grid: Grid) -> dict[str, Any] | None:
    path = spec.run_dir(grid) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def results_table(grid: Grid) -> str:
    """Markdown table: one row per setting x method, accuracy mean ± std over seeds."""
    header = [
        "setting",
        "method",
        "test accuracy (%)",
        "seeds",
        "kept weights",
        "compression",
        "s/epoch",
    ]
    rows = []
    for setting in ["reference", *grid.settings]:
        for method in grid.methods:
            specs = [r for r in grid.runs if r.setting == setting and r.method == method]
            if not specs:
                continue
            summaries = [s for s in (_load_summary(r, grid) for r in specs) if s is not None]
            accs = [s["test_acc"] for s in summaries]
            kept = summaries[0]["params_kept"] if summaries else None
            dense = summaries[0]["params_dense"] if summaries else None
            storage = summaries[0].get("storage") if summaries else None
            ratio = storage["total"]["compression_ratio"] if storage else None
            secs = [s["seconds_per_epoch"] for s in summaries]
            rows.append(
                [
                    setting,
                    method,
                    _mean_std(accs),
                    f"{len(accs)}/{len(specs)}",
                    f"{kept:,}/{dense:,}" if kept else "-",
                    f"{ratio:.1f}x" if ratio else "-",
                    f"{statistics.median(secs):.2f}" if secs else "-",
                ]
            )
    return format_table(rows, header, fmt="markdown", align="llrrrrr")


def _cmd_compare(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid)
    if args.dry_run:
        rows = [[_status(spec, grid), spec.run_id] for spec in grid.runs]
        print(format_table(rows, fmt="plain", align="ll"))
        return 0
    if not args.table_only:
        run_grid(grid, only=args.only, quiet=not args.verbose, max_runs=args.max_runs)
    table = results_table(grid)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def register_cli(sub: Any) -> None:
    p = sub.add_parser("compare", help="run a grid of methods x settings x seeds and tabulate it")
    p.add_argument("grid", help="grid file (.toml or .yaml), see configs/grids/")
    p.add_argument("--only", help="regular expression: run only matching run ids")
    p.add_argument("--max-runs", type=int, help="stop after this many runs (resume later)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status")
    p.add_argument("--table-only", action="store_true", help="do not train; print the table")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--verbose", "-v", action="store_true", help="per-epoch lines")
    p.set_defaults(func=_cmd_compare)
