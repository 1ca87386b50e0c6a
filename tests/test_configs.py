"""Every shipped run config under configs/ is valid and prunes its model as it says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dpp
from dpp.experiments.data import dataset_info
from dpp.experiments.models import create_model
from dpp.experiments.runconfig import load_run_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_configs_exist():
    """The repository ships run configs for the paper's experiments."""
    names = {p.stem for p in CONFIGS}
    for required in (
        "lenet300_fmnist_w95",
        "lenet5_fmnist_kernel",
        "lenet5_fmnist_tiled",
        "vgg16_cifar10_filter",
        "resnet56_cifar10_kernel",
        "resnet18_cifar10_filter_last2",
        "lenet300_fmnist_2of4",
        "lenet300_fmnist_w95_binary",
    ):
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_prunes_its_model(path: Path):
    """The config validates, its pruning section applies to its model, and every pruned layer
    keeps exactly the k of n it resolves to."""
    cfg = load_run_config(path)
    assert cfg.name and f"configs/{path.name}" in path.read_text()
    info = dataset_info(cfg.data.dataset)
    model = create_model(cfg.model.name, info.num_classes, input_shape=info.input_shape)
    example = torch.zeros(2, *info.input_shape)
    pruner = dpp.prune(model, cfg.dpp_config(steps_per_epoch=100), example_inputs=example)
    rows = [r for r in pruner.rows() if r.k is not None]
    assert rows, "the config prunes nothing"
    for name, mask in pruner.masks().items():
        layout = pruner.layers[name].dpp_layout
        assert layout is not None
        group_mask = pruner.layers[name].dpp.deterministic(pruner.layers[name].weight)
        assert (group_mask.sum(-1) == layout.k).all()
        assert mask.shape == pruner.layers[name].weight.shape


def test_demo_config_is_the_shipped_w95_config():
    """`dpp demo` trains exactly configs/lenet300_fmnist_w95.toml (up to the run name)."""
    from dpp.experiments.demo import DEMO_CONFIG
    from dpp.experiments.runconfig import load_config_file

    root = Path(__file__).parent.parent
    demo = load_config_file(DEMO_CONFIG)
    shipped = load_config_file(root / "configs" / "lenet300_fmnist_w95.toml")
    demo.pop("name")
    shipped.pop("name")
    assert demo == shipped
