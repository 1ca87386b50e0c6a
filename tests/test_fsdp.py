"""The FSDP2 recipe (examples/fsdp2_2of4.py) on two CPU processes with gloo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from digits_runs import subprocess_env

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fsdp2_recipe_gives_a_dense_architecture_state_dict_with_2_of_4_weights(tmp_path):
    """prune -> fully_shard -> train -> finalize -> full state dict: it loads strictly into
    the dense Llama, every block projection keeps at most 2 of every 4 inputs, and training
    moved the weights."""
    from transformers import LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from fsdp2_2of4 import CONFIG
    finally:
        sys.path.pop(0)
    env = subprocess_env()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "examples" / "fsdp2_2of4.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240, check=False
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    state = torch.load(tmp_path / "pruned_state_dict.pt", weights_only=True)
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
