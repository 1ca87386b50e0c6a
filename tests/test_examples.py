"""The scripts in examples/ run as written and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import dpp

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_transformer_example_learns_2of4_attention_and_mlp(capsys):
    """The transformer example prunes q/k/v/out and the MLP to exactly 2 of every 4 weights,
    keeps the head dense, and still classifies digits far above chance."""
    example = _load("transformer_2of4")
    model, acc = example.main(epochs=6)
    assert acc > 0.5  # 10 classes: chance is 0.1
    pruned = [model.attn.q, model.attn.k, model.attn.v, model.attn.out, model.mlp[0], model.mlp[2]]
    for layer in pruned:
        assert type(layer) is nn.Linear
        blocks = (layer.weight != 0).reshape(layer.out_features, -1, 4).sum(-1)
        assert bool((blocks == 2).all())
    assert bool((model.head.weight != 0).all())
    out = capsys.readouterr().out
    assert "attn.q" in out and "finalized: test accuracy" in out
    if not torch.cuda.is_available():
        assert "2:4 conversion not done" in out


def test_multihead_attention_is_reported_not_silently_skipped():
    """prune() warns, naming the module, that nn.MultiheadAttention's projections stay dense."""
    model = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    with pytest.warns(UserWarning, match=r"MultiheadAttention 'self_attn': not pruned"):
        pruner = dpp.prune(model, density=0.25)
    assert sorted(pruner.layers) == ["linear1", "linear2"]
    plain = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dpp.prune(plain, density=0.5)


@pytest.mark.slow
def test_hf_llama_example_round_trips_its_learned_masks(tmp_path, capsys):
    """The Hugging Face example learns 2:4 masks with frozen weights, saves them as a mask file
    of at most 1 bit per pruned weight, and the save_pretrained/from_pretrained model scores
    exactly what the pruned model scored."""
    pytest.importorskip("transformers")
    example = _load("hf_llama_2of4")
    results = example.main(dense_steps=4, mask_steps=3, out_dir=str(tmp_path))
    assert results["reloaded from save_pretrained"] == results["DPP mask-only (Wanda prior)"]
    model = results["model"]
    for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.mlp.down_proj):
            assert type(proj) is nn.Linear
            assert bool(((proj.weight != 0).reshape(-1, 4).sum(-1) <= 2).all())
    pruned_weights = sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("_proj.weight")
    )
    from safetensors import safe_open

    with safe_open(str(tmp_path / "masks.safetensors"), framework="pt") as f:
        payload = sum(f.get_tensor(key).numel() for key in f.keys())  # noqa: SIM118
    assert payload * 8 <= pruned_weights
    assert "dense by default" in capsys.readouterr().out
