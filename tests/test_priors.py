"""One-shot priors from calibration data (dpp.priors) and their use as DPP's starting logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dpp
from dpp.priors import calibrate, sparsegpt_prune, wanda_scores


def _reference_sparsegpt(w, h, k, m, column_block, damp=0.01):
    """SparseGPT written literally: explicit inverses of the remaining columns' Hessian and one
    OBS update per pruned weight, row by row."""
    w = w.double().clone()
    h = h.double().clone()
    n = w.shape[1]
    h.diagonal().add_(damp * h.diagonal().mean())
    pruned = torch.zeros_like(w, dtype=torch.bool)
    kept = torch.zeros(w.shape[0], dtype=torch.long)

    def cond(c):  # [H_{c:, c:}^-1]_00, the saliency denominator when column c is reached
        return torch.linalg.inv(h[c:, c:])[0, 0]

    for j in range(n):
        if m is not None and j % m == 0:
            sal = torch.stack([w[:, c] ** 2 / cond(c) for c in range(j, j + m)], 1)
            pruned[:, j : j + m].scatter_(1, sal.topk(m - k, dim=1, largest=False).indices, True)
        if m is None and j % column_block == 0:
            c1 = min(j + column_block, n)
            sal = torch.stack([w[:, c] ** 2 / cond(c) for c in range(j, c1)], 1)
            quota = (k * c1) // n - kept
            order = sal.argsort(dim=1, descending=True, stable=True)
            for r in range(w.shape[0]):
                for rank, c in enumerate(order[r].tolist()):
                    pruned[r, j + c] = rank >= quota[r]
            kept += (~pruned[:, j:c1]).sum(1)
        finv = torch.linalg.inv(h[j:, j:])
        for r in range(w.shape[0]):
            if pruned[r, j]:
                w[r, j:] -= w[r, j] / finv[0, 0] * finv[0, :]
    w[pruned] = 0
    return ~pruned, w


def _correlated_inputs(tokens: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64)
    return torch.randn(tokens, n, generator=g, dtype=torch.float64) @ mix


@pytest.mark.parametrize(
    ("out", "n", "k", "m", "column_block"),
    [(5, 16, 2, 4, 8), (3, 12, 1, 4, 128), (4, 20, 5, None, 8), (4, 20, 7, None, 128)],
)
def test_sparsegpt_equals_the_literal_obs_reference(out, n, k, m, column_block):
    """The lazy batched Cholesky form picks the same mask and weights as literal OBS."""
    torch.manual_seed(out * n + k)
    w = torch.randn(out, n, dtype=torch.float64)
    x = _correlated_inputs(50, n)
    mask, new_w = sparsegpt_prune(w, x.T @ x, k=k, block_size=m, column_block=column_block)
    ref_mask, ref_w = _reference_sparsegpt(w, x.T @ x, k, m, column_block)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new_w, ref_w, rtol=0, atol=1e-10)


def test_sparsegpt_keeps_k_per_group_and_zeroes_the_rest():
    """Every N:M block keeps exactly k; pruned weights are exactly zero."""
    w = torch.randn(6, 32)
    x = _correlated_inputs(80, 32).float()
    mask, new_w = sparsegpt_prune(w, x.T @ x, k=2, block_size=4)
    assert (mask.reshape(6, 8, 4).sum(-1) == 2).all()
    assert (new_w[~mask] == 0).all()
    assert new_w.dtype == w.dtype


def test_sparsegpt_reconstructs_the_layer_better_than_magnitude():
    """With its weight update, SparseGPT's output error on the calibration data is below
    magnitude pruning's at the same 2:4 pattern."""
    torch.manual_seed(1)
    w = torch.randn(16, 32, dtype=torch.float64)
    x = _correlated_inputs(256, 32, seed=3)
    _, new_w = sparsegpt_prune(w, x.T @ x, k=2, block_size=4)
    groups = w.abs().reshape(16, 8, 4)
    mag = torch.zeros_like(groups).scatter_(-1, groups.topk(2, -1).indices, 1.0).reshape(16, 32)
    err_sgpt = (x @ (w - new_w).T).norm()
    err_mag = (x @ (w - w * mag).T).norm()
    assert err_sgpt < 0.9 * err_mag


def test_sparsegpt_rejects_inconsistent_shapes():
    """A Hessian of the wrong size or an N:M block that does not divide the inputs is an error."""
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_prune(w, torch.eye(6), k=2, block_size=4)
    with pytest.raises(ValueError, match="N:M"):
        sparsegpt_prune(w, torch.eye(8), k=2, block_size=3)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))


def test_wanda_prior_starts_from_wandas_top_k():
    """logit_init='wanda': the deterministic mask before training is the top-k of
    |W_ij| * ||X_j||_2 per 2:4 block, with X the layer's dense inputs."""
    model = _mlp()
    batches = [torch.randn(10, 16) for _ in range(3)]
    x0 = torch.cat(batches)
    x2 = torch.relu(model[0](x0)).detach()
    expected = {}
    for name, x in (("0", x0), ("2", x2)):
        w = model.get_submodule(name).weight.detach()
        score = (w.abs() * x.norm(dim=0)).reshape(-1, 4)
        expected[name] = torch.zeros_like(score).scatter_(-1, score.topk(2, -1).indices, 1.0)
    pruner = dpp.prune(
        model,
        granularity="block",
        block_size=4,
        k=2,
        logit_init="wanda",
        logit_init_std=3.0,
        calibration_data=batches,
    )
    model.eval()
    for name, mask in pruner.masks().items():
        assert torch.equal(mask.reshape(-1, 4).float(), expected[name]), name


def test_sparsegpt_prior_starts_from_its_mask_and_keeps_the_weights():
    """logit_init='sparsegpt': the first deterministic mask is SparseGPT's, and the weights
    are left as they were (mask-only prior)."""
    model = _mlp()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(20, 16) for _ in range(2)]
    x0 = torch.cat(batches).double()
    want, _ = sparsegpt_prune(model[0].weight.detach(), x0.T @ x0, k=2, block_size=4)
    pruner = dpp.prune(
        model,
        granularity="block",
        block_size=4,
        k=2,
        logit_init="sparsegpt",
        calibration_data=batches,
    )
    model.eval()
    assert torch.equal(pruner.masks()["0"], want)
    for key, value in dense.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_sparsegpt_saliency_is_recorded_when_each_group_is_decided():
    """return_saliency: within every N:M block the kept weights have at least the saliency
    of the pruned ones, and the first block's saliency is W^2 / [H^-1]_jj of the dense W."""
    torch.manual_seed(2)
    w = torch.randn(5, 16, dtype=torch.float64)
    x = _correlated_inputs(60, 16, seed=4)
    h = x.T @ x
    mask, new_w, sal = sparsegpt_prune(w, h, k=2, block_size=4, return_saliency=True)
    ref_mask, ref_w = sparsegpt_prune(w, h, k=2, block_size=4)
    assert torch.equal(mask, ref_mask) and torch.equal(new_w, ref_w)
    s, m = sal.reshape(-1, 4), mask.reshape(-1, 4)
    assert (s.masked_fill(~m, float("inf")).amin(1) >= s.masked_fill(m, -1.0).amax(1)).all()
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(16, dtype=torch.float64)
    hinv_diag = torch.linalg.inv(damped).diagonal()
    torch.testing.assert_close(sal[:, 0], w[:, 0] ** 2 / hinv_diag[0])


def test_sparsegpt_saliency_prior_is_graded_and_starts_from_sparsegpts_mask():
    """logit_init='sparsegpt-saliency': the first deterministic mask is SparseGPT's (as with
    'sparsegpt'), the logits are graded (not two-valued), and the weights stay unchanged."""
    batches = [torch.randn(20, 16) for _ in range(2)]
    masks, logits = {}, {}
    for init in ("sparsegpt", "sparsegpt-saliency"):
        model = _mlp()
        dense = {k: v.clone() for k, v in model.state_dict().items()}
        pruner = dpp.prune(
            model,
            granularity="block",
            block_size=4,
            k=2,
            logit_init=init,
            logit_init_std=3.0,
            calibration_data=batches,
        )
        model.eval()
        masks[init] = pruner.masks()
        logits[init] = pruner.layers["0"].dpp.logits.detach()
        for key, value in dense.items():
            assert torch.equal(model.state_dict()[key], value), key
    for name, mask in masks["sparsegpt"].items():
        assert torch.equal(masks["sparsegpt-saliency"][name], mask), name
    assert logits["sparsegpt"].unique().numel() == 2
    assert logits["sparsegpt-saliency"].unique().numel() > 10


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        return self.q(x) + self.k(x)


def test_layers_on_one_input_share_their_statistics_exactly():
    """Two layers called on the same input get exactly its X^T X and column norms."""
    model = _TwoHeads()
    batches = [torch.randn(5, 6) for _ in range(3)]
    stats = calibrate(model, {"q": model.q, "k": model.k}, batches, hessian=["k"])
    x = torch.cat(batches).double()
    for name in ("q", "k"):
        torch.testing.assert_close(stats[name].sq_norm, x.square().sum(0))
        assert stats[name].tokens == 15
    torch.testing.assert_close(stats["k"].hessian, x.T @ x)
    assert stats["q"].hessian is None


def test_wanda_score_of_a_conv_uses_its_input_patches():
    """A 1x1 Conv2d gets the same Wanda scores as the Linear over its channels."""
    conv = nn.Conv2d(6, 4, 1, bias=False)
    x = torch.randn(3, 6, 5, 5)
    stats = calibrate(conv, {"": conv}, [x])
    rows = x.permute(0, 2, 3, 1).reshape(-1, 6)
    torch.testing.assert_close(
        wanda_scores(conv.weight.reshape(4, 6), stats[""].sq_norm),
        conv.weight.detach().reshape(4, 6).abs() * rows.norm(dim=0),
    )


def test_calibration_accepts_keyword_batches():
    """Dict batches are passed as keyword arguments (a tokenizer's output)."""

    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, *, features):
            return self.proj(features)

    model = Keyword()
    batch = {"features": torch.randn(4, 8)}
    stats = calibrate(model, {"proj": model.proj}, [batch, batch])
    assert stats["proj"].tokens == 8


@pytest.mark.parametrize(
    ("options", "data", "match"),
    [
        ({"logit_init": "wanda"}, None, "needs calibration inputs"),
        ({"logit_init": "wanda"}, [], "calibration_data is empty"),
        ({"logit_init": "wanda"}, [torch.randn(4, 7)], "batch 0"),
        ({"logit_init": "wanda"}, torch.randn(4, 16), "wrap a single batch"),
        ({"logit_init": "normal"}, [torch.randn(4, 16)], "used only by"),
        ({"logit_init": "sparsegpt", "granularity": "filter"}, [torch.randn(4, 16)], "'0'"),
    ],
)
def test_bad_calibration_gets_a_clear_error(options, data, match):
    """Missing, empty, misshapen or unneeded calibration data, and a prior on a granularity it
    cannot serve, raise an error that says what to do; the model is left untouched."""
    model = _mlp()
    options = {"density": 0.5, **options}
    with pytest.raises((ValueError, TypeError), match=match):
        dpp.prune(model, calibration_data=data, **options)
    assert not any(dpp.is_dpp_layer(m) for m in model.modules())


def test_a_layer_no_batch_reaches_is_named():
    """A prior on a layer the calibration forward never calls names that layer."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(8, 8)
            self.unused = nn.Linear(8, 8)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="unused"):
        dpp.prune(Branchy(), density=0.5, logit_init="wanda", calibration_data=[torch.randn(2, 8)])


def test_mask_only_training_leaves_the_weights_unchanged():
    """After freeze_weights(), training steps move the logits and not one weight bit."""
    model = _mlp()
    pruner = dpp.prune(model, granularity="block", block_size=4, k=2)
    pruner.freeze_weights()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "dpp" not in n}
    logits_before = [p.detach().clone() for p in pruner.logits()]
    opt = torch.optim.AdamW(pruner.param_groups(lr=1e-2), weight_decay=0.1)
    for _ in range(5):
        loss = model(torch.randn(8, 16)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    for name, p in model.named_parameters():
        if "dpp" not in name:
            assert torch.equal(p, before[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(pruner.logits(), logits_before, strict=True))
