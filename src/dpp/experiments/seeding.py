"""One way to derive independent seeds from a run's seed (per rank, per epoch, per layer)."""

from __future__ import annotations

import zlib

__all__ = ["mix_seed", "name_seed"]

_MASK63 = 0x7FFFFFFFFFFFFFFF


def mix_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends on ``seed`` and every one of ``parts``, in order.

    Example::

        >>> mix_seed(0, 1) != mix_seed(0, 2) != mix_seed(1, 1)
        True
    """
    value = seed & 0xFFFFFFFF
    for p in parts:
        value = (value * 1_000_003 + p + 0x9E3779B9) & _MASK63
    return value


def name_seed(seed: int, name: str) -> int:
    """:func:`mix_seed` of ``seed`` and a stable hash of ``name`` (e.g. a layer's name)."""
    return mix_seed(seed, zlib.crc32(name.encode()))
