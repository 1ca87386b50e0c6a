"""The grid runner (`dpp compare`) and the baseline methods it compares."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from dpp.experiments import compare
from dpp.experiments.baselines import BASELINES, GradualKOfN
from dpp.experiments.cli import main
from dpp.experiments.compare import load_grid, results_table, run_grid
from dpp.experiments.runconfig import ConfigError, RunConfig

BASE = """
name = "g"
data = { dataset = "digits", batch_size = 64 }
model = { name = "lenet300" }
train = { epochs = 2, logit_lr = 0.01 }
pruning = { density = 0.1, noise_scale = 0.3, overrides = { fc3 = { density = 0.5 } } }
log = { progress = "off", metrics_samples = 4 }
"""


def _grid(tmp_path: Path, methods: str) -> Path:
    (tmp_path / "base.toml").write_text(BASE)
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f"""
name = "tiny"
base = "base.toml"
output_dir = "{tmp_path / "out"}"
seeds = [0]
dense_epochs = 1
[[settings]]
label = "90%"
set = ["pruning.density=0.1"]
[[settings]]
label = "2:4"
set = ["pruning.granularity=block", "pruning.block_size=4", "pruning.density=null", "pruning.k=2"]
{methods}
"""
    )
    return grid


METHODS = """
[[methods]]
label = "dense"
reference = true
set = ["method=dense"]
[[methods]]
label = "one-shot"
from_dense = true
set = ["method=magnitude_kofn"]
[[methods]]
label = "DPP"
set = ["method=dpp"]
"""


def test_grid_expands_runs_with_dense_starts_and_equal_budgets(tmp_path):
    """A grid expands to its runs; from-dense methods keep the total epoch budget."""
    grid = load_grid(_grid(tmp_path, METHODS))
    ids = [r.run_id for r in grid.runs]
    assert ids[0] == "dense1ep-s0"  # the dense start comes first
    assert "reference-dense-s0" in ids and "90-one-shot-s0" in ids and "2-4-dpp-s0" in ids
    assert len(ids) == 1 + 1 + 2 * 2
    one_shot = next(r for r in grid.runs if r.run_id == "90-one-shot-s0")
    assert one_shot.needs == "dense1ep-s0"
    assert RunConfig.from_dict(one_shot.config).train.epochs == 1
    assert RunConfig.from_dict(grid.runs[0].config).train.epochs == 1
    dpp_run = next(r for r in grid.runs if r.run_id == "90-dpp-s0")
    assert RunConfig.from_dict(dpp_run.config).train.epochs == 2


@pytest.mark.slow
def test_grid_runs_resumably_and_tabulates(tmp_path, capsys):
    """run_grid trains every run once (a second call trains nothing) and tabulates them."""
    path = _grid(tmp_path, METHODS)
    grid = load_grid(path)
    run_grid(grid)
    first = capsys.readouterr().out
    assert first.count("test ") == len(grid.runs)
    for spec in grid.runs:
        assert (spec.run_dir(grid) / "summary.json").is_file()
    run_grid(load_grid(path))
    assert capsys.readouterr().out == ""  # nothing left to do
    table = results_table(grid)
    summary = json.loads((grid.output_dir / "90-dpp-s0" / "summary.json").read_text())
    assert f"{100 * summary['test_acc']:.2f}" in table
    assert table.count("\n") == 2 + 1 + 2 * 2 - 1  # header, rule, reference, 2x2 rows


def test_compare_cli_dry_run_lists_status(tmp_path, capsys):
    """`dpp compare --dry-run` lists every run with its status without training."""
    assert main(["compare", str(_grid(tmp_path, METHODS)), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(line.startswith("todo") for line in lines)


def test_grid_rejects_unknown_keys(tmp_path):
    """An unknown key in a grid or one of its methods is a ConfigError listing valid keys."""
    path = _grid(tmp_path, METHODS + '\n[[methods]]\nlabel = "x"\nsets = []\n')
    valid = r"methods\[\d\]\.sets: unknown key \(did you mean 'set'\?\); valid keys in "
    with pytest.raises(ConfigError, match=valid + r".*label, set, from_dense, reference, seeds"):
        load_grid(path)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('seeds = ["a"]\n', ["seeds[0]: must be an integer"]),
        ("dense_epochs = 0\n", ["dense_epochs: must be > 0"]),
        ("name = 3\n", ["name: must be a string"]),
        ("sed = [1]\n", ["sed: unknown key (did you mean 'seeds'?)"]),
    ],
)
def test_grid_values_are_type_checked(tmp_path, extra, words):
    """A grid key with a wrong type or value: a ConfigError naming the file and the key."""
    text = _grid(tmp_path, METHODS).read_text()
    path = tmp_path / "bad.toml"
    path.write_text(
        extra
        + "\n".join(
            line for line in text.splitlines() if not line.startswith(extra.split()[0] + " ")
        )
    )
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_trains_and_keeps_the_constraint(tmp_path, method):
    """Each baseline trains and its final weights keep the k-of-n (or global) count."""
    from dpp.experiments.trainer import train

    (tmp_path / "base.toml").write_text(BASE)
    dense = train(
        RunConfig.from_dict({**_load(tmp_path), "method": "dense", "output_dir": str(tmp_path)}),
        run_dir=tmp_path / "dense",
        quiet=True,
    )
    cfg = {**_load(tmp_path), "method": method, "output_dir": str(tmp_path)}
    if method.startswith("magnitude"):
        cfg["train"] = {**cfg["train"], "init_from": str(dense.run_dir)}
    result = train(RunConfig.from_dict(cfg), run_dir=tmp_path / method, quiet=True)
    if method != "magnitude_global":  # global pruning of a 2-epoch model may empty fc2
        assert result.summary["test_acc"] > 0.3
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / method / "model.safetensors"))
    nonzero = {name: int((state[f"{name}.weight"] != 0).sum()) for name in ("fc1", "fc2", "fc3")}
    if method == "magnitude_global":
        assert sum(nonzero.values()) <= 300 * 6 + 100 * 30 + 10 * 50
    else:
        rows = (state["fc1.weight"] != 0).sum(1)
        assert int(rows.max()) <= 6  # k = round(0.1 * 64) per neuron (a kept weight may be 0)
        assert result.summary["params_kept"] < result.summary["params_dense"]


def test_gradual_schedule_is_cubic_and_ends_at_k():
    """The gradual method's k follows d + (1-d)(1-p)^3: n before begin, k from end on."""
    from dpp.granularity import GroupLayout

    lay = GroupLayout.for_weight((4, 100), "weight", density=0.1, is_conv=False)
    method = GradualKOfN.__new__(GradualKOfN)
    method.begin_step, method.end_step = 10, 110
    assert method.k_at(lay, 0) == 100 and method.k_at(lay, 10) == 100
    assert method.k_at(lay, 110) == 10 and method.k_at(lay, 500) == 10
    mid = method.k_at(lay, 60)  # p = 0.5: d = 0.1 + 0.9 / 8
    assert mid == pytest.approx(100 * (0.1 + 0.9 * 0.125), abs=1)


def test_srste_gradient_is_dense_plus_decay():
    """SR-STE passes the full gradient to every weight and adds decay * W on pruned ones."""
    from dpp.experiments.baselines import SRSTEMask
    from dpp.granularity import GroupLayout

    lay = GroupLayout.for_weight((2, 4), "block", block_size=4, k=2, is_conv=False)
    source = SRSTEMask(lay, decay=0.5)
    w = torch.tensor([[4.0, -3.0, 0.5, 0.1], [1.0, 2.0, -5.0, 0.2]], requires_grad=True)
    kept = lay.expand(source.sample(w))
    assert kept.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0]]
    source.masked_weight(w, kept).sum().backward()
    expected = torch.ones_like(w) + 0.5 * (1 - kept) * w.detach()
    assert torch.equal(w.grad, expected)


def _load(tmp_path: Path) -> dict:
    from dpp.experiments.runconfig import load_config_file

    return load_config_file(tmp_path / "base.toml")


# ------------------------------------------------------------------ grid workers
def _fake_train(log: Path):
    """A stand-in for trainer.train: logs which process took which run, then finishes it."""

    def train(cfg=None, *, resume=None, run_dir=None, quiet=True):
        run_dir = Path(resume if resume is not None else run_dir)
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {run_dir.name}\n")
        time.sleep(0.02)  # long enough for the other worker to try the same run
        (run_dir / "summary.json").write_text(json.dumps({"test_acc": 0.5}))

    return train


def _worker(grid_path: str, log: str) -> None:
    import dpp.experiments.trainer as trainer

    trainer.train = _fake_train(Path(log))
    compare.POLL_SECONDS = 0.01
    run_grid(load_grid(grid_path))


def _many_runs_grid(tmp_path: Path) -> Path:
    seeds = ", ".join(str(s) for s in range(6))
    path = _grid(tmp_path, METHODS)
    path.write_text(path.read_text().replace("seeds = [0]", f"seeds = [{seeds}]"))
    return path


def test_two_workers_never_take_the_same_run(tmp_path):
    """Two dpp compare workers on one grid together run every run exactly once."""
    path = _many_runs_grid(tmp_path)
    log = tmp_path / "claims.log"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker, args=(str(path), str(log))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    claims = [line.split() for line in log.read_text().splitlines()]
    taken = [run for _, run in claims]
    grid = load_grid(path)
    assert sorted(taken) == sorted(r.run_id for r in grid.runs)  # each once, none missed


def _hold(lock_path: str, ready) -> None:
    from filelock import FileLock

    lock = FileLock(lock_path)
    lock.acquire()  # held until this process is killed
    ready.set()
    time.sleep(60)


def test_claim_is_exclusive_and_dies_with_its_worker(tmp_path):
    """A live worker's claim excludes others; killing the worker frees the run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(run_dir / ".lock"), ready))
    holder.start()
    try:
        assert ready.wait(30)
        assert compare._claim(run_dir) is None
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    lock = compare._claim(run_dir)
    assert lock is not None
    assert compare._claim(run_dir) is None  # and now this worker holds it
    lock.release()


def test_worker_resumes_a_partial_run_left_by_a_dead_worker(tmp_path, monkeypatch):
    """A dead worker's partial run is resumed; finished runs are not trained again."""
    path = _grid(tmp_path, METHODS)
    grid = load_grid(path)
    partial, done = grid.runs[0], grid.runs[1]
    partial.run_dir(grid).mkdir(parents=True)
    (partial.run_dir(grid) / "checkpoint.pt").write_bytes(b"")
    (partial.run_dir(grid) / ".lock").write_text("12345")  # what a dead worker left
    done.run_dir(grid).mkdir(parents=True)
    (done.run_dir(grid) / "summary.json").write_text(json.dumps({"test_acc": 0.5}))
    calls = []

    def train(cfg=None, *, resume=None, run_dir=None, quiet=True):
        target = Path(resume if resume is not None else run_dir)
        calls.append((target.name, resume is not None))
        (target / "summary.json").write_text(json.dumps({"test_acc": 0.5}))

    import dpp.experiments.trainer as trainer

    monkeypatch.setattr(trainer, "train", train)
    run_grid(grid)
    assert (partial.run_id, True) in calls
    assert all(name != done.run_id for name, _ in calls)
    assert len(calls) == len(grid.runs) - 1
