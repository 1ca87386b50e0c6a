"""Run configurations for ``dpp train``: TOML or YAML files, ``--set key=value`` overrides.

A run config has a few sections; every key is type- and range-checked (pydantic models, in
strict mode), and an unknown key or a bad value gets a :class:`ConfigError` that names the
dotted key, says what is valid and suggests the closest key for a typo::

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

YAML (files and ``--set`` values) is read with the YAML 1.2 core rules: only ``true`` and
``false`` are booleans (``no``, ``on`` and ``off`` stay strings), ``1e-3`` is a number and
dates stay strings.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

import dpp
from dpp.schedules import SCHEDULE_KINDS

from .data import DATASETS, canonical_name
from .errors import ConfigError
from .models import REGISTRY as MODEL_REGISTRY
from .registry import METHODS as METHOD_REGISTRY
from .registry import suggest

__all__ = [
    "METHODS",
    "ConfigError",
    "DataSection",
    "LogSection",
    "ModelSection",
    "RunConfig",
    "TrainSection",
    "apply_overrides",
    "load_config_file",
    "load_run_config",
    "parse_value",
    "validation_message",
]

METHODS = ("dpp", "dense")
Optimizer = Literal["adam", "adamw", "sgd"]
LRSchedule = Literal["constant", "step", "cosine"]
Progress = Literal["auto", "on", "off"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
PROGRESS: tuple[str, ...] = get_args(Progress)

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)
_STRICT = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def _invalid(key: str, message: str) -> PydanticCustomError:
    """A validation error at ``key`` (dotted, relative to the model that raises it)."""
    return PydanticCustomError("dpp_config", "{message}", {"message": message, "key": key})


def _choose(value: Any, valid: list[str] | tuple[str, ...]) -> str:
    return f"{value!r} is not valid{suggest(str(value), valid)}; choose one of: {', '.join(valid)}"


class _Section(BaseModel):
    model_config = _STRICT

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        return {} if data is None else data  # YAML "data:" with nothing under it


# ----------------------------------------------------------------------------- sections
class DataSection(_Section):
    """Where the data comes from and how it is batched."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_size: pydantic.NonNegativeInt = 0
    batch_size: pydantic.PositiveInt = 64
    eval_batch_size: pydantic.PositiveInt = 1000
    augment: bool | None = None  # None: the dataset's standard augmentation (CIFAR: crop+flip)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        try:
            canonical_name(value)
        except ValueError:
            raise _invalid("", _choose(value, DATASETS)) from None
        return value


class ModelSection(_Section):
    """Which registered model to build (``dpp.experiments.models.list_models()``) and the
    keyword arguments of its factory."""

    name: str = "lenet300"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_REGISTRY:
            raise _invalid("", _choose(value, sorted(MODEL_REGISTRY.names())))
        return value

    @model_validator(mode="after")
    def _factory_accepts_kwargs(self) -> ModelSection:
        factory = MODEL_REGISTRY.get(self.name).obj
        params = {
            name: p
            for name, p in inspect.signature(factory).parameters.items()
            if name not in ("num_classes", "input_shape")
        }
        for key, value in self.kwargs.items():
            if key not in params:
                valid = ", ".join(params) or "none"
                raise _invalid(
                    f"kwargs.{key}",
                    f"model {self.name!r} takes no keyword argument {key!r}"
                    f"{suggest(key, list(params))}; valid: {valid}",
                )
            hint = inspect.get_annotations(factory, eval_str=True).get(key, Any)
            try:
                pydantic.TypeAdapter(hint).validate_python(value, strict=True)
            except pydantic.ValidationError as err:
                raise _invalid(
                    f"kwargs.{key}", f"{err.errors()[0]['msg']}, got {value!r}"
                ) from None
        return self


class TrainSection(_Section):
    """Optimizer, learning-rate schedule and epochs."""

    epochs: pydantic.PositiveInt = 20
    optimizer: Optimizer = "adam"
    lr: Positive = 1e-3
    momentum: Fraction = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: NonNegative = 0.0
    lr_schedule: LRSchedule = "constant"
    lr_milestones: list[pydantic.PositiveInt] = Field(default_factory=list)  # epochs, for "step"
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    logit_lr: Positive | None = None  # None: the same as lr
    logit_optimizer: Optimizer | None = None  # None: the same optimizer as the weights
    grad_clip: Positive | None = None
    label_smoothing: Fraction = 0.0
    device: str = "auto"
    init_from: str | None = None  # run directory or checkpoint of a dense model to start from
    sparse_init: bool = True  # from scratch: scale pruned layers' weights by sqrt(n/k)

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise _invalid("", f"{value!r} is not valid; use auto, cpu or cuda[:N]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainSection:
        if self.lr_schedule == "step" and not self.lr_milestones:
            raise _invalid("lr_schedule", "'step' needs train.lr_milestones (epochs)")
        if any(b <= a for a, b in zip(self.lr_milestones, self.lr_milestones[1:], strict=False)):
            raise _invalid("lr_milestones", f"must increase, got {self.lr_milestones}")
        uses_sgd = "sgd" in (self.optimizer, self.logit_optimizer)
        if self.nesterov and uses_sgd and self.momentum == 0:
            raise _invalid("nesterov", "true needs train.momentum > 0")
        return self


class LogSection(_Section):
    """Progress output, metrics and checkpoints."""

    progress: Progress = "auto"  # auto: bars only when the output is a terminal
    tensorboard: bool = False
    mask_metrics: bool = True
    metrics_samples: pydantic.PositiveInt = 64  # Monte Carlo draws per layer
    checkpoint: bool = True

    @field_validator("progress", mode="before")
    @classmethod
    def _bool_progress(cls, value: Any) -> Any:
        if isinstance(value, bool):  # an explicit true/false (JSON, TOML)
            return "on" if value else "off"
        return value


# ----------------------------------------------------------------------------- pruning
def _schedule_like(key: str, value: Any, *, optional: bool = False) -> None:
    """A number (constant) or a schedule mapping with the valid keys and types."""
    if value is None and optional:
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if not isinstance(value, dict):
        raise _invalid(key, f"must be a number or a schedule mapping, got {value!r}")
    try:
        _ScheduleSection.model_validate(value)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        raise _invalid(
            f"{key}.{_dotted(first['loc'])}", _message(first, _ScheduleSection, key)
        ) from None


class _ScheduleSection(BaseModel):
    """A :class:`dpp.Schedule` mapping in a run config (``epochs`` instead of ``steps``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal[SCHEDULE_KINDS] = "constant"  # type: ignore[valid-type]
    start: float = 1.0
    end: float | None = None
    steps: pydantic.PositiveInt | None = None
    delay: pydantic.NonNegativeInt = 0
    epochs: Positive | None = None
    delay_epochs: NonNegative | None = None


def _typed_fields(cls: type, ranges: dict[str, Any]) -> dict[str, Any]:
    """Pydantic fields (all optional) from a dataclass's type hints: a schedule or a union of
    several types becomes ``Any`` (the core checks those), ``ranges`` refine the rest."""
    fields: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = [a for a in get_args(hint) if a is not type(None)] if union else [hint]
        if name in ranges:
            hint = ranges[name]
        elif dpp.Schedule in members or len(members) > 1:
            hint = Any
        elif union:
            hint = members[0] | None
        fields[name] = (hint, None)
    return fields


def _pruning_types() -> type[BaseModel]:
    """A strict pydantic model of the ``pruning`` section, made from the fields of
    :class:`dpp.DPPConfig` (and of :class:`dpp.LayerSettings` for each override), so that it
    follows the core: their types, no unknown keys, the ranges of :data:`_PRUNING_RANGES`;
    a schedule is a number or a schedule mapping. :class:`dpp.DPPConfig` then checks the
    values and how they combine."""
    strict = ConfigDict(extra="forbid", strict=True)
    override = pydantic.create_model(
        "OverrideTypes", __config__=strict, **_typed_fields(dpp.LayerSettings, {})
    )
    fields = _typed_fields(dpp.DPPConfig, _PRUNING_RANGES)
    fields["overrides"] = (dict[str, override], None)

    def schedules(self: BaseModel) -> BaseModel:
        for key in ("temperature", "noise_scale", "sparsity_ramp"):
            if key in self.model_fields_set:
                _schedule_like(key, getattr(self, key), optional=key == "sparsity_ramp")
        return self

    return pydantic.create_model(
        "PruningTypes",
        __config__=strict,
        __validators__={"schedules": model_validator(mode="after")(schedules)},
        **fields,
    )


_PRUNING_RANGES: dict[str, Any] = {
    "logit_init_std": NonNegative,
    "entropy_weight": NonNegative,
    "resample_every": pydantic.PositiveInt,
}
_PruningTypes = _pruning_types()


# ----------------------------------------------------------------------------- run config
class RunConfig(BaseModel):
    """A whole experiment: data, model, training, pruning, logging.

    ``pruning`` holds the fields of :class:`dpp.DPPConfig` (schedules may use ``epochs``);
    ``baseline`` the options of a baseline method (see ``dpp.experiments.baselines``).
    """

    model_config = _STRICT

    name: Annotated[str, Field(min_length=1)] = "run"
    seed: pydantic.NonNegativeInt = 0
    method: str = "dpp"
    output_dir: str = "runs"
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    log: LogSection = Field(default_factory=LogSection)
    pruning: dict[str, Any] = Field(default_factory=dict)
    baseline: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHOD_REGISTRY.names():
            raise _invalid("", _choose(value, METHOD_REGISTRY.names()))
        return value

    @field_validator("pruning")
    @classmethod
    def _pruning_types(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            _PruningTypes.model_validate(value)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            if first["type"] == "dpp_config":
                raise _invalid(_dotted(first["loc"], first), first["ctx"]["message"]) from None
            raise _invalid(
                _dotted(first["loc"]), _message(first, _PruningTypes, "pruning")
            ) from None
        return value

    @model_validator(mode="after")
    def _method_options(self) -> RunConfig:
        options = METHOD_REGISTRY.get(self.method).meta["options"]
        try:
            options.model_validate(self.baseline)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            message = _message(first, options, "baseline")
            if first["type"] == "extra_forbidden" and not options.model_fields:
                message = f"unknown key; method {self.method!r} takes no options"
            raise _invalid(f"baseline.{_dotted(first['loc'])}", message) from None
        if self.method != "dense" or self.pruning:
            try:
                self.dpp_config(steps_per_epoch=1)  # the values of the pruning section
            except ConfigError as err:
                message = str(err).removeprefix("pruning: ").removeprefix("config: ")
                raise _invalid("pruning", message) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``config.yaml`` and checkpoints hold)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Build and validate a config; unknown keys and bad values raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as err:
            raise ConfigError(validation_message(err, cls)) from None

    def dpp_config(self, steps_per_epoch: int) -> dpp.DPPConfig:
        """The :class:`dpp.DPPConfig` of this run, with epoch-based schedules in steps."""
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
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)


# ----------------------------------------------------------------------------- messages
def _dotted(loc: tuple[Any, ...], error: dict[str, Any] | None = None) -> str:
    parts = [str(p) for p in loc]
    if error is not None and error.get("type") == "dpp_config" and error["ctx"]["key"]:
        parts.append(error["ctx"]["key"])
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` below ``root`` (through fields,
    list items and dict values)."""
    hint: Any = root
    for part in loc:
        hint = _without_none(hint)
        origin = typing.get_origin(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel) and part in hint.model_fields:
            hint = hint.model_fields[part].annotation
        elif origin is list and isinstance(part, int):
            hint = get_args(hint)[0]
        elif origin is dict:
            hint = get_args(hint)[1]
        else:
            return None
    hint = _without_none(hint)
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def _without_none(hint: Any) -> Any:
    """``X`` for ``X | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        return members[0] if len(members) == 1 else hint
    return hint


def _message(error: dict[str, Any], root: type[BaseModel] = BaseModel, where: str = "") -> str:
    """One pydantic error in words: what is wrong, what is valid (``where``: the dotted
    location of ``root`` in the run config)."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx", {})
    if kind == "dpp_config":
        return ctx["message"]
    if kind == "extra_forbidden":
        model = _model_at(root, error["loc"][:-1])
        valid = list(model.model_fields) if model is not None else []
        section = ".".join(p for p in (where, _dotted(error["loc"][:-1])) if p)
        return (
            f"unknown key{suggest(str(error['loc'][-1]), valid)}; "
            f"valid keys {f'in [{section}]' if section else 'at the top level'}: "
            f"{', '.join(valid)}"
        )
    if kind == "literal_error":
        return _choose(value, re.findall(r"'([^']*)'", ctx.get("expected", "")))
    bounds = {
        "greater_than": ("> ", "gt"),
        "greater_than_equal": (">= ", "ge"),
        "less_than": ("< ", "lt"),
        "less_than_equal": ("<= ", "le"),
    }
    if kind in bounds:
        word, key = bounds[kind]
        return f"must be {word}{ctx[key]:g}, got {value!r}"
    kinds = {
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "finite_number": "a finite number",
        "bool_type": "true or false",
        "string_type": "a string",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "list_type": "a list",
        "string_too_short": "a non-empty string",
    }
    if kind in kinds:
        return f"must be {kinds[kind]}, got {value!r}"
    return f"{error['msg']}, got {value!r}"


def validation_message(err: pydantic.ValidationError, root: type[BaseModel]) -> str:
    """A pydantic error of ``root`` in words, one ``dotted.key: what is wrong`` per fault."""
    lines = []
    for error in err.errors():
        key = _dotted(error["loc"], error)
        lines.append(f"{key}: {_message(error, root)}" if key else _message(error))
    return "; ".join(dict.fromkeys(lines))


# ----------------------------------------------------------------------------- YAML 1.2
class _Loader(yaml.SafeLoader):
    """YAML 1.2 core schema scalars: true/false, decimal ints, floats with or without a dot."""


class _Dumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 or 1.2 would read as something else."""


_RESOLVERS = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?[0-9]+$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
]
_KEPT_TAGS = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")  # the same in YAML 1.2
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag in _KEPT_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Dumper.yaml_implicit_resolvers = copy.deepcopy(yaml.SafeDumper.yaml_implicit_resolvers)
for _tag, _regexp, _first in _RESOLVERS:
    for _cls in (_Loader, _Dumper):
        _cls.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))
_Loader.add_constructor(
    "tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node))
)


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML 1.2 (``no``/``on``/``off`` stay strings, ``1e-3`` is a float).

    Example:
        >>> [parse_value(v) for v in ("no", "true", "1e-3", "010", "[1, 2]", "")]
        ['no', True, 0.001, 10, [1, 2], None]
    """
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set value {text!r} could not be parsed: {err}") from None


# ----------------------------------------------------------------------------- files
def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(
            f"config file {path}: unknown format {suffix!r}; use .toml, .yaml or .json"
        )
    text = path.read_text()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_Loader) or {}
    except (ValueError, yaml.YAMLError) as err:  # the parse errors of the three formats
        raise ConfigError(f"config file {path} could not be parsed: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` assignments (values parsed by :func:`parse_value`) to a copy.

    Example:
        >>> apply_overrides({"train": {"lr": 0.1}}, ["train.lr=1e-3", "pruning.density=0.05"])
        {'train': {'lr': 0.001}, 'pruning': {'density': 0.05}}
    """
    out = copy.deepcopy(data)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. train.lr=0.01), got {item!r}")
        value = parse_value(raw)
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
