"""End to end: a 10%-dense DPP MLP learns sklearn's digits, and finalizes to the same accuracy."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import dpp
from conftest import candidates_kept

datasets = pytest.importorskip("sklearn.datasets")


def digits_split():
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_sparse_mlp_learns_digits():
    """An MLP keeping 10% of each neuron's inputs trains well above chance and finalizes exactly."""
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = digits_split()
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(64, 128),
            act1=nn.ReLU(),
            fc2=nn.Linear(128, 64),
            act2=nn.ReLU(),
            fc3=nn.Linear(64, 10),
        )
    )
    epochs, batch = 12, 64
    steps = epochs * ((len(y_train) + batch - 1) // batch)
    pruner = dpp.prune(
        model,
        granularity="weight",
        density=0.1,
        overrides={"fc3": {"density": 0.5}},
        temperature=dpp.Schedule("linear", start=2.0, end=0.5, steps=steps),
        noise_scale=dpp.Schedule("linear", start=1.0, end=0.0, steps=steps),
    )
    assert [row.k for row in pruner.rows()] == [6, 13, 32]
    opt = torch.optim.Adam(pruner.param_groups(lr=1e-2, logit_lr=5e-2))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y_train))
        for i in range(0, len(y_train), batch):
            idx = perm[i : i + batch]
            loss = loss_fn(model(x_train[idx]), y_train[idx]) + pruner.entropy_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()
    assert pruner.current_step == steps

    model.eval()
    acc = accuracy(model, x_test, y_test)
    assert acc > 0.7, f"test accuracy {acc:.3f} (chance is 0.1)"

    records = pruner.finalize()
    assert accuracy(model, x_test, y_test) == acc
    for name, rec in records.items():
        weight = model.get_submodule(name).weight
        assert type(model.get_submodule(name)) is nn.Linear
        assert bool((candidates_kept(weight, "weight").sum(1) <= rec.layout.k).all())
        assert bool((rec.mask.sum(1) == rec.layout.k).all())
        assert not bool((weight[~rec.mask] != 0).any())
