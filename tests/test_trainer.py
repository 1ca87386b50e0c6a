"""The experiment trainer on sklearn's digits: run directory, records, exact resume, atomicity."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dpp
from digits_runs import digits, subprocess_env, write_config
from dpp.experiments.checkpoint import load_checkpoint
from dpp.experiments.data import load_dataset
from dpp.experiments.errors import CheckpointError, ConfigError, ResumeError
from dpp.experiments.models import create_model, num_parameters
from dpp.experiments.runconfig import RunConfig, load_run_config
from dpp.experiments.trainer import DistContext, _check_world_size, evaluate, train

BATCH = 64
TIMING_KEYS = {"seconds", "train_seconds", "metrics_seconds"}
EPOCH_KEYS = {
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "temperature",
    "noise_scale",
    "lr",
    "sparsity",
    "seconds",
    "mask_metrics",
    "mask_flips",
}


@pytest.fixture(autouse=True)
def _restore_flush_denormal():
    """train() turns on flush-denormal for CPU runs; give the default back to later tests."""
    yield
    torch.set_flush_denormal(False)


def digits_config(output_dir: Path, *assignments: str) -> RunConfig:
    return RunConfig.from_dict(digits(f"output_dir={output_dir}", *assignments))


def digits_splits(val_size: int = 0):
    return load_dataset("digits", val_size=val_size)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Recursive equality: tensors with torch.equal, arrays with array_equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ------------------------------------------------------------------ one epoch
@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("one_epoch")
    cfg = digits_config(out)
    result = train(cfg, quiet=True)
    torch.set_flush_denormal(False)
    return cfg, result


@pytest.mark.slow
def test_run_directory_holds_every_file(one_epoch):
    """A finished run writes config, metrics, checkpoint, weights and summary, no temp files."""
    cfg, result = one_epoch
    run_dir = result.run_dir
    assert run_dir is not None and run_dir.parent == Path(cfg.output_dir)
    names = {p.name for p in run_dir.iterdir()}
    assert names >= {
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.pt",
        "model.safetensors",
        "summary.json",
    }
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]


@pytest.mark.slow
def test_saved_config_loads_back_equal(one_epoch):
    """config.yaml holds the resolved config: loading it gives an equal RunConfig."""
    cfg, result = one_epoch
    assert load_run_config(result.run_dir / "config.yaml") == cfg
    assert RunConfig.from_dict(load_checkpoint(result.run_dir / "checkpoint.pt")["config"]) == cfg


@pytest.mark.slow
def test_epoch_record_has_the_documented_keys(one_epoch):
    """metrics.jsonl: an epoch record with the documented, consistent values, then final."""
    _, result = one_epoch
    records = read_records(result.run_dir)
    assert [r["event"] for r in records] == ["epoch", "final"]
    rec = records[0]
    assert rec.keys() >= EPOCH_KEYS, EPOCH_KEYS - rec.keys()
    assert "val_loss" not in rec and "val_acc" not in rec
    assert rec == json.loads(json.dumps(result.history[0]))
    batches = math.ceil(len(digits_splits().train) / BATCH)
    assert rec["epoch"] == 1 and rec["step"] == batches
    for key in ("train_acc", "test_acc"):
        assert 0.0 <= rec[key] <= 1.0
    assert rec["train_loss"] > 0 and rec["test_loss"] > 0 and rec["seconds"] > 0
    assert set(rec["lr"]) == {"weights", "logits"}
    # temperature: linear 2 -> 0.5 over 2 epochs, so half way after one epoch
    assert rec["temperature"] == pytest.approx(2.0 + (0.5 - 2.0) * 0.5)
    assert rec["noise_scale"] == pytest.approx(dpp.DPPConfig().noise_scale.value(0))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    rows = {r["layer"]: r for r in summary["layers"]}
    assert set(rec["sparsity"]["layers"]) == set(rows) == {"fc1", "fc2", "fc3"}
    for name, row in rows.items():
        assert rec["sparsity"]["layers"][name] == pytest.approx(1 - row["k"] / row["n"], abs=1e-6)
    weights = sum(r["weights"] for r in rows.values())
    kept = sum(r["kept"] for r in rows.values())
    assert rec["sparsity"]["total"] == pytest.approx(1 - kept / weights)
    assert set(rec["mask_metrics"]["layers"]) == set(rows)
    assert set(rec["mask_flips"]["layers"]) == set(rows)
    assert 0.0 < rec["mask_flips"]["total"] <= 1.0  # an epoch of learning moves the masks
    final = records[1]
    assert final["test_acc"] == summary["test_acc"] == rec["test_acc"]


@pytest.mark.slow
def test_epoch_schedule_counts_batches_per_epoch(one_epoch):
    """temperature = {..., epochs=2} runs over 2 * (batches per epoch) pruner steps."""
    _, result = one_epoch
    ckpt = load_checkpoint(result.run_dir / "checkpoint.pt")
    batches = math.ceil(len(digits_splits().train) / BATCH)
    assert ckpt["steps_per_epoch"] == batches
    pruner_state = ckpt["method"]["pruner"]
    assert pruner_state["config"]["temperature"]["steps"] == 2 * batches
    assert pruner_state["step"] == batches == ckpt["step"]


@pytest.mark.slow
def test_finalized_weights_load_into_the_dense_model(one_epoch):
    """model.safetensors loads strictly into a fresh dense model that scores the run's test_acc."""
    _, result = one_epoch
    summary = json.loads((result.run_dir / "summary.json").read_text())
    splits = digits_splits()
    dense = create_model("lenet300", splits.info.num_classes, input_shape=splits.info.input_shape)
    dense.load_state_dict(load_file(str(result.run_dir / "model.safetensors")), strict=True)
    for row in summary["layers"]:
        nonzero_per_neuron = (dense.get_submodule(row["layer"]).weight != 0).sum(1)
        assert int(nonzero_per_neuron.max()) <= row["k"]
    _, acc = evaluate(dense, splits.test)
    assert acc == summary["test_acc"] == result.test_acc
    with torch.no_grad():
        dense.eval()
        correct = int((dense(splits.test.images).argmax(1) == splits.test.labels).sum())
    assert correct / len(splits.test) == summary["test_acc"]


@pytest.mark.slow
def test_summary_counts_parameters(one_epoch):
    """summary.json: dense parameters of the architecture, kept = dense - pruned weights."""
    _, result = one_epoch
    summary = json.loads((result.run_dir / "summary.json").read_text())
    info = digits_splits().info
    dense = num_parameters(create_model("lenet300", info.num_classes, input_shape=info.input_shape))
    assert summary["params_dense"] == dense
    removed = sum(r["weights"] - r["kept"] for r in summary["layers"])
    assert summary["params_kept"] == dense - removed
    assert summary["storage"]["total"]["compression_ratio"] > 1
    assert summary["epochs"] == 1 and summary["run_dir"] == str(result.run_dir)


# ------------------------------------------------------------------ resume
# sgd for the weights, adam for the logits (two optimizers), a step LR schedule, clipping
SGD_STEP = (
    "train.optimizer=sgd",
    "train.lr=0.05",
    "train.nesterov=true",
    "train.weight_decay=1e-4",
    "train.logit_optimizer=adam",
    "train.logit_lr=1e-2",
    "train.lr_schedule=step",
    "train.lr_milestones=[1]",
    "train.grad_clip=1.0",
    "train.label_smoothing=0.1",
    "log.progress=on",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "extra"),
    [("dpp", ()), ("dense", ()), ("dpp", SGD_STEP)],
    ids=["dpp", "dense", "dpp-sgd-step"],
)
def test_resume_is_bit_exact(tmp_path: Path, method: str, extra: tuple[str, ...]):
    """2 epochs in one go == 1 epoch, stop, resume: weights, logits, optimizer, records equal."""
    sets = [
        f"method={method}",
        "train.epochs=2",
        "train.lr_schedule=cosine",
        "pruning.entropy_weight=1e-3",
        "pruning.noise_scale={kind: linear, start: 1.0, end: 0.2, epochs: 2}",
        *extra,
    ]
    quiet = "log.progress=on" not in extra  # progress bars must not change the result
    straight = train(digits_config(tmp_path, *sets), run_dir=tmp_path / "straight", quiet=quiet)
    first = train(
        digits_config(tmp_path, *sets), run_dir=tmp_path / "split", quiet=quiet, stop_after_epochs=1
    )
    assert first.summary == {} and len(first.history) == 1
    assert not (tmp_path / "split" / "summary.json").exists()
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["epoch"] == 1
    resumed = train(resume=tmp_path / "split", quiet=quiet)
    assert resumed.run_dir == tmp_path / "split"

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    if method == "dpp":
        assert any(k.endswith(".dpp.logits") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    test = digits_splits().test
    straight.model.eval()
    resumed.model.eval()
    with torch.no_grad():
        assert torch.equal(straight.model(test.images), resumed.model(test.images))

    # the schedules moved between the epochs, so their restored state mattered
    lrs = [r["lr"]["weights"] for r in straight.history]
    assert lrs[0] != lrs[1]
    if method == "dpp":
        assert straight.history[0]["temperature"] != straight.history[1]["temperature"]
    assert without_timing(straight.history) == without_timing(resumed.history)
    # metrics.jsonl and summary.json agree too, up to timing and the run directory
    logs = [read_records(tmp_path / d) for d in ("straight", "split")]
    sums = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("straight", "split")]
    for records, summary in zip(logs, sums, strict=True):
        assert [r["event"] for r in records] == ["epoch", "epoch", "final"]
        for entry in (records[-1], summary):
            del entry["seconds_per_epoch"], entry["run_dir"]
    assert without_timing(logs[0]) == without_timing(logs[1])
    assert sums[0] == sums[1]

    ca = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    cb = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert len(ca["optimizer"]) == (2 if "train.logit_optimizer=adam" in extra else 1)
    for key in ("model", "optimizer", "schedulers", "method", "rng", "epoch", "step"):
        assert_identical(ca[key], cb[key], key)
    assert_identical(
        load_file(str(tmp_path / "straight" / "model.safetensors")),
        load_file(str(tmp_path / "split" / "model.safetensors")),
    )


@pytest.mark.slow
def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch):
    """A checkpoint write failing half-way leaves the previous checkpoint and no temp file;
    a killed write's temp file is removed on resume."""
    run_dir = tmp_path / "run"
    train(
        digits_config(tmp_path, "train.epochs=2"), run_dir=run_dir, quiet=True, stop_after_epochs=1
    )
    ckpt = run_dir / "checkpoint.pt"
    before = ckpt.read_bytes()
    files_before = {p.name for p in run_dir.iterdir()}

    real_write_bytes = Path.write_bytes
    failed = []

    def write_half_then_fail(self: Path, data: bytes) -> int:
        if self.name.startswith(f".{ckpt.name}."):
            real_write_bytes(self, data[: len(data) // 2])
            failed.append(self)
            raise OSError("disk full (simulated)")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        train(resume=run_dir, quiet=True)
    monkeypatch.undo()

    assert failed and not failed[0].exists()
    assert ckpt.read_bytes() == before
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert {p.name for p in run_dir.iterdir()} == files_before  # no temp file left

    # a write killed mid-way (no cleanup ran) leaves its temp file: resume removes it
    stale = run_dir / f".{ckpt.name}.killed.tmp"
    stale.write_bytes(before[: len(before) // 3])
    # the run continues from the intact checkpoint and logs every epoch once
    result = train(resume=run_dir, quiet=True)
    assert not stale.exists()
    assert [r["epoch"] for r in read_records(run_dir) if r["event"] == "epoch"] == [1, 2]
    assert result.summary["epochs"] == 2


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path):
    """`dpp train` killed with SIGKILL after a checkpoint, then resumed: the same weights and
    records as a run that was never interrupted."""
    epochs = 3
    config = write_config(tmp_path / "run.yaml", f"train.epochs={epochs}", "log.mask_metrics=false")
    killed = tmp_path / "killed"
    argv = ["train", "--config", str(config), "--run-dir", str(killed), "-q"]
    child = subprocess.Popen(
        [sys.executable, "-m", "dpp", *argv], env=subprocess_env(), stderr=subprocess.PIPE
    )
    ckpt = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err.decode()
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < epochs and not (killed / "summary.json").exists()

    resumed = train(resume=killed, quiet=True)
    straight = train(load_run_config(config), run_dir=tmp_path / "straight", quiet=True)
    assert [r["epoch"] for r in read_records(killed) if r["event"] == "epoch"] == list(
        range(1, epochs + 1)
    )
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert_identical(
        load_file(str(killed / "model.safetensors")),
        load_file(str(tmp_path / "straight" / "model.safetensors")),
    )


@pytest.mark.slow
def test_no_checkpoint_when_disabled(tmp_path: Path):
    """log.checkpoint = false writes no checkpoint.pt, and resume says why it cannot."""
    run_dir = tmp_path / "run"
    train(
        digits_config(tmp_path, "method=dense", "log.checkpoint=false"), run_dir=run_dir, quiet=True
    )
    assert not (run_dir / "checkpoint.pt").exists()
    assert (run_dir / "summary.json").exists()
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(resume=run_dir, quiet=True)


# ------------------------------------------------------------------ init_from, validation
@pytest.mark.slow
def test_init_from_dense_run_starts_from_its_weights(tmp_path: Path):
    """train.init_from (a dense run directory or its checkpoint) loads the dense weights,
    verified: a missing or damaged source is an error before the run directory exists."""
    dense_dir = tmp_path / "dense"
    train(digits_config(tmp_path, "method=dense"), run_dir=dense_dir, quiet=True)
    dense_weights = load_file(str(dense_dir / "model.safetensors"))

    scratch = train(digits_config(tmp_path), run_dir=tmp_path / "scratch", stop_after_epochs=0)
    assert not torch.equal(scratch.model.state_dict()["fc1.weight"], dense_weights["fc1.weight"])
    for i, source in enumerate((dense_dir, dense_dir / "checkpoint.pt")):
        cfg = digits_config(tmp_path)
        cfg.train.init_from = str(source)
        start = train(cfg, run_dir=tmp_path / f"init{i}", quiet=True, stop_after_epochs=0)
        state = start.model.state_dict()
        for key, value in dense_weights.items():
            assert torch.equal(state[key], value), (source, key)

    # a missing source names the key; a damaged model.safetensors is refused, no run written
    cfg = digits_config(tmp_path, f"train.init_from={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"train\.init_from = .*nowhere"):
        train(cfg, run_dir=tmp_path / "bad", quiet=True)
    weights = dense_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged"):
        train(digits_config(tmp_path, f"train.init_from={dense_dir}"), run_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_validation_split_adds_val_metrics(tmp_path: Path):
    """data.val_size holds out images: records and summary gain val_loss/val_acc."""
    val_size = 200
    result = train(digits_config(tmp_path, f"data.val_size={val_size}"), quiet=True)
    rec = result.history[-1]
    assert {"val_loss", "val_acc"} <= rec.keys()
    assert 0.0 <= rec["val_acc"] <= 1.0 and rec["val_loss"] > 0
    assert result.summary["val_acc"] == rec["val_acc"]
    # the held-out images are no longer trained on
    assert rec["step"] == math.ceil((len(digits_splits().train) - val_size) / BATCH)
    assert read_records(result.run_dir)[0]["val_acc"] == rec["val_acc"]


@pytest.mark.parametrize(("saved", "now"), [(1, 2), (2, 1), (4, 2)])
def test_resume_with_another_world_size_says_so(saved: int, now: int):
    """Resuming with another number of processes names both counts and why they matter."""
    with pytest.raises(ResumeError) as err:
        _check_world_size("RUN", {"world_size": saved}, DistContext(world_size=now))
    message = str(err.value)
    assert f"trained with {saved} process(es)" in message and f"resumed with {now}" in message
    assert "steps per epoch" in message and "schedule" in message
    assert f"--nproc_per_node={saved}" in message
    _check_world_size("RUN", {"world_size": now}, DistContext(world_size=now))  # same: fine
