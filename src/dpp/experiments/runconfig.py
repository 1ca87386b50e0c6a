"""Run configurations for ``dpp train``: TOML or YAML files, ``--set key=value`` overrides.

A run config has a few sections; every key is checked, and an unknown key or a bad value
gets an error that lists what is valid::

    name = "lenet300-fmnist-w95"
    seed = 0
    method = "dpp"            # or "dense" (pruning section ignored) or a baseline

    [data]
    dataset = "fashion-mnist"
    batch_size = 64

    [model]
    name = "lenet300"

    [train]
    epochs = 20
    optimizer = "adam"
    lr = 1e-3

    [pruning]                 # the fields of dpp.DPPConfig
    granularity = "weight"
    density = 0.05
    overrides = { fc3 = { density = 0.5 } }
    temperature = { kind = "linear", start = 2.0, end = 0.5, epochs = 20 }

Schedules in the ``pruning`` section may give ``epochs`` and ``delay_epochs`` instead of
``steps`` and ``delay``; the trainer converts them with the number of batches per epoch.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "METHODS",
    "ConfigError",
    "RunConfig",
    "apply_overrides",
    "load_config_file",
    "load_run_config",
]

METHODS = ("dpp", "dense")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "step", "cosine")
PROGRESS = ("auto", "on", "off")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the key and what is valid."""


def _choice(section: str, key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(
            f"{section}.{key} = {value!r} is not valid; choose one of: {', '.join(valid)}"
        )


def _positive(
    section: str, key: str, value: Any, *, allow_zero: bool = False, integer: bool = False
) -> None:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{section}.{key} must be {kind} {bound}, got {value!r}")


@dataclass
class DataSection:
    """Where the data comes from and how it is batched."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_size: int = 0
    batch_size: int = 64
    eval_batch_size: int = 1000
    augment: bool | None = None  # None: the dataset's standard augmentation (CIFAR: crop+flip)

    def validate(self) -> None:
        from .data import DATASETS, canonical_name

        try:
            canonical_name(self.dataset)
        except ValueError:
            raise ConfigError(
                f"data.dataset = {self.dataset!r} is not valid; "
                f"choose one of: {', '.join(DATASETS)}"
            ) from None
        _positive("data", "val_size", self.val_size, allow_zero=True, integer=True)
        _positive("data", "batch_size", self.batch_size, integer=True)
        _positive("data", "eval_batch_size", self.eval_batch_size, integer=True)


@dataclass
class ModelSection:
    """Which registered model to build (``dpp.experiments.models.list_models()``)."""

    name: str = "lenet300"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from .models import MODEL_ALIASES, MODELS

        key = str(self.name).strip().lower()
        if MODEL_ALIASES.get(key, key) not in MODELS:
            raise ConfigError(
                f"model.name = {self.name!r} is not valid; "
                f"choose one of: {', '.join(sorted(MODELS))}"
            )


@dataclass
class TrainSection:
    """Optimizer, learning-rate schedule and epochs."""

    epochs: int = 20
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_milestones: list[int] = field(default_factory=list)  # epochs, for "step"
    lr_gamma: float = 0.1
    logit_lr: float | None = None  # None: the same as lr
    logit_optimizer: str | None = None  # None: the same optimizer as the weights
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    device: str = "auto"
    init_from: str | None = None  # run directory or checkpoint of a dense model to start from
    sparse_init: bool = True  # from scratch: scale pruned layers' weights by sqrt(n/k)

    def validate(self) -> None:
        _positive("train", "epochs", self.epochs, integer=True)
        _choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        if self.logit_optimizer is not None:
            _choice("train", "logit_optimizer", self.logit_optimizer, OPTIMIZERS)
        _positive("train", "lr", self.lr)
        _positive("train", "weight_decay", self.weight_decay, allow_zero=True)
        _positive("train", "momentum", self.momentum, allow_zero=True)
        _choice("train", "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_schedule == "step" and not self.lr_milestones:
            raise ConfigError("train.lr_schedule = 'step' needs train.lr_milestones (epochs)")
        if self.logit_lr is not None:
            _positive("train", "logit_lr", self.logit_lr)
        if self.grad_clip is not None:
            _positive("train", "grad_clip", self.grad_clip)
        device = self.device
        if not isinstance(device, str) or not (
            device in ("auto", "cpu") or device.startswith("cuda")
        ):
            raise ConfigError(
                f"train.device = {self.device!r} is not valid; use auto, cpu or cuda[:N]"
            )


@dataclass
class LogSection:
    """Progress output, metrics and checkpoints."""

    progress: str = "auto"  # auto: bars only when the output is a terminal
    tensorboard: bool = False
    mask_metrics: bool = True
    metrics_samples: int = 64  # Monte Carlo draws per layer for confidence/diversity
    checkpoint: bool = True

    def __post_init__(self) -> None:
        # YAML 1.1 (config files and --set) reads unquoted on/off as booleans.
        if isinstance(self.progress, bool):
            self.progress = "on" if self.progress else "off"

    def validate(self) -> None:
        _choice("log", "progress", self.progress, PROGRESS)
        _positive("log", "metrics_samples", self.metrics_samples, integer=True)


_SECTIONS = {"data": DataSection, "model": ModelSection, "train": TrainSection, "log": LogSection}
_TOP_KEYS = ("name", "seed", "method", "output_dir", "pruning", "baseline", *_SECTIONS)


@dataclass
class RunConfig:
    """A whole experiment: data, model, training, pruning, logging.

    ``pruning`` holds the fields of :class:`dpp.DPPConfig` (schedules may use ``epochs``);
    ``baseline`` the options of a baseline method (see ``dpp.experiments.baselines``).
    """

    name: str = "run"
    seed: int = 0
    method: str = "dpp"
    output_dir: str = "runs"
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)
    pruning: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate a config; unknown keys and bad values raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown}; valid top-level keys: {', '.join(_TOP_KEYS)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in _SECTIONS:
                kwargs[key] = _build_section(key, _SECTIONS[key], value)
            else:
                kwargs[key] = value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from .baselines import BASELINES

        methods = (*METHODS, *BASELINES)
        _choice("run", "method", self.method, methods)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        for key in _SECTIONS:
            getattr(self, key).validate()
        if not isinstance(self.pruning, dict):
            raise ConfigError(
                f"pruning must be a mapping of dpp.DPPConfig fields, got {self.pruning!r}"
            )
        if self.method != "dense" or self.pruning:
            self.dpp_config(steps_per_epoch=1)  # validates the pruning section

    def dpp_config(self, steps_per_epoch: int):
        """The :class:`dpp.DPPConfig` of this run, with epoch-based schedules in steps."""
        import dpp

        pruning = copy.deepcopy(self.pruning)
        for key in ("temperature", "noise_scale", "sparsity_ramp"):
            value = pruning.get(key)
            if isinstance(value, dict):
                value = dict(value)
                if "epochs" in value:
                    value["steps"] = max(1, round(value.pop("epochs") * steps_per_epoch))
                if "delay_epochs" in value:
                    value["delay"] = round(value.pop("delay_epochs") * steps_per_epoch)
                pruning[key] = value
        try:
            return dpp.DPPConfig.from_dict(pruning)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"pruning: {err}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build_section(name: str, cls: type, value: Any) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping, got {value!r}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{name}]; valid keys: {', '.join(valid)}")
    return cls(**value)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                f"config file {path}: unknown format {suffix!r}; use .toml, .yaml or .json"
            )
    except ConfigError:
        raise
    except Exception as err:  # parse errors of the three formats
        raise ConfigError(f"config file {path} could not be parsed: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` assignments (values parsed as YAML) to a copy of ``data``.

    Example:
        >>> apply_overrides({"train": {"lr": 0.1}}, ["train.lr=1e-3", "pruning.density=0.05"])
        {'train': {'lr': 0.001}, 'pruning': {'density': 0.05}}
    """
    out = copy.deepcopy(data)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. train.lr=0.01), got {item!r}")
        value = yaml.safe_load(raw) if raw.strip() else None
        # YAML 1.1 reads 1e-3 as a string; accept it as a float.
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_run_config(
    path: str | os.PathLike[str] | None, assignments: list[str] | None = None
) -> RunConfig:
    """Read a run config file (or start from the defaults) and apply ``--set`` assignments."""
    data = load_config_file(path) if path is not None else {}
    return RunConfig.from_dict(apply_overrides(data, assignments or []))
