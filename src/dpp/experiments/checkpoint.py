"""Checkpoints that resume bit-exactly and are verified on load; atomic file writes.

A checkpoint is a ``torch.save`` dict of tensors and plain data only (RNG states included:
numpy's is stored as a tensor), so it loads with ``torch.load(..., weights_only=True)``. It
records a SHA-256 digest of every tensor and one of everything else (the ``skeleton``);
:func:`load_checkpoint` recomputes them and names the file, the damaged part and what to
do when one differs, when the file is truncated, or when a key is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, RunDirError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEYS",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng",
    "load_checkpoint",
    "load_weights",
    "remove_stale_temp_files",
    "restore_rng",
    "save_checkpoint",
    "save_weights",
    "write_json",
]

CHECKPOINT_FORMAT = "dpp-checkpoint/2"
#: What the trainer's checkpoints hold (``load_checkpoint`` checks that they are there).
CHECKPOINT_KEYS = (
    "config",
    "model",
    "optimizer",
    "schedulers",
    "method",
    "rng",
    "epoch",
    "step",
    "steps_per_epoch",
    "world_size",
    "history",
)
_TEMP_SUFFIX = ".tmp"
_WHAT_TO_DO = (
    "Delete it to start the run again from scratch, or put back an earlier copy of it and "
    "resume from that."
)


# ----------------------------------------------------------------------------- atomic files
def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so ``path`` is never half-written.

    The temporary file (``.<name>.<random>.tmp``) lives in the same directory (same file
    system) and is fsynced before ``os.replace``; on error it is removed and ``path`` keeps
    its previous content. A process killed mid-write leaves it behind:
    :func:`remove_stale_temp_files` clears it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``directory`` when its
    process was killed mid-write; returns them. Only one process may write a run directory,
    so call this before it starts writing."""
    removed = []
    for tmp in Path(directory).glob(f".*{_TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ----------------------------------------------------------------------------- digests
def _walk(obj: Any, where: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested structure of dicts, lists and tuples, with its path."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _walk(value, f"{where}/{key}" if where else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{where}[{i}]")


def _skeleton(obj: Any) -> Any:
    """The structure with every tensor replaced by its dtype and shape: the plain data."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", str(obj.dtype), tuple(obj.shape))
    if isinstance(obj, dict):
        return type(obj).__name__, [(repr(k), _skeleton(v)) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return type(obj).__name__, [_skeleton(v) for v in obj]
    return repr(obj)


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def _digests(state: dict[str, Any]) -> dict[str, str]:
    out = {f"tensor:{where}": _tensor_digest(t) for where, t in _walk(state)}
    out["skeleton"] = hashlib.sha256(repr(_skeleton(state)).encode()).hexdigest()
    return out


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` a checkpoint dict atomically, with its digests and :data:`CHECKPOINT_FORMAT`.

    ``state`` may hold tensors, numbers, strings, None and (nested) dicts, lists and tuples
    only, as :func:`capture_rng` returns.
    """
    payload = {"format": CHECKPOINT_FORMAT, **state}
    buffer = io.BytesIO()
    torch.save({**payload, "digests": _digests(payload)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: str | os.PathLike[str], *, required: tuple[str, ...] = CHECKPOINT_KEYS
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (on the CPU) and verify it.

    Raises:
        RunDirError: the file does not exist.
        CheckpointError: naming the file and what to do, when it is truncated or damaged
            (a digest differs), lacks a key of ``required``, or is not a dpp checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} could not be read ({first}): it is truncated, damaged or not "
            f"a dpp checkpoint (one written before format {CHECKPOINT_FORMAT} loads only "
            f"with the dpp that wrote it). {_WHAT_TO_DO}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a dpp checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r}). {_WHAT_TO_DO}"
        )
    missing = [key for key in (*required, "digests") if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}. {_WHAT_TO_DO}"
        )
    recorded = state.pop("digests")
    actual = _digests(state)
    damaged = [
        key
        for key in sorted(recorded.keys() | actual.keys())
        if recorded.get(key) != actual.get(key)
    ]
    if damaged:
        parts = [
            k.removeprefix("tensor:") if k.startswith("tensor:") else "its plain data"
            for k in damaged
        ]
        shown = ", ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
        raise CheckpointError(
            f"checkpoint {path} is damaged: {shown} no longer match the digests recorded when "
            f"it was written. {_WHAT_TO_DO}"
        )
    return state


# ----------------------------------------------------------------------------- weights
WEIGHTS_FORMAT = "dpp-finalized/1"


def save_weights(path: str | os.PathLike[str], state: dict[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically, with the SHA-256 of every tensor in its
    metadata (``model.safetensors`` of a run: loads with ``safetensors.torch.load_file``)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    digests = json.dumps({k: _tensor_digest(v) for k, v in tensors.items()}, sort_keys=True)
    metadata = {"format": WEIGHTS_FORMAT, "sha256": digests}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_weights` and verify every tensor's digest.

    Raises:
        RunDirError: the file does not exist.
        CheckpointError: naming the file, when it cannot be read or a tensor is damaged,
            missing or added.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"weights file {path} does not exist")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            recorded = json.loads((fh.metadata() or {})["sha256"])
    except Exception as err:  # safetensors' own errors, a missing or unparsable digest entry
        raise CheckpointError(
            f"weights file {path} could not be read or has no digests ({type(err).__name__}: "
            f"{err}): it is truncated, damaged or not written by dpp train. {_WHAT_TO_DO}"
        ) from None
    actual = {k: _tensor_digest(v) for k, v in state.items()}
    damaged = sorted(k for k in recorded.keys() | actual.keys() if recorded.get(k) != actual.get(k))
    if damaged:
        raise CheckpointError(
            f"weights file {path} is damaged: {', '.join(damaged[:3])} no longer match the "
            f"digests recorded when it was written. {_WHAT_TO_DO}"
        )
    return state


# ----------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """Every RNG state a training step can consume: torch (CPU and CUDA), numpy, random.

    Tensors and plain data only (numpy's key array becomes an int64 tensor).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (
            str(kind),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
