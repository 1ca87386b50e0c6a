"""Dense pretraining of the benchmark's byte-level Llama: resumable, with the one-shot gap.

``pretrain(config, run_dir)`` trains for ``steps`` optimizer steps (AdamW, linear warmup then
cosine decay to ``min_lr_ratio``), writes an atomic checkpoint every ``checkpoint_every``
steps, and at every ``gap_every`` steps (and at the end) logs the validation loss of the
dense model and of its one-shot 2:4 magnitude and Wanda prunings: how the gap that learned
masks must close grows as the model trains. Killed at any point, the same call resumes from
the last checkpoint and reaches the same weights (the data order is a function of the step).

Run directory: ``config.json``, ``corpus.json`` (name and digests of the text),
``checkpoint.pt``, ``log.jsonl``, ``dense.safetensors`` (the final weights).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import dpp

from ..checkpoint import atomic_write, remove_stale_temp_files
from ..errors import ConfigError, RunDirError
from .corpus import Corpus, prepare
from .model import ModelSpec, build_model, evaluate, train_batch, val_windows
from .oneshot import block_linears

__all__ = ["PretrainConfig", "load_dense", "lr_at", "pretrain"]


@dataclass
class PretrainConfig:
    """Settings of the dense pretraining run (serialised to ``config.json``)."""

    corpus: str = "cpython-stdlib"
    """Corpus name (:data:`~dpp.experiments.lm.corpus.CORPORA`)."""
    data_dir: str = "runs/lm/data"
    """Where the prepared corpus is kept (one subdirectory per corpus)."""
    spec: ModelSpec = field(default_factory=ModelSpec)
    """Shape of the model."""
    seed: int = 0
    """Initialisation and data order."""
    steps: int = 4900
    """Optimizer steps (20M tokens with the defaults: 22 per parameter)."""
    batch: int = 16
    """Windows per step."""
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    warmup: int = 100
    """Steps of linear warmup before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.1
    """AdamW weight decay of the matrices (not of norms and biases)."""
    eval_windows: int = 256
    """Validation windows of the reported loss."""
    gap_every: int = 700
    """Steps between measurements of the one-shot 2:4 gap."""
    checkpoint_every: int = 50
    """Steps between checkpoints."""
    calibration_batches: int = 8
    """Batches of training windows the one-shot methods calibrate on."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        data = dict(data)
        data["spec"] = ModelSpec(**data.get("spec", {}))
        return cls(**data)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.spec.seq


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def calibration_set(corpus: Corpus, cfg: PretrainConfig) -> list[torch.Tensor]:
    """Calibration batches for the one-shot methods: training windows of a seed of their own."""
    return [
        train_batch(
            corpus.train, step=i, seed=cfg.seed + 1_000_003, batch=cfg.batch, seq=cfg.spec.seq
        )
        for i in range(cfg.calibration_batches)
    ]


def oneshot_gaps(model, corpus: Corpus, cfg: PretrainConfig, windows) -> dict[str, float]:
    """Validation loss of the dense model and of its one-shot 2:4 magnitude / Wanda prunings."""
    out = {"dense": evaluate(model, windows)["val_loss"]}
    calib = calibration_set(corpus, cfg)
    for method in ("magnitude", "wanda"):
        pruned = copy.deepcopy(model)  # pruned in place: zeros where the mask prunes
        dpp.oneshot(
            pruned,
            method,
            k=2,
            block_size=4,
            calibration_data=calib if method == "wanda" else None,
            include=list(block_linears(pruned)),
        )
        out[method] = evaluate(pruned, windows)["val_loss"]
    return out


def pretrain(cfg: PretrainConfig, run_dir: str | os.PathLike, *, log_every: int = 10) -> Path:
    """Train (or resume) the dense model; returns the path of ``dense.safetensors``."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(run)
    config_path = run / "config.json"
    if config_path.exists():
        saved = PretrainConfig.from_dict(json.loads(config_path.read_text()))
        if saved != cfg:
            raise ConfigError(
                f"{config_path} holds other settings than this run's; resume with the same "
                f"settings or use a new run directory. Saved: {saved.to_dict()}"
            )
    else:
        config_path.write_text(json.dumps(cfg.to_dict(), indent=1))
    corpus = prepare(cfg.corpus, Path(cfg.data_dir) / cfg.corpus)
    (run / "corpus.json").write_text(
        json.dumps({k: v for k, v in corpus.manifest.items() if k != "records"}, indent=1)
    )
    windows = val_windows(corpus.val, seq=cfg.spec.seq, windows=cfg.eval_windows)
    model = build_model(cfg.spec, seed=cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    step = 0
    ckpt = run / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    log = run / "log.jsonl"
    model.train()
    started, tokens_since = time.perf_counter(), 0
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(
                step, lr=cfg.lr, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio
            )
        ids = train_batch(corpus.train, step=step, seed=cfg.seed, batch=cfg.batch, seq=cfg.spec.seq)
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_since += ids.numel()
        if step % log_every == 0:
            elapsed = time.perf_counter() - started
            _append(
                log,
                {
                    "event": "train",
                    "step": step,
                    "loss": float(loss),
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_s": tokens_since / max(elapsed, 1e-9),
                },
            )
            started, tokens_since = time.perf_counter(), 0
        if step % cfg.gap_every == 0 or step == cfg.steps:
            gaps = oneshot_gaps(model, corpus, cfg, windows)
            model.train()
            _append(
                log, {"event": "gap", "step": step, "tokens": step * cfg.tokens_per_step, **gaps}
            )
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            atomic_write(ckpt, lambda tmp, state=state: torch.save(state, tmp))
    final = run / "dense.safetensors"
    if not final.exists():
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        meta = {"step": str(step), "corpus": corpus.name}
        atomic_write(final, lambda tmp: save_file(weights, str(tmp), metadata=meta))
    return final


def load_dense(run_dir: str | os.PathLike) -> tuple[torch.nn.Module, PretrainConfig]:
    """The finished dense model of a pretraining run and its settings."""
    run = Path(run_dir)
    final = run / "dense.safetensors"
    if not final.exists():
        raise RunDirError(
            f"{final} does not exist: the pretraining in {run} has not finished; resume it "
            f"with `dpp lm pretrain --run-dir {run}`"
        )
    cfg = PretrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    model = build_model(cfg.spec, seed=cfg.seed)
    model.load_state_dict(load_file(str(final)), strict=True)
    return model, cfg
