"""Small helpers on a model: the names of its modules, replacing one, its example inputs.

Example:
    >>> import torch
    >>> from dpp.modeltools import as_inputs, module_aliases, replace_module
    >>> shared = torch.nn.Linear(2, 2)
    >>> model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    >>> module_aliases(model)[id(shared)]
    ['0', '2']
    >>> replace_module(model, shared, torch.nn.Identity())
    >>> [type(m).__name__ for m in model]
    ['Identity', 'ReLU', 'Identity']
    >>> len(as_inputs(torch.zeros(1))), len(as_inputs((torch.zeros(1), torch.ones(1))))
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["as_inputs", "module_aliases", "replace_module", "set_module"]


def module_aliases(model: nn.Module) -> dict[int, list[str]]:
    """``{id(module): every name it has}``: a module shared by several parents has several."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at ``name`` (dotted, as ``model.named_modules()`` prints it).

    Raises:
        ValueError: ``name`` is empty (the root cannot replace itself).
    """
    if not name:
        raise ValueError(
            f"cannot replace the root module ({type(model).__name__}) itself; wrap it in a "
            "container (e.g. torch.nn.Sequential(model)) first"
        )
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def replace_module(
    model: nn.Module,
    old: nn.Module,
    new: nn.Module,
    aliases: dict[int, list[str]] | None = None,
) -> None:
    """Replace ``old`` by ``new`` under every name ``old`` has in ``model``.

    Args:
        aliases: :func:`module_aliases` of ``model``, when the caller already has it.
    """
    names = (module_aliases(model) if aliases is None else aliases).get(id(old), [])
    if not names:
        raise ValueError(f"the {type(old).__name__} to replace is not a module of the model")
    for name in names:
        set_module(model, name, new)


def as_inputs(example_inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Example inputs as the positional arguments of a forward call: a tensor becomes ``(x,)``."""
    return (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
