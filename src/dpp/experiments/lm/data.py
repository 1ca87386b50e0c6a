"""The text a run of the LM benchmark sees: training windows, validation and tuning windows,
calibration batches, for the byte-level model and for a tokenized Hugging Face model alike.

Training windows are a fixed alternating mix of the corpora's training splits, a pure function
of ``(seed, step)`` (:func:`~dpp.experiments.lm.corpus.mixed_batch`): every method, and a
resumed run, sees the same windows in the same order. Validation windows come from each
corpus's validation split (split by file) and are reported per corpus; the tuning windows are
the next ones of the same split, so that settings are chosen on text the reported numbers do
not use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .corpus import mixed_batch, prepare, prepare_tokens
from .model import val_windows
from .pretrain import PretrainConfig
from .source import LoadedModel

__all__ = ["DEFAULT_DATA_DIR", "LMData", "byte_level_config", "corpus_spec", "load_data"]

DEFAULT_DATA_DIR = "runs/lm/data"
DEFAULT_SEQ = 512
DEFAULT_EVAL_WINDOWS = 32
DEFAULT_CALIBRATION_BATCHES = 16
CALIBRATION_SEED = 1_000_003
CALIBRATION_BATCH = 4
"""Windows per calibration batch (a fixed number: a run's calibration text does not depend
on its training batch)."""


@dataclass
class LMData:
    """Everything a run reads of its corpora.

    Attributes:
        seq: tokens per window.
        corpora: the prepared corpora, in the order of the mix.
        val: ``{corpus name: [windows, seq]}`` reported validation windows.
        tune: ``{corpus: [windows, seq]}`` tuning windows (after the reported ones).
        calibration: ``[batch, seq]`` token batches for one-shot methods and priors.
        manifests: ``{corpus: name and digests}`` of what was read.
        root: the data directory the corpora were prepared in.
    """

    seq: int
    corpora: list[Any]
    val: dict[str, torch.Tensor]
    tune: dict[str, torch.Tensor]
    calibration: list[torch.Tensor]
    manifests: dict[str, dict[str, Any]]
    root: Path

    def train_batch(self, *, step: int, seed: int, batch: int) -> torch.Tensor:
        """``[batch, seq]`` training windows of a step (a pure function of seed and step)."""
        return mixed_batch(self.corpora, step=step, seed=seed, batch=batch, seq=self.seq)


def byte_level_config(model_path: str | Path) -> PretrainConfig | None:
    """The pretraining config of a byte-level ``dpp lm pretrain`` run directory, else ``None``."""
    path = Path(model_path)
    if not (path / "dense.safetensors").is_file() or not (path / "config.json").is_file():
        return None
    return PretrainConfig.from_dict(json.loads((path / "config.json").read_text()))


def corpus_spec(entry: str) -> tuple[str, Path | None]:
    """``"python-docs"`` -> ``("python-docs", None)`` (its default files);
    ``"python-docs=/my/texts"`` -> the same kind of corpus read from another directory."""
    name, sep, where = entry.partition("=")
    if sep and not where:
        raise ConfigError(f"corpus {entry!r}: give a directory after '=' (name=DIR)")
    return name, (Path(where).expanduser() if sep else None)


def _check_same_corpus(manifest: dict[str, Any], recorded: Path) -> None:
    """The byte-level model's text is the text it was pretrained on."""
    if not recorded.exists():
        return
    want = json.loads(recorded.read_text())
    for key in ("name", "train_sha256", "val_sha256"):
        if want.get(key) != manifest.get(key):
            raise ConfigError(
                f"the corpus here ({manifest.get('name')}, {key} {manifest.get(key)}) is not "
                f"the one {recorded.parent} was trained on ({want.get('name')}, "
                f"{want.get(key)}): use the same Python version's standard library, or "
                "pretrain again"
            )


def _short_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != "records"}


def load_data(
    loaded: LoadedModel,
    corpora: tuple[str, ...],
    *,
    model_path: str | Path,
    batch: int,
    seq: int = 0,
    eval_windows: int = 0,
    calibration_batches: int = 0,
    data_dir: str | Path = "",
) -> LMData:
    """Prepare (or reuse) ``corpora`` for ``loaded``'s tokenizer and cut the windows.

    Zero / empty arguments take the defaults: the byte-level model's from its pretraining
    config (window, validation and calibration sizes, data directory), otherwise windows of
    512 tokens, 32 validation windows per corpus, 16 calibration batches of 4 windows and
    ``runs/lm/data``.
    """
    pcfg = byte_level_config(model_path)
    names = tuple(corpora)
    specs = [corpus_spec(entry) for entry in names]
    keys = [name for name, _ in specs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"corpora {list(names)}: each corpus may appear once")
    if pcfg is not None:
        seq = seq or pcfg.spec.seq
        windows = eval_windows or pcfg.eval_windows
        n_calib = calibration_batches or pcfg.calibration_batches
        calib_batch, calib_seed = pcfg.batch, pcfg.seed + CALIBRATION_SEED
        root = Path(data_dir or pcfg.data_dir)
        prepared = [
            prepare(name, root / (name if where is None else f"{name}-custom"), root=where)
            for name, where in specs
        ]
        if names == (pcfg.corpus,):
            _check_same_corpus(prepared[0].manifest, Path(model_path) / "corpus.json")
    else:
        seq = seq or DEFAULT_SEQ
        windows = eval_windows or DEFAULT_EVAL_WINDOWS
        n_calib = calibration_batches or DEFAULT_CALIBRATION_BATCHES
        calib_batch, calib_seed = CALIBRATION_BATCH, CALIBRATION_SEED
        root = Path(data_dir or DEFAULT_DATA_DIR)
        prepared = [prepare_tokens(name, root, loaded, root=where) for name, where in specs]
    val = {}
    tune = {}
    for name, corpus in zip(keys, prepared, strict=True):
        val[name] = val_windows(corpus.val, seq=seq, windows=windows)
        tune[name] = val_windows(corpus.val, seq=seq, windows=windows, offset=len(val[name]))
    calibration = [
        mixed_batch(prepared, step=i, seed=calib_seed, batch=calib_batch, seq=seq)
        for i in range(n_calib)
    ]
    manifests = {name: _short_manifest(c.manifest) for name, c in zip(keys, prepared, strict=True)}
    return LMData(seq, prepared, val, tune, calibration, manifests, root)
