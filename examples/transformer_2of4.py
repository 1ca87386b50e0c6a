"""2:4 sparsity learned by DPP in a small transformer, in a plain PyTorch training loop.

A one-block transformer classifies scikit-learn's 8x8 digits (each image row is a token).
Its attention is built from ``nn.Linear`` q/k/v/out projections, as most transformer code is,
so DPP prunes them together with the feed-forward layers: every block of 4 consecutive
inputs of every output neuron keeps exactly 2 weights (NVIDIA's 2:4 pattern). The classifier
head stays dense. After training, ``finalize()`` bakes the masks in; on a CUDA GPU with 2:4
sparse tensor cores the model converts to ``to_sparse_semi_structured`` weights.

Run:
    python examples/transformer_2of4.py [--epochs 30]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dpp
from dpp import export


class SelfAttention(nn.Module):
    """Multi-head self-attention from four ``nn.Linear`` projections (prunable by DPP)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:  # x: [batch, tokens, dim]
        b, t, d = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TinyTransformer(nn.Module):
    """Row tokens -> embedding -> one pre-norm transformer block -> mean pool -> classes."""

    def __init__(self, tokens: int = 8, width: int = 8, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(width, dim)
        self.position = nn.Parameter(torch.randn(tokens, dim) / math.sqrt(dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:  # x: [batch, 8, 8] pixel rows
        h = self.embed(x) + self.position
        h = h + self.attn(self.norm1(h))
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as ``[N, 8, 8]`` floats in [0, 1]; 1,500 train, the rest test."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1500], y[:1500], x[1500:], y[1500:]


def main(epochs: int = 30, seed: int = 0) -> tuple[nn.Module, float]:
    """Train with DPP at 2:4, finalize, and return the model and its test accuracy."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits()
    model = TinyTransformer()
    # 2 of every 4 inputs in q/k/v/out, the MLP and the embedding; the head stays dense.
    pruner = dpp.prune(model, granularity="block", k=2, block_size=4, exclude=["head"])
    print(pruner.summary())
    optimizer = torch.optim.Adam(pruner.param_groups(lr=2e-3, logit_lr=1e-2))

    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(y_train)).split(64):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruner.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            model.eval()
            with torch.no_grad():
                acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {100 * acc:.1f}%")

    model.eval()
    pruner.finalize()  # plain nn.Linear layers again, 2 of every 4 weights zero
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"finalized: test accuracy {100 * acc:.1f}%")

    try:  # a copy for 2:4 sparse tensor cores (CUDA, compute capability >= 8.0)
        export.to_semi_structured(pruner, dtype=torch.float16)
        print("converted to 2:4 semi-structured sparse weights (fp16, CUDA)")
    except export.SemiStructuredError as err:
        print(f"2:4 conversion not done: {err}")
    return model, acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.seed)
