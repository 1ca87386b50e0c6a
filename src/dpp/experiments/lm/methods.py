"""One pruning method on a pretrained causal LM, for a token budget: the benchmark's one harness.

The model is any local causal LM (:func:`~dpp.experiments.lm.source.load_causal_lm`): the
benchmark's own byte-level Llama (a ``dpp lm pretrain`` run directory), a Hugging Face
``save_pretrained`` directory or a GGUF file. Only how the model and its tokenizer are loaded
differs; the data, the methods, the training loop, the checkpoints and the results are the
same code for all of them.

Methods (``k:m`` on every Linear of the model except the output head):

| method | mask | weights |
|---|---|---|
| ``dense`` | none | trained (dense continued: the fair reference) |
| ``magnitude`` / ``wanda`` / ``sparsegpt`` | one-shot (``dpp.oneshot``) | as pruned |
| ``<one-shot>+ft`` | one-shot, fixed | trained under the mask |
| ``dpp-mask`` | DPP from ``prior``, learned | frozen (mask-only, the MaskLLM regime) |
| ``dpp-joint`` | DPP from ``prior``, learned | trained jointly |
| ``dpp-mask+ft`` | DPP from ``prior``, learned, then fixed | frozen, then trained under the mask |

``dpp-mask+ft`` is ``dpp-mask`` for the first ``mask_fraction`` of the steps, then
``<one-shot>+ft`` under DPP's deterministic masks (``Pruner.freeze_masks``) for the rest:
each phase has its own warmup and cosine schedule, and the DPP noise anneals to 0 over the
first, so the first phase is exactly ``dpp-mask`` run for that many steps.

SparseGPT runs true-sequentially (each group of a block's layers calibrated on the outputs
of the pruned layers before it, as recalibrating the whole model per layer does), with its
OBS weight update. Wanda scores every layer from one pass of the dense model, as
``logit_init="wanda"`` does, so that DPP from the Wanda prior starts at exactly the one-shot
Wanda mask.

Every method that trains sees the same windows in the same order (``seed`` picks the order
and DPP's noise; a fixed alternating mix of the ``corpora``), with the same schedule family
(linear warmup over 5% of the steps, cosine decay to 10%), at its own learning rate, on the
language-model loss or by distillation from the dense model (``loss="kd"``: the KL divergence
of the student's next-token distribution from the dense model's). A run writes a checkpoint
every ``checkpoint_every`` steps and resumes from it exactly; at the end it writes
``result.json`` (validation loss and perplexity on every corpus) and, for a Hugging Face
model, the pruned model as a plain checkpoint (``model/``, ``finalize`` + ``save_pretrained``)
with its mask file (``masks.safetensors``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

import dpp
from dpp.metrics import mask_flips

from ..checkpoint import (
    capture_rng,
    load_checkpoint,
    remove_stale_temp_files,
    restore_rng,
    save_checkpoint,
    write_json,
)
from ..errors import ConfigError
from ..machine import describe as describe_machine
from .data import LMData, load_data
from .model import evaluate
from .oneshot import ONESHOT_METHODS
from .pretrain import lr_at
from .source import LoadedModel, load_causal_lm, model_digest

__all__ = ["METHODS", "PRIORS", "MaskRunConfig", "is_claimed", "run_method"]

_SHORT = {
    "logit_lr": "llr",
    "noise_scale": "noise",
    "temperature": "temp",
    "prior_strength": "strength",
    "entropy_weight": "ent",
    "weights_from": "from",
    "mask_fraction": "maskfrac",
    "logit_dtype": "ldtype",
    "optimizer": "opt",
    "corpora": "data",
    "calibration_batches": "calib",
    "eval_windows": "evalw",
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
    "dpp-mask+ft",
)
PRIORS = ("normal", "magnitude", "wanda", "sparsegpt", "sparsegpt-saliency")
LOSSES = ("lm", "kd")


@dataclass
class MaskRunConfig:
    """One run of the mask phase (serialised into its ``result.json``)."""

    model: str
    """The dense model: a ``dpp lm pretrain`` run directory, a ``save_pretrained`` directory
    or a ``.gguf`` file."""
    method: str
    k: int = 2
    m: int = 4
    steps: int = 500
    """Optimizer steps of the mask phase (0 tokens for the one-shot methods)."""
    batch: int = 16
    """Windows per step."""
    seq: int = 0
    """Tokens per window; 0: the byte-level model's pretraining window, or 512."""
    corpora: tuple[str, ...] = ("cpython-stdlib",)
    """Training text: a fixed alternating mix of these corpora's training splits;
    validation is reported on each one."""
    seed: int = 0
    """Data order (the same windows in the same order for every method) and DPP's noise."""
    lr: float = 3e-4
    """Peak learning rate of the weights."""
    loss: str = "lm"
    """``lm`` (next-token cross-entropy) or ``kd`` (KL divergence from the dense model)."""
    prior: str = "wanda"
    """DPP's logit initialisation: normal, magnitude, wanda, sparsegpt (its 0/1 mask) or
    sparsegpt-saliency (its graded OBS saliency)."""
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
    mask_fraction: float = 0.5
    """``dpp-mask+ft`` only: the fraction of the steps that learn the masks (weights
    frozen); the rest fine-tune the weights under the learned masks."""
    weights_from: str = "dense"
    """DPP's starting weights: ``dense``, or ``sparsegpt`` (prior ``sparsegpt`` or
    ``sparsegpt-saliency``): the weights SparseGPT keeps take its OBS-updated values and the
    ones it prunes keep their dense values, and the logits start from that same SparseGPT
    run's mask (0/1) or saliency (graded), so that the starting deterministic mask gives the
    one-shot SparseGPT model exactly."""
    logit_dtype: str = "float32"
    """DPP's logit storage dtype (``DPPConfig.logit_dtype``): float32, bfloat16 or float16."""
    optimizer: str = "adamw"
    """``adamw`` (AdamW over ``pruner.param_groups``) or ``pruner`` (``pruner.optimizer()``,
    the library's recommended optimizer with compact logit state)."""
    bf16: bool = False
    """Train under bf16 autocast (CPU or CUDA); evaluation stays in float32."""
    grad_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory; the
    result is the same)."""
    keep_scores: bool = False
    """DPP: keep each draw's float32 scores for the backward pass instead of drawing its
    noise again there (``DPPConfig.keep_scores``: faster on CPUs, 4 bytes more per pruned
    weight while a step runs; the result is the same)."""
    eval_windows: int = 0
    """Validation windows per corpus; 0: the byte-level model's setting, or 32."""
    calibration_batches: int = 0
    """Batches of training windows the one-shot methods and priors calibrate on; 0: the
    byte-level model's setting, or 16."""
    checkpoint_every: int = CURVE_EVERY
    """Steps between checkpoints (a multiple of the curve's 25 steps)."""
    data_dir: str = ""
    """Where prepared corpora are kept; empty: the byte-level model's, or runs/lm/data."""
    device: str = "cpu"
    """Where the model trains (``cpu``, ``cuda``, ``cuda:1``, ...); not part of the run's
    identity (the numbers of another device differ by float round-off only)."""

    def __post_init__(self) -> None:
        self.corpora = tuple(self.corpora)
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if not 1 <= self.k <= self.m:
            raise ConfigError(f"pattern {self.k}:{self.m} needs 1 <= k <= m")
        if self.method.startswith("dpp") and self.prior not in PRIORS:
            raise ConfigError(f"prior must be one of {', '.join(PRIORS)}: {self.prior}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be lm or kd: {self.loss}")
        if self.optimizer not in ("adamw", "pruner"):
            raise ConfigError(f"optimizer must be adamw or pruner: {self.optimizer}")
        if self.weights_from not in ("dense", "sparsegpt"):
            raise ConfigError(f"weights_from must be dense or sparsegpt: {self.weights_from}")
        if self.weights_from == "sparsegpt" and (
            not self.method.startswith("dpp") or not self.prior.startswith("sparsegpt")
        ):
            raise ConfigError(
                "weights_from='sparsegpt' starts DPP from SparseGPT's updated weights and its "
                "mask: it needs a dpp method with prior='sparsegpt' or "
                f"prior='sparsegpt-saliency' (got method={self.method!r}, prior={self.prior!r})"
            )
        if not self.corpora:
            raise ConfigError("corpora: name at least one corpus")
        if self.method == "dpp-mask+ft" and self.steps and not 0 < self.mask_steps < self.steps:
            raise ConfigError(
                f"dpp-mask+ft: mask_fraction {self.mask_fraction:g} of {self.steps} steps leaves "
                "a phase without a step; give a fraction strictly between 0 and 1 and at least "
                "2 steps"
            )
        for key in ("steps", "batch", "seq", "eval_windows", "calibration_batches"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.trains and self.batch < 1:
            raise ConfigError(f"method {self.method} trains: it needs batch >= 1")
        if self.checkpoint_every < 1 or self.checkpoint_every % CURVE_EVERY:
            raise ConfigError(
                f"checkpoint_every must be a positive multiple of {CURVE_EVERY}, got "
                f"{self.checkpoint_every}"
            )

    @property
    def trains(self) -> bool:
        return self.method in ("dense", "dpp-mask", "dpp-joint") or self.method.endswith("+ft")

    @property
    def trains_weights(self) -> bool:
        return self.trains and self.method != "dpp-mask"

    @property
    def mask_steps(self) -> int:
        """The steps that learn DPP's masks: all of them, or for ``dpp-mask+ft`` the first
        ``round(mask_fraction * steps)``."""
        if self.method == "dpp-mask+ft":
            return round(self.mask_fraction * self.steps)
        return self.steps

    def label(self) -> str:
        name = self.method if not self.method.startswith("dpp") else f"{self.method}-{self.prior}"
        return f"{self.k}of{self.m}-{name}-s{self.seed}"

    def settings(self) -> dict[str, Any]:
        """The fields that change this method's result (pattern and seed aside); the ones
        added since the byte-level benchmark only where they differ from their defaults, so
        that its run directories keep their names."""
        keys: list[str] = []
        if self.trains:
            keys += ["steps", "batch"]
        if self.trains_weights:
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
            if self.method == "dpp-mask+ft":
                keys.append("mask_fraction")
            if self.weights_from != "dense":
                keys.append("weights_from")
            if self.logit_dtype != "float32":
                keys.append("logit_dtype")
        if self.optimizer != "adamw" and (self.method.startswith("dpp") or self.trains):
            keys.append("optimizer")
        defaults = _DEFAULTS
        for key in ("seq", "corpora", "calibration_batches", "eval_windows"):
            if getattr(self, key) != defaults[key]:
                keys.append(key)
        if self.trains:
            for key in ("loss", "bf16"):
                if getattr(self, key) != defaults[key]:
                    keys.append(key)
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
            if isinstance(value, float):
                text = f"{value:g}"
            elif isinstance(value, tuple):
                text = "+".join(entry.partition("=")[0] for entry in value)
                if any("=" in entry for entry in value):  # corpora read from other directories
                    text += "-" + hashlib.sha256("+".join(value).encode()).hexdigest()[:8]
            else:
                text = str(value)
            parts.append(f"{_SHORT.get(key, key)}-{text}")
        name = "_".join(parts) + (f"_s{self.seed}" if self.trains else "")
        folder = "dense-continued" if self.method == "dense" else f"{self.k}of{self.m}"
        return f"{folder}/{name}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskRunConfig:
        """A config from ``result.json`` (``dense_dir`` of older results read as ``model``)."""
        data = dict(data)
        if "dense_dir" in data:
            data.setdefault("model", data.pop("dense_dir"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_DEFAULTS = {
    f.name: (f.default if f.default is not dataclasses.MISSING else None)
    for f in dataclasses.fields(MaskRunConfig)
}
"""A field missing from an older result.json had its default value then."""


def _common(cfg: MaskRunConfig) -> dict[str, Any]:
    """The pruning settings every method shares: k of every m inputs, every Linear of the
    model but its output head (dpp.prune's default selection)."""
    out: dict[str, Any] = {"granularity": "block", "block_size": cfg.m, "k": cfg.k}
    if cfg.method.startswith("dpp") and cfg.logit_dtype != "float32":
        out["logit_dtype"] = cfg.logit_dtype
    if cfg.method.startswith("dpp") and cfg.keep_scores is not False:
        out["keep_scores"] = cfg.keep_scores  # DPPConfig checks it
    return out


def _dpp_schedule(cfg: MaskRunConfig) -> dict[str, Any]:
    return {
        "noise_scale": dpp.Schedule("cosine", cfg.noise_scale, 0.0, steps=max(cfg.mask_steps, 1)),
        "temperature": cfg.temperature,
        "entropy_weight": cfg.entropy_weight,
    }


def _setup(cfg: MaskRunConfig, model: nn.Module, calib: list) -> dpp.Pruner | None:
    """Prune ``model`` in place as ``cfg.method`` says; the pruner (``None`` for dense)."""
    base = cfg.method.removesuffix("+ft")
    if base in ONESHOT_METHODS:
        result = dpp.oneshot(
            model,
            base,
            k=cfg.k,
            block_size=cfg.m,
            calibration_data=calib if base != "magnitude" else None,
            sequential=base != "wanda",
            true_sequential=base == "sparsegpt",
        )
        return dpp.prune(model, **_common(cfg), mask_source=result.fixed_masks())
    if not base.startswith("dpp"):
        return None
    torch.manual_seed(cfg.seed)
    if cfg.weights_from == "sparsegpt":
        # SparseGPT's updated weights where it keeps them, dense values where it prunes, so
        # that the starting deterministic mask gives the one-shot SparseGPT model exactly.
        result = dpp.oneshot(
            model,
            "sparsegpt",
            k=cfg.k,
            block_size=cfg.m,
            calibration_data=calib,
            true_sequential=True,
            keep_pruned_weights=True,
        )
        source = result.learned_masks(
            logit_std=cfg.prior_strength, graded=cfg.prior == "sparsegpt-saliency"
        )
        pruner = dpp.prune(model, **_common(cfg), **_dpp_schedule(cfg), mask_source=source)
    else:
        calibrated = cfg.prior in ("wanda", "sparsegpt", "sparsegpt-saliency")
        pruner = dpp.prune(
            model,
            **_common(cfg),
            **_dpp_schedule(cfg),
            logit_init=cfg.prior,
            logit_init_std=cfg.prior_strength,
            **({"calibration_data": calib} if calibrated else {}),
        )
    if base == "dpp-mask":
        pruner.freeze_weights()
    return pruner


def _optimizer(cfg: MaskRunConfig, model: nn.Module, pruner: dpp.Pruner | None):
    if cfg.optimizer == "pruner" and pruner is not None:
        return pruner.optimizer(lr=cfg.lr, logit_lr=cfg.logit_lr)
    if pruner is None:
        groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": cfg.lr}]
    else:
        groups = pruner.param_groups(lr=cfg.lr, logit_lr=cfg.logit_lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))


def _device_type(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def _autocast(cfg: MaskRunConfig, model: nn.Module):
    if not cfg.bf16:
        return contextlib.nullcontext()
    return torch.autocast(_device_type(model), dtype=torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX, as oneDNN
    reports it). Without it, bf16 matmuls are emulated and a bf16 autocast step can take
    several times longer than a float32 one."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


def _warn_slow_bf16(cfg: MaskRunConfig, model: nn.Module) -> None:
    """Warns when bf16 autocast is asked for on a CPU that has no native bf16."""
    if cfg.bf16 and _device_type(model) == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            f"{cfg.label()}: bf16 autocast on a CPU without native bf16 (no AVX512-BF16 or "
            "AMX): bf16 matmuls are emulated and a step may take several times longer than "
            "in float32; drop --bf16 (bf16 = false in a grid file) on this machine",
            RuntimeWarning,
            stacklevel=3,
        )


def _loss(cfg: MaskRunConfig, model: nn.Module, ids: torch.Tensor, teacher: nn.Module | None):
    """The training loss of one batch: next-token cross-entropy, or the KL divergence of the
    student's next-token distribution from the dense teacher's (mean over tokens)."""
    with _autocast(cfg, model):
        if teacher is None:
            return model(ids, labels=ids, use_cache=False).loss
        logits = model(ids, use_cache=False).logits
        with torch.no_grad():
            target = torch.log_softmax(teacher(ids, use_cache=False).logits.float(), -1)
    log_q = torch.log_softmax(logits.float(), -1)
    return (target.exp() * (target - log_q)).sum(-1).mean()


def _trainable(model: nn.Module, pruner: dpp.Pruner | None) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: what trains, and DPP's logits (frozen ones
    too: they hold the masks ``dpp-mask+ft`` fine-tunes under)."""
    logits = {id(p) for p in pruner.logits()} if pruner is not None else set()
    return {
        n: p.detach() for n, p in model.named_parameters() if p.requires_grad or id(p) in logits
    }


def _fine_tune_under_masks(pruner: dpp.Pruner) -> None:
    """``dpp-mask+ft``'s second phase: DPP's masks fixed, the weights trained."""
    pruner.freeze_masks()
    pruner.unfreeze_weights()


def _save_state(path: Path, model, optimizer, pruner, state: dict[str, Any]) -> None:
    save_checkpoint(
        path,
        {
            **state,
            "trainable": _trainable(model, pruner),
            "optimizer": optimizer.state_dict(),
            "pruner": pruner.state_dict() if pruner is not None else {},
            "rng": capture_rng(),
        },
    )


def _load_state(path: Path, cfg: MaskRunConfig) -> dict[str, Any]:
    """A checkpoint of this run, refused when it was written with other settings."""
    state = load_checkpoint(path, required=("step", "trainable", "optimizer", "rng"))
    saved = state.get("config", {})
    changed = sorted(k for k in cfg.identity() if saved.get(k) != _jsonable(getattr(cfg, k)))
    if changed:
        raise ConfigError(
            f"{path} was written by a run with other settings ({', '.join(changed)} differ): "
            "resume with the same settings, or delete it to start over"
        )
    return state


def _restore_state(state: dict[str, Any], model, optimizer, pruner) -> None:
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if pruner is not None:
        pruner.load_state_dict(state["pruner"])
    restore_rng(state["rng"])


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _train(
    cfg: MaskRunConfig,
    out: Path,
    model: nn.Module,
    pruner: dpp.Pruner | None,
    data: LMData,
    teacher: nn.Module | None,
    machine: dict[str, Any],
) -> tuple[list[dict[str, Any]], float, float, list[dict[str, Any]]]:
    """The training loop, resumable: ``(curve, seconds per step, training seconds of the
    earlier processes it resumed, the machines its processes ran on)``; ``machine`` is this
    process's."""
    from tqdm.auto import tqdm

    if cfg.grad_checkpointing:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ConfigError(f"grad_checkpointing: {type(model).__name__} does not support it")
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _warn_slow_bf16(cfg, model)
    model.train()
    # dpp-mask+ft fine-tunes from step `switch` on: a new optimizer and schedule there
    # (every other method: switch == cfg.steps, never reached).
    switch = cfg.mask_steps
    ckpt = out / "checkpoint.pt"
    start, curve, train_seconds = 0, [], 0.0
    machines = [machine]
    state = _load_state(ckpt, cfg) if ckpt.exists() else None
    if state is not None:
        start, curve, train_seconds = int(state["step"]), list(state["curve"]), state["seconds"]
        # A checkpoint from before machines were recorded: its steps ran somewhere unknown.
        earlier = state.get("machines", [{"cpu": "unknown"}])
        machines = earlier if machine in earlier else [*earlier, machine]
    if start >= switch and switch < cfg.steps:
        _fine_tune_under_masks(pruner)
    optimizer = _optimizer(cfg, model, pruner)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    if state is not None:
        # A checkpoint at the switch holds the optimizer of the phase that ended there.
        _restore_state(state, model, None if start == switch else optimizer, pruner)
        del state
    last_masks = pruner.masks() if pruner is not None else None
    tokens_per_step = cfg.batch * data.seq
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=cfg.label(),
        unit="step",
        mininterval=10.0,
        dynamic_ncols=True,
    )
    window_loss = 0.0
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        if step == switch and step > start:
            _fine_tune_under_masks(pruner)
            optimizer = _optimizer(cfg, model, pruner)
            base_lrs = [g["lr"] for g in optimizer.param_groups]
        # Each phase its own warmup (5% of its steps) and cosine decay to 10%.
        first, total = (0, switch) if step < switch else (switch, cfg.steps - switch)
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr_at(
                step - first, lr=lr, warmup=max(1, total // 20), total=total, min_ratio=0.1
            )
        ids = data.train_batch(step=step, seed=10_000 + cfg.seed, batch=cfg.batch)
        ids = ids.to(cfg.device)
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(cfg, model, ids, teacher)
        if pruner is not None and cfg.entropy_weight:
            loss = loss + pruner.entropy_loss()
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()
        window_loss += float(loss.detach())
        since = time.perf_counter() - t0
        elapsed = train_seconds + since
        bar.update(1)
        rate = tokens_per_step * (step + 1 - start) / max(since, 1e-9)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", tok_s=f"{rate:.0f}", refresh=False)
        if (step + 1) % CURVE_EVERY == 0 or step + 1 == cfg.steps:
            point: dict[str, Any] = {
                "step": step + 1,
                "train_loss": window_loss / ((step % CURVE_EVERY) + 1),
            }
            window_loss = 0.0
            if cfg.method.startswith("dpp"):
                masks = pruner.masks()
                point["mask_flips"] = mask_flips(last_masks, masks)["total"]
                last_masks = masks
            curve.append(point)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            state = {"step": step + 1, "curve": curve, "seconds": elapsed, "machines": machines}
            state["config"] = {k: _jsonable(v) for k, v in dataclasses.asdict(cfg).items()}
            _save_state(ckpt, model, optimizer, pruner, state)
    bar.close()
    total = train_seconds + time.perf_counter() - t0
    return curve, total / max(cfg.steps, 1), train_seconds, machines


def run_method(cfg: MaskRunConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run one method (skipped when its ``result.json`` exists) and return its result.

    The run holds ``<out_dir>/.lock`` (an ``flock``, dropped when the process exits however
    it exits): a second process asking for the same run waits for it and reads its result.
    An interrupted run resumes from ``<out_dir>/checkpoint.pt``.
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


def _check_finished(cfg: MaskRunConfig, result_path: Path, digest: str) -> dict[str, Any]:
    done = json.loads(result_path.read_text())
    recorded = MaskRunConfig.from_dict(done.get("config", {}) | {"model": cfg.model})
    changed = sorted(
        key for key in cfg.identity() if getattr(recorded, key, None) != getattr(cfg, key)
    )
    if done.get("dense_sha256", digest) != digest:
        changed.append(f"the dense model ({cfg.model})")
    if changed:
        raise ConfigError(
            f"{result_path} holds a run with other settings ({', '.join(changed)} differ): "
            "give this run another output directory, or delete that one to rerun it"
        )
    return done


def evaluate_corpora(model: nn.Module, data: LMData, what: str = "val") -> dict[str, dict]:
    windows = data.val if what == "val" else data.tune
    return {name: evaluate(model, w) for name, w in windows.items()}


def summarize(per_corpus: dict[str, dict]) -> dict[str, float]:
    """The reported loss of a run: the mean over the corpora (the mixed validation set)."""
    mean = sum(r["val_loss"] for r in per_corpus.values()) / len(per_corpus)
    return {"val_loss": mean, "val_ppl": math.exp(mean), "val_bpb": mean / math.log(2)}


def _pretrained_eval(model: nn.Module, data: LMData, digest: str, cfg: MaskRunConfig):
    """The dense model's validation losses, computed once per model and windows and kept
    in ``<data dir>/evals/`` (keyed by the model's digest and the windows' digest)."""
    h = hashlib.sha256(digest.encode())
    for name, windows in data.val.items():
        h.update(name.encode())
        h.update(windows.numpy().tobytes())
    path = data.root / "evals" / f"{h.hexdigest()[:24]}.json"
    if path.exists():
        return json.loads(path.read_text())["val"]
    val = evaluate_corpora(model, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"model": cfg.model, "sha256": digest, "val": val})
    return val


def _save_final(out: Path, loaded: LoadedModel, model: nn.Module, pruner) -> dict[str, str]:
    """The pruned model as a plain Hugging Face checkpoint and its mask file."""
    files: dict[str, str] = {}
    if pruner is not None:
        dpp.save_masks(pruner, out / "masks.safetensors")
        files["masks"] = "masks.safetensors"
        pruner.finalize()
    if loaded.tokenizer is None:  # the byte-level model: its weights are tiny, kept in the run
        return files
    model.save_pretrained(out / "model")
    loaded.tokenizer.save_pretrained(out / "model")
    files["model"] = "model"
    return files


def _run_locked(cfg: MaskRunConfig, out: Path) -> dict[str, Any]:
    result_path = out / "result.json"
    digest = model_digest(cfg.model)
    if result_path.exists():
        return _check_finished(cfg, result_path, digest)
    remove_stale_temp_files(out)
    started = time.perf_counter()
    loaded = load_causal_lm(cfg.model)
    model = loaded.model.to(cfg.device)
    data = load_data(
        loaded,
        cfg.corpora,
        model_path=cfg.model,
        batch=cfg.batch,
        seq=cfg.seq,
        eval_windows=cfg.eval_windows,
        calibration_batches=cfg.calibration_batches,
        data_dir=cfg.data_dir,
    )
    pretrained = _pretrained_eval(model, data, digest, cfg)
    teacher = None
    if cfg.trains and cfg.loss == "kd":
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    pruner = _setup(cfg, model, [batch.to(cfg.device) for batch in data.calibration])
    curve: list[dict[str, Any]] = []
    step_seconds = earlier = 0.0
    machines = [describe_machine(cfg.device)]
    if cfg.trains:
        curve, step_seconds, earlier, machines = _train(
            cfg, out, model, pruner, data, teacher, machines[0]
        )
    del teacher
    val = evaluate_corpora(model, data)
    tune = evaluate_corpora(model, data, "tune")
    if pruner is not None:
        model.eval()
        for name, mask in pruner.masks().items():
            kept = mask.reshape(-1, cfg.m).sum(-1)
            if not bool((kept == cfg.k).all()):
                raise RuntimeError(f"{name}: the mask does not keep {cfg.k} of {cfg.m}")
    pruned_layers = len(pruner.layers) if pruner is not None else 0
    files = _save_final(out, loaded, model, pruner)
    result = {
        "label": cfg.label(),
        "config": {k: _jsonable(v) for k, v in dataclasses.asdict(cfg).items()},
        "model_name": loaded.name,
        "dense_sha256": digest,
        "corpora": data.manifests,
        "tokens": cfg.steps * cfg.batch * data.seq if cfg.trains else 0,
        "seq": data.seq,
        "seconds": time.perf_counter() - started + earlier,
        "seconds_per_step": step_seconds,
        "machines": machines,
        "pruned_layers": pruned_layers,
        **summarize(val),
        "val": val,
        "tune_loss": summarize(tune)["val_loss"],
        "tune": {name: r["val_loss"] for name, r in tune.items()},
        "pretrained": {**summarize(pretrained), "val": pretrained},
        "files": files,
        "curve": curve,
    }
    write_json(result_path, result)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return result
