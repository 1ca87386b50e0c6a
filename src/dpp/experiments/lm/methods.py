"""One pruning method on the pretrained byte-level Llama, for a token budget.

Methods (``k:m`` on every decoder Linear; embeddings and head dense):

| method | mask | weights |
|---|---|---|
| ``dense`` | none | trained (dense continued: the fair reference) |
| ``magnitude`` / ``wanda`` / ``sparsegpt`` | one-shot | as pruned (SparseGPT: OBS-updated) |
| ``<one-shot>+ft`` | one-shot, fixed | trained under the mask |
| ``dpp-mask`` | DPP from ``prior``, learned | frozen (mask-only, the MaskLLM regime) |
| ``dpp-joint`` | DPP from ``prior``, learned | trained jointly |

Every method that trains sees the same windows in the same order (``seed`` picks the order
and DPP's noise), with AdamW and the same schedule family (linear warmup over 5% of the
steps, cosine decay to 10%), at its own learning rate.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

import dpp
from dpp.metrics import mask_flips

from ..checkpoint import write_json
from ..errors import ConfigError
from .corpus import prepare
from .model import evaluate, train_batch, val_windows
from .oneshot import ONESHOT_METHODS, block_linears, oneshot_masks
from .pretrain import calibration_set, load_dense, lr_at

__all__ = ["METHODS", "MaskRunConfig", "run_method"]

_SHORT = {
    "logit_lr": "llr",
    "noise_scale": "noise",
    "temperature": "temp",
    "prior_strength": "strength",
    "entropy_weight": "ent",
    "weights_from": "from",
    "logit_dtype": "ldtype",
    "optimizer": "opt",
}
"""Short names of the settings in run directory names."""

CURVE_EVERY = 25
"""Steps between two points of a run's training curve (loss, and for DPP mask flips)."""

METHODS = (
    "dense",
    *ONESHOT_METHODS,
    *(f"{m}+ft" for m in ONESHOT_METHODS),
    "dpp-mask",
    "dpp-joint",
)
DECODER = ["model.layers.*"]


@dataclass
class MaskRunConfig:
    """One run of the mask phase (serialised into its ``result.json``)."""

    dense_dir: str
    method: str
    k: int = 2
    m: int = 4
    steps: int = 500
    """Optimizer steps of the mask phase (0 tokens for the one-shot methods)."""
    batch: int = 16
    """Windows per step."""
    seed: int = 0
    """Data order (the same windows in the same order for every method) and DPP's noise."""
    lr: float = 3e-4
    """Peak learning rate of the weights."""
    prior: str = "wanda"
    """DPP's logit initialisation: normal, magnitude, wanda or sparsegpt."""
    logit_lr: float = 5e-2
    """Peak learning rate of DPP's logits."""
    noise_scale: float = 0.3
    """DPP's Gumbel noise scale at the start; cosine-annealed to 0 over the steps."""
    temperature: float = 1.0
    """Temperature of the relaxed backward."""
    prior_strength: float = 3.0
    """Scale of the z-scored prior in the initial logits (``logit_init_std``)."""
    entropy_weight: float = 0.0
    """Entropy penalty of the logits."""
    weights_from: str = "dense"
    """DPP's starting weights: ``dense``, or ``sparsegpt`` (prior ``sparsegpt`` only): the
    weights SparseGPT keeps take its OBS-updated values and the ones it prunes keep their
    dense values, so that the starting deterministic mask gives the one-shot SparseGPT
    model exactly."""
    logit_dtype: str = "float32"
    """DPP's logit storage dtype (``DPPConfig.logit_dtype``): float32, bfloat16 or float16."""
    optimizer: str = "adamw"
    """``adamw`` (AdamW over ``pruner.param_groups``) or ``pruner`` (``pruner.optimizer()``,
    the library's recommended optimizer with compact logit state)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if not 1 <= self.k <= self.m:
            raise ConfigError(f"pattern {self.k}:{self.m} needs 1 <= k <= m")
        if self.method.startswith("dpp") and self.prior not in ("normal", *ONESHOT_METHODS):
            raise ConfigError(f"prior must be normal, magnitude, wanda or sparsegpt: {self.prior}")
        if self.optimizer not in ("adamw", "pruner"):
            raise ConfigError(f"optimizer must be adamw or pruner: {self.optimizer}")
        if self.weights_from not in ("dense", "sparsegpt"):
            raise ConfigError(f"weights_from must be dense or sparsegpt: {self.weights_from}")
        if self.weights_from == "sparsegpt" and (
            not self.method.startswith("dpp") or self.prior != "sparsegpt"
        ):
            raise ConfigError(
                "weights_from='sparsegpt' starts DPP from SparseGPT's updated weights and its "
                "mask: it needs a dpp method with prior='sparsegpt'"
            )

    @property
    def trains(self) -> bool:
        return self.method in ("dense", "dpp-mask", "dpp-joint") or self.method.endswith("+ft")

    def label(self) -> str:
        name = self.method if not self.method.startswith("dpp") else f"{self.method}-{self.prior}"
        return f"{self.k}of{self.m}-{name}-s{self.seed}"

    def settings(self) -> dict[str, Any]:
        """The fields that change this method's result (pattern and seed aside)."""
        keys: list[str] = []
        if self.trains:
            keys += ["steps", "batch"]
        if self.method == "dense" or self.method.endswith("+ft") or self.method == "dpp-joint":
            keys.append("lr")
        if self.method.startswith("dpp"):
            keys += [
                "prior",
                "logit_lr",
                "noise_scale",
                "temperature",
                "prior_strength",
                "entropy_weight",
            ]
            if self.weights_from != "dense":
                keys.append("weights_from")
            if self.logit_dtype != "float32":
                keys.append("logit_dtype")
        if self.optimizer != "adamw" and (self.method.startswith("dpp") or self.trains):
            keys.append("optimizer")
        return {key: getattr(self, key) for key in keys}

    def identity(self) -> set[str]:
        """The fields a finished run must match to be reused: its settings, its method, its
        pattern (not for dense continued) and its seed (not for one-shot methods)."""
        keys = {"method", *self.settings()}
        if self.method != "dense":
            keys |= {"k", "m"}
        if self.trains:
            keys.add("seed")
        return keys

    def run_name(self) -> str:
        """The run's directory below a results directory, a function of the whole config.

        ``<pattern>/<method>_<setting>-<value>..._s<seed>``; dense continued has no pattern
        (``dense-continued/...``) and a one-shot method no seed, so every grid that asks for
        the same run finds the same directory.
        """
        settings = self.settings()
        parts = [self.method]
        if self.trains:
            parts.append(f"{settings.pop('steps')}x{settings.pop('batch')}")
        for key, value in settings.items():
            text = f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{_SHORT.get(key, key)}-{text}")
        name = "_".join(parts) + (f"_s{self.seed}" if self.trains else "")
        folder = "dense-continued" if self.method == "dense" else f"{self.k}of{self.m}"
        return f"{folder}/{name}"


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MaskRunConfig)}
"""A field missing from an older result.json had its default value then."""


def _fixed_pruner(model: torch.nn.Module, masks: dict[str, torch.Tensor], k: int, m: int):
    def source(name: str, module: torch.nn.Module, layout: dpp.GroupLayout) -> dpp.FixedMask:
        return dpp.FixedMask(layout, layout.candidate_scores(masks[name].float()) > 0)

    return dpp.prune(
        model, granularity="block", block_size=m, k=k, include=DECODER, mask_source=source
    )


def _sparsegpt_start(model: torch.nn.Module, cfg: MaskRunConfig, calibration: list):
    """Give ``model`` SparseGPT's updated weights where it keeps them (dense values where it
    prunes) and return a mask source whose logits start at its mask, z-scored per group and
    scaled by the prior strength."""
    updated = copy.deepcopy(model)
    masks = oneshot_masks(updated, "sparsegpt", k=cfg.k, m=cfg.m, calibration=calibration)
    new = block_linears(updated)
    with torch.no_grad():
        for name, layer in block_linears(model).items():
            layer.weight.copy_(torch.where(masks[name], new[name].weight, layer.weight))

    def source(name: str, module: torch.nn.Module, layout: dpp.GroupLayout) -> dpp.DPPMask:
        scores = layout.candidate_scores(masks[name].float())
        z = (scores - scores.mean(-1, keepdim=True)) / scores.std(-1, keepdim=True).clamp(min=1e-12)
        return dpp.DPPMask(layout, init_logits=z * cfg.prior_strength)

    return source


def _check_same_corpus(manifest: dict[str, Any], recorded: Path) -> None:
    """The text of the mask phase is the text the dense model was trained on."""
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


def _file_sha256(path: Path) -> str | None:
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_method(cfg: MaskRunConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run one method (skipped when its ``result.json`` exists) and return its result.

    The run holds ``<out_dir>/.lock`` (an ``flock``, dropped when the process exits however
    it exits): a second process asking for the same run waits for it and reads its result.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / ".lock"):
        return _run_locked(cfg, out)


def is_claimed(out_dir: str | os.PathLike) -> bool:
    """Whether another process is running this run now."""
    lock_path = Path(out_dir) / ".lock"
    if not lock_path.exists():
        return False
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _run_locked(cfg: MaskRunConfig, out: Path) -> dict[str, Any]:
    result_path = out / "result.json"
    dense_sha256 = _file_sha256(Path(cfg.dense_dir) / "dense.safetensors")
    if result_path.exists():
        done = json.loads(result_path.read_text())
        recorded = done.get("config", {})
        changed = sorted(
            key
            for key, value in dataclasses.asdict(cfg).items()
            if key in cfg.identity() and recorded.get(key, _DEFAULTS.get(key)) != value
        )
        if done.get("dense_sha256", dense_sha256) != dense_sha256:
            changed.append(f"the dense model ({cfg.dense_dir}/dense.safetensors)")
        if changed:
            raise ConfigError(
                f"{result_path} holds a run with other settings ({', '.join(changed)} differ): "
                "give this run another output directory, or delete that one to rerun it"
            )
        return done
    model, pcfg = load_dense(cfg.dense_dir)
    corpus = prepare(pcfg.corpus, Path(pcfg.data_dir) / pcfg.corpus)
    _check_same_corpus(corpus.manifest, Path(cfg.dense_dir) / "corpus.json")
    out.mkdir(parents=True, exist_ok=True)
    windows = val_windows(corpus.val, seq=pcfg.spec.seq, windows=pcfg.eval_windows)
    tune_windows = val_windows(
        corpus.val, seq=pcfg.spec.seq, windows=pcfg.eval_windows, offset=len(windows)
    )
    calib = calibration_set(corpus, pcfg)
    base = cfg.method.removesuffix("+ft")
    pruner = None
    if base in ONESHOT_METHODS:
        masks = oneshot_masks(model, base, k=cfg.k, m=cfg.m, calibration=calib)
        pruner = _fixed_pruner(model, masks, cfg.k, cfg.m)
    elif base.startswith("dpp"):
        torch.manual_seed(cfg.seed)
        schedule = {
            "noise_scale": dpp.Schedule("cosine", cfg.noise_scale, 0.0, steps=max(cfg.steps, 1)),
            "temperature": cfg.temperature,
            "entropy_weight": cfg.entropy_weight,
        }
        common = {"granularity": "block", "block_size": cfg.m, "k": cfg.k, "include": DECODER}
        if cfg.logit_dtype != "float32":
            common["logit_dtype"] = cfg.logit_dtype
        if cfg.weights_from == "sparsegpt":
            source = _sparsegpt_start(model, cfg, calib)
            pruner = dpp.prune(model, **common, **schedule, mask_source=source)
        else:
            extra = {"calibration_data": calib} if cfg.prior in ("wanda", "sparsegpt") else {}
            pruner = dpp.prune(
                model,
                **common,
                **schedule,
                logit_init=cfg.prior,
                logit_init_std=cfg.prior_strength,
                **extra,
            )
        if base == "dpp-mask":
            pruner.freeze_weights()
    started = time.perf_counter()
    step_seconds = 0.0
    curve: list[dict[str, Any]] = []
    if cfg.trains:
        if cfg.optimizer == "pruner" and pruner is not None:
            optimizer = pruner.optimizer(lr=cfg.lr, logit_lr=cfg.logit_lr)
        else:
            if pruner is None:
                groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
            else:
                groups = pruner.param_groups(lr=cfg.lr, logit_lr=cfg.logit_lr)
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        model.train()
        warmup = max(1, cfg.steps // 20)
        t0 = time.perf_counter()
        last_masks = pruner.masks() if pruner is not None else None
        window_loss = 0.0
        for step in range(cfg.steps):
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr_at(step, lr=lr, warmup=warmup, total=cfg.steps, min_ratio=0.1)
            ids = train_batch(
                corpus.train, step=step, seed=10_000 + cfg.seed, batch=cfg.batch, seq=pcfg.spec.seq
            )
            loss = model(ids, labels=ids).loss
            if pruner is not None and cfg.entropy_weight:
                loss = loss + pruner.entropy_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if pruner is not None:
                pruner.step()
            window_loss += float(loss.detach())
            if (step + 1) % CURVE_EVERY == 0 or step + 1 == cfg.steps:
                point: dict[str, Any] = {
                    "step": step + 1,
                    "train_loss": window_loss / ((step % CURVE_EVERY) + 1),
                }
                window_loss = 0.0
                if base.startswith("dpp"):
                    masks = pruner.masks()
                    point["mask_flips"] = mask_flips(last_masks, masks)["total"]
                    last_masks = masks
                curve.append(point)
        step_seconds = (time.perf_counter() - t0) / max(cfg.steps, 1)
    metrics = evaluate(model, windows)
    metrics["tune_loss"] = evaluate(model, tune_windows)["val_loss"]
    if pruner is not None:
        model.eval()
        for name, mask in pruner.masks().items():
            kept = mask.reshape(-1, cfg.m).sum(-1)
            if not bool((kept == cfg.k).all()):
                raise RuntimeError(f"{name}: the mask does not keep {cfg.k} of {cfg.m}")
    result = {
        "label": cfg.label(),
        "config": dataclasses.asdict(cfg),
        "dense_sha256": dense_sha256,
        "tokens": cfg.steps * cfg.batch * pcfg.spec.seq if cfg.trains else 0,
        "seconds": time.perf_counter() - started,
        "seconds_per_step": step_seconds,
        "pruned_layers": len(block_linears(model)),
        **metrics,
        "curve": curve,
    }
    write_json(result_path, result)
    return result
