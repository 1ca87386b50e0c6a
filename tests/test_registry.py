"""Decorator registries of models and methods: one place per entry, live views, validation."""

from __future__ import annotations

import pytest
from torch import nn

from dpp.experiments import models
from dpp.experiments.baselines import BASELINE_OPTIONS, BASELINES
from dpp.experiments.methods import METHODS, TrainingMethod, register_method
from dpp.experiments.registry import Registry, suggest
from dpp.experiments.runconfig import ConfigError, load_run_config


def test_registration_names_aliases_and_errors():
    """Names and aliases resolve case-insensitively; a taken name or an unknown one is refused."""
    shapes = Registry("shape")
    shapes.register("square", aliases=("Box",), sides=4)(object)
    assert shapes.canonical("BOX") == "square" and "box" in shapes and "circle" not in shapes
    assert shapes.get("Square").meta == {"sides": 4}
    with pytest.raises(ValueError, match="registered already"):
        shapes.register("box")(object)
    with pytest.raises(KeyError, match=r"unknown shape 'sqare' \(did you mean 'square'\?\)"):
        shapes.get("sqare")


def test_views_follow_later_registrations():
    """objects() and aliases() are live: an entry registered later shows in both."""
    reg = Registry("thing")
    objects, aliases = reg.objects(), reg.aliases()
    reg.register("a", aliases=("alpha",))(int)
    assert dict(objects) == {"a": int} and dict(aliases) == {"alpha": "a"}


def test_suggest_only_close_words():
    """suggest() names a close valid word and stays silent for a far-off one."""
    assert suggest("epohcs", ["epochs", "lr"]) == " (did you mean 'epochs'?)"
    assert suggest("zzz", ["epochs", "lr"]) == ""


def test_every_model_registers_its_shape_and_aliases_in_one_place():
    """Each registered model carries its default input shape; MODELS/MODEL_ALIASES are views."""
    for entry in models.REGISTRY:
        assert len(entry.meta["input_shape"]) == 3
        assert models.MODELS[entry.name] is entry.obj
        assert all(models.MODEL_ALIASES[a] == entry.name for a in entry.aliases)
    assert set(models.list_models()) == set(models.MODELS)


@pytest.fixture
def tiny_model():
    """A model registered for one test (and removed from the registry after it)."""

    @models.register_model("tiny-test-mlp", aliases=("tiny-test",), input_shape=(1, 8, 8))
    def tiny(num_classes: int = 10, input_shape=(1, 8, 8), width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.Linear(width, num_classes))

    yield tiny
    models.REGISTRY._entries.pop("tiny-test-mlp")
    models.REGISTRY._aliases.pop("tiny-test")


def test_a_registered_model_is_usable_by_name_with_checked_kwargs(tiny_model):
    """A model registered by the decorator is buildable and selectable in a run config, and
    its keyword arguments are checked against its signature."""

    assert "tiny-test-mlp" in models.list_models() and models.MODEL_ALIASES["tiny-test"]
    assert models.create_model("tiny-test", width=3)[1].out_features == 3
    cfg = load_run_config(None, ["model.name=tiny-test", "model.kwargs={width: 8}"])
    assert cfg.model.kwargs == {"width": 8}
    with pytest.raises(ConfigError, match=r"model\.kwargs\.width: .*integer, got 'x'"):
        load_run_config(None, ["model.name=tiny-test", "model.kwargs={width: x}"])
    with pytest.raises(ConfigError, match=r"model\.kwargs\.depth: .*valid: width"):
        load_run_config(None, ["model.name=tiny-test", "model.kwargs={depth: 2}"])


def test_every_method_registers_its_options():
    """dense, dpp and every baseline are registered; the baselines' defaults come from there."""
    assert {"dense", "dpp", *BASELINES} == set(METHODS.names())
    for name in BASELINES:
        assert BASELINE_OPTIONS[name] == METHODS.get(name).meta["options"]().model_dump()
    with pytest.raises(ValueError, match="registered already"):
        register_method("dpp")(TrainingMethod)
