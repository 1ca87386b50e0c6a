"""Tests of DPPConfig: serialisation, per-layer resolution (include/exclude/overrides), errors."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dpp
from dpp import DPPConfig, Schedule


def vgg_like() -> nn.Module:
    """features.{0,2} are convs, classifier.{0,2} linears, 'head' a linear outside both."""
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model.classifier = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
    model.head = nn.Linear(16, 4)
    return model


ALL_LAYERS = {"features.0", "features.2", "classifier.0", "classifier.2", "head"}


def full_config() -> DPPConfig:
    return DPPConfig(
        granularity="kernel",
        density=0.25,
        include=["features", "classifier.*", "head"],
        exclude=["classifier.2"],
        overrides={
            "classifier.*": {"granularity": "block", "block_size": 4, "k": 1},
            "head": {"granularity": "filter", "density": 0.5},
        },
        temperature=Schedule("linear", start=5.0, end=0.5, steps=100, delay=10),
        noise_scale=Schedule("cosine", start=1.0, end=0.1, steps=50),
        logit_init_std=0.1,
        entropy_weight=1e-4,
    )


def layer_table(pruner: dpp.Pruner) -> dict[str, tuple]:
    return {
        name: (layer.dpp_layout.granularity, layer.dpp_layout.num_groups, layer.dpp_layout.n,
               layer.dpp_layout.k, layer.dpp_layout.block_size)
        for name, layer in pruner.layers.items()
    }  # fmt: skip


# ------------------------------------------------------------------ serialisation
def test_dict_round_trip():
    """to_dict/from_dict gives back an equal config."""
    cfg = full_config()
    assert DPPConfig.from_dict(cfg.to_dict()) == cfg


def test_json_round_trip():
    """to_dict is plain JSON; to_json/from_json and json.dumps/loads give back an equal config."""
    cfg = full_config()
    text = cfg.to_json()
    assert DPPConfig.from_json(text) == cfg
    assert DPPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert isinstance(json.loads(text)["temperature"], dict)


def test_round_trip_does_not_alias():
    """Mutating to_dict() output does not change the config."""
    cfg = full_config()
    data = cfg.to_dict()
    data["overrides"]["head"]["density"] = 0.9
    data["include"].append("x")
    assert cfg.overrides["head"]["density"] == 0.5 and "x" not in cfg.include


def test_unknown_config_key():
    """from_dict rejects unknown keys, listing the valid ones."""
    with pytest.raises(ValueError, match=r"unknown DPP config key\(s\) \['sparsity'\].*density"):
        DPPConfig.from_dict({"sparsity": 0.9})


def test_config_reproduces_pruning_on_fresh_model():
    """A saved config prunes a fresh model the same way: same layers, granularity, groups, n, k."""
    first = dpp.prune(vgg_like(), full_config())
    saved = first.config.to_json()
    second = dpp.prune(vgg_like(), DPPConfig.from_json(saved))
    assert layer_table(second) == layer_table(first)
    assert second.rows() == first.rows()
    assert set(first.layers) == {"features.0", "features.2", "classifier.0", "head"}
    third = dpp.prune(vgg_like(), json.loads(saved))  # a plain dict works too
    assert layer_table(third) == layer_table(first)


def test_keyword_options_override_config():
    """prune(model, config, **options) applies the options on top of the config."""
    cfg = DPPConfig(density=0.5)
    pruner = dpp.prune(vgg_like(), cfg, density=0.25, exclude=["head"])
    assert pruner.config.density == 0.25 and cfg.density == 0.5
    assert "head" not in pruner.layers


# ------------------------------------------------------------------ resolution
def test_later_override_wins():
    """When several overrides match a layer, the later one wins, key by key."""
    cfg = DPPConfig(
        density=0.5,
        overrides={
            "classifier.*": {"density": 0.25, "granularity": "filter"},
            "classifier.2": {"density": 0.75},
        },
    )
    pruner = dpp.prune(vgg_like(), cfg)
    table = layer_table(pruner)
    assert table["classifier.0"][0] == "filter" and table["classifier.0"][3] == 4  # 0.25 * 16
    assert table["classifier.2"][0] == "filter" and table["classifier.2"][3] == 12  # 0.75 * 16
    assert table["head"][3] == 8  # 0.5 * 16


def test_override_k_replaces_density_and_vice_versa():
    """An override's k replaces the global density; an override's density replaces a global k."""
    pruner = dpp.prune(vgg_like(), density=0.5, overrides={"head": {"k": 3}})
    assert layer_table(pruner)["head"][3] == 3
    pruner = dpp.prune(vgg_like(), k=2, overrides={"head": {"density": 0.75}})
    assert layer_table(pruner)["head"][3] == 12
    assert layer_table(pruner)["classifier.0"][3] == 2


def test_override_prune_false_keeps_layer_dense():
    """`prune: False` leaves a matched layer a plain, unmasked layer with the original weights."""
    model = vgg_like()
    weight = model.head.weight.detach().clone()
    pruner = dpp.prune(model, density=0.25, overrides={"head": {"prune": False}})
    assert "head" not in pruner.layers
    assert type(model.head) is nn.Linear
    assert torch.equal(model.head.weight, weight)
    assert "head.dpp.logits" not in model.state_dict()


def test_override_alone_selects_what_to_prune():
    """Without a global density only the layers an override gives a density or k are pruned."""
    pruner = dpp.prune(vgg_like(), overrides={"features.*": {"density": 0.5}})
    assert set(pruner.layers) == {"features.0", "features.2"}


def test_granularity_override_drops_global_block_size():
    """A layer overridden away from 'block' does not inherit the global block size."""
    pruner = dpp.prune(
        vgg_like(),
        granularity="block",
        block_size=4,
        k=2,
        overrides={"features.0": {"granularity": "weight", "k": 5}},  # fan-in 27
    )
    table = layer_table(pruner)
    assert table["features.0"] == ("weight", 8, 27, 5, None)
    assert table["features.2"] == ("block", 8 * 72 // 4, 4, 2, 4)


def test_include_parent_module_selects_children():
    """An include pattern naming a parent module ('features') selects the layers inside it."""
    pruner = dpp.prune(vgg_like(), density=0.5, include=["features"])
    assert set(pruner.layers) == {"features.0", "features.2"}
    pruner = dpp.prune(vgg_like(), density=0.5, include="classifier")  # a bare string works
    assert set(pruner.layers) == {"classifier.0", "classifier.2"}


def test_include_and_exclude_globs():
    """include selects by glob, exclude removes by glob (also via a parent name)."""
    pruner = dpp.prune(vgg_like(), density=0.5, include=["*.0"])
    assert set(pruner.layers) == {"features.0", "classifier.0"}
    pruner = dpp.prune(vgg_like(), density=0.5, exclude=["classifier", "head"])
    assert set(pruner.layers) == {"features.0", "features.2"}
    pruner = dpp.prune(vgg_like(), density=0.5)
    assert set(pruner.layers) == ALL_LAYERS
    pruner = dpp.prune(vgg_like(), density=0.5, include=["features"], exclude=["features.2"])
    assert set(pruner.layers) == {"features.0"}


def test_excluded_layers_are_untouched():
    """Excluded layers keep their class and add no state-dict key."""
    model = vgg_like()
    dpp.prune(model, density=0.5, exclude=["head"])
    assert type(model.head) is nn.Linear
    assert not any(key.startswith("head.dpp") for key in model.state_dict())


@pytest.mark.parametrize(
    "options,match",
    [
        ({"include": ["feature"]}, r"\{'include': \['feature'\]\}.*features\.0"),
        ({"exclude": ["decoder.*"]}, r"\{'exclude': \['decoder\.\*'\]\}.*classifier\.0"),
        ({"overrides": {"fc*": {"k": 1}}}, r"\{'overrides': \['fc\*'\]\}.*head"),
    ],
)
def test_pattern_matching_no_layer(options, match):
    """A pattern matching no prunable layer raises, naming the pattern and listing the layers."""
    with pytest.raises(ValueError, match=r"pattern\(s\) matching no prunable layer: " + match):
        dpp.prune(vgg_like(), density=0.5, **options)


def test_override_matching_only_excluded_layers():
    """An override that only matches excluded layers raises, naming it and those layers."""
    with pytest.raises(ValueError, match=r"override 'head' matches only excluded layers \(head\)"):
        dpp.prune(vgg_like(), density=0.5, exclude=["head"], overrides={"head": {"k": 1}})


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (
            {"granularity": "channels"},
            ValueError,
            r"unknown granularity 'channels'; valid: 'weight'",
        ),
        ({"density": 0.0}, ValueError, r"density must be in \(0, 1\], got 0.0"),
        ({"density": 1.5}, ValueError, r"density must be in \(0, 1\], got 1.5"),
        ({"density": -0.1}, ValueError, r"density must be in \(0, 1\], got -0.1"),
        ({"k": 0}, ValueError, r"k must be >= 1, got 0"),
        ({"k": 2.0}, TypeError, r"k must be an int, got float 2.0"),
        ({"overrides": {"fc": {"k": 2.5}}}, TypeError, r"override 'fc': k must be an int"),
        ({"overrides": {"fc": {"density": 2}}}, ValueError, r"override 'fc': density must be"),
        ({"overrides": {"fc": {"granularity": "row"}}}, ValueError, r"override 'fc': unknown"),
        ({"density": 0.5, "k": 2}, ValueError, r"give density or k, not both"),
        ({"overrides": {"fc": {"bits": 4}}}, ValueError, r"override 'fc' has unknown key.*k,"),
        ({"activation_bits": 4}, ValueError, r"activation_bits must be None or 8"),
        ({"weight_bits": 1}, ValueError, r"weight bits must be an int from 2 to 8 or 'binary'"),
        ({"quant_scale": "row"}, ValueError, r"quant_scale must be one of"),
        ({"entropy_weight": -1.0}, ValueError, r"entropy_weight must be >= 0"),
        ({"logit_init_std": -1.0}, ValueError, r"logit_init_std must be >= 0"),
        ({"temperature": "hot"}, TypeError, r"temperature must be a number, a dict or"),
    ],
)
def test_invalid_config(kwargs, exc, match):
    """Invalid config values raise at construction, saying what is valid."""
    with pytest.raises(exc, match=match):
        DPPConfig(**kwargs)


def test_replace_validates():
    """DPPConfig.replace returns a validated copy."""
    cfg = DPPConfig(density=0.5)
    assert cfg.replace(density=0.25).density == 0.25 and cfg.density == 0.5
    with pytest.raises(ValueError, match="density must be in"):
        cfg.replace(density=2.0)


def test_config_must_be_config_or_dict():
    """prune() rejects a config of another type."""
    with pytest.raises(TypeError, match="config must be a DPPConfig or a dict"):
        dpp.prune(vgg_like(), config=["density", 0.5])


def test_logit_init_std_sets_the_spread():
    """logit_init_std is the standard deviation of the initial logits (0 gives all zeros)."""
    pruner = dpp.prune(vgg_like(), density=0.5, logit_init_std=0.0)
    assert all(bool((p == 0).all()) for p in pruner.logits())
    big = nn.Sequential(OrderedDict(fc=nn.Linear(400, 100)))
    pruner = dpp.prune(big, density=0.5, logit_init_std=2.0)
    assert pruner.logits()[0].std().item() == pytest.approx(2.0, rel=0.05)
