"""Tests of DPP's compact training state (issue 20): 16-bit logits, the sampler's saved
tensors, the masked-weight Function."""

from __future__ import annotations

import io

import pytest
import torch

import dpp
from dpp.layers import _MaskedWeight, _pack_mask, _unpack_mask
from dpp.sampling import _pack_ranks, _unpack_ranks, relaxed_topk_reference
from test_sampling import plackett_luce_inclusion, tolerance

DRAWS = 200_000


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_logit_dtype_round_trips(dtype):
    """logit_dtype survives DPPConfig to_dict/from_dict and JSON, sets the logits' dtype,
    and a state dict keeps it when loaded into a model pruned with the same config."""
    cfg = dpp.DPPConfig(granularity="block", block_size=4, k=2, logit_dtype=dtype)
    assert dpp.DPPConfig.from_dict(cfg.to_dict()) == cfg
    assert dpp.DPPConfig.from_json(cfg.to_json()).logit_dtype == dtype
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    pruner = dpp.prune(model, cfg)
    assert pruner.logits()[0].dtype == getattr(torch, dtype)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    torch.manual_seed(1)
    model2 = torch.nn.Sequential(torch.nn.Linear(8, 8))
    pruner2 = dpp.prune(model2, dpp.DPPConfig.from_dict(saved["pruner"]["config"]))
    model2.load_state_dict(saved["model"])
    pruner2.load_state_dict(saved["pruner"])
    assert torch.equal(pruner2.logits()[0], pruner.logits()[0])
    assert pruner2.logits()[0].dtype == getattr(torch, dtype)


def test_logit_dtype_default_and_validation():
    """The default stays float32 (old configs load unchanged); an unknown dtype is refused."""
    assert dpp.DPPConfig().logit_dtype == "float32"
    old = dpp.DPPConfig(k=2).to_dict()
    del old["logit_dtype"]
    assert dpp.DPPConfig.from_dict(old).logit_dtype == "float32"
    with pytest.raises(ValueError, match="logit_dtype"):
        dpp.DPPConfig(logit_dtype="int8")


@pytest.mark.parametrize("n,k", [(4, 2), (4, 1), (5, 3), (8, 2), (16, 7), (16, 15)])
def test_rank_packing_round_trips(n, k):
    """Packed ranks unpack to min(rank, k): all the backward tells apart."""
    ranks = torch.stack([torch.randperm(n) for _ in range(50)], 1).to(torch.uint8)
    assert torch.equal(_unpack_ranks(_pack_ranks(ranks, k), n, k), ranks.clamp(max=k))


@pytest.mark.parametrize("logit_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(4, 2), (5, 2), (8, 3)])
def test_replayed_noise_gradient_matches_reference(logit_dtype, n, k):
    """A fresh draw of small groups, whose backward draws its noise again from the saved
    generator state, gives the gradient of relaxed_topk_reference on the forward's scores."""
    torch.manual_seed(0)
    logits = torch.randn(64, n).to(logit_dtype).requires_grad_()
    gen = torch.Generator().manual_seed(5)
    noise = dpp.sampling.gumbel_noise(logits.shape, generator=torch.Generator().manual_seed(5))
    mask = dpp.gumbel_topk(logits, k, tau=0.7, noise_scale=0.3, generator=gen)
    g = torch.randn(64, n)
    (grad,) = torch.autograd.grad(mask, logits, g.to(mask.dtype))
    assert grad.dtype == logit_dtype
    z = (logits.detach().double() + 0.3 * noise.double()).requires_grad_()
    ref = relaxed_topk_reference(z, k, tau=0.7)
    (ref_grad,) = torch.autograd.grad(ref, z, g.to(mask.dtype).double())
    assert torch.equal(
        mask, torch.zeros_like(ref).scatter_(-1, z.topk(k).indices, 1.0).to(mask.dtype)
    )
    atol = 1e-5 if logit_dtype == torch.float32 else 2e-2
    assert torch.allclose(grad.double(), ref_grad, atol=atol, rtol=1e-2 if atol > 1e-4 else 1e-4)


def test_replayed_noise_gradient_equals_saved_noise_gradient():
    """The replayed-noise backward is bit-identical to the backward from saved scores."""
    torch.manual_seed(0)
    logits = torch.randn(256, 4, requires_grad=True)
    noise = dpp.sampling.gumbel_noise(logits.shape, generator=torch.Generator().manual_seed(2))
    g = torch.randn(256, 4)
    mask = dpp.gumbel_topk(
        logits, 2, tau=0.5, noise_scale=0.3, generator=torch.Generator().manual_seed(2)
    )
    (replayed,) = torch.autograd.grad(mask, logits, g)
    held = dpp.sampling._apply(logits, noise, 0.3, 2, 0.5, True, None)  # noise given: z saved
    (saved,) = torch.autograd.grad(held, logits, g)
    assert torch.equal(mask, held) and torch.equal(replayed, saved)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves while ``fn`` runs."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter) and not t.requires_grad:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def test_keep_scores_gives_the_redrawn_mask_and_gradient_and_keeps_the_scores():
    """keep_scores=True: the same mask and gradient, bit for bit, as the default redraw,
    with the float32 scores (4 bytes per candidate) saved for the backward."""
    logits = torch.randn(512, 4).requires_grad_()
    g = torch.randn(512, 4)
    grads, masks, nbytes = [], [], []
    for keep in (False, True):
        out = []

        def draw(keep=keep, out=out) -> None:
            gen = torch.Generator().manual_seed(3)
            out.append(dpp.gumbel_topk(logits, 2, noise_scale=0.3, generator=gen, keep_scores=keep))

        nbytes.append(_saved_bytes(draw))
        masks.append(out[0])
        grads.append(torch.autograd.grad(out[0], logits, g)[0])
    assert torch.equal(masks[0], masks[1]) and torch.equal(grads[0], grads[1])
    assert nbytes[1] - nbytes[0] >= 4 * logits.numel()


def test_keep_scores_reaches_every_mask_and_trains_the_same():
    """DPPConfig(keep_scores=True) has every learned N:M mask keep its float32 scores for the
    backward (4 bytes per logit more saved), and a training step gives the default config's
    logit gradients exactly; it round-trips through to_dict, and a non-bool is refused."""
    grads, nbytes = [], []
    for keep in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
        cfg = dpp.DPPConfig(granularity="block", block_size=4, k=2, keep_scores=keep)
        pruner = dpp.prune(model, cfg)
        masks = [m for _, m in pruner._sources()]
        assert masks and all(m.keep_scores is keep for m in masks)
        torch.manual_seed(1)
        x = torch.randn(5, 64)
        out = []
        nbytes.append(_saved_bytes(lambda x=x, out=out, model=model: out.append(model(x))))
        out[0].square().sum().backward()
        grads.append([m.logits.grad.clone() for m in masks])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert nbytes[1] - nbytes[0] >= 4 * sum(m.logits.numel() for m in masks)
    cfg = dpp.DPPConfig(keep_scores=True)
    assert dpp.DPPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError, match="keep_scores"):
        dpp.DPPConfig(keep_scores="yes")


def test_a_pruner_state_resumes_with_keep_scores_set_either_way():
    """keep_scores changes no number, so a pruner state saved with one setting loads into a
    pruner with the other; a setting that does change the numbers is still refused."""

    def pruned(**options):
        model = torch.nn.Sequential(torch.nn.Linear(8, 4))
        return dpp.prune(model, granularity="block", block_size=4, k=2, **options)

    state = pruned().state_dict()
    state["step"] = 3
    kept = pruned(keep_scores=True)
    kept.load_state_dict(state)
    assert kept.current_step == 3 and kept.config.keep_scores is True
    with pytest.raises(ValueError, match="different DPP config"):
        pruned(noise_scale=1.0).load_state_dict(state)


def test_replay_uses_global_rng_state():
    """Without a generator the draw replays torch's global RNG state and leaves it where a
    draw leaves it (the backward does not advance it)."""
    logits = torch.randn(32, 4, requires_grad=True)
    torch.manual_seed(7)
    mask = dpp.gumbel_topk(logits, 2, noise_scale=1.0)
    after_forward = torch.get_rng_state()
    mask.mul(torch.randn(32, 4)).sum().backward()
    torch.manual_seed(7)
    dpp.gumbel_topk(logits.detach(), 2, noise_scale=1.0)
    assert torch.equal(after_forward, torch.get_rng_state())
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("logit_dtype", [torch.bfloat16, torch.float16])
def test_inclusion_exact_with_16bit_logits(logit_dtype):
    """With 16-bit logits (and a gradient asked for) every candidate is kept with the exact
    Plackett-Luce inclusion probability of the stored logits."""
    logits = torch.tensor([1.2, 0.3, -0.4, 0.8]).to(logit_dtype)
    exact = plackett_luce_inclusion(logits.double(), 2)
    rows = logits.expand(DRAWS, -1).clone().requires_grad_()
    draws = dpp.gumbel_topk(rows, 2, noise_scale=1.0, generator=torch.Generator().manual_seed(3))
    freq = draws.double().mean(0)
    assert torch.all((freq - exact).abs() <= tolerance(exact, DRAWS)), (freq, exact)


@pytest.mark.parametrize(
    "shape,mask_shape,group_shape",
    [((6, 8), (6, 8), (12, 4)), ((6, 8), (6, 1), (1, 6)), ((4, 3, 3, 3), (4, 3, 1, 1), (4, 3))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_weight_function_matches_plain_product(shape, mask_shape, group_shape, dtype):
    """_MaskedWeight gives weight * expand(mask) cast to dtype, and the same gradients as
    the plain product (weight and mask), for block, filter and kernel layouts."""
    torch.manual_seed(0)
    w = torch.randn(shape, requires_grad=True)
    mask = (torch.rand(group_shape) > 0.5).float().requires_grad_()
    out = _MaskedWeight.apply(w, mask, mask_shape, dtype)
    w2 = w.detach().clone().requires_grad_()
    m2 = mask.detach().clone().requires_grad_()
    ref = (w2 * m2.reshape(mask_shape)).to(dtype)
    assert out.dtype == dtype and torch.equal(out, ref)
    g = torch.randn(shape).to(dtype)
    got = torch.autograd.grad(out, (w, mask), g)
    want = torch.autograd.grad(ref, (w2, m2), g)
    assert torch.equal(got[0], want[0])
    assert torch.allclose(got[1], want[1], atol=1e-5)


def test_mask_packing_round_trips():
    """Bit-packed masks (n <= 8) and bool masks (n > 8) unpack to the same 0/1 mask."""
    for n in (1, 4, 8, 9):
        mask = (torch.rand(10, n) > 0.5).float()
        assert torch.equal(_unpack_mask(_pack_mask(mask), n).float(), mask)


def test_autocast_layer_matches_plain_product():
    """A pruned Linear under bf16 autocast computes what the plain masked product computes,
    with the same weight and logit gradients."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2, noise_scale=0.5)
    layer = model[0]
    x = torch.randn(5, 16)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().square().sum().backward()
    got = (y.detach().clone(), layer.weight.grad.clone(), layer.dpp.logits.grad.clone())
    layer.weight.grad = layer.dpp.logits.grad = None
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask = layer.dpp(layer.weight)
        w = layer.weight * layer.dpp_layout.expand(mask)
        y2 = torch.nn.functional.linear(x, w, layer.bias)
    y2.float().square().sum().backward()
    assert torch.equal(got[0], y2.detach())
    assert torch.equal(got[1], layer.weight.grad)
    assert torch.allclose(got[2], layer.dpp.logits.grad, atol=1e-6)
    assert pruner.logits()[0] is layer.dpp.logits


@pytest.mark.parametrize("autocast", [False, True])
def test_masked_linear_mask_only_matches_plain_product(autocast):
    """With the weights frozen (mask-only), a pruned Linear gives the plain masked product's
    output, and its input and logit gradients (to float32 round-off; to bfloat16 round-off
    under autocast), and q/k/v-style layers reading one input save one copy of it."""
    torch.manual_seed(0)
    model = torch.nn.ModuleList([torch.nn.Linear(16, 8) for _ in range(3)])
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2, noise_scale=0.5)
    pruner.freeze_weights()
    x = torch.randn(5, 16, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    torch.manual_seed(1)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ys = [layer(x) for layer in model]
    sum(y.float().square().sum() for y in ys).backward()
    got = [x.grad.clone()] + [layer.dpp.logits.grad.clone() for layer in model]
    inputs = {t.untyped_storage().data_ptr() for t in saved if t.shape == (5, 16)}
    assert len(inputs) == 1  # one (cast) input saved for the three layers
    x.grad = None
    for layer in model:
        layer.dpp.logits.grad = None
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ys2 = []
        for layer in model:
            w = layer.weight * layer.dpp_layout.expand(layer.dpp(layer.weight))
            ys2.append(torch.nn.functional.linear(x, w, layer.bias))
    sum(y.float().square().sum() for y in ys2).backward()
    want = [x.grad] + [layer.dpp.logits.grad for layer in model]
    for y, y2 in zip(ys, ys2, strict=True):
        assert torch.equal(y, y2)
    tol = {"atol": 2e-2, "rtol": 1e-2} if autocast else {"atol": 1e-5, "rtol": 1e-4}
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, **tol)
