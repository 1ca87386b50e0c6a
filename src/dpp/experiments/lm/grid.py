"""Grids of the mask phase: a TOML file of methods x settings x seeds, and its table.

A grid file names the dense run, the pattern, the budget and the seeds, then one
``[[methods]]`` table per method whose list values are swept (a cartesian product)::

    dense_dir = "runs/lm/dense"
    output_dir = "results/lm/2of4"
    pattern = "2:4"
    steps = 500
    seeds = [0, 1, 2]

    [[methods]]
    method = "wanda+ft"
    lr = [1e-4, 3e-4, 1e-3]
    seeds = [0]          # this method only: overrides the grid's seeds

Every run has its own directory (skipped once its ``result.json`` exists), so a grid
resumes where it stopped. The table picks, per method, the setting with the lowest mean
loss on the tuning windows (validation windows after the reported ones) and reports its
validation loss over the seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..machine import same_machine
from .methods import CURVE_EVERY, MaskRunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["grid_runs", "results_table", "settings_table"]

_SWEPT = (
    "steps",
    "lr",
    "logit_lr",
    "prior",
    "noise_scale",
    "prior_strength",
    "temperature",
    "entropy_weight",
    "weights_from",
    "mask_fraction",
    "logit_dtype",
    "optimizer",
    "loss",
)
"""Keys a ``[[methods]]`` table may set (a list value is swept)."""

_COMMON = (
    "steps",
    "batch",
    "seq",
    "corpora",
    "bf16",
    "grad_checkpointing",
    "keep_scores",
    "eval_windows",
    "calibration_batches",
    "checkpoint_every",
    "data_dir",
    "loss",
)
"""Keys the grid's top level may set for every run."""


def _load(grid: str | Path) -> dict[str, Any]:
    path = Path(grid)
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the grid file ({exc})") from exc


def grid_runs(grid: str | Path) -> list[tuple[Path, MaskRunConfig]]:
    """``[(run directory, config)]`` of every run of a grid file, in file order.

    A run's directory is :meth:`MaskRunConfig.run_name` below the grid's ``output_dir``, so
    grids that share runs (dense continued, a setting rerun with more seeds) run them once.
    A one-shot method does not train and runs once, whatever the seeds.
    """
    spec = _load(grid)
    model = spec.get("model", spec.get("dense_dir"))
    if model is None or "output_dir" not in spec:
        raise ConfigError(f"{grid}: a grid names its model = PATH and its output_dir")
    unknown_top = set(spec) - {"model", "dense_dir", "output_dir", "pattern", "seeds", "methods"}
    unknown_top -= set(_COMMON)
    if unknown_top:
        raise ConfigError(
            f"{grid}: unknown key(s) {sorted(unknown_top)}; valid: model, output_dir, pattern, "
            f"seeds, {', '.join(_COMMON)}, [[methods]]"
        )
    k, _, m = str(spec.get("pattern", "2:4")).partition(":")
    common: dict[str, Any] = {"model": model, "k": int(k), "m": int(m), "steps": 500, "batch": 16}
    common.update({key: spec[key] for key in _COMMON if key in spec})
    if "corpora" in common:
        common["corpora"] = tuple(common["corpora"])
    out = Path(spec["output_dir"])
    runs: list[tuple[Path, MaskRunConfig]] = []
    for entry in spec.get("methods", []):
        entry = dict(entry)
        seeds = entry.pop("seeds", spec.get("seeds", [0]))
        unknown = set(entry) - {"method", *_SWEPT}
        if unknown:
            raise ConfigError(f"{grid}: unknown key(s) {sorted(unknown)} in [[methods]]")
        lists = {k: v if isinstance(v, list) else [v] for k, v in entry.items() if k != "method"}
        keys = list(lists)
        for values in itertools.product(*(lists[k] for k in keys)):
            swept = dict(zip(keys, values, strict=True))
            for seed in seeds:
                cfg = MaskRunConfig(**{**common, **swept, "method": entry["method"], "seed": seed})
                run = (out / cfg.run_name(), cfg)
                if run[0] not in {d for d, _ in runs}:
                    runs.append(run)
    return runs


def _setting(cfg: MaskRunConfig) -> str:
    """The setting column: the weights' learning rate, then what differs from the defaults
    of :class:`MaskRunConfig` (500 steps; DPP: logit lr 0.05, noise scale 0.3, temperature
    1, prior strength 3, entropy weight 0, dense starting weights)."""
    default = MaskRunConfig(model=cfg.model, method=cfg.method, prior=cfg.prior)
    shown = {
        key: value
        for key, value in cfg.settings().items()
        if key not in ("batch", "seq", "corpora", "bf16", "calibration_batches", "eval_windows")
        and (key == "lr" or getattr(default, key) != value)
    }
    return ", ".join(
        f"{key.replace('_', ' ')} {value:g}"
        if isinstance(value, float)
        else f"{key.replace('_', ' ')} {value}"
        for key, value in shown.items()
    )


def run_command(cfg: MaskRunConfig, output_dir: str | Path = "results/lm") -> str:
    """The ``dpp lm run`` command line of one run (only what differs from the defaults)."""
    default = MaskRunConfig(model=cfg.model, method=cfg.method)
    parts = [f"dpp lm run --model {cfg.model} --method {cfg.method}", f"--pattern {cfg.k}:{cfg.m}"]
    skip = {"model", "method", "k", "m", "seed"}
    if not cfg.trains:  # what only training uses
        skip |= {"steps", "batch", "lr", "loss", "bf16", "grad_checkpointing", "checkpoint_every"}
    if not cfg.method.startswith("dpp"):  # only DPP's sampler keeps scores
        skip.add("keep_scores")
    for f in dataclasses.fields(MaskRunConfig):
        key, value = f.name, getattr(cfg, f.name)
        if key in skip or value == getattr(default, key):
            continue
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, tuple):
            parts.append(f"{flag} {','.join(value)}")
        elif isinstance(value, float):
            parts.append(f"{flag} {value:g}")
        else:
            parts.append(f"{flag} {value}")
    if cfg.trains:
        parts.append(f"--seed {cfg.seed}")
    if str(output_dir) != "results/lm":
        parts.append(f"--output-dir {output_dir}")
    return " ".join(parts)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _finished(grid: str | Path) -> Iterator[tuple[MaskRunConfig, str, str, dict[str, Any]]]:
    """``(config, method name, setting, result)`` of every finished run of a grid."""
    for out_dir, cfg in grid_runs(grid):
        path = out_dir / "result.json"
        if not path.exists():
            continue
        name = cfg.method + (f" ({cfg.prior} prior)" if cfg.method.startswith("dpp") else "")
        yield cfg, name, _setting(cfg) or "defaults", json.loads(path.read_text())


def _corpus_loss(result: dict[str, Any], corpus: str) -> float:
    """A result's validation loss on one corpus (older single-corpus results: the loss)."""
    per = result.get("val")
    return per[corpus]["val_loss"] if isinstance(per, dict) else result["val_loss"]


def _best(grid: str | Path):
    """Per method, the setting with the lowest mean tuning loss over the seeds that all its
    settings share (a setting with more seeds is not judged on other draws than the rest):
    ``{name: (setting, results)}``, the configs of every (name, setting), and the grid's
    corpora."""
    groups: dict[str, dict[str, dict[int, dict]]] = {}
    configs: dict[tuple[str, str], MaskRunConfig] = {}
    corpora: tuple[str, ...] = ()
    for cfg, name, setting, result in _finished(grid):
        corpora = tuple(entry.partition("=")[0] for entry in cfg.corpora)
        configs.setdefault((name, setting), cfg)
        groups.setdefault(name, {}).setdefault(setting, {})[cfg.seed] = result
    best: dict[str, tuple[str, list[dict]]] = {}
    for name, settings in groups.items():
        shared = set.intersection(*(set(by_seed) for by_seed in settings.values()))

        def tune_loss(by_seed: dict[int, dict], shared: set[int] = shared) -> float:
            seeds = shared or by_seed  # no seed in common: each setting's own mean
            return statistics.mean(by_seed[seed]["tune_loss"] for seed in seeds)

        setting = min(settings, key=lambda s: tune_loss(settings[s]))
        best[name] = (setting, list(settings[setting].values()))
    return best, configs, corpora


def results_table(grid: str | Path) -> str:
    """A Markdown table of a grid's finished runs: the best setting of each method, the
    validation loss on the mix (the mean over the corpora) and on each corpus, the dense
    model as loaded (from the runs' records), and the commands of the rows."""
    best, configs, corpora = _best(grid)
    if not best:
        return "(no finished runs)"
    several = len(corpora) > 1
    dense = best.get("dense")
    dense_loss = statistics.mean(r["val_loss"] for r in dense[1]) if dense else None
    dense_step = statistics.mean(r["seconds_per_step"] for r in dense[1]) if dense else None
    unit = "nats/token" if any("val" in r for _, rs in best.values() for r in rs) else "nats/byte"
    head = ["method", "best setting", f"val loss ({unit}){', mix' if several else ''}"]
    head += ["gap to dense continued", "ppl"]
    if several:
        for corpus in corpora:
            head += [f"{corpus} loss", f"{corpus} ppl"]
    else:
        head.append("bits/token" if unit == "nats/token" else "bits/byte")
    head += ["seeds", "tokens", "wall time", "step / dense step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    loaded = next(
        (r["pretrained"] for _, rs in best.values() for r in rs if "pretrained" in r), None
    )
    if loaded is not None:
        row = ["dense, as loaded", "", f"{loaded['val_loss']:.4f}", "", f"{loaded['val_ppl']:.3f}"]
        if several:
            for corpus in corpora:
                loss = loaded["val"][corpus]["val_loss"]
                row += [f"{loss:.4f}", f"{math.exp(loss):.3f}"]
        else:
            row.append(f"{loaded['val_loss'] / math.log(2):.4f}")
        lines.append("| " + " | ".join([*row, "", "0", "", ""]) + " |")
    for name, (setting, results) in best.items():
        losses = [r["val_loss"] for r in results]
        mean = statistics.mean(losses)
        gap = "" if dense_loss is None or name == "dense" else f"{mean - dense_loss:+.4f}"
        step = statistics.mean(r["seconds_per_step"] for r in results)
        ratio = f"{step / dense_step:.2f}x" if dense_step and step else ""
        if ratio:
            records = [r.get("machines") for r in (*results, *dense[1])]
            same = same_machine(*records)
            if same is False:
                ratio = "other machine"  # never a ratio of step times from two machines
            elif same is None and any(records):
                ratio = "machine unknown"  # one side predates the record: it may be another
        row = [name, setting, _mean_std(losses), gap, f"{math.exp(mean):.3f}"]
        if several:
            for corpus in corpora:
                per = [_corpus_loss(r, corpus) for r in results]
                row += [_mean_std(per), f"{math.exp(statistics.mean(per)):.3f}"]
        else:
            row.append(f"{mean / math.log(2):.4f}")
        wall = statistics.mean(r["seconds"] for r in results)
        row += [str(len(results)), f"{results[0]['tokens']:,}", f"{wall / 60:.1f} min", ratio]
        lines.append("| " + " | ".join(row) + " |")
    output_dir = _load(grid)["output_dir"]
    commands = [
        f"{name}: {run_command(configs[name, setting], output_dir)}"
        for name, (setting, _) in best.items()
    ]
    text = "\n".join(lines)
    gaps = gaps_table(grid)
    if gaps:
        text += "\n\n" + gaps
    return text + "\n\nRows (seed 0):\n\n```\n" + "\n".join(commands) + "\n```"


def gaps_table(grid: str | Path, reference: str = "sparsegpt") -> str:
    """Per corpus, every method's gap to dense continued as a fraction of ``reference``'s
    gap (the issue's measure: MaskLLM's is about 0.32 on Llama-2 7B); empty without a dense
    continued run and a finished ``reference`` run."""
    best, _, corpora = _best(grid)
    if "dense" not in best or reference not in best:
        return ""
    corpora = corpora or ("val",)

    def loss(name: str, corpus: str) -> float:
        return statistics.mean(_corpus_loss(r, corpus) for r in best[name][1])

    head = ["method"]
    for corpus in corpora:
        head += [f"gap, {corpus}", f"÷ {reference}'s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in best:
        if name == "dense":
            continue
        row = [name]
        for corpus in corpora:
            gap = loss(name, corpus) - loss("dense", corpus)
            ref = loss(reference, corpus) - loss("dense", corpus)
            row += [f"{gap:+.4f}", f"{gap / ref:.2f}" if ref > 0 else ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def settings_table(grid: str | Path) -> str:
    """A Markdown table of every finished run of a grid (what was tried, seed by seed).

    ``flips, last 100 steps``: the fraction of kept entries of DPP's deterministic masks that
    changed over the run's last 100 steps (from its training curve): 0 once they settled.
    """
    lines = [
        "| method | setting | seed | tune loss | val loss | flips, last 100 steps | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    last_100 = max(1, 100 // CURVE_EVERY)
    for cfg, name, setting, result in _finished(grid):
        curve = result.get("curve") or []
        flips = ""
        if cfg.method.startswith("dpp") and curve:
            flips = f"{sum(p.get('mask_flips', 0.0) for p in curve[-last_100:]):.3f}"
        seed = str(cfg.seed) if cfg.trains else ""
        lines.append(
            f"| {name} | {setting} | {seed} | {result['tune_loss']:.4f} | "
            f"{result['val_loss']:.4f} | {flips} | {result['tokens']:,} |"
        )
    return "\n".join(lines)
