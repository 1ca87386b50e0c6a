"""Run configurations of ``dpp train``: file formats, ``--set`` overrides, errors, round trips."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import dpp
from digits_runs import digits
from dpp.experiments import runconfig
from dpp.experiments.data import DATASETS
from dpp.experiments.demo import DEMO_CONFIG
from dpp.experiments.models import list_models
from dpp.experiments.runconfig import (
    ConfigError,
    DataSection,
    LogSection,
    ModelSection,
    RunConfig,
    TrainSection,
    apply_overrides,
    load_config_file,
    load_run_config,
)
from dpp.granularity import GRANULARITIES

# One configuration, written in each of the three formats below.
CONFIG = digits(
    "name=fmt",
    "seed=3",
    "data.batch_size=32",
    "train.epochs=2",
    "train.optimizer=sgd",
    "train.lr=0.05",
    "train.lr_schedule=cosine",
)

TOML = """
name = "fmt"
seed = 3
method = "dpp"

[data]
dataset = "digits"
batch_size = 32

[model]
name = "lenet300"

[train]
epochs = 2
optimizer = "sgd"
lr = 0.05
lr_schedule = "cosine"
device = "cpu"

[pruning]
granularity = "weight"
density = 0.1
overrides = { fc3 = { density = 0.5 } }
temperature = { kind = "linear", start = 2.0, end = 0.5, epochs = 2 }

[log]
progress = "off"
metrics_samples = 8
"""


def field_names(cls: type) -> list[str]:
    if hasattr(cls, "model_fields"):  # a pydantic section
        return list(cls.model_fields)
    return [f.name for f in fields(cls)]


def assert_lists_all(message: str, valid: list[str] | tuple[str, ...]) -> None:
    missing = [v for v in valid if v not in message]
    assert not missing, f"the message does not list {missing}: {message}"


# ------------------------------------------------------------------ file formats
@pytest.mark.parametrize("fmt", ["toml", "yaml", "yml", "json"])
def test_every_file_format_loads_the_same_config(tmp_path: Path, fmt: str):
    """TOML, YAML and JSON files holding the same settings load to the same RunConfig."""
    path = tmp_path / f"run.{fmt}"
    if fmt == "toml":
        path.write_text(TOML)
    elif fmt == "json":
        path.write_text(json.dumps(CONFIG))
    else:
        path.write_text(yaml.safe_dump(CONFIG))
    cfg = load_run_config(path)
    assert cfg == RunConfig.from_dict(CONFIG)
    assert cfg.train.optimizer == "sgd" and cfg.train.lr == 0.05 and cfg.seed == 3
    assert cfg.pruning["overrides"] == {"fc3": {"density": 0.5}}


def test_demo_toml_is_a_valid_run_config():
    """The shipped demo.toml loads and validates."""
    cfg = RunConfig.from_dict(load_config_file(DEMO_CONFIG))
    assert cfg.method == "dpp" and cfg.pruning


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("missing.toml", None, "does not exist"),
        ("run.ini", "x = 1", ".toml"),
        ("bad.toml", "name = ", "could not be parsed"),
        ("bad.json", "{", "could not be parsed"),
        ("list.yaml", "- 1\n- 2\n", "mapping"),
    ],
)
def test_unreadable_files_raise_config_error(tmp_path: Path, name, text, expected):
    """A missing, unknown-format, unparsable or non-mapping file gets a ConfigError."""
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert expected in str(err.value) and name in str(err.value)


# ------------------------------------------------------------------ --set overrides
def test_set_overrides_dotted_keys_with_yaml_types(tmp_path: Path):
    """--set key.sub=value reaches nested keys, values are YAML-typed and beat the file's."""
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    cfg = load_run_config(
        path,
        [
            "train.lr=1e-3",
            "train.epochs=5",
            "train.nesterov=true",
            "train.lr_schedule=step",
            "train.lr_milestones=[1, 3]",
            "data.augment=false",
            "pruning.overrides.fc3.density=0.25",
            "pruning.noise_scale={kind: cosine, start: 1, end: 0.1, epochs: 1}",
            "name=renamed",
        ],
    )
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-3
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.train.nesterov is True and cfg.data.augment is False
    assert cfg.train.lr_milestones == [1, 3]
    assert cfg.pruning["overrides"]["fc3"] == {"density": 0.25}
    assert cfg.pruning["noise_scale"]["kind"] == "cosine"
    assert cfg.name == "renamed"
    # untouched keys keep the file's values
    assert cfg.train.optimizer == "sgd" and cfg.pruning["density"] == 0.1


@given(
    mantissa=st.integers(1, 9),
    exponent=st.integers(-9, 9),
    sign=st.sampled_from(["", "-", "+"]),
    e=st.sampled_from(["e", "E"]),
)
def test_set_scientific_notation_is_a_float(mantissa, exponent, sign, e):
    """YAML 1.1 reads 1e-3 as a string; --set turns every such number into the float."""
    raw = f"{sign}{mantissa}{e}{exponent}"
    out = apply_overrides({}, [f"train.lr={raw}"])
    assert isinstance(out["train"]["lr"], float)
    assert out["train"]["lr"] == float(raw)


def test_set_does_not_modify_its_input():
    """apply_overrides works on a copy."""
    data = {"train": {"lr": 0.1}}
    out = apply_overrides(data, ["train.lr=0.2", "pruning.density=0.5"])
    assert data == {"train": {"lr": 0.1}}
    assert out == {"train": {"lr": 0.2}, "pruning": {"density": 0.5}}


@pytest.mark.parametrize("item", ["train.lr", "=3", "name.sub=1"])
def test_malformed_set_is_a_config_error(item):
    """--set without key=value, or through a non-section, gets a ConfigError."""
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({"name": "run"}, [item])


@pytest.mark.parametrize("word", ["on", "off"])
def test_progress_on_off_survive_yaml(tmp_path: Path, word):
    """log.progress on/off (YAML 1.1 booleans when unquoted) work in --set and YAML files."""
    assert load_run_config(None, [f"log.progress={word}"]).log.progress == word
    path = tmp_path / "run.yaml"
    path.write_text(f"log:\n  progress: {word}\n")
    assert load_run_config(path).log.progress == word


# ------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize(
    ("assignment", "valid"),
    [
        ("epochz=3", field_names(RunConfig)),
        ("train.epochz=3", field_names(TrainSection)),
        ("data.batchsize=3", field_names(DataSection)),
        ("model.nam=x", field_names(ModelSection)),
        ("log.verbose=1", field_names(LogSection)),
        ("pruning.densty=0.1", field_names(dpp.DPPConfig)),
    ],
)
def test_unknown_key_lists_the_valid_keys(assignment, valid):
    """An unknown key (top level, in a section, in pruning) names itself and the valid keys."""
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [assignment])
    message = str(err.value)
    assert assignment.split("=")[0].split(".")[-1] in message
    assert_lists_all(message, valid)


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("assignment", "valid"),
    [
        ("train.optimizer=adamx", runconfig.OPTIMIZERS),
        ("train.logit_optimizer=adamx", runconfig.OPTIMIZERS),
        ("train.lr_schedule=linear", runconfig.LR_SCHEDULES),
        ("method=magic", runconfig.METHODS),
        ("log.progress=sometimes", runconfig.PROGRESS),
        ("data.dataset=imagenet", DATASETS),
        ("model.name=resnet9000", list_models()),
        ("pruning.granularity=row", GRANULARITIES),
    ],
)
def test_bad_choice_lists_what_is_valid(assignment, valid):
    """A value outside a fixed set gets a ConfigError listing every valid choice."""
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [assignment])
    assert assignment.split("=")[1] in str(err.value)
    assert_lists_all(str(err.value), valid)


@pytest.mark.parametrize(
    ("assignments", "expected"),
    [
        (["train.lr=-1"], ["train.lr", "> 0"]),
        (["train.lr=0"], ["train.lr", "> 0"]),
        (["train.epochs=0"], ["train.epochs", "> 0"]),
        (["train.epochs=1.5"], ["train.epochs", "integer"]),
        (["data.batch_size=2.5"], ["data.batch_size", "integer"]),
        (["data.val_size=-1"], ["data.val_size", ">= 0"]),
        (["train.weight_decay=-0.1"], ["train.weight_decay", ">= 0"]),
        (["train.lr=fast"], ["train.lr", "number"]),
        (["train.lr_schedule=step"], ["lr_milestones"]),
        (["train.device=tpu"], ["auto", "cpu", "cuda"]),
        (["train.device=0"], ["auto", "cpu", "cuda"]),
        (["seed=1.5"], ["seed", "int"]),
        (["pruning.density=2"], ["density", "(0, 1]"]),
        (["pruning.density=0"], ["density", "(0, 1]"]),
        (["pruning.temperature={kind: linear, start: 1, end: 0, epochs: 2}"], ["> 0"]),
        (["pruning.temperature={kind: wobbly, start: 1}"], ["linear", "cosine"]),
    ],
)
def test_bad_value_is_a_config_error_saying_what_is_valid(assignments, expected):
    """Out-of-range or wrongly typed values get a ConfigError naming the key and the bound."""
    with pytest.raises(ConfigError) as err:
        load_run_config(None, assignments)
    for word in expected:
        assert word in str(err.value), str(err.value)


def test_step_schedule_with_milestones_is_accepted():
    """lr_schedule 'step' is valid once milestones are given."""
    cfg = load_run_config(None, ["train.lr_schedule=step", "train.lr_milestones=[2, 4]"])
    assert cfg.train.lr_milestones == [2, 4]


def test_dense_method_still_validates_the_pruning_section():
    """A typo in the pruning section is caught even while method 'dense' does not use it."""
    with pytest.raises(ConfigError, match=r"density must be in \(0, 1\]"):
        load_run_config(None, ["method=dense", "pruning.density=2"])
    assert load_run_config(None, ["method=dense"]).method == "dense"


# ------------------------------------------------------------------ YAML round trip
SAFE_TEXT = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\\"),
    min_size=1,
    max_size=12,
)
TRICKY = st.sampled_from(["on", "off", "yes", "no", "null", "1e3", "0x10", "007", "1.5", "~"])


@given(
    name=st.one_of(SAFE_TEXT, TRICKY),
    seed=st.integers(0, 2**31),
    lr=st.floats(1e-8, 10.0, allow_nan=False),
    optimizer=st.sampled_from(runconfig.OPTIMIZERS),
    progress=st.sampled_from(runconfig.PROGRESS),
    density=st.floats(0.01, 1.0),
    epochs=st.integers(1, 50),
    init_from=st.one_of(st.none(), SAFE_TEXT, TRICKY),
)
def test_resolved_config_yaml_round_trip(
    tmp_path_factory, name, seed, lr, optimizer, progress, density, epochs, init_from
):
    """The YAML a run saves (config.yaml) loads back into an equal RunConfig."""
    cfg = RunConfig.from_dict(
        {
            "name": name,
            "seed": seed,
            "train": {"lr": lr, "optimizer": optimizer, "epochs": epochs, "init_from": init_from},
            "log": {"progress": progress},
            "pruning": {
                "density": density,
                "temperature": {"kind": "linear", "start": 2, "end": 0.5, "epochs": epochs},
            },
        }
    )
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_run_config(path) == cfg


# ------------------------------------------------------------------ epoch-based schedules
@given(
    epochs=st.integers(1, 30),
    delay_epochs=st.integers(0, 10),
    steps_per_epoch=st.integers(1, 2000),
)
def test_epoch_schedules_become_steps(epochs, delay_epochs, steps_per_epoch):
    """epochs / delay_epochs in a schedule become steps / delay = epochs * batches per epoch."""
    cfg = RunConfig.from_dict(
        {
            "pruning": {
                "density": 0.1,
                "temperature": {"kind": "linear", "start": 2, "end": 0.5, "epochs": epochs},
                "noise_scale": {
                    "kind": "cosine",
                    "start": 1.0,
                    "end": 0.0,
                    "epochs": epochs,
                    "delay_epochs": delay_epochs,
                },
            }
        }
    )
    dpp_cfg = cfg.dpp_config(steps_per_epoch)
    assert dpp_cfg.temperature.steps == epochs * steps_per_epoch
    assert dpp_cfg.temperature.delay == 0
    assert dpp_cfg.noise_scale.steps == epochs * steps_per_epoch
    assert dpp_cfg.noise_scale.delay == delay_epochs * steps_per_epoch
    # the run config itself keeps the epochs (it is what config.yaml saves)
    assert cfg.pruning["temperature"]["epochs"] == epochs
    assert math.isclose(dpp_cfg.temperature.value(steps_per_epoch * epochs), 0.5)


# ------------------------------------------------------------------ every field checked
# --set assignments (joined by " & ") | the key the message starts with | words it holds:
# train settings, the optimizer's own options, the augmentation flag, the other sections,
# model keyword arguments, pruning types (before dpp.DPPConfig checks the values), baselines.
BAD_FIELDS = """
train.epochs=true                              | train.epochs               | integer
train.lr=.inf                                  | train.lr                   | finite
train.momentum=1.5                             | train.momentum             | < 1
train.momentum=-0.1                            | train.momentum             | >= 0
train.lr_gamma=2                               | train.lr_gamma             | <= 1
train.label_smoothing=1                        | train.label_smoothing      | < 1
train.grad_clip=0                              | train.grad_clip            | > 0
train.logit_lr=-1                              | train.logit_lr             | > 0
train.lr_milestones=[0]                        | train.lr_milestones[0]     | > 0
train.lr_milestones=[3, 2]                     | train.lr_milestones        | increase
train.lr_milestones=5                          | train.lr_milestones        | list
train.sparse_init=1                            | train.sparse_init          | true or false
train.init_from=3                              | train.init_from            | string
train.device=cuda:x                            | train.device               | cuda[:N]
train.nesterov=no                              | train.nesterov             | true or false & 'no'
train.optimizer=sgd & train.nesterov=true & train.momentum=0 | train.nesterov | momentum > 0
data.augment=no                                | data.augment               | true or false & 'no'
data.augment=1                                 | data.augment               | true or false
data.eval_batch_size=0                         | data.eval_batch_size       | > 0
data.data_dir=[1]                              | data.data_dir              | string
log.metrics_samples=0                          | log.metrics_samples        | > 0
log.tensorboard=yes                            | log.tensorboard            | true or false
seed=-1                                        | seed                       | >= 0
name=                                          | name                       | string
data=3                                         | data                       | mapping
model.kwargs={depth: 3}                        | model.kwargs.depth         | lenet300 & depth
model.kwargs=[1]                               | model.kwargs               | mapping
pruning.entropy_weight=no                      | pruning.entropy_weight     | number
pruning.logit_init_std=-1                      | pruning.logit_init_std     | >= 0
pruning.exclude=fc1                            | pruning.exclude            | list
pruning.overrides={fc3: {densty: 1}}           | pruning.overrides.fc3.densty | did you mean
pruning.overrides={fc3: {prune: no}}           | pruning.overrides.fc3.prune | true or false
pruning.temperature=hot                        | pruning.temperature        | number or a schedule
pruning.noise_scale={kind: linear, epochs: -1} | pruning.noise_scale.epochs | > 0
method=srste & baseline.decay=-1               | baseline.decay             | >= 0
method=gradual_kofn & baseline.frequency=0.5   | baseline.frequency         | integer
method=dpp & baseline.decay=1                  | baseline.decay             | takes no options
"""


def table_rows(text: str) -> list[tuple[list[str], str, list[str]]]:
    """``a & b | key | word & word`` lines -> (assignments, key, words)."""
    rows = []
    for line in text.strip().splitlines():
        assignments, key, words = (part.strip() for part in line.split(" | "))
        rows.append((assignments.split(" & "), key, words.split(" & ")))
    return rows


@pytest.mark.parametrize(("assignments", "key", "words"), table_rows(BAD_FIELDS))
def test_every_field_is_type_and_range_checked(assignments, key, words):
    """A wrong type or an out-of-range value anywhere: a ConfigError that starts with the key."""
    with pytest.raises(ConfigError) as err:
        load_run_config(None, assignments)
    message = str(err.value)
    assert message.startswith(f"{key}: "), message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("assignment", "suggestion"),
    [
        ("sed=1", "seed"),
        ("train.epochz=3", "epochs"),
        ("train.learning_rate=3", None),
        ("data.batchsize=3", "batch_size"),
        ("log.progres=on", "progress"),
        ("pruning.densty=0.1", "density"),
        ("train.optimizer=adamm", "adam"),
        ("model.name=resnet2", "resnet20"),
        ("method=srtse", "srste"),
    ],
)
def test_typos_suggest_the_closest_valid_word(assignment, suggestion):
    """A mistyped key or choice names the closest valid one; a far-off word gets none."""
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [assignment])
    message = str(err.value)
    assert message.startswith(assignment.split("=")[0])
    if suggestion is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean {suggestion!r}?" in message, message


def test_baseline_typo_suggests_the_option():
    """An unknown baseline option is checked against the chosen method's own options."""
    with pytest.raises(ConfigError, match=r"baseline\.decy: .*did you mean 'decay'"):
        load_run_config(None, ["method=srste", "baseline.decy=1e-4"])
    cfg = load_run_config(None, ["method=gradual_kofn", "baseline.frequency=10"])
    assert cfg.baseline == {"frequency": 10}


@pytest.mark.parametrize("key", field_names(dpp.DPPConfig))
def test_every_pruning_field_rejects_a_wrong_type(key):
    """Every field of dpp.DPPConfig, given a nested list, gets a ConfigError under pruning."""
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [f"pruning.{key}=[[1]]"])
    assert str(err.value).startswith("pruning"), str(err.value)


# ------------------------------------------------------------------ YAML 1.2 values
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("no", "no"),
        ("yes", "yes"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("true", True),
        ("False", False),
        ("1e-3", 1e-3),
        ("-2E+4", -2e4),
        ("010", 10),
        ("0x10", "0x10"),
        ("1_000", "1_000"),
        ("2024-01-01", "2024-01-01"),
        ("~", None),
        ("", None),
        ("[1, 2]", [1, 2]),
        ("{a: no}", {"a": "no"}),
    ],
)
def test_set_values_follow_yaml_1_2(text, value):
    """--set values: only true/false are booleans; no/on/off/yes and dates stay strings."""
    parsed = runconfig.parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_yaml_file_reads_no_as_a_string_and_rejects_it_for_a_bool(tmp_path: Path):
    """In a YAML file `augment: no` is the string 'no', an error for a bool field."""
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  augment: no\n")
    with pytest.raises(ConfigError, match=r"data\.augment: must be true or false, got 'no'"):
        load_run_config(path)
    path.write_text("data:\n  augment: false\nlog:\n  progress: off\ntrain:\n  lr: 1e-3\n")
    cfg = load_run_config(path)
    assert cfg.data.augment is False and cfg.log.progress == "off" and cfg.train.lr == 1e-3


def test_saved_yaml_quotes_what_yaml_1_1_would_misread():
    """config.yaml quotes strings that YAML 1.1 readers would take for booleans or numbers."""
    cfg = RunConfig.from_dict({"name": "no", "output_dir": "1e3", "train": {"init_from": "on"}})
    loaded = yaml.safe_load(cfg.to_yaml())  # a YAML 1.1 reader
    assert loaded["name"] == "no" and loaded["output_dir"] == "1e3"
    assert loaded["train"]["init_from"] == "on"
