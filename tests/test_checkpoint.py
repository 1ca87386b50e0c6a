"""Checkpoint files: weights-only loading, digests, damaged files, RNG states, temp files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dpp.experiments import checkpoint as ck
from dpp.experiments.errors import CheckpointError, RunDirError

# A tensor whose bytes occur nowhere else in the file, so a test can find and flip them.
MARKER = torch.arange(4096, dtype=torch.float32) * 0.5 + 1234.25


def make_state() -> dict:
    """A checkpoint dict shaped like the trainer's: model, optimizer, schedulers, RNG, ..."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 3])
    state = {key: 0 for key in ck.CHECKPOINT_KEYS}
    state.update(
        config={"name": "x", "train": {"lr": 0.1, "lr_milestones": [1, 3]}, "pruning": {}},
        model={**model.state_dict(), "marker": MARKER.clone()},
        optimizer=[opt.state_dict()],
        schedulers=[sched.state_dict()],
        method={"pruner": {"step": 7, "config": {"density": 0.1}}},
        rng=[ck.capture_rng()],
        epoch=1,
        step=27,
        history=[{"event": "epoch", "epoch": 1, "test_acc": 0.5}],
    )
    return state


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, make_state())
    return path


def assert_damaged(path: Path, *words: str) -> None:
    """Loading ``path`` fails with a CheckpointError naming the file, the fault and the fix."""
    load = ck.load_weights if path.suffix == ".safetensors" else ck.load_checkpoint
    with pytest.raises(CheckpointError) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message and "Delete it" in message and "earlier copy" in message
    for word in words:
        assert word in message, message


def test_round_trip_and_plain_weights_only_load(ckpt: Path):
    """A checkpoint loads back equal, and torch.load(weights_only=True) reads it as well."""
    state = make_state()
    loaded = ck.load_checkpoint(ckpt)
    assert loaded["epoch"] == 1 and loaded["step"] == 27
    assert loaded["config"] == state["config"] and loaded["history"] == state["history"]
    assert torch.equal(loaded["model"]["marker"], MARKER)
    assert loaded["schedulers"][0]["milestones"] == state["schedulers"][0]["milestones"]
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(raw) >= set(ck.CHECKPOINT_KEYS) | {"digests", "format"}


def test_restored_rng_states_repeat_the_same_draws():
    """capture_rng/restore_rng (through a checkpoint) replay torch, numpy and random draws."""
    state = ck.capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ck.restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_flipped_bit_in_a_tensor_is_detected(ckpt: Path):
    """An exponent bit flipped inside a tensor's bytes: an error naming that tensor."""
    data = bytearray(ckpt.read_bytes())
    at = data.find(MARKER.numpy().tobytes())
    assert at >= 0
    data[at + 4 * 100 + 3] ^= 0x40  # the exponent of element 100 (little-endian float32)
    ckpt.write_bytes(bytes(data))
    assert_damaged(ckpt, "damaged", "model/marker")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_detected(ckpt: Path, keep: float):
    """A checkpoint cut short (a full disk, a copy interrupted) cannot be read: clear error."""
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: int(len(data) * keep)])
    assert_damaged(ckpt, "could not be read")


@pytest.mark.parametrize("key", ["optimizer", "rng", "config", "digests"])
def test_missing_key_is_named(ckpt: Path, key: str):
    """A checkpoint without one of its keys says which one is missing, not a KeyError."""
    state = torch.load(ckpt, weights_only=True)
    del state[key]
    torch.save(state, ckpt)
    assert_damaged(ckpt, "incomplete", key)


def test_missing_nested_tensor_is_detected(ckpt: Path):
    """A tensor removed from the model's state dict no longer matches the digests."""
    state = torch.load(ckpt, weights_only=True)
    del state["model"]["bias"]
    torch.save(state, ckpt)
    assert_damaged(ckpt, "damaged", "model/bias")


def test_edited_plain_value_is_detected(ckpt: Path):
    """A changed number outside the tensors (the epoch) no longer matches the digests."""
    state = torch.load(ckpt, weights_only=True)
    state["epoch"] = 2
    torch.save(state, ckpt)
    assert_damaged(ckpt, "damaged", "plain data")


def test_other_files_are_not_checkpoints(tmp_path: Path):
    """A torch file of another program, a pickle of arbitrary objects, or text: clear errors."""
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert_damaged(other, "not a dpp checkpoint")
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "dpp-checkpoint/2", "obj": Path("x")}, pickled)  # not weights-only
    assert_damaged(pickled, "could not be read")
    text = tmp_path / "text.pt"
    text.write_text("hello")
    assert_damaged(text, "could not be read")
    with pytest.raises(RunDirError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_stale_temp_files_are_removed(tmp_path: Path):
    """Temp files of an interrupted atomic write are removed; every other file stays."""
    ck.atomic_write_bytes(tmp_path / "checkpoint.pt", b"done")
    (tmp_path / ".checkpoint.pt.k3j2.tmp").write_bytes(b"half")
    (tmp_path / ".metrics.jsonl.abcd.tmp").write_bytes(b"")
    (tmp_path / "notes.tmp.txt").write_text("mine")
    removed = ck.remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint.pt.k3j2.tmp", ".metrics.jsonl.abcd.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "notes.tmp.txt"]


# ------------------------------------------------------------------ model.safetensors
def test_weights_file_loads_with_safetensors_and_verifies(tmp_path: Path):
    """save_weights writes plain safetensors (digests in the metadata); load_weights checks."""
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    state = {"fc.weight": MARKER.reshape(64, 64), "fc.bias": torch.zeros(64)}
    ck.save_weights(path, state)
    assert all(torch.equal(load_file(str(path))[k], v) for k, v in state.items())
    assert all(torch.equal(ck.load_weights(path)[k], v) for k, v in state.items())

    data = bytearray(path.read_bytes())
    at = data.find(MARKER.numpy().tobytes()[:64])
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))
    assert_damaged(path, "damaged", "fc.weight")
    path.write_bytes(bytes(data[: len(data) // 2]))
    assert_damaged(path, "could not be read")
