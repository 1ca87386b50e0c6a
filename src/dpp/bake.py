"""The bake boundary: any pruned source to the plain model and one record per layer.

:func:`bake` is where "what a pruned layer stores" is worked out, once. It takes

* a model holding DPP layers (after :func:`dpp.prune`),
* a live :class:`~dpp.Pruner`, or
* a finalized :class:`~dpp.Pruner` (its model is plain, its records say what was pruned),

and gives a :class:`Baked`: the plain model (every DPP layer back to its own class, pruned
weights zero, quantized weights exactly ``scale * codes``, the BatchNorms linked to filter
masks zeroed on the pruned channels) and a :class:`~dpp.FinalizedLayer` per layer.
:meth:`dpp.Pruner.finalize`, :func:`dpp.storage.storage_report` and every exporter of
:mod:`dpp.export` take their input from it, so they all see the model ``finalize()`` makes.

A live source is baked on a deep copy: the user's model is never changed (except by
``finalize()``, which bakes in place on purpose). Masks are never inferred from zero weights:
a kept weight may be 0 (especially once quantized).

Example:
    >>> import torch, dpp
    >>> from dpp.bake import bake
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> pruner = dpp.prune(model, k=2)
    >>> baked = bake(pruner)                      # a plain copy; the pruner stays live
    >>> type(baked.model[0]).__name__, type(model[0]).__name__
    ('Linear', 'DPPLinear')
    >>> baked.layers["0"].mask.sum(1).tolist()
    [2, 2, 2, 2]
    >>> x = torch.randn(3, 8)
    >>> torch.equal(baked.model.eval()(x), model.eval()(x))
    True
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .batchnorm import bake_batchnorm_masks
from .layers import DPPLayer, FinalizedLayer, is_dpp_layer, unwrap
from .modeltools import module_aliases, replace_module

__all__ = ["Baked", "bake", "bake_in_place"]


@dataclass
class Baked:
    """A plain model and what was baked into each of its layers.

    Attributes:
        model: the plain model (no DPP layers); a copy of a live source.
        layers: ``{layer name: FinalizedLayer}`` in the model's module order.
    """

    model: nn.Module
    layers: dict[str, FinalizedLayer]

    def module(self, name: str) -> nn.Module:
        """The plain layer ``name`` of :attr:`model`."""
        return self.model.get_submodule(name)


def _live_layers(model: nn.Module) -> dict[str, DPPLayer]:
    layers: dict[str, DPPLayer] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if is_dpp_layer(module) and id(module) not in seen:
            seen.add(id(module))
            layers[name] = module  # type: ignore[assignment]
    return layers


def bake_in_place(model: nn.Module, layers: Mapping[str, DPPLayer]) -> dict[str, FinalizedLayer]:
    """Bake ``layers`` (DPP layers of ``model``, by name) into ``model`` itself.

    The deterministic masks use each mask source's target ``k`` (an unfinished sparsity ramp
    does not count), linked BatchNorms are zeroed on the pruned channels first (they read
    their layers' masks), then every layer is replaced, under every name it has, by its
    plain layer holding the same parameters.

    Returns:
        ``{name: FinalizedLayer}``.
    """
    for layer in layers.values():
        source = layer.dpp
        if source is not None and hasattr(source, "current_k"):
            source.current_k = source.layout.k  # the target k, even if a ramp is unfinished
    aliases = module_aliases(model)
    names = {id(layer): name for name, layer in layers.items()}
    linked: dict[str, list[str]] = {}
    for norm_name, layer in bake_batchnorm_masks(model):
        linked.setdefault(names.get(id(layer), "?"), []).append(norm_name)
    records: dict[str, FinalizedLayer] = {}
    for name, layer in layers.items():
        plain, record = unwrap(layer)
        record.batchnorms = tuple(linked.get(name, ()))
        replace_module(model, layer, plain, aliases)  # type: ignore[arg-type]
        records[name] = record
    return records


def bake(source: Any, *, what: str = "bake", copy: bool = True, strict: bool = True) -> Baked:
    """The plain model and one :class:`~dpp.FinalizedLayer` per layer, from any source.

    Args:
        source: a model holding DPP layers, a :class:`~dpp.Pruner` (live or finalized), or
            a :class:`Baked` (returned as it is).
        what: the caller's name, used in error messages.
        copy: ``True``: the model returned is always a copy the caller may change. ``False``:
            a source that is plain already (a finalized Pruner, a plain model) is returned
            without copying, for callers that only read it. A live source is always baked
            on a copy.
        strict: a plain model without DPP layers is an error (nothing says what was
            pruned); with ``False`` it gives no records.

    Returns:
        :class:`Baked`.

    Raises:
        TypeError: ``source`` is none of the above.
        ValueError: ``strict`` and the model holds no DPP layer.
    """
    if isinstance(source, Baked):
        return source
    if isinstance(source, nn.Module):
        model, finalized, live_names = source, None, None
    elif isinstance(getattr(source, "model", None), nn.Module) and hasattr(
        source, "finalized_layers"
    ):  # a dpp.Pruner (not imported: dpp.pruner uses this module)
        model, finalized = source.model, source.finalized_layers
        live_names = list(getattr(source, "layers", {}))
    else:
        raise TypeError(
            f"{what} expects a pruned torch.nn.Module or a dpp.Pruner, got {type(source).__name__}"
        )
    if finalized:
        return Baked(_copy.deepcopy(model) if copy else model, dict(finalized))
    live = _live_layers(model)
    if not live:
        if strict:
            raise ValueError(
                f"{what}: the {type(model).__name__} holds no DPP layer, so nothing says what "
                "was pruned (masks are never inferred from zero weights: a kept weight may be "
                "0). Pass the model before pruner.finalize(), or the Pruner itself (after "
                "finalize() its masks live in pruner.finalized_layers)."
            )
        return Baked(_copy.deepcopy(model) if copy else model, {})
    work = _copy.deepcopy(model)
    if live_names:  # a Pruner: its own names for its layers
        layers = {name: work.get_submodule(name) for name in live_names}
    else:
        layers = _live_layers(work)
    return Baked(work, bake_in_place(work, layers))  # type: ignore[arg-type]
