"""The usage examples in the core's docstrings: every core module has some, and they run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dpp
import dpp.export


def core_modules() -> list[str]:
    """Every module of ``src/dpp`` and ``src/dpp/export`` (the experiment side and the
    ``python -m dpp`` entry point excluded)."""
    names = {"dpp", "dpp.export"}
    for package in (dpp, dpp.export):
        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in ("experiments", "__main__"):
                names.add(f"{package.__name__}.{info.name}")
    return sorted(names)


def test_the_core_is_found():
    """The discovery sees the core's main modules (a broken discovery cannot pass silently)."""
    found = set(core_modules())
    assert {"dpp.pruner", "dpp.bake", "dpp.layers", "dpp.export.packed"} <= found
    assert not any(name.startswith("dpp.experiments") for name in found)


@pytest.mark.parametrize("name", core_modules())
def test_docstring_examples(name):
    """The module has at least one docstring example, and all of them print what they show."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
