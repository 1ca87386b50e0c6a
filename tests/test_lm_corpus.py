"""Token corpora and mixed training windows (dpp.experiments.lm.corpus), offline and tiny."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from dpp.experiments.lm import corpus as corpus_mod
from dpp.experiments.lm.corpus import CorpusError, mixed_batch, prepare_tokens
from dpp.experiments.lm.model import train_batch


def plus_one(text: bytes) -> np.ndarray:
    """A toy tokenizer: byte b is token b + 1000 (ids above 255: stored as uint16)."""
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64) + 1000


PLUS_ONE = (plus_one, "plus-one", 0)
BYTES = (lambda text: np.frombuffer(text, dtype=np.uint8), "bytes", 0)


@pytest.fixture
def tree(tmp_path):
    """60 small '.py' files in three packages."""
    root = tmp_path / "src"
    g = torch.Generator().manual_seed(0)
    for i in range(60):
        path = root / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        words = torch.randint(0, 20, (200,), generator=g).tolist()
        path.write_text(" ".join(f"name{w}" for w in words) + "\n")
    return root


def test_token_corpus_is_split_by_file(tmp_path, tree):
    """Each file lands whole in the split split_of gives it, as its tokens then EOS."""
    corpus = prepare_tokens("cpython-stdlib", tmp_path / "data", PLUS_ONE, root=tree)
    assert isinstance(corpus, corpus_mod.TokenCorpus)
    records = corpus.manifest["records"]
    assert len(records) == 60 and {r["split"] for r in records} == {"train", "val"}
    assert all(corpus_mod.split_of(r["path"]) == r["split"] for r in records)
    assert corpus.train.dtype == np.uint16 and corpus.manifest["dtype"] == "<u2"
    for split, data in (("train", corpus.train), ("val", corpus.val)):
        files = [r for r in records if r["split"] == split]
        assert len(data) == sum(r["tokens"] for r in files) == corpus.manifest[f"{split}_tokens"]
        first = (tree / files[0]["path"]).read_bytes()
        assert data[: len(first) + 1].tolist() == [*plus_one(first).tolist(), 0]
    assert corpus.name == "cpython-stdlib-custom" and corpus.tokenizer_id == "plus-one"


def test_byte_tokens_equal_the_byte_corpus(tmp_path, tree):
    """Tokenized with the byte tokenizer, a corpus is the byte-level corpus, byte for byte."""
    tokens = prepare_tokens("cpython-stdlib", tmp_path / "data", BYTES, root=tree)
    raw = corpus_mod.prepare("cpython-stdlib", tmp_path / "bytes", root=tree)
    assert tokens.train.dtype == np.uint8
    assert np.array_equal(tokens.train, raw.train) and np.array_equal(tokens.val, raw.val)
    for split in ("train", "val"):
        assert tokens.manifest[f"{split}_text_sha256"] == raw.manifest[f"{split}_sha256"]
    assert tokens.manifest["file_list_sha256"] == raw.manifest["file_list_sha256"]
    assert (raw.tokenizer_id, raw.eos_id) == (tokens.tokenizer_id, tokens.eos_id) == ("bytes", 0)


def test_token_corpus_is_reused_on_the_second_call(tmp_path, tree):
    """A second prepare_tokens reads the prepared files instead of tokenizing again."""
    first = prepare_tokens("cpython-stdlib", tmp_path / "data", PLUS_ONE, root=tree)

    def refuse(text: bytes) -> np.ndarray:
        raise AssertionError("tokenized again")

    again = prepare_tokens("cpython-stdlib", tmp_path / "data", (refuse, "plus-one", 0), root=tree)
    assert np.array_equal(first.train, again.train) and first.manifest == again.manifest


def test_token_corpus_is_digest_checked(tmp_path, tree):
    """A flipped byte in a prepared train.bin is refused, naming the directory to delete."""
    corpus = prepare_tokens("cpython-stdlib", tmp_path / "data", PLUS_ONE, root=tree)
    directory = corpus_mod.token_corpus_dir(tmp_path / "data", "cpython-stdlib", "plus-one", tree)
    data = bytearray((directory / "train.bin").read_bytes())
    data[11] ^= 1
    (directory / "train.bin").write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=rf"train\.bin does not match the SHA-256.*{directory}"):
        prepare_tokens("cpython-stdlib", tmp_path / "data", PLUS_ONE, root=tree)
    assert len(corpus.train) == len(data) // 2


def test_token_corpora_are_keyed_by_tokenizer(tmp_path, tree):
    """Two tokenizers give two directories side by side; loading with the other is refused."""
    a = prepare_tokens("cpython-stdlib", tmp_path / "data", PLUS_ONE, root=tree)
    b = prepare_tokens("cpython-stdlib", tmp_path / "data", BYTES, root=tree)
    dir_a = corpus_mod.token_corpus_dir(tmp_path / "data", "cpython-stdlib", "plus-one", tree)
    dir_b = corpus_mod.token_corpus_dir(tmp_path / "data", "cpython-stdlib", "bytes", tree)
    assert dir_a != dir_b and (dir_a / "manifest.json").exists()
    assert (dir_b / "manifest.json").exists()
    assert a.tokenizer_id == "plus-one" and b.tokenizer_id == "bytes"
    with pytest.raises(CorpusError, match="tokenized by tokenizer plus-one, not by"):
        corpus_mod.load(dir_a, tokenizer_id="bytes")


def test_python_docs_corpus_names_its_package(tmp_path, monkeypatch):
    """python-docs is versioned by the Debian package; when missing it says how to install it."""
    changelog = tmp_path / "changelog.Debian.gz"
    with gzip.open(changelog, "wt") as fh:
        fh.write("python3.11 (3.11.2-6+deb12u8) bookworm; urgency=medium\n\n  * x\n")
    monkeypatch.setattr(corpus_mod, "PYTHON_DOCS_CHANGELOG", changelog)
    docs = tmp_path / "docs"
    (docs / "library").mkdir(parents=True)
    (docs / "library" / "os.rst.txt").write_text("The os module.\n")
    monkeypatch.setattr(corpus_mod, "PYTHON_DOCS_DIR", docs)
    name, base, files = corpus_mod.corpus_files("python-docs")
    assert name == "python-docs-3.11.2-6+deb12u8" and base == docs and len(files) == 1
    monkeypatch.setattr(corpus_mod, "PYTHON_DOCS_DIR", tmp_path / "absent")
    with pytest.raises(CorpusError, match=r"absent.*apt-get install python3\.11-doc"):
        corpus_mod.corpus_files("python-docs")


def test_mixed_batch_alternates_corpora(tmp_path):
    """Window i of step s comes from corpus (s * batch + i) % len(corpora)."""
    a = np.arange(1000, dtype=np.uint16) % 100  # tokens < 100
    b = (np.arange(3000, dtype=np.uint16) % 100) + 500  # tokens >= 500
    for step in range(3):
        ids = mixed_batch([a, b], step=step, seed=0, batch=5, seq=16)
        assert ids.shape == (5, 16) and ids.dtype == torch.int64
        from_b = (ids >= 500).all(1)
        expected = torch.tensor([(step * 5 + i) % 2 == 1 for i in range(5)])
        assert torch.equal(from_b, expected) and bool(((ids < 100) | (ids >= 500)).all())


def test_mixed_batch_is_a_pure_function_of_seed_and_step(tmp_path, tree):
    """The same (seed, step) gives the same windows, another step or seed gives others, and
    with one byte corpus the windows are exactly model.train_batch's."""
    raw = corpus_mod.prepare("cpython-stdlib", tmp_path / "bytes", root=tree)
    tokens = prepare_tokens("cpython-stdlib", tmp_path / "data", PLUS_ONE, root=tree)
    mix = [raw, tokens.train]
    a = mixed_batch(mix, step=3, seed=1, batch=4, seq=16)
    assert torch.equal(a, mixed_batch(mix, step=3, seed=1, batch=4, seq=16))
    assert not torch.equal(a, mixed_batch(mix, step=4, seed=1, batch=4, seq=16))
    assert not torch.equal(a, mixed_batch(mix, step=3, seed=2, batch=4, seq=16))
    for step in range(4):
        assert torch.equal(
            mixed_batch([raw], step=step, seed=7, batch=6, seq=32),
            train_batch(raw.train, step=step, seed=7, batch=6, seq=32),
        )


def test_mixed_batch_refuses_bad_mixes(tmp_path, tree):
    """A mix of two tokenizers, or a corpus shorter than a window, is refused."""
    raw = corpus_mod.prepare("cpython-stdlib", tmp_path / "bytes", root=tree)
    tokens = prepare_tokens("cpython-stdlib", tmp_path / "data", PLUS_ONE, root=tree)
    with pytest.raises(CorpusError, match="different tokenizers"):
        mixed_batch([raw, tokens], step=0, seed=0, batch=2, seq=8)
    with pytest.raises(CorpusError, match="not more than one window of 64"):
        mixed_batch([np.zeros(10, np.uint8)], step=0, seed=0, batch=2, seq=64)
