"""Every Linear-like layer: subclasses of nn.Linear / nn.ConvNd, and transformers' Conv1D.

A subclass whose forward is its parent's is pruned through a twin class (made once per
class); a subclass with its own forward, or any other weight-bearing module DPP cannot mask,
is named in one warning. GPT-2's Conv1D (weight ``[in, out]``) is pruned over its inputs.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dpp
from dpp import export
from dpp.layers import masked_class
from dpp.storage import storage_report

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


class TaggedLinear(nn.Linear):
    """A LoRA-like subclass: extra state, the parent's forward."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o)
        self.register_buffer("scaling", torch.tensor(2.0))
        self.tag = "adapter"


class ScaledLinear(nn.Linear):
    """A subclass with its own forward (a mask inside nn.Linear.forward would be bypassed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight * 2, self.bias)


class MyConv(nn.Conv2d):
    pass


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = MyConv(3, 4, 3)
        self.tagged = TaggedLinear(4 * 4 * 4, 16)
        self.scaled = ScaledLinear(16, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.out(torch.relu(self.scaled(torch.relu(self.tagged(x)))))


def gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, use_cache=False
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_subclass_twin_is_cached_and_keeps_the_user_class():
    """The twin of a subclass is made once, is a subclass of it, and finalize gives it back."""
    assert masked_class(TaggedLinear) is masked_class(TaggedLinear)
    with pytest.warns(
        UserWarning, match=r"(?s)ScaledLinear 'scaled': not pruned.*overrides forward"
    ):
        pruner = dpp.prune(Net(), density=0.5)
    model = pruner.model
    assert isinstance(model.tagged, TaggedLinear) and dpp.is_dpp_layer(model.tagged)
    assert isinstance(model.conv, MyConv) and dpp.is_dpp_layer(model.conv)
    assert model.tagged.tag == "adapter" and "tagged.scaling" in model.state_dict()
    assert set(pruner.layers) == {"conv", "tagged", "out"}
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    before = model(x)
    pruner.finalize()
    assert type(model.tagged) is TaggedLinear and type(model.conv) is MyConv
    assert type(model.scaled) is ScaledLinear
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert [r.type for r in pruner.rows()] == ["MyConv", "TaggedLinear", "Linear"]


def test_one_warning_names_every_module_dpp_cannot_prune():
    """Unprunable weight-bearing modules are named together in a single warning."""
    model = nn.Sequential(
        ScaledLinear(4, 4),
        nn.ConvTranspose1d(4, 4, 1),
        nn.Linear(4, 4),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dpp.prune(model, density=0.5)
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1
    assert "ScaledLinear '0'" in texts[0] and "ConvTranspose1d '1'" in texts[0]
    assert "'2'" not in texts[0]


def test_only_unsupported_layers_say_so():
    """A model whose only weight-bearing layers DPP cannot prune gets an error naming them."""
    with pytest.raises(ValueError, match=r"(?s)no layer DPP can prune.*ScaledLinear '0'.*forward"):
        dpp.prune(nn.Sequential(ScaledLinear(4, 4)), density=0.5)


def test_everything_excluded_says_so():
    """Excluding every prunable layer says exactly that, not 'give a density or k'."""
    with pytest.raises(
        ValueError, match=r"(?s)every prunable layer .* is excluded.*exclude=\['\*'\]"
    ):
        dpp.prune(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), k=1, exclude=["*"])


def test_embedding_is_named_when_a_pattern_asks_for_it():
    """An embedding selected by include is named as not prunable, and so is the cause of the
    nothing-to-prune error."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dpp.prune(model, density=0.5)  # not asked for: no warning
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    with pytest.raises(
        ValueError, match=r"(?s)is excluded.*Embedding '0': not pruned.*table lookup"
    ):
        dpp.prune(model, density=0.5, include=["0"])


# ------------------------------------------------------------------------------ GPT-2 Conv1D
def test_gpt2_conv1d_is_pruned_over_its_inputs():
    """2:4 on a Conv1D keeps 2 of every 4 consecutive inputs of each output unit, and finalize
    gives back a plain Conv1D computing what the pruned model computed."""
    model = gpt2()
    ids = torch.randint(0, 64, (2, 10))
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    conv1d = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 8 and set(conv1d) <= set(pruner.layers)
    assert "lm_head" not in pruner.layers
    layer = model.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(layer, Conv1D) and dpp.is_dpp_layer(layer)
    mask = pruner.masks()["transformer.h.0.attn.c_attn"]
    assert mask.shape == layer.weight.shape == (32, 96)  # [in, out]
    per_block = mask.t().reshape(96, 8, 4).sum(-1)  # each output unit's inputs in blocks of 4
    assert bool((per_block == 2).all())
    model.train()
    model(ids, labels=ids).loss.backward()  # trains: gradients reach weights and logits
    assert layer.dpp.logits.grad is not None and layer.weight.grad is not None
    model.eval()
    with torch.no_grad():
        before = model(ids).logits
    pruner.finalize()
    for name in conv1d:
        module = model.get_submodule(name)
        assert type(module) is Conv1D
        nonzero = (module.weight != 0).t().reshape(module.nf, -1, 4).sum(-1)
        assert int(nonzero.max()) <= 2
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_gpt2_exports_equal_the_finalized_model(tmp_path):
    """save_packed/load_packed, convert_kofn and storage_report handle Conv1D."""
    model = gpt2()
    ids = torch.randint(0, 64, (2, 10))
    pruner = dpp.prune(model, granularity="weight", density=0.25, weight_bits=4)
    with torch.no_grad():
        expected = model(ids).logits
    path = tmp_path / "gpt2.safetensors"
    export.save_packed(pruner, path)
    fresh = gpt2(seed=1)
    export.load_packed(path, fresh)
    fast = export.convert_kofn(pruner)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert type(fast.get_submodule("transformer.h.0.mlp.c_fc")).__name__ == "KOfNLinear"
    entry = storage_report(pruner)["transformer.h.0.mlp.c_fc"]
    assert (entry.kind, entry.module_type, entry.kept_weights) == (
        "pruned",
        "Conv1D",
        32 * 128 // 4,
    )


def test_shrink_of_a_filter_pruned_conv1d_says_it_cannot():
    """shrink() refuses a filter-pruned Conv1D with an error naming the layer."""
    pytest.importorskip("torch_pruning")
    model = gpt2()
    pruner = dpp.prune(
        model, granularity="filter", density=0.5, include=["transformer.h.0.mlp.c_fc"]
    )
    with pytest.raises(ValueError, match=r"layer 'transformer.h.0.mlp.c_fc' is a Conv1D"):
        export.shrink(pruner, torch.randint(0, 64, (1, 8)))


def test_gpt2_2of4_conv1d_layers_are_found_for_semi_structured():
    """The 2:4 check (run on CPU before any GPU conversion) finds GPT-2's Conv1D layers."""
    pruner = dpp.prune(gpt2(), granularity="block", block_size=4, k=2)
    names = export.semi_structured.semi_structured_layers(pruner)
    assert set(names) == set(pruner.layers) and "transformer.h.1.mlp.c_proj" in names


def test_core_does_not_import_transformers():
    """Importing dpp and its exporters does not import transformers (Conv1D is found by name)."""
    import subprocess
    import sys

    code = "import sys, dpp, dpp.export, dpp.bake; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
