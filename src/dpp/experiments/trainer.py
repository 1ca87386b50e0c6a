"""The experiment trainer: one run of a :class:`RunConfig`, resumable, single- or multi-process.

Every epoch it trains, evaluates with deterministic masks, appends a record to
``metrics.jsonl`` and writes ``checkpoint.pt`` atomically. ``resume`` continues from that
checkpoint bit-exactly on the CPU: model (with logits), optimizer, learning-rate scheduler,
pruner schedules and every RNG state are restored, and the data order of each epoch is a
function of the seed and the epoch only.

Launched by ``torchrun`` (``WORLD_SIZE > 1``) it trains with DistributedDataParallel: gloo
on the CPU, nccl on GPUs; every rank draws its own masks (its RNG is seeded with its rank)
while DDP keeps weights and logits synchronised; only rank 0 logs and writes files. It
creates the process group unless the caller already has, and destroys only one it created.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import dpp
from dpp.bake import bake
from dpp.metrics import mask_flips
from dpp.storage import storage_report

from .checkpoint import (
    atomic_write_text,
    capture_rng,
    load_checkpoint,
    load_weights,
    remove_stale_temp_files,
    restore_rng,
    save_checkpoint,
    save_weights,
    write_json,
)
from .data import BatchLoader, Splits, TensorDataset, default_augmentation, load_dataset
from .errors import ConfigError, ResumeError, RunDirError
from .methods import TrainingMethod, check_pruning, create_method
from .models import create_model
from .runconfig import RunConfig
from .seeding import mix_seed

__all__ = ["LoadedRun", "RunResult", "evaluate", "load_run", "resolve_checkpoint", "train"]


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run created the process group, so it destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_pref: str) -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    if dist.is_initialized():
        return DistContext(rank, world, local_rank)
    # DistributedDataParallel imports torch._dynamo on first use. Imported while a process
    # group exists, torch 2.13 keeps a reference to that group, so destroy_process_group
    # cannot join gloo's worker threads: they are still alive when the interpreter shuts
    # down, the likely cause of a rank's intermittent abort at exit seen under load
    # ("terminate called without an active exception", exit code -6). Imported first, the
    # group is freed on destroy (tests/test_distributed.py checks the threads are gone).
    importlib.import_module("torch._dynamo")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local_rank, owns_group=True)


def _device(pref: str, ctx: DistContext, key: str = "train.device") -> torch.device:
    """The device ``pref`` names (:class:`ConfigError`, naming ``key``, if there is none)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", pref):
        raise ConfigError(f"{key} = {pref!r} is not valid; use auto, cpu or cuda[:N]")
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{key} = {pref!r}, but torch finds no CUDA device here; use 'auto' or 'cpu'"
            )
        if ctx.enabled:
            return torch.device("cuda", ctx.local_rank)
        index = torch.device(pref).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key} = {pref!r}, but there are {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    return torch.device(pref)


def _check_run_dir(path: Path, *, resuming: bool) -> None:
    """A run directory given by the user is a directory, and a new run never overwrites a
    run that is already there."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} is a file; give a directory")
    held = [n for n in ("checkpoint.pt", "summary.json") if (path / n).is_file()]
    if held and not resuming:
        raise ConfigError(
            f"run directory {path} already holds a run ({', '.join(held)}); continue it with "
            "dpp train --resume, or give another --run-dir"
        )


def _check_world_size(resume: Any, checkpoint: dict[str, Any], ctx: DistContext) -> None:
    """A run resumes with the number of processes it was trained with."""
    saved = int(checkpoint["world_size"])
    if saved != ctx.world_size:
        raise ResumeError(
            f"{resume}: the run was trained with {saved} process(es) and is resumed with "
            f"{ctx.world_size}. The world size sets the steps per epoch (every process reads "
            "1/world of the training set), so it changes every schedule counted in steps "
            "(temperature, noise scale, sparsity ramp, gradual pruning) and the data order; "
            f"resume with {saved} process(es) (torchrun --nproc_per_node={saved}, or no "
            "torchrun for 1) for an exact continuation"
        )


# ----------------------------------------------------------------------------- helpers
def _progress_enabled(mode: str, quiet: bool) -> bool:
    if quiet or mode == "off":
        return False
    return mode == "on" or sys.stderr.isatty()


def evaluate(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    ctx: DistContext | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (deterministic masks).

    Under DDP every rank evaluates a contiguous shard and the sums are all-reduced.
    """
    ctx = ctx or DistContext()
    n = len(dataset)
    lo, hi = n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(lo, hi, batch_size):
            x = dataset.images[start : min(start + batch_size, hi)].to(device)
            y = dataset.labels[start : min(start + batch_size, hi)].to(device)
            out = model(x)
            totals[0] += F.cross_entropy(out, y, reduction="sum").double()
            totals[1] += (out.argmax(1) == y).sum().double()
            totals[2] += y.numel()
    model.train(was_training)
    if ctx.enabled:
        dist.all_reduce(totals)
    count = max(float(totals[2]), 1.0)
    return float(totals[0]) / count, float(totals[1]) / count


def _make_optimizer(
    name: str, groups: list[dict[str, Any]], cfg: RunConfig
) -> torch.optim.Optimizer:
    t = cfg.train
    # The fused kernels beat the per-tensor loop on the CPU by a wide margin for small
    # models (see docs/benchmarks.md); they exist for CPU and CUDA tensors.
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    kwargs: dict[str, Any] = {"lr": t.lr, "fused": fused}
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=t.momentum, nesterov=t.nesterov, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    return torch.optim.Adam(groups, **kwargs)


class _Optimizers:
    """One optimizer, or one for the weights and one for the logits (``train.logit_optimizer``)."""

    def __init__(self, groups: list[dict[str, Any]], cfg: RunConfig) -> None:
        t = cfg.train
        logit_groups = [g for g in groups if g.get("name") == "logits"]
        if t.logit_optimizer is None or not logit_groups or t.logit_optimizer == t.optimizer:
            self.items = [_make_optimizer(t.optimizer, groups, cfg)]
        else:
            rest = [g for g in groups if g.get("name") != "logits"]
            self.items = [
                _make_optimizer(t.optimizer, rest, cfg),
                _make_optimizer(t.logit_optimizer, logit_groups, cfg),
            ]

    def zero_grad(self) -> None:
        for opt in self.items:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.items:
            opt.step()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.items for g in opt.param_groups]

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.items]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for opt, state in zip(self.items, states, strict=True):
            opt.load_state_dict(state)


def _make_schedulers(opts: _Optimizers, cfg: RunConfig) -> list[Any]:
    t = cfg.train
    out = []
    for opt in opts.items:
        if t.lr_schedule == "cosine":
            out.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs))
        elif t.lr_schedule == "step":
            out.append(
                torch.optim.lr_scheduler.MultiStepLR(
                    opt, milestones=t.lr_milestones, gamma=t.lr_gamma
                )
            )
    return out


def _new_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True)  # atomic: two runs started together get two directories
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A run directory (its ``checkpoint.pt``) or a checkpoint file (:class:`RunDirError` if
    neither)."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoint.pt"
        if not ckpt.is_file():
            raise RunDirError(
                f"run directory {path} has no checkpoint.pt "
                "(was it run with log.checkpoint = false?)"
            )
        return ckpt
    if not path.is_file():
        raise RunDirError(f"{path} is neither a run directory nor a checkpoint file")
    return path


def _saved_config(path: Path, checkpoint: dict[str, Any]) -> RunConfig:
    """The run config a checkpoint holds (a :class:`ConfigError` naming the checkpoint)."""
    try:
        return RunConfig.from_dict(checkpoint["config"])
    except ConfigError as err:
        raise ConfigError(f"checkpoint {path}: its saved run config is not valid: {err}") from None


def _load_init(model: nn.Module, source: str) -> None:
    """Load dense weights from a run directory (model.safetensors or checkpoint) or a file;
    both are verified against their digests."""
    path = Path(source)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    try:
        if path.suffix == ".safetensors":
            state = load_weights(path)
        else:
            state = load_checkpoint(resolve_checkpoint(path))["model"]
    except RunDirError as err:
        raise ConfigError(f"train.init_from = {source}: {err}") from None
    state = {k: v for k, v in state.items() if ".dpp." not in k and ".dpp_act." not in k}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"train.init_from = {source}: its weights do not fit the model "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def _build(
    cfg: RunConfig, splits: Splits, steps_per_epoch: int, device: torch.device
) -> tuple[nn.Module, TrainingMethod]:
    info = splits.info
    torch.manual_seed(cfg.seed)
    model = create_model(
        cfg.model.name, info.num_classes, input_shape=info.input_shape, **cfg.model.kwargs
    )
    if cfg.train.init_from:
        _load_init(model, cfg.train.init_from)
    model.to(device)
    method = create_method(cfg, model, steps_per_epoch)
    if (
        method.pruner is not None
        and method.sparse_from_start
        and cfg.train.sparse_init
        and not cfg.train.init_from
    ):
        method.pruner.rescale_for_sparsity()
    model.to(device)
    return model, method


# ----------------------------------------------------------------------------- results
@dataclass
class RunResult:
    """What :func:`train` returns."""

    run_dir: Path | None
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module = field(repr=False)

    @property
    def test_acc(self) -> float:
        return float(self.summary["test_acc"])


def _log(msg: str, ctx: DistContext, quiet: bool) -> None:
    if ctx.main and not quiet:
        print(msg, flush=True)


def _flush_denormal_while(fn):
    """Switch the CPU's flush-denormal mode back off when ``fn`` returns or raises: it is a
    global processor setting that train() turns on for speed."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_flush_denormal(False)

    return wrapper


@_flush_denormal_while
def train(
    cfg: RunConfig | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    stop_after_epochs: int | None = None,
) -> RunResult:
    """Train one run.

    Args:
        cfg: the run configuration (ignored with ``resume``: the saved one is used).
        resume: a run directory or checkpoint to continue from.
        run_dir: where to write (default: ``<output_dir>/<name>-<timestamp>``).
        quiet: no progress bars and no per-epoch lines.
        stop_after_epochs: stop after this many epochs in this call (the run can be
            resumed later), e.g. to spread a long run over several sessions.

    Returns:
        :class:`RunResult` with the run directory, the epoch records and the summary.

    Seeds torch's global RNG (from ``cfg.seed`` and the rank) for the masks' noise.
    """
    checkpoint = None
    if resume is not None:
        ckpt_path = resolve_checkpoint(resume)
        checkpoint = load_checkpoint(ckpt_path)
        cfg = _saved_config(ckpt_path, checkpoint)
        run_dir = ckpt_path.parent if run_dir is None else run_dir
    if cfg is None:
        raise ValueError("train() needs a RunConfig or resume=")
    if run_dir is not None:
        _check_run_dir(Path(run_dir), resuming=checkpoint is not None)
    ctx = _init_distributed(cfg.train.device)
    if checkpoint is not None:
        _check_world_size(resume, checkpoint, ctx)
    device = _device(cfg.train.device, ctx)
    if device.type == "cpu":
        # Denormal floats late in training slow CPU epochs down; flushing them is a global
        # processor setting, switched back off when train() returns.
        torch.set_flush_denormal(True)

    check_pruning(cfg)  # a pruning section the model does not take: before reading any data
    splits = load_dataset(cfg.data.dataset, data_dir=cfg.data.data_dir, val_size=cfg.data.val_size)
    if splits.train.images.shape[0] == 0:
        raise ValueError(f"dataset {cfg.data.dataset} has no training images")
    augment = default_augmentation(cfg.data.dataset) if cfg.data.augment in (None, True) else None
    if cfg.data.augment and augment is None:
        from .data import RandomCropFlip

        augment = RandomCropFlip(padding=4)
    loader = BatchLoader(
        splits.train,
        cfg.data.batch_size,
        shuffle=True,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        augment=augment,
        device=device if device.type == "cuda" else None,
    )
    steps_per_epoch = len(loader)
    model, method = _build(cfg, splits, steps_per_epoch, device)
    pruner = method.pruner
    # Every rank draws its own masks: seed the training RNG with the rank.
    torch.manual_seed(mix_seed(cfg.seed, 1, ctx.rank))

    groups = method.param_groups(
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        logit_lr=cfg.train.logit_lr,
    )
    opts = _Optimizers(groups, cfg)
    schedulers = _make_schedulers(opts, cfg)
    train_model: nn.Module = model
    if ctx.enabled:
        ids = [ctx.local_rank] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    step = 0
    if checkpoint is not None:
        method.load_state_dict(checkpoint["method"])
        model.load_state_dict(checkpoint["model"])
        opts.load_state_dict(checkpoint["optimizer"])
        for sched, state in zip(schedulers, checkpoint["schedulers"], strict=True):
            sched.load_state_dict(state)
        restore_rng(checkpoint["rng"][ctx.rank])
        start_epoch = int(checkpoint["epoch"])
        step = int(checkpoint["step"])
        history = list(checkpoint["history"])

    out_dir: Path | None = None
    if ctx.main:
        out_dir = Path(run_dir) if run_dir is not None else _new_run_dir(cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is not None:
            for tmp in remove_stale_temp_files(out_dir):
                _log(f"removed {tmp.name}, left by a write that was interrupted", ctx, quiet)
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
        # Rewrite the metrics log from the checkpoint's history, dropping epochs logged
        # after the last checkpoint by an interrupted run.
        atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    writer = _tensorboard(cfg, out_dir) if ctx.main else None

    show = ctx.main and _progress_enabled(cfg.log.progress, quiet)
    if checkpoint is None:
        _log(f"run directory: {out_dir}", ctx, quiet)
        if pruner is not None:
            _log(pruner.summary(), ctx, quiet)
    else:
        _log(f"resuming {out_dir} at epoch {start_epoch + 1}/{cfg.train.epochs}", ctx, quiet)

    # Deterministic masks at the last check, for the fraction of kept entries that changed.
    last_masks = pruner.masks() if pruner is not None else None
    last_epoch = cfg.train.epochs
    if stop_after_epochs is not None:
        last_epoch = min(last_epoch, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        loader.set_epoch(epoch)
        method.start_epoch(epoch)
        train_model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        bar = None
        iterator: Any = loader
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                leave=False,
                dynamic_ncols=True,
            )
            iterator = bar
        for x, y in iterator:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = train_model(x)
            loss = F.cross_entropy(out, y, label_smoothing=cfg.train.label_smoothing)
            reg = method.regularizer()
            total = loss if reg is None else loss + reg
            opts.zero_grad()
            total.backward()
            if cfg.train.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opts.step()
            method.after_step()
            step += 1
            with torch.no_grad():
                sums[0] += loss.detach().double() * y.numel()
                sums[1] += (out.argmax(1) == y).sum().double()
                sums[2] += y.numel()
            if bar is not None and step % 20 == 0:
                bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}")
        if bar is not None:
            bar.close()
        # The rates this epoch trained with, before the schedulers move them on.
        epoch_lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(opts.param_groups)}
        for sched in schedulers:
            sched.step()
        method.end_epoch(epoch)
        if ctx.enabled:
            dist.all_reduce(sums)
        train_seconds = time.perf_counter() - t0

        record: dict[str, Any] = {
            "event": "epoch",
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(sums[0] / sums[2]),
            "train_acc": float(sums[1] / sums[2]),
        }
        if splits.val is not None:
            record["val_loss"], record["val_acc"] = evaluate(
                model, splits.val, batch_size=cfg.data.eval_batch_size, device=device, ctx=ctx
            )
        record["test_loss"], record["test_acc"] = evaluate(
            model, splits.test, batch_size=cfg.data.eval_batch_size, device=device, ctx=ctx
        )
        record.update(method.describe())
        record["lr"] = epoch_lrs
        if pruner is not None:
            sp = pruner.sparsity()
            record["sparsity"] = {"layers": sp["layers"], "total": sp["total"]}
            masks = pruner.masks()
            record["mask_flips"] = mask_flips(last_masks, masks)
            last_masks = masks
            if cfg.log.mask_metrics:
                t_metrics = time.perf_counter()
                record["mask_metrics"] = _mask_metrics(pruner, cfg, epoch)
                record["metrics_seconds"] = time.perf_counter() - t_metrics
        record["train_seconds"] = train_seconds
        record["seconds"] = time.perf_counter() - t0
        history.append(record)

        if ctx.main:
            assert out_dir is not None
            with open(out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if writer is not None:
                _write_tensorboard(writer, record)
        rng_states = _gather_rng(ctx)
        if ctx.main and cfg.log.checkpoint:
            assert out_dir is not None
            save_checkpoint(
                out_dir / "checkpoint.pt",
                {
                    "config": cfg.to_dict(),
                    "model": model.state_dict(),
                    "optimizer": opts.state_dict(),
                    "schedulers": [s.state_dict() for s in schedulers],
                    "method": method.state_dict(),
                    "rng": rng_states,
                    "epoch": epoch + 1,
                    "step": step,
                    "steps_per_epoch": steps_per_epoch,
                    "world_size": ctx.world_size,
                    "history": history,
                },
            )
        line = (
            f"epoch {epoch + 1:>3}/{cfg.train.epochs}  loss {record['train_loss']:.4f}  "
            f"train {100 * record['train_acc']:.2f}%  "
            + (f"val {100 * record['val_acc']:.2f}%  " if "val_acc" in record else "")
            + f"test {100 * record['test_acc']:.2f}%  "
            + (f"tau {record['temperature']:.3g}  " if "temperature" in record else "")
            + f"{record['seconds']:.1f}s"
        )
        _log(line, ctx, quiet)

    finished = bool(history) and history[-1]["epoch"] >= cfg.train.epochs
    summary: dict[str, Any] = {}
    if finished:
        files = [f.to_dict() for f in splits.info.files]
        summary = _finish(cfg, model, method, history, out_dir, ctx, steps_per_epoch, files)
    if writer is not None:
        writer.close()
    if ctx.enabled:
        fingerprints = _rank_fingerprints(model, pruner, ctx)
        if summary:
            summary["ranks"] = fingerprints
            if ctx.main and out_dir is not None:
                write_json(out_dir / "summary.json", summary)
        dist.barrier()
        if ctx.owns_group:
            dist.destroy_process_group()
    return RunResult(out_dir, history, summary, model)


def _rank_fingerprints(
    model: nn.Module, pruner: dpp.Pruner | None, ctx: DistContext
) -> list[dict[str, Any]]:
    """Per-rank checksums: parameters and deterministic masks must agree across ranks, while
    a mask sampled in training mode differs (every rank draws its own)."""

    def digest(tensors: list[torch.Tensor]) -> str:
        import hashlib

        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    mine: dict[str, Any] = {"rank": ctx.rank, "params": digest(list(model.state_dict().values()))}
    if pruner is not None:
        mine["masks"] = digest(list(pruner.masks().values()))
        with torch.no_grad():
            layer = next(iter(pruner.layers.values()))
            if layer.dpp is not None:
                mine["sampled_mask"] = digest([layer.dpp.sample(layer.weight)])
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def _gather_rng(ctx: DistContext) -> list[dict[str, Any]]:
    state = capture_rng()
    if not ctx.enabled:
        return [state]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _mask_metrics(pruner: dpp.Pruner, cfg: RunConfig, epoch: int) -> dict[str, Any]:
    from dpp.metrics import model_metrics

    return model_metrics(pruner, samples=cfg.log.metrics_samples, seed=mix_seed(cfg.seed, 2, epoch))


def _tensorboard(cfg: RunConfig, out_dir: Path | None) -> Any:
    if not cfg.log.tensorboard or out_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError(
            "log.tensorboard = true needs the tensorboard package: pip install 'dpp[tensorboard]'"
        ) from None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _write_tensorboard(writer: Any, record: dict[str, Any]) -> None:
    step = record["epoch"]
    for key in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "temperature",
        "noise_scale",
        "seconds",
    ):
        if key in record:
            writer.add_scalar(key, record[key], step)
    for name, lr in record.get("lr", {}).items():
        writer.add_scalar(f"lr/{name}", lr, step)
    flips = record.get("mask_flips")
    if flips:
        writer.add_scalar("mask_flips/total", flips["total"], step)
    sp = record.get("sparsity")
    if sp:
        writer.add_scalar("sparsity/total", sp["total"], step)
        for name, value in sp["layers"].items():
            writer.add_scalar(f"sparsity/{name}", value, step)
    mm = record.get("mask_metrics")
    if mm:
        for name, values in mm.get("layers", {}).items():
            for key in ("confidence", "diversity"):
                if key in values:
                    writer.add_scalar(f"{key}/{name}", values[key], step)


def _finish(
    cfg: RunConfig,
    model: nn.Module,
    method: TrainingMethod,
    history: list[dict[str, Any]],
    out_dir: Path | None,
    ctx: DistContext,
    steps_per_epoch: int,
    data_files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pruner = method.pruner
    last = history[-1]
    counts = method.count_parameters()
    if counts is None and pruner is not None:
        counts = pruner.parameter_counts()
    if counts is None:
        counts = (sum(p.numel() for p in model.parameters()),) * 2
    dense, kept = counts
    summary: dict[str, Any] = {
        "name": cfg.name,
        "method": cfg.method,
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "seed": cfg.seed,
        "epochs": cfg.train.epochs,
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "params_dense": dense,
        "params_kept": kept,
        "seconds_per_epoch": sum(r["train_seconds"] for r in history) / len(history),
        "run_dir": str(out_dir) if out_dir is not None else None,
        "data_files": data_files or [],  # every data file read, with its sha256
    }
    if "val_acc" in last:
        summary["val_acc"] = last["val_acc"]
    if pruner is not None:
        summary["layers"] = [row.to_dict() for row in pruner.rows()]
    final_model = model
    if pruner is not None:
        baked = bake(pruner)  # a finalized copy; training state stays as it is
        final_model = baked.model
        summary["storage"] = storage_report(baked).to_dict()
    elif getattr(method, "finalize", None) is not None:
        final_model = method.finalize()  # type: ignore[attr-defined]
    if ctx.main and out_dir is not None:
        save_weights(out_dir / "model.safetensors", final_model.state_dict())
        write_json(out_dir / "summary.json", summary)
        with open(out_dir / "metrics.jsonl", "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "event": "final",
                        **{k: v for k, v in summary.items() if k not in ("layers", "storage")},
                    }
                )
                + "\n"
            )
    return summary


# ----------------------------------------------------------------------------- loading runs
@dataclass
class LoadedRun:
    """A run rebuilt from its checkpoint: config, model (with masks), method, checkpoint."""

    cfg: RunConfig
    model: nn.Module
    method: TrainingMethod
    checkpoint: dict[str, Any]
    path: Path
    splits: Splits | None = None

    @property
    def pruner(self) -> dpp.Pruner | None:
        return self.method.pruner


def load_run(
    path: str | os.PathLike[str], *, load_data: bool = True, device: str = "cpu"
) -> LoadedRun:
    """Rebuild a run's model and pruner from a run directory or checkpoint (eval mode)."""
    torch_device = _device(device, DistContext(), key="--device")
    ckpt_path = resolve_checkpoint(path)
    checkpoint = load_checkpoint(ckpt_path)
    cfg = _saved_config(ckpt_path, checkpoint)
    splits = None
    if load_data:
        splits = load_dataset(
            cfg.data.dataset, data_dir=cfg.data.data_dir, val_size=cfg.data.val_size
        )
        info = splits.info
    else:
        from .data import dataset_info

        info = dataset_info(cfg.data.dataset)
    torch.manual_seed(cfg.seed)
    model = create_model(
        cfg.model.name, info.num_classes, input_shape=info.input_shape, **cfg.model.kwargs
    )
    method = create_method(cfg, model, int(checkpoint["steps_per_epoch"]))
    method.load_state_dict(checkpoint["method"])
    model.load_state_dict(checkpoint["model"])
    model.to(torch_device).eval()
    return LoadedRun(cfg, model, method, checkpoint, ckpt_path, splits)


def run_summary_table(summary: dict[str, Any]) -> str:
    """The table ``dpp demo`` and ``dpp train`` print at the end of a run."""
    from .tables import format_table

    parts = []
    if summary.get("layers"):
        rows = [
            [
                r["layer"],
                r["granularity"],
                f"{r['k']}/{r['n']}" if r["k"] not in (None, "-") else "dense",
                f"{r['density']:.3f}",
                f"{r['kept']:,}/{r['weights']:,}",
            ]
            for r in summary["layers"]
        ]
        header = ["layer", "granularity", "k/n", "density", "kept"]
        parts.append(format_table(rows, header, align="llrrr"))
    dense, kept = summary["params_dense"], summary["params_kept"]
    facts = [
        [
            "parameters",
            f"{dense:,} dense, {kept:,} kept ({100 * kept / dense:.2f}%, "
            f"{dense / kept:.1f}x fewer)",
        ]
    ]
    # storage_report(...).to_dict() keeps the ratio under "total"
    compression = (summary.get("storage") or {}).get("total", {}).get("compression_ratio")
    if compression is not None:
        facts.append(
            [
                "storage",
                f"{compression:.1f}x smaller than dense fp32 (packed k-of-n, indices included)",
            ]
        )
    facts.append(["test accuracy", f"{100 * summary['test_acc']:.2f}%"])
    if "val_acc" in summary:
        facts.append(["val accuracy", f"{100 * summary['val_acc']:.2f}%"])
    facts.append(["time per epoch", f"{summary['seconds_per_epoch']:.2f}s"])
    facts.append(["run directory", str(summary["run_dir"])])
    parts.append(format_table(facts, fmt="plain", align="ll"))
    return "\n\n".join(parts)
