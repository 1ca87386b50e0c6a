"""Exactly k of every n per group, for every granularity and layer type (method.md s.1-2)."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import dpp
from conftest import (
    candidates_all_or_nothing,
    candidates_kept,
    dense_forward,
    expand_group_mask,
    make_nonzero_,
    topk_hot,
)

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@st.composite
def pruned_layer_specs(draw):
    """A Linear or ConvNd (dense, grouped or depthwise), an applicable granularity and k."""
    kind = draw(st.sampled_from(["linear", "conv1d", "conv2d", "conv3d"]))
    bias = draw(st.booleans())
    if kind == "linear":
        cin, cout = draw(st.integers(1, 12)), draw(st.integers(1, 8))
        layer = nn.Linear(cin, cout, bias=bias)
        input_shape: tuple[int, ...] = (cin,)
    else:
        dim = int(kind[4])
        style = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
        if style == "dense":
            groups, cin, cout = 1, draw(st.integers(1, 4)), draw(st.integers(1, 5))
        elif style == "grouped":
            groups = draw(st.integers(2, 3))
            cin = groups * draw(st.integers(1, 3))
            cout = groups * draw(st.integers(1, 2))
        else:
            cin = draw(st.integers(1, 4))
            groups, cout = cin, cin * draw(st.integers(1, 2))
        ksize = tuple(draw(st.integers(1, 3 if dim < 3 else 2)) for _ in range(dim))
        layer = CONVS[dim](cin, cout, ksize, groups=groups, bias=bias, padding=1)
        input_shape = (cin,) + (4,) * dim
    weight_shape = tuple(layer.weight.shape)
    fan_in = math.prod(weight_shape[1:])
    choices = ["weight", "block", "filter"]
    if kind != "linear" and weight_shape[1] > 1:
        choices.append("kernel")
    granularity = draw(st.sampled_from(choices))
    block_size = None
    if granularity == "weight":
        groups_, n = weight_shape[0], fan_in
    elif granularity == "block":
        block_size = draw(st.sampled_from([d for d in range(1, fan_in + 1) if fan_in % d == 0]))
        groups_, n = weight_shape[0] * fan_in // block_size, block_size
    elif granularity == "kernel":
        groups_, n = weight_shape[0], weight_shape[1]
    else:
        groups_, n = 1, weight_shape[0]
    if draw(st.booleans()):
        k = draw(st.integers(1, n))
        size = {"k": k}
    else:
        density = draw(st.floats(0.01, 1.0))
        k = max(1, round(density * n))
        size = {"density": density}
    return {
        "layer": layer,
        "input_shape": input_shape,
        "granularity": granularity,
        "block_size": block_size,
        "groups": groups_,
        "n": n,
        "k": k,
        "size": size,
    }


def _prune_one(spec):
    model = make_nonzero_(nn.Sequential(spec["layer"]))
    options = dict(spec["size"], granularity=spec["granularity"])
    if spec["block_size"] is not None:
        options["block_size"] = spec["block_size"]
    pruner = dpp.prune(model, **options)
    return model, pruner, model[0]


@given(spec=pruned_layer_specs(), seed=st.integers(0, 2**31 - 1))
def test_exactly_k_per_group_in_training(spec, seed):
    """Training mode: every forward keeps exactly k candidates of every group and uses that mask."""
    model, _, layer = _prune_one(spec)
    assert isinstance(layer, dpp.DPPLayer)
    lay = layer.dpp_layout
    assert (lay.num_groups, lay.n, lay.k) == (spec["groups"], spec["n"], spec["k"])
    x = torch.randn(3, *spec["input_shape"])
    for draw in range(2):
        torch.manual_seed(seed + draw)
        out = model(x)
        torch.manual_seed(seed + draw)
        w, b = layer.dpp_weight_bias()
        kept = candidates_kept(w, spec["granularity"], spec["block_size"])
        assert kept.shape == (spec["groups"], spec["n"])
        assert bool((kept.sum(-1) == spec["k"]).all())
        assert candidates_all_or_nothing(w, spec["granularity"])
        if spec["granularity"] == "filter" and b is not None:
            assert torch.equal(b != 0, kept.reshape(-1))
        torch.testing.assert_close(out, dense_forward(layer, x, w, b))


@given(spec=pruned_layer_specs())
def test_eval_mask_is_topk_of_logits(spec):
    """Eval mode: the mask is the top-k of the logits of every group, the same on every call."""
    model, _, layer = _prune_one(spec)
    model.eval()
    w, b = layer.dpp_weight_bias()
    kept = candidates_kept(w, spec["granularity"], spec["block_size"])
    assert torch.equal(kept, topk_hot(layer.dpp.logits, spec["k"]))
    assert candidates_all_or_nothing(w, spec["granularity"])
    x = torch.randn(2, *spec["input_shape"])
    out = model(x)
    assert torch.equal(out, model(x))
    torch.testing.assert_close(out, dense_forward(layer, x, w, b))
    assert torch.equal(layer.dpp_masks(), w != 0)


@given(spec=pruned_layer_specs(), seed=st.integers(0, 2**31 - 1))
def test_training_draws_differ(spec, seed):
    """Training mode: successive forward calls draw different masks (uniform logits, many masks)."""
    _, _, layer = _prune_one(spec)
    with torch.no_grad():
        layer.dpp.logits.zero_()
    masks_possible = math.comb(spec["n"], spec["k"]) ** spec["groups"]
    torch.manual_seed(seed)
    draws = [layer.dpp_group_mask() for _ in range(3)]
    for d in draws:
        assert bool((d.sum(-1) == spec["k"]).all())
    if masks_possible >= 1000:  # all three equal with probability <= 1e-6
        assert not (torch.equal(draws[0], draws[1]) and torch.equal(draws[1], draws[2]))


# ------------------------------------------------------------ the batch shares one mask
def _linear():
    return nn.Sequential(nn.Linear(24, 16, bias=False))


def _conv():
    return nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, groups=2))


MODELS = {
    "linear": (_linear, (24,)),
    "conv2d": (_conv, (8, 5, 5)),
}
GRANULARITY_OPTIONS = {
    "weight": {"granularity": "weight", "density": 0.3},
    "block": {"granularity": "block", "block_size": 4, "k": 2},
    "kernel": {"granularity": "kernel", "k": 2},
    "filter": {"granularity": "filter", "density": 0.5},
}
CASES = [
    (m, g) for m in MODELS for g in GRANULARITY_OPTIONS if not (m == "linear" and g == "kernel")
]


@pytest.mark.parametrize("model_name,granularity", CASES)
def test_identical_examples_give_identical_outputs(model_name, granularity):
    """Training mode: one mask per call for the whole batch, so equal inputs give equal outputs."""
    build, shape = MODELS[model_name]
    model = make_nonzero_(build())
    dpp.prune(model, **GRANULARITY_OPTIONS[granularity])
    with torch.no_grad():
        model[0].dpp.logits.zero_()  # uniform: per-example masks would differ
    x = torch.randn(1, *shape).expand(64, *shape)
    out = model(x)
    assert all(torch.equal(out[i], out[0]) for i in range(64))
    # ... while the next calls draw other masks (all three equal: probability < 1e-5).
    later = [model(x) for _ in range(2)]
    assert not all(torch.equal(o, out) for o in later)


@pytest.mark.parametrize("model_name,granularity", CASES)
def test_every_example_sees_the_same_mask(model_name, granularity):
    """Training mode: every example's output is the plain layer's output under one drawn mask."""
    build, shape = MODELS[model_name]
    model = make_nonzero_(build())
    dpp.prune(model, **GRANULARITY_OPTIONS[granularity])
    layer = model[0]
    x = torch.randn(16, *shape)
    torch.manual_seed(123)
    out = model(x)
    torch.manual_seed(123)
    w, b = layer.dpp_weight_bias()
    for i in range(16):
        torch.testing.assert_close(out[i : i + 1], dense_forward(layer, x[i : i + 1], w, b))


def test_linear_identity_batch_reveals_one_kofn_matrix():
    """A batch of unit vectors through a masked Linear reads back one k-per-row weight matrix."""
    model = make_nonzero_(_linear())
    dpp.prune(model, granularity="weight", k=5)
    weight = model[0].weight.detach().clone()
    seen = model(torch.eye(24)).detach().T  # row j of the output is column j of the masked weight
    assert torch.equal((seen != 0).sum(1), torch.full((16,), 5))
    assert torch.equal(seen[seen != 0], weight[seen != 0])
    again = model(torch.eye(24)).detach().T
    assert torch.equal((again != 0).sum(1), torch.full((16,), 5))
    assert not torch.equal(again != 0, seen != 0)  # a new draw per forward call


# ------------------------------------------------------------ gradients
@pytest.mark.parametrize("model_name,granularity", CASES)
def test_gradients_reach_logits_and_weights(model_name, granularity):
    """Backward is straight-through: logits get the relaxation's gradient, weights W*mask's."""
    build, shape = MODELS[model_name]
    model = make_nonzero_(build())
    pruner = dpp.prune(model, temperature=0.7, **GRANULARITY_OPTIONS[granularity])
    layer = model[0]
    ref = copy.deepcopy(layer)
    x = torch.randn(4, *shape)
    torch.manual_seed(5)
    out = model(x)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()

    # The same computation spelled out with the public sampler and the method's expansion.
    torch.manual_seed(5)
    mask = dpp.gumbel_topk(
        ref.dpp.logits, layer.dpp_layout.k, tau=pruner.temperature, noise_scale=pruner.noise_scale
    )
    wm = expand_group_mask(mask, granularity, tuple(ref.weight.shape))
    b = ref.bias
    if b is not None and granularity == "filter":
        b = b * mask.reshape(-1)
    (dense_forward(ref, x, ref.weight * wm, b) * upstream).sum().backward()

    for got, want in [
        (layer.dpp.logits.grad, ref.dpp.logits.grad),
        (layer.weight.grad, ref.weight.grad),
    ]:
        assert got is not None and bool(got.isfinite().all())
        torch.testing.assert_close(got, want)
    assert layer.dpp.logits.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0
    # Weights the drawn mask pruned get exactly zero gradient.
    assert bool((layer.weight.grad[(wm.expand_as(layer.weight) == 0)] == 0).all())


# ------------------------------------------------------------ errors
def _named_model():
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 4, 3),
            dw=nn.Conv2d(4, 4, 3, groups=4),
            flat=nn.Flatten(),
            fc=nn.Linear(10, 4),
        )
    )


ERRORS = [
    # (prune options, exception, message pattern): the layer is named, the valid range is given.
    ({"overrides": {"fc": {"k": 11}}}, ValueError, r"'fc'.*1 <= k <= n = 10"),
    ({"overrides": {"fc": {"k": 0}}}, ValueError, r"override 'fc': k must be >= 1, got 0"),
    ({"overrides": {"fc": {"k": 2.5}}}, TypeError, r"'fc'.*k must be an int"),
    ({"overrides": {"fc": {"density": 0}}}, ValueError, r"'fc'.*density must be in \(0, 1\]"),
    ({"overrides": {"fc": {"density": 1.5}}}, ValueError, r"'fc'.*density must be in \(0, 1\]"),
    ({"overrides": {"fc": {"density": -0.1}}}, ValueError, r"'fc'.*density must be in \(0, 1\]"),
    (
        {"granularity": "block", "block_size": 4, "density": 0.5, "include": ["fc"]},
        ValueError,
        r"'fc'.*block_size 4 does not divide the fan-in 10.*\[2, 5, 10\]",
    ),
    (
        {"granularity": "block", "density": 0.5, "include": ["fc"]},
        ValueError,
        r"'fc'.*needs block_size",
    ),
    (
        {"granularity": "kernel", "density": 0.5, "include": ["fc"]},
        ValueError,
        r"'fc'.*'kernel' applies to convolutions only.*'weight', 'block' or 'filter'",
    ),
    (
        {"granularity": "kernel", "density": 0.5, "include": ["dw"]},
        ValueError,
        r"'dw'.*depthwise.*use 'weight' or 'filter'",
    ),
    (
        {"density": 0.5, "overrides": {"conv": {"granularity": "channel"}}},
        ValueError,
        r"'conv'.*unknown granularity 'channel'.*'weight', 'block', 'kernel', 'filter'",
    ),
]


@pytest.mark.parametrize("options,exc,match", ERRORS)
def test_invalid_layer_settings_raise_and_leave_model_untouched(options, exc, match):
    """A bad k, density, block size or granularity names the layer and what is valid; no change."""
    model = _named_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    with pytest.raises(exc, match=match):
        dpp.prune(model, **options)
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    dpp.prune(model, density=0.5, include=["conv", "fc"])  # still prunable afterwards


@pytest.mark.parametrize("density", [0, 1.5, -0.1])
def test_invalid_global_density(density):
    """A global density outside (0, 1] raises ValueError stating the valid interval."""
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        dpp.prune(_named_model(), density=density)


@pytest.mark.parametrize("k", [0, -3])
def test_invalid_global_k(k):
    """A global k < 1 raises ValueError saying k must be >= 1."""
    with pytest.raises(ValueError, match="k must be >= 1"):
        dpp.prune(_named_model(), k=k)


def test_global_k_too_large_names_first_offending_layer():
    """A global k larger than some layer's n names that layer and its n."""
    with pytest.raises(ValueError, match=r"'fc' \(weight, n=10\).*1 <= k <= n = 10"):
        dpp.prune(_named_model(), k=20, include=["fc"])


def test_unknown_global_granularity():
    """An unknown granularity lists the valid ones."""
    with pytest.raises(ValueError, match=r"unknown granularity 'rows'.*'weight', 'block'"):
        dpp.prune(_named_model(), granularity="rows", density=0.5)


def test_block_size_without_block_granularity():
    """block_size with a granularity other than 'block' is rejected, naming the layer."""
    with pytest.raises(ValueError, match=r"'conv'.*block_size=3 is only used with granularity"):
        dpp.prune(_named_model(), granularity="weight", block_size=3, density=0.5)


def test_layout_sizes_agree_with_weight():
    """groups * n * weights per candidate is the weight's size, for every granularity of a conv."""
    shape = (6, 4, 3, 3)
    for granularity, extra in [
        ("weight", {}),
        ("block", {"block_size": 9}),
        ("kernel", {}),
        ("filter", {}),
    ]:
        lay = dpp.GroupLayout.for_weight(shape, granularity, k=1, is_conv=True, **extra)
        assert lay.num_groups * lay.n * lay.weights_per_candidate == math.prod(shape)
        mask = torch.zeros(lay.num_groups, lay.n)
        assert torch.broadcast_shapes(lay.expand(mask).shape, shape) == shape
