"""Learned 2:4 masks for a Hugging Face Llama, in the MaskLLM regime, on a laptop CPU.

A tiny byte-level ``LlamaForCausalLM`` (built from a config; nothing comes from a hub) is
trained dense for a few hundred steps on the source code of Python's standard library, then
pruned 2:4 in every projection of its decoder layers (the head and the embeddings stay dense):

1. one-shot: magnitude and Wanda masks (Wanda from a forward pass over calibration text);
2. DPP, mask only: the logits start from the Wanda prior (``logit_init="wanda"``), the
   weights are frozen (``pruner.freeze_weights()``), and only the masks learn;
3. the learned masks are saved on their own (``dpp.save_masks``, 1 bit per weight), put back
   onto the dense checkpoint (``dpp.load_masks``), finalized and saved with
   ``save_pretrained``; ``from_pretrained`` gives the pruned model back exactly.

Run:
    python examples/hf_llama_2of4.py [--dense-steps 300] [--mask-steps 200]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import dpp

SEQ = 128
BATCH = 16


def stdlib_bytes(limit: int = 2_000_000) -> torch.Tensor:
    """Bytes of the standard library's ``json``, ``email`` and ``logging`` sources, in order."""
    root = Path(json.__file__).parent.parent
    files = sorted(
        p for pkg in ("json", "email", "logging", "asyncio") for p in (root / pkg).rglob("*.py")
    )
    data = b"".join(p.read_bytes() for p in files)[:limit]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batches(data: torch.Tensor, steps: int, seed: int):
    """``steps`` random batches of ``[BATCH, SEQ]`` byte windows."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=g)
        yield torch.stack([data[s : s + SEQ] for s in start.tolist()])


@torch.no_grad()
def val_loss(model: LlamaForCausalLM, val: torch.Tensor) -> float:
    """Mean next-byte cross entropy (nats) over fixed validation windows."""
    model.eval()
    windows = val[: (len(val) // SEQ) * SEQ].reshape(-1, SEQ)[:64]
    return float(model(windows, labels=windows).loss)


def train(model, optimizer, data, steps, seed, pruner=None) -> None:
    model.train()
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    for ids in batches(data, steps, seed):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if pruner is not None:
            pruner.step()


def main(dense_steps: int = 300, mask_steps: int = 200, out_dir: str | None = None) -> dict:
    torch.manual_seed(0)
    data = stdlib_bytes()
    split = int(0.9 * len(data))
    train_data, val = data[:split], data[split:]
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQ,
        use_cache=False,
    )
    dense = LlamaForCausalLM(config)
    train(dense, torch.optim.AdamW(dense.parameters(), lr=3e-3), train_data, dense_steps, 0)
    results = {"dense": val_loss(dense, val)}
    calibration = [{"input_ids": ids} for ids in batches(train_data, 4, seed=1)]
    two_of_four = {"granularity": "block", "block_size": 4, "k": 2, "logit_init_std": 3.0}

    for prior in ("magnitude", "wanda"):  # one-shot: the prior's mask, no training
        model = copy.deepcopy(dense)
        extra = {"calibration_data": calibration} if prior == "wanda" else {}
        dpp.prune(model, logit_init=prior, **two_of_four, **extra)
        results[f"one-shot {prior}"] = val_loss(model, val)

    model = copy.deepcopy(dense)
    pruner = dpp.prune(
        model, logit_init="wanda", calibration_data=calibration, noise_scale=0.3, **two_of_four
    )
    pruner.freeze_weights()
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=5e-2))
    train(model, optimizer, train_data, mask_steps, seed=2, pruner=pruner)
    results["DPP mask-only (Wanda prior)"] = val_loss(model, val)
    print(pruner)

    out = Path(out_dir or tempfile.mkdtemp())
    dpp.save_masks(pruner, out / "masks.safetensors")
    restored = dpp.load_masks(copy.deepcopy(dense), out / "masks.safetensors")
    restored.finalize()
    restored.model.save_pretrained(out / "pruned")
    reloaded = LlamaForCausalLM.from_pretrained(out / "pruned")
    results["reloaded from save_pretrained"] = val_loss(reloaded, val)
    results["mask file bytes"] = (out / "masks.safetensors").stat().st_size

    width = max(len(k) for k in results)
    for name, value in results.items():
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.4f} nats/byte"
        if isinstance(value, float):
            shown += f"  (ppl {math.exp(value):.3f})"
        print(f"{name:<{width}}  {shown}")
    results["model"] = reloaded
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-steps", type=int, default=300)
    parser.add_argument("--mask-steps", type=int, default=200)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    main(args.dense_steps, args.mask_steps, args.out_dir)
