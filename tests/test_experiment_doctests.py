"""The usage examples in the experiment side's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "dpp.experiments.models",
    "dpp.experiments.registry",
    "dpp.experiments.runconfig",
    "dpp.experiments.seeding",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    """Each listed module has docstring examples, and none of them fails."""
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
