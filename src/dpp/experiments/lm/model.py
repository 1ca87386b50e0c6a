"""The byte-level Llama of the benchmark, its data order and its validation loss.

Batches are a pure function of ``(seed, step)``: a resumed run, and every method of a
comparison, sees exactly the same windows in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["ModelSpec", "build_model", "evaluate", "train_batch", "val_windows"]


@dataclass(frozen=True)
class ModelSpec:
    """Shape of the byte-level Llama (vocabulary 256, untied head, no dropout)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 384
    seq: int = 256

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=256,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=self.seq,
            tie_word_embeddings=False,
            use_cache=False,
        )


def build_model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """A freshly initialised ``LlamaForCausalLM`` of ``spec`` (same seed, same weights)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(spec.config())


def train_batch(data: np.ndarray, *, step: int, seed: int, batch: int, seq: int) -> torch.Tensor:
    """``[batch, seq]`` byte windows at random offsets, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq, size=batch)
    idx = starts[:, None] + np.arange(seq)[None, :]
    return torch.from_numpy(data[idx].astype(np.int64))


def val_windows(val: np.ndarray, *, seq: int, windows: int, offset: int = 0) -> torch.Tensor:
    """A fixed validation set: ``windows`` non-overlapping windows of ``val``, from window
    ``offset`` on (``offset=0``: the reported set; the next ones: the set settings are tuned
    on, so that the reported numbers are not those the grid picked by)."""
    available = len(val) // seq - offset
    n = min(windows, available)
    if n <= 0:
        raise ValueError(
            f"the validation split ({len(val)} bytes) has no window from window {offset} on"
        )
    start = offset * seq
    return torch.from_numpy(val[start : start + n * seq].reshape(n, seq).astype(np.int64))


LOGITS_PER_BATCH = 2**27
"""Evaluation batches hold at most this many logits (512 MB in float32)."""


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, batch: int = 32) -> dict[str, float]:
    """Validation loss (nats per predicted token: per byte for the byte-level model), its
    standard error over windows, perplexity and bits per token, in float32. The model is
    left in eval mode.

    Args:
        model: a causal LM (``model(ids).logits`` ``[batch, seq, vocab]``).
        windows: ``[windows, seq]`` token ids.
        batch: windows per forward call at most (fewer for a large vocabulary, so that a
            batch's logits stay within :data:`LOGITS_PER_BATCH`).
    """
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = max(1, min(batch, LOGITS_PER_BATCH // (windows.shape[1] * vocab)))
    losses = []
    for i in range(0, len(windows), batch):
        ids = windows[i : i + batch].to(device)
        logits = model(ids, use_cache=False).logits[:, :-1].float()
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        losses.append(loss.reshape(len(ids), -1).mean(1))
    per_window = torch.cat(losses).double()
    mean = float(per_window.mean())
    sem = float(per_window.std() / math.sqrt(len(per_window))) if len(per_window) > 1 else 0.0
    return {
        "val_loss": mean,
        "val_loss_sem": sem,
        "val_ppl": math.exp(mean),
        "val_bpb": mean / math.log(2),
    }
