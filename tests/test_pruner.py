"""Tests of dpp.prune and the Pruner: finalize, state dicts, reporting, training helpers, errors."""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dpp
from conftest import candidates_all_or_nothing, candidates_kept, dpp_keys, make_nonzero_, topk_hot


def conv2d_net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(4, 8, 3),
            act1=nn.ReLU(),
            conv2=nn.Conv2d(8, 8, 3, groups=2),
            act2=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(32, 6),
        )
    )


def conv1d_net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv1d(4, 8, 3),
            act1=nn.Tanh(),
            conv2=nn.Conv1d(8, 8, 3, groups=4),
            flat=nn.Flatten(),
            fc=nn.Linear(16, 6),
        )
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(12, 16), act=nn.ReLU(), fc2=nn.Linear(16, 8), out=nn.Linear(8, 3))
    )


NETS = {
    # name: (builder, input shape, block size dividing every fan-in)
    "conv2d": (conv2d_net, (4, 6, 6), 4),
    "conv1d": (conv1d_net, (4, 6), 2),
    "mlp": (mlp, (12,), 4),
}


def granularity_options(granularity: str, block_size: int) -> dict:
    return {
        "weight": {"granularity": "weight", "density": 0.3},
        "block": {"granularity": "block", "block_size": block_size, "k": 1},
        "kernel": {"granularity": "kernel", "k": 1, "overrides": {"fc": {"granularity": "weight"}}},
        "filter": {"granularity": "filter", "density": 0.5},
    }[granularity]


FINALIZE_CASES = [
    (net, g)
    for net in NETS
    for g in ("weight", "block", "kernel", "filter")
    if not (net == "mlp" and g == "kernel")
]


def build_pruned(net: str, granularity: str, **extra):
    builder, shape, block = NETS[net]
    dense = make_nonzero_(builder())
    model = copy.deepcopy(dense)
    pruner = dpp.prune(model, **granularity_options(granularity, block), **extra)
    return dense, model, pruner, torch.randn(5, *shape)


# ------------------------------------------------------------------------------ finalize
@pytest.mark.parametrize("net,granularity", FINALIZE_CASES)
def test_finalize_keeps_eval_outputs(net, granularity):
    """After finalize() the model computes bit for bit what the pruned model computes in eval."""
    _, model, pruner, x = build_pruned(net, granularity)
    model.eval()
    expected = model(x)
    pruner.finalize()
    assert torch.equal(model(x), expected)
    model.train()  # plain layers: no sampling left in training mode either
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("net,granularity", FINALIZE_CASES)
def test_finalized_state_dict_loads_into_dense_architecture(net, granularity):
    """The finalized state dict loads into the original dense model (strict) with equal outputs."""
    dense, model, pruner, x = build_pruned(net, granularity)
    model.train()  # finalize uses the deterministic mask whatever the mode
    pruner.finalize()
    model.eval()
    dense.load_state_dict(model.state_dict(), strict=True)
    dense.eval()
    assert torch.equal(dense(x), model(x))
    assert not any(".dpp" in key for key in model.state_dict())


@pytest.mark.parametrize("net,granularity", FINALIZE_CASES)
def test_finalize_restores_plain_classes(net, granularity):
    """After finalize() every layer is exactly its original class, with no DPP attribute left."""
    dense, model, pruner, _ = build_pruned(net, granularity)
    names = list(pruner.layers)
    pruner.finalize()
    for name in names:
        layer = model.get_submodule(name)
        assert type(layer) is type(dense.get_submodule(name))
        assert not dpp.is_dpp_layer(layer)
        assert not hasattr(layer, "dpp") and not hasattr(layer, "dpp_layout")
    assert not any(dpp.is_dpp_layer(m) for m in model.modules())


@pytest.mark.parametrize("net,granularity", FINALIZE_CASES)
def test_finalized_weights_keep_exactly_k_per_group(net, granularity):
    """Finalized weights keep exactly k nonzero candidates per group, those of the record's mask."""
    _, model, pruner, _ = build_pruned(net, granularity)
    layouts = {name: layer.dpp_layout for name, layer in pruner.layers.items()}
    eval_masks = pruner.masks()
    logits = {name: layer.dpp.logits.detach().clone() for name, layer in pruner.layers.items()}
    records = pruner.finalize()
    assert set(records) == set(layouts)
    for name, rec in records.items():
        lay = layouts[name]
        layer = model.get_submodule(name)
        kept = candidates_kept(layer.weight, lay.granularity, lay.block_size)
        assert bool((kept.sum(-1) == lay.k).all()), name
        assert torch.equal(kept, topk_hot(logits[name], lay.k))
        assert candidates_all_or_nothing(layer.weight, lay.granularity)
        assert torch.equal(rec.mask, layer.weight != 0)
        assert torch.equal(rec.mask, eval_masks[name])
        if lay.granularity == "filter":
            assert torch.equal(layer.bias != 0, kept.reshape(-1))
        else:
            assert bool((layer.bias != 0).all())


def test_finalize_replaces_every_alias_of_a_shared_layer():
    """A layer used twice is pruned once, with one mask, and both uses are finalized."""
    shared = nn.Linear(8, 8)
    model = make_nonzero_(nn.Sequential(shared, nn.ReLU(), shared))
    pruner = dpp.prune(model, density=0.5)
    assert list(pruner.layers) == ["0"]
    assert model[0] is model[2] and dpp.is_dpp_layer(model[0])
    model.eval()
    x = torch.randn(3, 8)
    expected = model(x)
    pruner.finalize()
    assert model[0] is model[2] and type(model[0]) is nn.Linear
    assert torch.equal(model(x), expected)


# ------------------------------------------------------------------------------ state dicts
def test_state_dict_keeps_original_keys_and_adds_only_logits():
    """Pruning keeps weight/bias keys and parameter objects; it adds only '<layer>.dpp.logits'."""
    dense = conv2d_net()
    params = dict(dense.named_parameters())
    model = dense  # pruned in place
    dense_keys = set(model.state_dict())
    pruner = dpp.prune(model, density=0.5)
    keys = set(model.state_dict())
    assert dense_keys <= keys
    assert keys - dense_keys == {f"{name}.dpp.logits" for name in pruner.layers}
    for name, p in params.items():
        assert model.get_parameter(name) is p  # an optimizer built before still trains them


def test_dense_checkpoint_loads_with_only_dpp_keys_missing():
    """A dense checkpoint loads into a pruned model (strict=False); only DPP keys are missing."""
    dense = make_nonzero_(conv2d_net())
    model = conv2d_net()
    dpp.prune(model, granularity="kernel", k=2, overrides={"fc": {"granularity": "weight"}})
    result = model.load_state_dict(dense.state_dict(), strict=False)
    assert set(result.missing_keys) == dpp_keys(model)
    assert result.unexpected_keys == []
    for key, value in dense.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("granularity", ["weight", "block", "kernel", "filter"])
def test_pruned_state_dict_restores_eval_outputs(granularity):
    """A pruned model's state dict, loaded into a freshly pruned model, gives identical outputs."""
    _, model, _, x = build_pruned("conv2d", granularity)
    model.eval()
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1234)  # different logits and weights
    fresh = conv2d_net()
    dpp.prune(fresh, **granularity_options(granularity, 4))
    fresh.eval()
    assert not torch.equal(fresh(x), expected)  # also fills any eval-mask cache
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert torch.equal(fresh(x), expected)


def test_deepcopy_and_pickle_keep_eval_outputs():
    """deepcopy and torch.save of a whole pruned model give the same eval outputs."""
    _, model, _, x = build_pruned("conv2d", "weight")
    model.eval()
    expected = model(x)
    clone = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(clone(x), expected) and torch.equal(loaded(x), expected)
    with torch.no_grad():
        clone.conv1.dpp.logits.neg_()
    assert torch.equal(model(x), expected)  # the copy's logits are its own


def test_pruner_state_dict_restores_schedule_step():
    """Pruner.load_state_dict restores the step, the temperature and the layers' tau/noise scale."""
    options = {
        "density": 0.5,
        "temperature": dpp.Schedule("linear", start=5.0, end=0.5, steps=10),
        "noise_scale": dpp.Schedule("cosine", start=1.0, end=0.0, steps=10),
    }
    model = mlp()
    pruner = dpp.prune(model, **options)
    pruner.step(4)
    state = pruner.state_dict()
    fresh_model = mlp()
    fresh = dpp.prune(fresh_model, **options)
    assert fresh.current_step == 0
    fresh.load_state_dict(state)
    assert fresh.current_step == 4
    assert fresh.temperature == pruner.temperature and fresh.noise_scale == pruner.noise_scale
    for layer in fresh.layers.values():
        assert layer.dpp.tau == pruner.temperature
        assert layer.dpp.noise_scale == pruner.noise_scale
    fresh.step()
    assert fresh.current_step == 5


def test_pruner_state_from_other_config_is_rejected():
    """Loading pruner state saved under another config raises, saying how to rebuild it."""
    state = dpp.prune(mlp(), density=0.5).state_dict()
    other = dpp.prune(mlp(), density=0.25)
    with pytest.raises(ValueError, match=r"different DPP config.*DPPConfig.from_dict"):
        other.load_state_dict(state)


# ------------------------------------------------------------------------------ eval masks
def test_pruning_a_model_in_eval_mode_gives_deterministic_masks():
    """A model pruned while in eval mode uses the deterministic top-k mask straight away."""
    model = make_nonzero_(mlp()).eval()
    dpp.prune(model, density=0.25)
    x = torch.randn(4, 12)
    assert torch.equal(model(x), model(x))
    layer = model.fc1
    assert not layer.dpp.training
    w, _ = layer.dpp_weight_bias()
    assert torch.equal(candidates_kept(w, "weight"), topk_hot(layer.dpp.logits, layer.dpp_layout.k))


def test_eval_mask_follows_logit_updates():
    """The eval mask follows the logits after an optimizer step and after a write through .data."""
    model = make_nonzero_(mlp())
    pruner = dpp.prune(model, density=0.25)
    model.eval()
    layer = model.fc1
    x = torch.randn(4, 12)
    model(x)
    opt = torch.optim.SGD(pruner.logits(), lr=100.0)
    layer.dpp.logits.grad = torch.randn_like(layer.dpp.logits)
    opt.step()
    assert torch.equal(layer.dpp_masks(), topk_hot(layer.dpp.logits, layer.dpp_layout.k))
    model(x)
    layer.dpp.logits.data.copy_(torch.randn_like(layer.dpp.logits))
    w, _ = layer.dpp_weight_bias()
    assert torch.equal(candidates_kept(w, "weight"), topk_hot(layer.dpp.logits, layer.dpp_layout.k))


def test_double_precision_model():
    """A pruned model moved to float64 keeps exactly k per group in training and eval."""
    model = make_nonzero_(mlp())
    pruner = dpp.prune(model, k=3)
    model.double()
    x = torch.randn(2, 12, dtype=torch.float64)
    assert model(x).dtype == torch.float64
    for mode in (True, False):
        model.train(mode)
        for layer in pruner.layers.values():
            w, _ = layer.dpp_weight_bias()
            assert w.dtype == torch.float64
            assert bool((candidates_kept(w, "weight").sum(-1) == 3).all())


# ------------------------------------------------------------------------------ transformers
@pytest.mark.filterwarnings("ignore:dpp.prune")
def test_transformer_prunes_feedforward_not_out_proj():
    """In a TransformerEncoderLayer linear1/linear2 are pruned; self_attn.out_proj is left alone."""
    model = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    out_proj_type = type(model.self_attn.out_proj)
    pruner = dpp.prune(model, density=0.25)
    assert sorted(pruner.layers) == ["linear1", "linear2"]
    assert type(model.self_attn.out_proj) is out_proj_type
    assert not dpp.is_dpp_layer(model.self_attn.out_proj)
    x = torch.randn(2, 5, 16)
    model(x).sum().backward()
    assert model.linear1.dpp.logits.grad is not None


@pytest.mark.filterwarnings("ignore:dpp.prune")
def test_plain_linear_out_proj_of_attention_is_skipped():
    """An nn.MultiheadAttention whose out_proj is a plain nn.Linear still keeps it unpruned."""
    model = nn.Sequential(OrderedDict(head=nn.Linear(8, 8)))
    model.attn = nn.MultiheadAttention(8, 2)
    model.attn.out_proj = nn.Linear(8, 8)
    pruner = dpp.prune(model, density=0.5)
    assert list(pruner.layers) == ["head"]
    assert type(model.attn.out_proj) is nn.Linear
    fresh = nn.Sequential(OrderedDict(head=nn.Linear(8, 8)))
    fresh.attn = model.attn
    with pytest.raises(ValueError, match=r"matching no prunable layer.*'attn\.out_proj'.*: head"):
        dpp.prune(fresh, include=["attn.out_proj"], density=0.5)


@pytest.mark.filterwarnings("ignore:dpp.prune")
def test_transformer_inference_fast_path_uses_the_masks():
    """Eval under no_grad (PyTorch's transformer fast path) computes the same as with grad."""
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    dpp.prune(encoder, density=0.25)
    encoder.eval()
    x = torch.randn(2, 5, 16)
    with_grad = encoder(x)
    with torch.no_grad():
        fast = encoder(x)
        single = encoder.layers[0](x)
    torch.testing.assert_close(fast, with_grad.detach())
    torch.testing.assert_close(single, encoder.layers[0](x).detach())


# ------------------------------------------------------------------------------ report
def test_summary_table_lists_every_layer():
    """summary() and print(pruner) show layer, granularity, groups, n, k and density per layer."""
    model = conv2d_net()
    pruner = dpp.prune(
        model,
        granularity="kernel",
        k=2,
        overrides={"fc": {"granularity": "block", "block_size": 8}},
    )
    text = pruner.summary()
    assert repr(pruner) == text
    header = text.splitlines()[1].split()
    for column in ("layer", "granularity", "groups", "n", "k", "density"):
        assert column in header
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:-2]}
    expected = {
        "conv1": ("kernel", 8, 4, 2),
        "conv2": ("kernel", 8, 4, 2),
        "fc": ("block(8)", 6 * 32 // 8, 8, 2),
    }
    assert set(rows) == set(expected)
    for name, (granularity, groups, n, k) in expected.items():
        cells = rows[name]
        assert granularity in cells
        assert str(groups) in cells and str(n) in cells and str(k) in cells
        assert f"{k / n:.4f}" in cells


def test_print_pruner(capsys):
    """print(pruner) writes the summary table."""
    pruner = dpp.prune(mlp(), density=0.5)
    print(pruner)
    out = capsys.readouterr().out
    assert "fc1" in out and "granularity" in out and "density" in out


def test_sparsity_values():
    """sparsity() gives 1 - k/n per layer, the weighted total and the fraction over all weights."""
    model = mlp()
    pruner = dpp.prune(model, density=0.25, overrides={"out": {"prune": False}})
    k1, k2 = max(1, round(0.25 * 12)), max(1, round(0.25 * 16))
    sp = pruner.sparsity()
    assert set(sp["layers"]) == {"fc1", "fc2"}
    assert sp["layers"]["fc1"] == pytest.approx(1 - k1 / 12)
    assert sp["layers"]["fc2"] == pytest.approx(1 - k2 / 16)
    zeros = 16 * (12 - k1) + 8 * (16 - k2)
    assert sp["total"] == pytest.approx(zeros / (16 * 12 + 8 * 16))
    assert sp["model"] == pytest.approx(zeros / (16 * 12 + 8 * 16 + 3 * 8))


# ------------------------------------------------------------------------------ training helpers
def test_param_groups_put_logits_alone():
    """param_groups: logits alone with their lr and weight decay 0; every parameter exactly once."""
    model = conv2d_net()
    pruner = dpp.prune(model, density=0.5)
    groups = pruner.param_groups(lr=1e-3, weight_decay=0.1, logit_lr=5e-2)
    opt = torch.optim.AdamW(groups)
    weights, logits = opt.param_groups
    assert {id(p) for p in logits["params"]} == {id(p) for p in pruner.logits()}
    assert logits["lr"] == 5e-2 and logits["weight_decay"] == 0
    assert weights["lr"] == 1e-3 and weights["weight_decay"] == 0.1
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())
    assert len(pruner.logits()) == 3


def test_logit_lr_defaults_to_optimizer_lr():
    """Without logit_lr the logits train at the optimizer's default rate."""
    pruner = dpp.prune(mlp(), density=0.5)
    opt = torch.optim.SGD(pruner.param_groups(), lr=0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3]


def test_entropy_loss_zero_without_weight():
    """entropy_loss() is exactly zero when entropy_weight is 0."""
    pruner = dpp.prune(mlp(), density=0.5)
    assert pruner.entropy_loss().item() == 0.0


def test_entropy_loss_positive_and_differentiable():
    """entropy_loss() = lambda * sum of group entropies; its gradient sharpens the groups."""
    model = mlp()
    pruner = dpp.prune(model, density=0.5, entropy_weight=0.01)
    expected = sum(
        -(torch.softmax(p, -1) * torch.log_softmax(p, -1)).sum() for p in pruner.logits()
    )
    loss = pruner.entropy_loss()
    assert loss.item() > 0
    torch.testing.assert_close(loss, 0.01 * expected)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pruner.logits())
    with torch.no_grad():
        for p in pruner.logits():
            p -= 10.0 * p.grad
    assert pruner.entropy_loss().item() < loss.item()


def test_entropy_of_uniform_logits_is_maximal():
    """With all logits equal every group has entropy log n."""
    model = mlp()
    pruner = dpp.prune(model, density=0.5)
    with torch.no_grad():
        for p in pruner.logits():
            p.zero_()
    expected = 16 * math.log(12) + 8 * math.log(16) + 3 * math.log(8)
    assert pruner.entropy().item() == pytest.approx(expected)


# ------------------------------------------------------------------------------ errors
def test_model_with_nothing_prunable():
    """A model with no Linear/Conv layer raises, naming the model and what DPP prunes."""
    with pytest.raises(
        ValueError, match=r"Sequential has no layer DPP can prune.*Linear.*Conv1d/2d/3d"
    ):
        dpp.prune(nn.Sequential(nn.ReLU(), nn.Tanh()), density=0.5)


def test_no_density_or_k_means_nothing_to_prune():
    """Without a density, k or quantization nothing is touched, and prune says what to give."""
    with pytest.raises(ValueError, match=r"nothing to prune: give a density or k"):
        dpp.prune(mlp())


def test_non_module_rejected():
    """prune() of something that is not an nn.Module raises TypeError."""
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module"):
        dpp.prune([nn.Linear(2, 2)], density=0.5)


def test_pruning_twice_is_rejected():
    """Pruning an already-pruned model raises, naming its DPP layers and what to do instead."""
    model = mlp()
    dpp.prune(model, density=0.5)
    with pytest.raises(ValueError, match=r"already pruned.*fc1, fc2, out.*finalize\(\)"):
        dpp.prune(model, density=0.25)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.emb(tokens))))


def test_tied_weight_is_rejected():
    """A layer whose weight is tied to another module raises, naming both and how to go on."""
    model = TiedLM()
    with pytest.raises(ValueError, match=r"'head' shares its weight with emb.*exclude=\['head'\]"):
        dpp.prune(model, density=0.5)
    assert not any(dpp.is_dpp_layer(m) for m in model.modules())


def test_excluding_a_tied_layer_keeps_finalize_exact():
    """With the tied layer excluded, finalize() keeps the eval outputs bit for bit."""
    model = TiedLM()
    pruner = dpp.prune(model, density=0.5, exclude=["head"])
    model.eval()
    tokens = torch.randint(0, 20, (3, 5))
    expected = model(tokens)
    pruner.finalize()
    assert torch.equal(model(tokens), expected)


def test_pruning_after_finalize_is_allowed():
    """After finalize() the plain model can be pruned again."""
    model = mlp()
    dpp.prune(model, density=0.5).finalize()
    pruner = dpp.prune(model, density=0.25)
    assert sorted(pruner.layers) == ["fc1", "fc2", "out"]


AFTER_FINALIZE = [
    ("step", ()),
    ("load_state_dict", ({"step": 1},)),
    ("logits", ()),
    ("param_groups", ()),
    ("entropy", ()),
    ("entropy_loss", ()),
    ("masks", ()),
    ("sparsity", ()),
    ("finalize", ()),
]


@pytest.mark.parametrize("method,args", AFTER_FINALIZE)
def test_pruner_unusable_after_finalize(method, args):
    """Every public method that needs DPP layers raises FinalizedError (a RuntimeError, not a
    ValueError) after finalize(), naming the method and saying what to do."""
    pruner = dpp.prune(mlp(), density=0.5)
    pruner.finalize()
    with pytest.raises(dpp.FinalizedError, match=rf"Pruner\.{method}\(\) was called after") as err:
        getattr(pruner, method)(*args)
    assert "dpp.prune() on a fresh model" in str(err.value)
    assert isinstance(err.value, RuntimeError) and not isinstance(err.value, ValueError)


def test_report_still_available_after_finalize():
    """summary(), rows() and finalized_layers still describe the layers after finalize()."""
    pruner = dpp.prune(mlp(), density=0.5)
    before = pruner.rows()
    records = pruner.finalize()
    assert pruner.rows() == before
    assert "finalized" in pruner.summary().splitlines()[0]
    assert set(pruner.finalized_layers) == set(records) == {"fc1", "fc2", "out"}


# ------------------------------------------------------------------ masks that do not learn
def _train(model: nn.Module, pruner: dpp.Pruner, optimizer, steps: int = 4, zero_first=True):
    """A plain loop: forward, backward, optimizer step, pruner.step() (gradients cleared
    before the backward, or, as transformers' Trainer does, before pruner.step())."""
    torch.manual_seed(0)
    for _ in range(steps):
        if zero_first:
            optimizer.zero_grad()
        model(torch.randn(16, 16)).pow(2).mean().backward()
        optimizer.step()
        if not zero_first:
            optimizer.zero_grad()
        pruner.step()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _not_learning(caught) -> list[str]:
    return [str(w.message) for w in caught if "Pruner.step()" in str(w.message)]


def test_training_in_eval_mode_warns_once_naming_the_fix():
    """step() with every learned mask in eval mode warns once, with model.train() as the fix."""
    model = _mlp()
    pruner = dpp.prune(model, density=0.25)
    model.eval()  # what transformers' from_pretrained returns
    optimizer = torch.optim.Adam(pruner.param_groups(lr=1e-2))
    with pytest.warns(UserWarning) as caught:
        _train(model, pruner, optimizer)
    (message,) = _not_learning(caught)
    assert "eval mode" in message and "model.train()" in message
    assert all(s.logits.grad is None for _, s in pruner._sources())  # the cause it names


def test_a_layer_in_eval_mode_warns_once_naming_it():
    """A layer whose weight trains while its logits get no gradient (that layer alone in
    eval mode) is named in one warning."""
    model = _mlp()
    pruner = dpp.prune(model, density=0.25)
    model[2].eval()
    optimizer = torch.optim.Adam(pruner.param_groups(lr=1e-2))
    with pytest.warns(UserWarning) as caught:
        _train(model, pruner, optimizer)
    (message,) = _not_learning(caught)
    assert "weights of 2 were trained" in message and "model.train()" in message


@pytest.mark.parametrize("zero_first", [True, False])
@pytest.mark.parametrize("regime", ["weights and masks", "masks only", "fixed logits"])
def test_normal_training_does_not_warn(regime, zero_first):
    """A training loop in train mode never warns, whether gradients are cleared before the
    backward or before step(), with frozen weights or with logits frozen on purpose."""
    model = _mlp()
    ramp = {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 3}
    pruner = dpp.prune(model, density=0.25, sparsity_ramp=ramp)
    if regime == "masks only":
        pruner.freeze_weights()
    if regime == "fixed logits":
        for logits in pruner.logits():
            logits.requires_grad_(False)
    optimizer = torch.optim.SGD(
        [p for g in pruner.param_groups(lr=1e-2) for p in g["params"] if p.requires_grad], lr=0.1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, pruner, optimizer, zero_first=zero_first)
        model.eval()  # evaluating between steps, then back to training
        model(torch.randn(2, 16))
        model.train()
        _train(model, pruner, optimizer, steps=2, zero_first=zero_first)
        pruner.step(5)  # moving the schedules on without training


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def test_freeze_masks_trains_weights_under_the_deterministic_mask():
    """After freeze_masks, training forward calls use the eval mask and only the weights move."""
    model = _mlp()
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2, noise_scale=1.0)
    before = pruner.masks()
    assert pruner.freeze_masks() == 2 and pruner.masks_frozen
    model.train()
    x = torch.randn(8, 16)
    out_train = model(x)
    assert torch.equal(out_train, model.eval()(x))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    weights = [layer.weight.detach().clone() for layer in pruner.layers.values()]
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        pruner.step()
    assert all(s.logits.grad is None for s in (layer.dpp for layer in pruner.layers.values()))
    after = pruner.masks()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(
        not torch.equal(w, layer.weight)
        for w, layer in zip(weights, pruner.layers.values(), strict=True)
    )


def test_unfrozen_masks_still_sample():
    """Without freeze_masks, training forward calls draw masks that differ from the eval mask."""
    model = _mlp()
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2, noise_scale=5.0)
    assert not pruner.masks_frozen
    x = torch.randn(8, 16)
    expected = model.eval()(x)
    model.train()
    assert any(not torch.equal(model(x), expected) for _ in range(5))


def test_unfreeze_weights_thaws_only_what_freeze_weights_froze():
    """unfreeze_weights gives gradients back to the weights freeze_weights froze, not others."""
    model = _mlp()
    model[2].bias.requires_grad_(False)  # frozen by the user before pruning
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    assert pruner.freeze_weights() == 3
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "0.dpp.logits",
        "2.dpp.logits",
    ]
    assert pruner.unfreeze_weights() == 3
    assert not model[2].bias.requires_grad
    assert model[0].weight.requires_grad and model[2].weight.requires_grad
    assert pruner.unfreeze_weights() == 0


def test_frozen_masks_survive_state_dict_and_copy():
    """A restored pruner and Pruner.copy keep the masks frozen."""
    model = _mlp()
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    pruner.freeze_masks()
    twin = pruner.copy()
    assert twin.masks_frozen and not any(p.requires_grad for p in twin.logits())
    fresh = dpp.prune(_mlp(), granularity="block", block_size=4, k=2)
    fresh.load_state_dict(pruner.state_dict())
    assert fresh.masks_frozen and not any(p.requires_grad for p in fresh.logits())


def test_freeze_masks_refuses_during_a_sparsity_ramp():
    """freeze_masks raises while the ramp keeps more than k per group."""
    pruner = dpp.prune(
        _mlp(),
        granularity="block",
        block_size=4,
        k=2,
        sparsity_ramp={"kind": "linear", "start": 0.0, "end": 1.0, "steps": 4},
    )
    with pytest.raises(ValueError, match="sparsity ramp"):
        pruner.freeze_masks()
    pruner.step(4)
    assert pruner.freeze_masks() == 2
