"""The FSDP2 recipe (examples/fsdp2_2of4.py) on two CPU processes with gloo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from digits_runs import subprocess_env
from exit_threads import PRINT_THREADS_AT_EXIT, assert_no_gloo_thread_at_exit

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # two processes under torchrun
ROOT = Path(__file__).resolve().parents[1]
WORLD = 2

# The recipe's main(), then the threads still alive at exit.
ENTRY_THEN_THREADS = f"""
import sys
sys.path.insert(0, {str(ROOT / "examples")!r})
from fsdp2_2of4 import main
main(sys.argv[1])
{PRINT_THREADS_AT_EXIT}
"""


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """``torchrun --nproc_per_node=2`` of examples/fsdp2_2of4.py: (output dir, process)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    entry = tmp / "fsdp_entry.py"
    entry.write_text(ENTRY_THEN_THREADS)
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    cmd = [sys.executable, *torchrun, str(entry), str(tmp / "out")]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=subprocess_env(), cwd=tmp, timeout=240
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return tmp / "out", proc


def test_fsdp2_recipe_gives_a_dense_architecture_state_dict_with_2_of_4_weights(fsdp_run):
    """prune -> fully_shard -> train -> finalize -> full state dict: it loads strictly into
    the dense Llama, every block projection keeps at most 2 of every 4 inputs, and training
    moved the weights."""
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from fsdp2_2of4 import CONFIG
    finally:
        sys.path.pop(0)
    out_dir, _ = fsdp_run
    state = torch.load(out_dir / "pruned_state_dict.pt", weights_only=True)
    torch.manual_seed(0)
    dense = LlamaForCausalLM(CONFIG)
    initial = {k: v.clone() for k, v in dense.state_dict().items()}
    dense.load_state_dict(state, strict=True)
    projections = [k for k in state if k.endswith("_proj.weight")]
    assert len(projections) == 14
    for key in projections:
        kept = (state[key].reshape(-1, 4) != 0).sum(-1)
        assert int(kept.max()) <= 2, key
    assert not torch.equal(state["lm_head.weight"], initial["lm_head.weight"])


def test_fsdp2_recipe_leaves_no_gloo_thread_for_interpreter_shutdown(fsdp_run):
    """Every rank of the recipe joins the process group's worker threads before exit."""
    _, proc = fsdp_run
    assert_no_gloo_thread_at_exit(proc.stderr, WORLD)
