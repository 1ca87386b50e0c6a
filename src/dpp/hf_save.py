"""``save_pretrained`` of a live pruned Hugging Face model writes the masked weights.

A model that still holds DPP layers keeps its dense weights (the masks are applied in the
forward pass) plus ``<layer>.dpp.logits``. Hugging Face's ``save_pretrained`` would write
those dense weights, and a plain ``from_pretrained`` would load a dense model and drop the
logits: a silently unpruned checkpoint. :func:`dpp.prune` therefore gives a model that has a
``save_pretrained`` method (duck-typed; transformers is not imported) a per-instance
subclass of its own class, named like it, in the way ``torch.nn.utils.parametrize`` does:
its ``save_pretrained`` writes the weights of the finalized model (deterministic masks and
quantization baked in, no DPP keys) and warns that the logits are not part of it.
:meth:`dpp.Pruner.finalize` gives the model its own class back; after it, ``save_pretrained``
is Hugging Face's own, untouched.

The documented path stays ``pruner.finalize()`` then ``model.save_pretrained(path)``; this
guard only makes the other order safe. To keep training later, save the logits with
``dpp.save_masks`` or a checkpoint of ``model.state_dict()``.

Example:
    >>> import warnings, torch, dpp
    >>> class Tiny(torch.nn.Sequential):  # any model with a save_pretrained method
    ...     def save_pretrained(self, path, state_dict=None):
    ...         self.saved = state_dict
    >>> model = Tiny(torch.nn.Linear(8, 4))
    >>> pruner = dpp.prune(model, k=2)
    >>> with warnings.catch_warnings(record=True):  # it warns that the logits are not saved
    ...     model.save_pretrained("unused")
    >>> int((model.saved["0.weight"] != 0).sum(1).max())  # the masked weights were written
    2
    >>> _ = pruner.finalize()
    >>> type(model) is Tiny
    True
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from torch import nn

__all__ = ["guard_save_pretrained", "is_guarded", "unguard_save_pretrained"]


def _masked_save_pretrained(self: nn.Module, save_directory: Any, *args: Any, **kwargs: Any):
    from .bake import bake
    from .layers import is_dpp_layer

    base = type(self).__mro__[1]
    if kwargs.get("state_dict") is None and any(is_dpp_layer(m) for m in self.modules()):
        warnings.warn(
            f"save_pretrained of a {base.__name__} that still holds DPP layers: writing the "
            "finalized weights (deterministic masks baked in, no DPP logits), which "
            "from_pretrained loads as the pruned model. The logits are not saved: to go on "
            "training, save them with dpp.save_masks(pruner, path) or model.state_dict(); "
            "call pruner.finalize() first to silence this warning.",
            stacklevel=2,
        )
        kwargs["state_dict"] = bake(self, what="save_pretrained").model.state_dict()
    return base.save_pretrained(self, save_directory, *args, **kwargs)


def _new_instance(cls: type) -> Any:
    return cls.__new__(cls)


def _reduce_as_base(self: nn.Module, protocol: int):
    """Pickle as the model's own class: the guard is not part of a saved object."""
    return _new_instance, (type(self).__mro__[1],), self.__getstate__()


def _deepcopy_guarded(self: nn.Module, memo: dict):
    """A deep copy keeps the guard (``copy.deepcopy`` would otherwise go through pickling)."""
    guarded = type(self)
    self.__class__ = guarded.__mro__[1]
    try:
        twin = copy.deepcopy(self, memo)
    finally:
        self.__class__ = guarded
    twin.__class__ = guarded
    return twin


def is_guarded(model: nn.Module) -> bool:
    """Whether :func:`guard_save_pretrained` has given ``model`` its guard class."""
    return bool(type(model).__dict__.get("_dpp_save_guard", False))


def guard_save_pretrained(model: nn.Module) -> bool:
    """Give ``model`` (if it has ``save_pretrained``) the guard subclass; returns whether it did."""
    cls = type(model)
    if is_guarded(model) or not callable(getattr(cls, "save_pretrained", None)):
        return False
    guarded = type(
        cls.__name__,
        (cls,),
        {
            "save_pretrained": _masked_save_pretrained,
            "__reduce_ex__": _reduce_as_base,
            "__deepcopy__": _deepcopy_guarded,
            "_dpp_save_guard": True,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        },
    )
    model.__class__ = guarded
    return True


def unguard_save_pretrained(model: nn.Module) -> None:
    """Give ``model`` its own class back (no-op if it has no guard)."""
    if is_guarded(model):
        model.__class__ = type(model).__mro__[1]
