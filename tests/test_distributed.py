"""Two CPU processes under torchrun (gloo): synchronised weights, per-rank masks, rank 0 writes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from digits_runs import subprocess_env, train_argv, write_config
from dpp.experiments.data import load_dataset
from dpp.experiments.errors import ResumeError
from dpp.experiments.trainer import train
from exit_threads import PRINT_THREADS_AT_EXIT, assert_no_gloo_thread_at_exit

pytestmark = pytest.mark.slow  # two processes under torchrun

WORLD = 2
BATCH = 64
FILE_SETTINGS = (
    "name=ddp-digits",
    "train.lr=1e-3",
    "log.metrics_samples=4",
    "pruning.temperature.epochs=1",
)


# ``python -m dpp``'s entry point, then the threads still alive at exit.
ENTRY_THEN_THREADS = f"""
import sys
from dpp.experiments.cli import main
code = main(sys.argv[1:])
{PRINT_THREADS_AT_EXIT}
sys.exit(code)
"""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """``torchrun --nproc_per_node=2`` of dpp's ``train`` command for one epoch: (output dir,
    process)."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_config(tmp / "digits.yaml", *FILE_SETTINGS)
    out_dir = tmp / "runs"
    entry = tmp / "dpp_entry.py"
    entry.write_text(ENTRY_THEN_THREADS)
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    cmd = [sys.executable, *torchrun, str(entry), *train_argv(config, out_dir)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=subprocess_env(), cwd=tmp, timeout=240
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return out_dir, proc


def test_only_rank_0_writes_one_run_directory(ddp_run):
    """Both processes train, but exactly one run directory with one log is created."""
    out_dir, proc = ddp_run
    (run_dir,) = out_dir.iterdir()
    assert (run_dir / "summary.json").is_file() and (run_dir / "checkpoint.pt").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["epoch", "final"]
    assert proc.stdout.count("run directory:") == 1  # only rank 0 logs


def test_no_gloo_thread_is_left_for_interpreter_shutdown(ddp_run):
    """Every rank joins the process group's worker threads before exit (live gloo threads at
    interpreter shutdown are the likely cause of a rank's intermittent SIGABRT at exit)."""
    _, proc = ddp_run
    assert_no_gloo_thread_at_exit(proc.stderr, WORLD)


def test_ranks_agree_on_weights_and_draw_their_own_masks(ddp_run):
    """Per-rank fingerprints: equal parameters and deterministic masks, different sampled masks."""
    out_dir, _ = ddp_run
    (run_dir,) = out_dir.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    ranks = summary["ranks"]
    assert sorted(r["rank"] for r in ranks) == list(range(WORLD))
    assert len({r["params"] for r in ranks}) == 1
    assert len({r["masks"] for r in ranks}) == 1
    assert len({r["sampled_mask"] for r in ranks}) == WORLD


def test_each_rank_trains_on_its_shard(ddp_run):
    """An epoch is ceil(ceil(N / world) / batch) steps: the ranks split the training set."""
    out_dir, _ = ddp_run
    (run_dir,) = out_dir.iterdir()
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    n_train = len(load_dataset("digits").train)
    assert first["step"] == math.ceil(math.ceil(n_train / WORLD) / BATCH)
    assert 0.0 <= first["test_acc"] <= 1.0


def test_resume_with_one_process_says_the_world_size_differs(ddp_run):
    """The 2-process run resumed without torchrun: an error about the world size (not about
    the pruner config), before anything is written."""
    out_dir, _ = ddp_run
    (run_dir,) = out_dir.iterdir()
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    with pytest.raises(ResumeError, match=r"trained with 2 process\(es\) and is resumed with 1"):
        train(resume=run_dir, quiet=True)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
