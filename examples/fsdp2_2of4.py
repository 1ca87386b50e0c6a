"""FSDP2 recipe: learn 2:4 masks for a small Llama sharded over processes, save a dense-layout
state dict.

Run with ``torchrun --nproc_per_node=2 examples/fsdp2_2of4.py OUT_DIR`` (gloo on CPU, nccl on
GPUs). The order matters:

1. ``dpp.prune`` the full model first (every rank the same, from the same seed);
2. ``fully_shard`` each decoder layer, then the whole model: the logits are sharded with the
   weights they mask and gathered with them for every forward;
3. train as usual, with ``pruner.step()`` after every optimizer step (each rank draws its own
   masks; gradients of weights and logits are averaged by FSDP);
4. ``pruner.finalize()`` bakes the deterministic masks into the sharded weights, and
   ``get_model_state_dict(..., full_state_dict=True)`` gathers a state dict of the dense
   architecture (no DPP keys), which rank 0 writes.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

import dpp

CONFIG = LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    use_cache=False,
)


def main(out_dir: str, steps: int = 4) -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        train_and_save(out_dir, steps, cuda)
    finally:
        # Every sharded tensor has died with train_and_save's frame; torch's own caches
        # are emptied before the group goes, so that the group goes with it.
        release_dtensor_caches()
        dist.destroy_process_group()


def train_and_save(out_dir: str, steps: int, cuda: bool) -> None:
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    torch.manual_seed(0)  # the same dense model on every rank
    model = LlamaForCausalLM(CONFIG)
    if device is not None:
        model.to(device)
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3, logit_lr=1e-2))
    torch.manual_seed(1 + rank)  # each rank its own batches and masks
    for _ in range(steps):
        ids = torch.randint(0, CONFIG.vocab_size, (4, 16), device=device)
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    model.eval()
    pruner.finalize()
    state = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(out_dir) / "pruned_state_dict.pt")
        print(f"rank 0 wrote {len(state)} tensors, loss {loss.item():.4f}")


def release_dtensor_caches() -> None:
    """Empty torch's DTensor caches before ``destroy_process_group``.

    In torch 2.13 four process-wide caches keep the device mesh of the sharded tensors
    they have seen (the C++ sharding-propagation cache, the redistribute planners, the
    transform plans and the mesh topology), and the mesh keeps its process group:
    destroying the group then leaves gloo's worker threads running until interpreter
    shutdown, where a rank can abort ("terminate called without an active exception").
    Each is emptied where this torch has it, then reference cycles (a sharded module and
    its hooks) are collected.
    """
    from torch.distributed.tensor import _collective_utils, _redistribute

    for clear in (
        getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None),
        getattr(_redistribute, "clear_redistribute_planner_cache", None),
        getattr(getattr(_redistribute, "_gen_transform_infos", None), "cache_clear", None),
        getattr(
            getattr(getattr(_collective_utils, "MeshTopoInfo", None), "build_from_mesh", None),
            "cache_clear",
            None,
        ),
    ):
        if clear is not None:
            clear()
    gc.collect()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fsdp2-out")
