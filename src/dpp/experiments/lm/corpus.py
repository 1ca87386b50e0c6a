"""Byte-level text corpora that install offline, pinned and digest-checked.

``cpython-stdlib``: the ``*.py`` sources of the running Python's standard library
(``sysconfig.get_paths()["stdlib"]``, ``site-packages`` left out), about 31 MB for CPython
3.11.7. Its version is part of the corpus name, and the prepared bytes are recorded with
their SHA-256, so a run states exactly which text it saw. ``python-docs``: the reStructuredText
sources of the Python documentation from the Debian package ``python3.11-doc``
(``/usr/share/doc/python3.11/html/_sources/**/*.txt``, English prose, about 11 MB), named by
the package version. ``fortunes``: the Debian package ``fortunes``
(``/usr/share/games/fortunes``, English, about 2.5 MB).

Train and validation are split **by file** (a file's relative path hashes into the
validation split with probability 1/20), so no validation text is a near copy of a training
window. Files are concatenated in sorted order, each followed by a NUL byte.

:func:`prepare` writes ``train.bin``, ``val.bin`` and ``manifest.json`` (file list, sizes,
digests) into a directory once; :func:`load` reads them back and checks the digests.

**Token corpora.** :func:`prepare_tokens` tokenizes the same files with a model's tokenizer
(:class:`~dpp.experiments.lm.source.LoadedModel`): each file's tokens, then the EOS token.
Its directory under the data directory is keyed by the corpus version and the tokenizer
(:func:`token_corpus_dir`), so corpora of several tokenizers live side by side. The manifest
records the text digests (the same ``train``/``val`` byte streams as the byte-level corpus),
the tokenizer's identity and the token counts and digests; :func:`load` checks them. A
byte-level corpus is a token corpus whose tokens are bytes: both are :class:`Corpus`
(``name``, ``train``, ``val``, ``manifest``, ``tokenizer_id``, ``eos_id``).

Training windows of a fixed mix of corpora: :func:`mixed_batch` (a pure function of
``(seed, step)``; with one corpus, exactly :func:`~dpp.experiments.lm.model.train_batch`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import re
import sysconfig
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes
from ..errors import UserError

__all__ = [
    "CORPORA",
    "TOKEN_CORPORA",
    "Corpus",
    "CorpusError",
    "TokenCorpus",
    "Tokenizes",
    "corpus_files",
    "load",
    "mixed_batch",
    "prepare",
    "prepare_tokens",
    "split_of",
    "token_corpus_dir",
]

VAL_EVERY = 20
CORPORA = ("cpython-stdlib", "fortunes", "python-docs")
TOKEN_CORPORA = ("cpython-stdlib", "python-docs")
"""The two corpora of the real-model benchmark: code and English prose."""
FORTUNES_DIR = Path("/usr/share/games/fortunes")
PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
PYTHON_DOCS_CHANGELOG = Path("/usr/share/doc/python3.11-doc/changelog.Debian.gz")
TOKEN_FORMAT = "dpp-token-corpus-1"
TEXT_DECODING = "utf-8, undecodable bytes replaced by U+FFFD"


class CorpusError(UserError, ValueError):
    """A corpus that cannot be found, or prepared files that fail their checks."""


@dataclass
class Corpus:
    """Prepared bytes of a corpus.

    Attributes:
        name: corpus name with its version (``"cpython-stdlib-3.11.7"``).
        train: ``uint8`` array of the training bytes.
        val: ``uint8`` array of the validation bytes.
        manifest: what was read (files, sizes, SHA-256 of each split).
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    manifest: dict

    @property
    def tokenizer_id(self) -> str:
        """Identity of the tokenizer (``"bytes"`` for a byte-level corpus)."""
        return self.manifest.get("tokenizer_id", "bytes")

    @property
    def eos_id(self) -> int | None:
        """The token that ends every file (0, the NUL byte, for a byte-level corpus)."""
        return self.manifest.get("eos_id", 0)


@dataclass
class TokenCorpus(Corpus):
    """Prepared tokens of a corpus (:func:`prepare_tokens`).

    Attributes:
        name: corpus name with its version (``"python-docs-3.11.2-6+deb12u8"``).
        train: token ids of the training files (``uint8``, ``uint16`` or ``uint32``).
        val: token ids of the validation files.
        manifest: files, text and token digests, tokenizer identity, token counts.
    """


def split_of(relative_path: str) -> str:
    """``"val"`` for about one file in :data:`VAL_EVERY`, chosen by a hash of its path."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return "val" if digest[0] % VAL_EVERY == 0 else "train"


def corpus_files(name: str, root: str | os.PathLike | None = None) -> tuple[str, Path, list[Path]]:
    """``(versioned name, root, sorted files)`` of a corpus.

    Args:
        name: ``"cpython-stdlib"`` or ``"fortunes"``.
        root: another directory to read instead of the default one (its files are taken the
            same way; the name then says ``custom``).
    """
    if name == "cpython-stdlib":
        base = Path(root or sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in base.rglob("*.py") if "site-packages" not in p.parts)
        version = platform.python_version() if root is None else "custom"
        versioned = f"cpython-stdlib-{version}"
    elif name == "fortunes":
        base = Path(root or FORTUNES_DIR)
        files = sorted(
            p for p in base.rglob("*") if p.is_file() and not p.suffix and not p.is_symlink()
        )
        versioned = "fortunes" if root is None else "fortunes-custom"
    elif name == "python-docs":
        base = Path(root or PYTHON_DOCS_DIR)
        files = sorted(p for p in base.rglob("*.txt") if p.is_file())
        versioned = "python-docs-custom" if root is not None else _python_docs_version()
    else:
        raise CorpusError(f"unknown corpus {name!r}; valid: {', '.join(CORPORA)}")
    if not files:
        hint = {
            "fortunes": " (apt-get install fortunes)",
            "python-docs": " (apt-get install python3.11-doc, or pass its root)",
        }.get(name, "")
        raise CorpusError(f"corpus {name!r}: no files under {base}{hint}")
    return versioned, base, files


def _python_docs_version() -> str:
    """``python-docs-<Debian version of python3.11-doc>`` (``python-docs`` when unreadable:
    the manifest's digests still pin the text)."""
    try:
        with gzip.open(PYTHON_DOCS_CHANGELOG, "rt", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return "python-docs"
    match = re.match(r"\S+ \(([^)\s]+)\)", first)
    return f"python-docs-{match.group(1)}" if match else "python-docs"


def _sha256(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def build(files: Iterable[Path], base: Path) -> tuple[bytes, bytes, list[dict]]:
    """Concatenate ``files`` into (train bytes, val bytes, per-file records), split by file."""
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    records = []
    for path in files:
        rel = path.relative_to(base).as_posix()
        data = path.read_bytes()
        split = split_of(rel)
        parts[split].append(data + b"\0")
        records.append({"path": rel, "bytes": len(data), "split": split})
    return b"".join(parts["train"]), b"".join(parts["val"]), records


def prepare(name: str, out_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> Corpus:
    """Prepare a corpus into ``out_dir`` (reused when already there and intact)."""
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        return load(out)
    versioned, base, files = corpus_files(name, root)
    train, val, records = build(files, base)
    if not val or not train:
        raise CorpusError(f"corpus {versioned}: {len(files)} file(s) give an empty split")
    manifest = {
        "name": versioned,
        "root": str(base),
        "files": len(records),
        "file_list_sha256": _sha256(json.dumps(records, sort_keys=True).encode()),
        "train_bytes": len(train),
        "val_bytes": len(val),
        "train_sha256": _sha256(train),
        "val_sha256": _sha256(val),
        "records": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "train.bin", train)
    atomic_write_bytes(out / "val.bin", val)
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    return load(out)


def load(directory: str | os.PathLike, *, tokenizer_id: str | None = None) -> Corpus:
    """Read a prepared corpus (bytes or tokens) and check both splits against the manifest.

    Args:
        directory: a directory written by :func:`prepare` or :func:`prepare_tokens`.
        tokenizer_id: when given, the corpus must have been tokenized by this tokenizer.

    Returns:
        a :class:`TokenCorpus` for a token corpus, else a byte-level :class:`Corpus`.
    """
    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorpusError(
            f"{d}/manifest.json: unreadable ({exc}); delete {d} to prepare again"
        ) from exc
    is_tokens = manifest.get("format") == TOKEN_FORMAT
    found = manifest.get("tokenizer_id", "bytes")
    if tokenizer_id is not None and found != tokenizer_id:
        raise CorpusError(
            f"{d} was tokenized by tokenizer {found}, not by this model's {tokenizer_id}; "
            f"prepare the corpus for this model with prepare_tokens (its own directory, "
            f"token_corpus_dir) or delete {d}"
        )
    dtype = np.dtype(manifest.get("dtype", "|u1"))
    arrays = {}
    for split in ("train", "val"):
        path = d / f"{split}.bin"
        if not path.exists():
            raise CorpusError(f"{path} is missing; delete {d} to prepare the corpus again")
        data = np.fromfile(path, dtype=dtype)
        expected_len = manifest.get(f"{split}_tokens") if is_tokens else None
        if _sha256(data) != manifest[f"{split}_sha256"] or (
            expected_len is not None and len(data) != expected_len
        ):
            raise CorpusError(
                f"{path} does not match the SHA-256 in {d}/manifest.json: the file is damaged "
                f"or was changed; delete {d} to prepare the corpus again"
            )
        arrays[split] = data
    cls = TokenCorpus if is_tokens else Corpus
    return cls(manifest["name"], arrays["train"], arrays["val"], manifest)


# ----------------------------------------------------------------------------- token corpora
Encoder = Callable[[bytes], np.ndarray]


class Tokenizes(Protocol):
    """What :func:`prepare_tokens` needs of a model: a
    :class:`~dpp.experiments.lm.source.LoadedModel` has it (not imported here, so that this
    module does not depend on the model loader)."""

    tokenizer_id: str
    eos_id: int | None
    vocab_size: int

    def encode_batch(self, texts: Sequence[bytes]) -> list[np.ndarray]: ...


def _tokenizer_of(
    model: Tokenizes | tuple[Encoder, str, int | None],
) -> tuple[Callable[[list[bytes]], list[np.ndarray]], str, int | None, int | None]:
    """``(encode_batch, tokenizer_id, eos_id, vocab_size or None)`` of a model or a tuple."""
    if isinstance(model, tuple):
        encode, tokenizer_id, eos_id = model

        def encode_batch(texts: list[bytes]) -> list[np.ndarray]:
            return [np.asarray(encode(t)) for t in texts]

        return encode_batch, tokenizer_id, eos_id, None
    return model.encode_batch, model.tokenizer_id, model.eos_id, model.vocab_size


def _token_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 256:
        return np.dtype("|u1")
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def _tokenizer_key(tokenizer_id: str) -> str:
    if tokenizer_id == "bytes":
        return "bytes"
    return "tok-" + hashlib.sha256(tokenizer_id.encode()).hexdigest()[:12]


def token_corpus_dir(
    out_dir: str | os.PathLike,
    name: str,
    tokenizer_id: str,
    root: str | os.PathLike | None = None,
) -> Path:
    """Where :func:`prepare_tokens` keeps ``name`` tokenized by ``tokenizer_id``:
    ``<out_dir>/<versioned name>.<tokenizer key>`` (e.g.
    ``runs/lm/data/cpython-stdlib-3.11.7.tok-1a2b3c4d5e6f``)."""
    versioned, _, _ = corpus_files(name, root)
    return Path(out_dir) / f"{versioned}.{_tokenizer_key(tokenizer_id)}"


def prepare_tokens(
    name: str,
    out_dir: str | os.PathLike,
    model: Tokenizes | tuple[Encoder, str, int | None],
    root: str | os.PathLike | None = None,
    *,
    batch_files: int = 32,
    progress: bool = True,
) -> TokenCorpus:
    """Tokenize a corpus with a model's tokenizer, once; reuse it when there and intact.

    Every file (sorted, split by file with :func:`split_of`) becomes its tokens followed by
    ``eos_id``. Written atomically to :func:`token_corpus_dir` ``(out_dir, name, tokenizer)``:
    ``train.bin`` and ``val.bin`` (``uint8`` for a vocabulary of at most 256, ``uint16`` up to
    65536, else ``uint32``, little-endian), then ``manifest.json`` (its presence marks a
    complete corpus). The result is deterministic, so two processes preparing the same corpus
    at once write the same files.

    Args:
        name: a corpus of :data:`CORPORA` (the benchmark uses :data:`TOKEN_CORPORA`).
        out_dir: the data directory (e.g. ``runs/lm/data``); one subdirectory per corpus
            version and tokenizer.
        model: a :class:`~dpp.experiments.lm.source.LoadedModel`, or
            ``(encode, tokenizer_id, eos_id)`` with ``encode(bytes) -> token ids``.
        root: another directory to read instead of the corpus's default one.
        batch_files: files tokenized together (the fast tokenizer parallelises a batch).
        progress: show a progress bar (bytes tokenized).

    Raises:
        CorpusError: the corpus is missing, gives an empty split, or the prepared files
            fail their checks (the message says which directory to delete).
    """
    encode_batch, tokenizer_id, eos_id, vocab_size = _tokenizer_of(model)
    versioned, base, files = corpus_files(name, root)
    out = Path(out_dir) / f"{versioned}.{_tokenizer_key(tokenizer_id)}"
    if (out / "manifest.json").exists():
        corpus = load(out, tokenizer_id=tokenizer_id)
        if corpus.manifest.get("name") != versioned or corpus.manifest.get("root") != str(base):
            raise CorpusError(
                f"{out} holds {corpus.manifest.get('name')} from {corpus.manifest.get('root')}, "
                f"not {versioned} from {base}; delete {out} to prepare it again"
            )
        assert isinstance(corpus, TokenCorpus)
        return corpus
    from tqdm.auto import tqdm

    started = time.perf_counter()
    total = sum(p.stat().st_size for p in files)
    texts: dict[str, list[bytes]] = {"train": [], "val": []}
    tokens: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    records: list[dict[str, Any]] = []
    eos = np.asarray([] if eos_id is None else [eos_id], dtype=np.int64)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"tokenizing {versioned}", disable=not progress
    ) as bar:
        for i in range(0, len(files), batch_files):
            chunk = files[i : i + batch_files]
            data = [p.read_bytes() for p in chunk]
            for path, raw, ids in zip(chunk, data, encode_batch(data), strict=True):
                rel = path.relative_to(base).as_posix()
                split = split_of(rel)
                texts[split].append(raw + b"\0")
                tokens[split].append(np.concatenate([np.asarray(ids, dtype=np.int64), eos]))
                records.append(
                    {"path": rel, "bytes": len(raw), "tokens": len(ids) + len(eos), "split": split}
                )
            bar.update(sum(len(raw) for raw in data))
    arrays = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in tokens.items()}
    if not len(arrays["train"]) or not len(arrays["val"]):
        raise CorpusError(f"corpus {versioned}: {len(files)} file(s) give an empty split")
    top = int(max(arrays["train"].max(), arrays["val"].max()))
    if int(min(arrays["train"].min(), arrays["val"].min())) < 0:
        raise CorpusError(f"corpus {versioned}: the tokenizer gave a negative token id")
    if vocab_size is not None and top >= vocab_size:
        raise CorpusError(
            f"corpus {versioned}: token id {top} is outside the model's {vocab_size} embedding "
            f"rows; the tokenizer does not belong to the model"
        )
    dtype = _token_dtype(vocab_size if vocab_size is not None else top + 1)
    stored = {k: v.astype(dtype) for k, v in arrays.items()}
    train_text, val_text = b"".join(texts["train"]), b"".join(texts["val"])
    manifest = {
        "format": TOKEN_FORMAT,
        "name": versioned,
        "root": str(base),
        "files": len(records),
        "train_files": sum(r["split"] == "train" for r in records),
        "val_files": sum(r["split"] == "val" for r in records),
        "file_list_sha256": _sha256(
            json.dumps(
                [{k: r[k] for k in ("path", "bytes", "split")} for r in records], sort_keys=True
            ).encode()
        ),
        "text_decoding": TEXT_DECODING,
        "train_bytes": len(train_text),
        "val_bytes": len(val_text),
        "train_text_sha256": _sha256(train_text),
        "val_text_sha256": _sha256(val_text),
        "tokenizer_id": tokenizer_id,
        "eos_id": eos_id,
        "vocab_size": vocab_size,
        "dtype": dtype.str,
        "train_tokens": len(stored["train"]),
        "val_tokens": len(stored["val"]),
        "train_sha256": _sha256(stored["train"]),
        "val_sha256": _sha256(stored["val"]),
        "seconds": round(time.perf_counter() - started, 2),
        "records": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "train.bin", stored["train"].tobytes())
    atomic_write_bytes(out / "val.bin", stored["val"].tobytes())
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    corpus = load(out, tokenizer_id=tokenizer_id)
    assert isinstance(corpus, TokenCorpus)
    return corpus


def mixed_batch(
    corpora: Sequence[Corpus | np.ndarray], *, step: int, seed: int, batch: int, seq: int
) -> torch.Tensor:
    """``[batch, seq]`` training windows of a fixed alternating mix of corpora.

    A pure function of ``(seed, step)``: window ``i`` comes from corpus
    ``(step * batch + i) % len(corpora)``, at a random offset in that corpus's train split.
    With one corpus it equals :func:`~dpp.experiments.lm.model.train_batch` of its train split.
    """
    if not corpora:
        raise CorpusError("mixed_batch needs at least one corpus")
    ids = {c.tokenizer_id for c in corpora if isinstance(c, Corpus)}
    if len(ids) > 1:
        raise CorpusError(
            f"the corpora of a mix were tokenized by different tokenizers ({sorted(ids)}); "
            f"prepare all of them with the model's tokenizer"
        )
    trains = [c.train if isinstance(c, Corpus) else c for c in corpora]
    for c, data in zip(corpora, trains, strict=True):
        if len(data) <= seq:
            name = c.name if isinstance(c, Corpus) else "an array"
            raise CorpusError(
                f"the train split of {name} has {len(data)} tokens, not more than one window "
                f"of {seq}; use a shorter sequence or a larger corpus"
            )
    which = (step * batch + np.arange(batch)) % len(trains)
    highs = np.asarray([len(t) - seq for t in trains], dtype=np.int64)[which]
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, highs)
    rows = [trains[w][s : s + seq].astype(np.int64) for w, s in zip(which, starts, strict=True)]
    return torch.from_numpy(np.stack(rows))
