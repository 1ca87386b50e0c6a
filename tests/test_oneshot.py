"""dpp.oneshot: one-shot magnitude / Wanda / SparseGPT pruning of a whole model, sequential
over its decoder blocks, and its masks as fixed or learned DPP starts."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

import dpp
from dpp.priors import calibrate, sparsegpt_prune

transformers = pytest.importorskip("transformers")

METHODS = ("magnitude", "wanda", "sparsegpt")


def _llama(seed: int = 0) -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # weights of a trained scale, so that pruning matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def _calib(batches: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (2, 12), generator=g) for _ in range(batches)]


def _decoder_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]


def _reference_sparsegpt(model: nn.Module, calib: list, groups: list[list[str]]) -> dict:
    """The old benchmark's approach: for each group of layers in forward order, recalibrate
    the whole (already pruned and updated) model, then prune the group."""
    masks = {}
    for group in groups:
        mods = {n: model.get_submodule(n) for n in group}
        stats = calibrate(model, mods, calib, hessian=group)
        for n in group:
            mask, new_w = sparsegpt_prune(
                mods[n].weight.detach(), stats[n].hessian, k=2, block_size=4
            )
            with torch.no_grad():
                mods[n].weight.copy_(new_w)
            masks[n] = mask
    return masks


class _Counter:
    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1


@pytest.mark.parametrize("true_sequential", [True, False])
def test_sequential_sparsegpt_equals_recalibrating_the_pruned_model(true_sequential):
    """Caching block inputs gives the masks and weights of recalibrating the whole pruned
    model per layer (true_sequential) or per block, with one model forward per batch."""
    calib = _calib()
    model, ref = _llama(), _llama()
    names = _decoder_linears(model)
    per_block = [[n for n in names if f".layers.{i}." in n] for i in range(2)]
    groups = [[n] for n in names] if true_sequential else per_block
    model_calls, ref_calls = _Counter(model), _Counter(ref)
    last_block = _Counter(model.model.layers[1])
    result = dpp.oneshot(
        model,
        "sparsegpt",
        k=2,
        block_size=4,
        calibration_data=calib,
        true_sequential=true_sequential,
    )
    want = _reference_sparsegpt(ref, calib, groups)
    assert result.blocks == "model.layers"
    assert list(result.masks) == names
    for n in names:
        assert torch.equal(result.masks[n], want[n]), n
        torch.testing.assert_close(
            model.get_submodule(n).weight, ref.get_submodule(n).weight, rtol=1e-4, atol=1e-5
        )
    assert model_calls.calls == len(calib)  # each stopped at the first block
    assert ref_calls.calls == len(groups) * len(calib)
    # Two passes of a block (statistics, then outputs); one per group with true_sequential.
    passes = 1 + (4 if true_sequential else 1)  # q/k/v, o, gate/up, down
    assert last_block.calls == passes * len(calib) + (1 if true_sequential else 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("k", "block_size"), [(2, 4), (1, 4), (None, None)])
def test_every_method_keeps_exactly_k_per_group_and_zeroes_the_rest(method, k, block_size):
    """Each method keeps exactly k of every block_size (or k of every row with
    density=) and the model's pruned weights are zero after the call."""
    model = _llama()
    calib = None if method == "magnitude" else _calib()
    options = {"k": k} if k is not None else {"density": 0.25}
    result = dpp.oneshot(model, method, block_size=block_size, calibration_data=calib, **options)
    names = _decoder_linears(model)
    assert sorted(result.masks) == sorted(names)  # lm_head dense by default
    for n in names:
        mask, weight = result.masks[n], model.get_submodule(n).weight
        assert mask.shape == weight.shape and mask.dtype == torch.bool
        if block_size is None:
            assert (mask.sum(1) == weight.shape[1] // 4).all(), n
        else:
            assert (mask.reshape(-1, block_size).sum(-1) == k).all(), n
        assert (weight[~mask] == 0).all(), n
    assert not any(dpp.is_dpp_layer(m) for m in model.modules())  # a plain model


@pytest.mark.parametrize("method", METHODS)
def test_update_weights_false_leaves_the_weights_and_picks_the_same_masks(method):
    """update_weights=False changes no weight and picks the masks of update_weights=True."""
    calib = None if method == "magnitude" else _calib()
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept = dpp.oneshot(
        model, method, k=2, block_size=4, calibration_data=calib, update_weights=False
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    updated = dpp.oneshot(_llama(), method, k=2, block_size=4, calibration_data=calib)
    for n, mask in updated.masks.items():
        assert torch.equal(kept.masks[n], mask), n


def test_sparsegpt_updates_the_kept_weights():
    """With update_weights=True SparseGPT changes the kept weights (the OBS update)."""
    model = _llama()
    before = {n: model.get_submodule(n).weight.detach().clone() for n in _decoder_linears(model)}
    result = dpp.oneshot(model, "sparsegpt", k=2, block_size=4, calibration_data=_calib())
    for n, mask in result.masks.items():
        assert not torch.equal(model.get_submodule(n).weight[mask], before[n][mask]), n


@pytest.mark.parametrize("net", ["llama", "net"])
def test_keep_pruned_weights_keeps_the_dense_values_where_it_prunes(net):
    """keep_pruned_weights=True: SparseGPT's updated weights where it keeps, the dense ones
    where it prunes, the same masks; DPP from it starts at exactly the one-shot model."""
    torch.manual_seed(0)
    model = _llama() if net == "llama" else _Net()
    calib = _calib() if net == "llama" else [torch.randn(24, 8) for _ in range(2)]
    dense = copy.deepcopy(model)
    pruned = copy.deepcopy(model)
    ref = dpp.oneshot(pruned, "sparsegpt", k=2, block_size=4, calibration_data=calib)
    result = dpp.oneshot(
        model, "sparsegpt", k=2, block_size=4, calibration_data=calib, keep_pruned_weights=True
    )
    for n, mask in ref.masks.items():
        assert torch.equal(result.masks[n], mask), n
        weight = model.get_submodule(n).weight
        assert torch.equal(weight[mask], pruned.get_submodule(n).weight[mask]), n
        assert torch.equal(weight[~mask], dense.get_submodule(n).weight[~mask]), n
    dpp.prune(model, **result.prune_options(), mask_source=result.learned_masks())
    model.eval()

    def out(m: nn.Module) -> torch.Tensor:
        y = m(calib[0])
        return y.logits if net == "llama" else y

    torch.testing.assert_close(out(model), out(pruned))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("block_size", [4, None])
def test_scores_rank_every_kept_weight_above_every_pruned_one(method, block_size):
    """Within every group each kept weight scores strictly above each pruned one."""
    calib = None if method == "magnitude" else _calib()
    k = 2 if block_size else 8
    result = dpp.oneshot(_llama(), method, k=k, block_size=block_size, calibration_data=calib)
    for n, mask in result.masks.items():
        width = block_size or mask.shape[1]
        s, m = result.scores[n].reshape(-1, width), mask.reshape(-1, width)
        assert s.shape == m.shape and s.dtype == torch.float32
        kept_min = s.masked_fill(~m, float("inf")).amin(1)
        pruned_max = s.masked_fill(m, -float("inf")).amax(1)
        assert (kept_min > pruned_max).all(), n
        assert s.unique().numel() > 2  # graded, not 0/1


def test_sparsegpt_scores_are_its_obs_saliency():
    """SparseGPT's score of a kept weight is its OBS saliency W^2/[H^-1]_jj at decision time."""
    layer = nn.Linear(8, 4)
    x = torch.randn(64, 8)
    model = nn.Sequential(layer)
    w0 = layer.weight.detach().clone()
    result = dpp.oneshot(model, "sparsegpt", k=2, block_size=4, calibration_data=[x])
    h = x.double().T @ x.double()
    mask, _, sal = sparsegpt_prune(w0, h, k=2, block_size=4, return_saliency=True)
    assert torch.equal(result.masks["0"], mask)
    torch.testing.assert_close(result.scores["0"][mask], sal[mask].float())


@pytest.mark.parametrize("graded", [True, False])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_learned_masks_start_at_the_oneshot_mask(method, graded):
    """learned_masks(): DPP's deterministic start is exactly the one-shot mask."""
    model = _llama()
    result = dpp.oneshot(model, method, k=2, block_size=4, calibration_data=_calib())
    pruner = dpp.prune(
        model, **result.prune_options(), mask_source=result.learned_masks(graded=graded)
    )
    model.eval()
    masks = pruner.masks()
    assert sorted(masks) == sorted(result.masks)
    for n, mask in masks.items():
        assert torch.equal(mask, result.masks[n]), n
    logits = pruner.layers[_decoder_linears(model)[0]].dpp.logits.detach()
    assert logits.unique().numel() > (2 if graded else 1)
    if not graded:
        assert logits.unique().numel() == 2


def test_fixed_masks_train_only_the_kept_weights():
    """fixed_masks() + dpp.prune: training moves no pruned weight's effect, the masks stay."""
    model = _llama()
    result = dpp.oneshot(model, "wanda", k=2, block_size=4, calibration_data=_calib())
    pruner = dpp.prune(model, **result.prune_options(), mask_source=result.fixed_masks())
    before = {n: layer.weight.detach().clone() for n, layer in pruner.layers.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for ids in _calib():
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        for n, layer in pruner.layers.items():
            assert (layer.weight.grad[~result.masks[n]] == 0).all(), n
        opt.step()
    for n, layer in pruner.layers.items():
        mask = result.masks[n]
        assert torch.equal(layer.weight.detach()[~mask], before[n][~mask]), n
        assert not torch.equal(layer.weight.detach()[mask], before[n][mask]), n
    model.eval()
    for n, mask in pruner.masks().items():
        assert torch.equal(mask, result.masks[n]), n


def test_sequential_false_takes_every_hessian_from_the_dense_model():
    """sequential=False picks the mask of dpp.prune's one-pass logit_init='sparsegpt'."""
    calib = _calib()
    result = dpp.oneshot(
        _llama(), "sparsegpt", k=2, block_size=4, calibration_data=calib, sequential=False
    )
    model = _llama()
    pruner = dpp.prune(
        model,
        granularity="block",
        block_size=4,
        k=2,
        logit_init="sparsegpt",
        calibration_data=calib,
    )
    model.eval()
    for n, mask in pruner.masks().items():
        assert torch.equal(mask, result.masks[n]), n


def test_a_plain_sequential_model_is_pruned_layer_by_layer():
    """An nn.Sequential is its own stack of blocks: each Linear is calibrated on the pruned
    layers before it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))
    ref = copy.deepcopy(model)
    calib = [torch.randn(20, 16) for _ in range(2)]
    result = dpp.oneshot(model, "sparsegpt", k=2, block_size=4, calibration_data=calib)
    want = _reference_sparsegpt(ref, calib, [["0"], ["2"]])
    assert result.blocks == "<model>"
    for n in ("0", "2"):
        assert torch.equal(result.masks[n], want[n])
        torch.testing.assert_close(model.get_submodule(n).weight, ref.get_submodule(n).weight)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.relu(self.fc1(h)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([_Block(16), _Block(16)])
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def test_layers_before_and_after_the_blocks_are_pruned_in_forward_order():
    """A layer before the stack of blocks is pruned before the blocks are calibrated, one
    after it on the pruned blocks' outputs: the same as recalibrating per layer."""
    torch.manual_seed(0)
    model = _Net()
    ref = copy.deepcopy(model)
    calib = [torch.randn(24, 8) for _ in range(2)]
    calls = _Counter(model)
    result = dpp.oneshot(
        model, "sparsegpt", k=2, block_size=4, calibration_data=calib, true_sequential=True
    )
    names = ["inp", "blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "out"]
    want = _reference_sparsegpt(ref, calib, [[n] for n in names])
    assert result.blocks == "blocks" and sorted(result.masks) == sorted(names)
    for n in names:
        assert torch.equal(result.masks[n], want[n]), n
        torch.testing.assert_close(model.get_submodule(n).weight, ref.get_submodule(n).weight)
    assert calls.calls == 3 * len(calib)  # capture, capture after "inp", "out"'s pass


def test_gpt2_conv1d_masks_are_shaped_like_its_weight():
    """GPT-2's Conv1D (weight [in, out]) keeps k of every block_size inputs per output."""
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    result = dpp.oneshot(model, "sparsegpt", k=2, block_size=4, calibration_data=_calib(2))
    assert result.blocks == "transformer.h"
    assert len(result.masks) == 8
    for n, mask in result.masks.items():
        weight = model.get_submodule(n).weight
        assert mask.shape == weight.shape
        assert (mask.t().reshape(-1, 4).sum(-1) == 2).all(), n
        assert (weight[~mask] == 0).all(), n


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "obs", "k": 2, "block_size": 4}, "valid: magnitude, wanda, sparsegpt"),
        ({"method": "wanda", "k": 2, "block_size": 4}, "calibration"),
        ({"method": "sparsegpt", "k": 2, "block_size": 4}, "calibration"),
        ({"method": "wanda", "k": 2, "block_size": 4, "calibration_data": []}, "empty"),
        (
            {"method": "magnitude", "k": 2, "block_size": 4, "calibration_data": _calib()},
            "not 'magnitude'",
        ),
        (
            {"method": "magnitude", "k": 2, "block_size": 5},
            r"layer 'model\.layers\.0\.self_attn\.q_proj'.*block_size 5 does not divide",
        ),
        ({"method": "magnitude", "k": 2, "include": ["*.nothing"]}, r"\*\.nothing"),
        ({"method": "magnitude", "block_size": 4}, "one of k or density"),
    ],
)
def test_bad_input_gets_a_clear_error(options, match):
    """Bad arguments raise an error naming the option, layer or pattern and the fix."""
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = options.pop("method")
    with pytest.raises(ValueError, match=match):
        dpp.oneshot(model, method, **options)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_blocks_with_different_attention_masks_are_refused_sequentially():
    """Sequential calibration reuses the first block's kwargs, so a model whose blocks take
    different masks (config.layer_types) is refused, naming sequential=False."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))
    model.config = types.SimpleNamespace(layer_types=["full_attention", "sliding_attention"])
    calib = [torch.randn(20, 16)]
    with pytest.raises(ValueError, match="sequential=False"):
        dpp.oneshot(model, "wanda", k=2, block_size=4, calibration_data=calib)
    result = dpp.oneshot(
        model, "wanda", k=2, block_size=4, calibration_data=calib, sequential=False
    )
    assert result.blocks is None


def test_masks_of_another_layout_are_refused_by_the_factories():
    """A mask source asked for other groups than the one-shot ones names the layer."""
    model = _llama()
    result = dpp.oneshot(model, "magnitude", k=2, block_size=4)
    with pytest.raises(ValueError, match=r"q_proj.*keep 2 of 4"):
        dpp.prune(
            model,
            granularity="block",
            block_size=8,
            k=2,
            include=["*q_proj"],
            mask_source=result.fixed_masks(),
        )


@pytest.mark.parametrize("options", [{"update_weights": False}, {"keep_pruned_weights": True}])
def test_a_layer_after_the_blocks_is_calibrated_on_the_pruned_blocks(options):
    """With the original weights kept (update_weights=False, keep_pruned_weights=True), a
    layer after the stack still gets the mask it gets when the blocks stay pruned."""
    torch.manual_seed(0)
    model = _Net()
    ref = copy.deepcopy(model)
    calib = [torch.randn(24, 8) for _ in range(2)]
    want = dpp.oneshot(ref, "sparsegpt", k=2, block_size=4, calibration_data=calib)
    got = dpp.oneshot(model, "sparsegpt", k=2, block_size=4, calibration_data=calib, **options)
    for n, mask in want.masks.items():
        assert torch.equal(got.masks[n], mask), n
