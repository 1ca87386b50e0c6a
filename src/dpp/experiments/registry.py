"""Name -> object registries filled by decorators (as timm's ``register_model``).

Each model and each training method registers itself where it is defined, under one
canonical name and any aliases; lookups are case-insensitive and list the valid names when
they fail. This module imports nothing from dpp, so every other module can use it.

The registry of training methods, :data:`METHODS`, lives here rather than beside the methods:
the run config looks method names up in it, and the methods annotate with the run config,
so neither imports the other. :mod:`dpp.experiments.builtin_methods` fills it with the
built-in methods (``import dpp.experiments`` imports it).

Example::

    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square", aliases=("box",), sides=4)
    ... def square():
    ...     return "[]"
    >>> SHAPES.get("BOX").obj(), SHAPES.get("square").meta["sides"]
    ('[]', 4)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

__all__ = ["METHODS", "Entry", "Registry", "suggest"]

T = TypeVar("T")


def suggest(word: str, valid: list[str] | tuple[str, ...]) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid word, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object: its canonical name, aliases and metadata."""

    name: str
    obj: T
    aliases: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Canonical names (and aliases) -> registered objects, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, *, aliases: tuple[str, ...] = (), **meta: Any
    ) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` and ``aliases``."""

        def decorate(obj: T) -> T:
            key = name.lower()
            taken = [k for k in (key, *aliases) if k in self._entries or k in self._aliases]
            if taken:
                raise ValueError(f"{self.kind} name(s) {taken} are registered already")
            self._entries[key] = Entry(key, obj, tuple(a.lower() for a in aliases), dict(meta))
            self._aliases.update({a.lower(): key for a in aliases})
            return obj

        return decorate

    def canonical(self, name: str) -> str | None:
        """The canonical name of ``name`` or of its alias, or None when unknown."""
        key = str(name).strip().lower()
        key = self._aliases.get(key, key)
        return key if key in self._entries else None

    def get(self, name: str) -> Entry[T]:
        """The entry of ``name`` (or an alias); ``KeyError`` listing the valid names."""
        key = self.canonical(name)
        if key is None:
            raise KeyError(
                f"unknown {self.kind} {name!r}{suggest(str(name).lower(), self.names())}; "
                f"valid: {', '.join(self.names())}"
            )
        return self._entries[key]

    def names(self) -> list[str]:
        """Canonical names in registration order."""
        return list(self._entries)

    def aliases(self) -> Mapping[str, str]:
        """Alias -> canonical name (a live, read-only view)."""
        return MappingProxyType(self._aliases)

    def objects(self) -> Mapping[str, T]:
        """Canonical name -> registered object (a live, read-only view)."""
        return _Objects(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())


class _Objects(Mapping[str, T]):
    """The registered objects by canonical name, as the registry holds them now."""

    def __init__(self, entries: dict[str, Entry[T]]) -> None:
        self._entries = entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name].obj

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


#: Training method name -> its :class:`~dpp.experiments.methods.TrainingMethod` class;
#: ``meta["options"]`` is the pydantic model of its ``[baseline]`` options. Filled by
#: ``@register_method`` (:mod:`dpp.experiments.methods`).
METHODS: Registry[Any] = Registry("method")
