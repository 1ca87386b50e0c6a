"""Every exporter, from every kind of source, computes what the finalized model computes.

Sources: the model while it holds DPP layers, its live Pruner, and the Pruner after
finalize(). The models cover filter granularity with linked BatchNorms (shifts and running
statistics far from their defaults, so an unzeroed BatchNorm shows) and 2:4 blocks with 4-bit
weights and 8-bit inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import dpp
from dpp import export
from dpp.bake import bake
from dpp.storage import storage_report

SOURCES = ("model", "live pruner", "finalized pruner")


class ConvNet(nn.Module):
    """conv-BN-ReLU-conv-BN-ReLU-pool-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


def _filter_cnn() -> tuple[nn.Module, dpp.Pruner, torch.Tensor]:
    model = ConvNet()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.5, 1.0)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 6, 6)
    pruner = dpp.prune(
        model,
        granularity="filter",
        density=0.5,
        overrides={"fc": {"granularity": "weight", "density": 0.25}},
        example_inputs=x,
    )
    assert len(pruner.batchnorm_links) == 2
    return model, pruner, x


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))


def _block_mlp() -> tuple[nn.Module, dpp.Pruner, torch.Tensor]:
    model = _mlp()
    pruner = dpp.prune(
        model, granularity="block", block_size=4, k=2, weight_bits=4, activation_bits=8
    )
    x = torch.randn(5, 32)
    model(x)  # training mode: the activation ranges move away from zero
    return model, pruner, x


MODELS = {"filter CNN + BatchNorm": _filter_cnn, "2:4 MLP, 4-bit": _block_mlp}


def _source(kind: str, factory: Callable) -> tuple[object, torch.Tensor, torch.Tensor, nn.Module]:
    """(the source, the finalized model's outputs, inputs, the user's model).

    The outputs are those of the live model in eval mode, which finalize() keeps exactly (as
    tests/test_pruner.py and tests/test_batchnorm_link.py check), so they do not depend on
    the baking under test.
    """
    torch.manual_seed(0)
    model, pruner, x = factory()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    if kind == "finalized pruner":
        pruner.finalize()
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
        return pruner, expected, x, model
    return (model if kind == "model" else pruner), expected, x, model


def _plain_twin(source) -> nn.Module:
    """A plain instance of the source's architecture, every parameter and buffer zero."""
    model = source.model if isinstance(source, dpp.Pruner) else source
    plain = ConvNet() if isinstance(model, ConvNet) else _mlp()
    with torch.no_grad():
        for t in plain.state_dict().values():
            t.zero_()
    return plain


def _packed(source, x, tmp_path):
    path = tmp_path / "m.safetensors"
    export.save_packed(source, path)
    return export.load_packed(path, _plain_twin(source)).eval()(x)


def _kofn(source, x, tmp_path):
    return export.convert_kofn(source)(x)


def _kofn_file(source, x, tmp_path):
    path = tmp_path / "m.safetensors"
    export.save_packed(source, path)
    return export.convert_kofn(path, _plain_twin(source))(x)


def _shrink(source, x, tmp_path):
    pytest.importorskip("torch_pruning")
    return export.shrink(source, x)(x)


def _onnx(source, x, tmp_path):
    pytest.importorskip("onnxruntime")
    path = export.to_onnx(source, x, tmp_path / "m.onnx", dynamo=False)
    return torch.from_numpy(export.onnx.onnx_outputs(path, x)[0])


def _semi_structured(source, x, tmp_path):
    cuda = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    if not cuda:
        pytest.skip("2:4 semi-structured kernels need an NVIDIA GPU (compute capability >= 8)")
    try:
        fast = export.to_semi_structured(source, dtype=torch.float16)
    except export.SemiStructuredError as err:
        assert "no Linear layer is pruned 2:4" in str(err)
        pytest.skip("this model has no 2:4 layer")
    return fast(x.cuda().half()).float().cpu()


EXPORTERS = {
    "save_packed+load_packed": (_packed, 1e-6),
    "convert_kofn": (_kofn, 1e-5),
    "convert_kofn(file)": (_kofn_file, 1e-5),
    "shrink": (_shrink, 1e-5),
    "to_onnx": (_onnx, 1e-4),
    "to_semi_structured": (_semi_structured, 5e-2),
}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_exporter_matches_finalized_model(exporter, kind, model_name, tmp_path):
    """The exported model's outputs equal the finalized model's, and the source is unchanged."""
    source, expected, x, user_model = _source(kind, MODELS[model_name])
    before = {k: v.clone() for k, v in user_model.state_dict().items()}
    holds_dpp = [type(m).__name__ for m in user_model.modules()]
    fn, tol = EXPORTERS[exporter]
    got = fn(source, x, tmp_path).detach()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    after = user_model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], v) for k, v in before.items()), "the source was modified"
    assert [type(m).__name__ for m in user_model.modules()] == holds_dpp


@pytest.mark.parametrize("model_name", list(MODELS))
def test_storage_report_is_the_same_from_every_source(model_name):
    """storage_report gives the same accounting from the model, the live and the finalized
    pruner."""
    reports = [storage_report(_source(kind, MODELS[model_name])[0]).to_dict() for kind in SOURCES]
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["total"]["packed_bits"] < reports[0]["total"]["dense_fp32_bits"]


def test_bake_of_a_live_ramp_uses_the_target_k():
    """A live pruner in the middle of a sparsity ramp is baked with its target k, as
    finalize() bakes it, and the pruner keeps its current k."""
    model = nn.Sequential(nn.Linear(16, 8))
    ramp = dpp.Schedule("linear", 0.0, 1.0, steps=10)
    pruner = dpp.prune(model, k=2, sparsity_ramp=ramp)
    pruner.step(5)
    baked = bake(pruner)
    assert baked.layers["0"].mask.sum(1).tolist() == [2] * 8
    assert pruner.layers["0"].dpp.k > 2
    assert int((baked.model[0].weight != 0).sum(1).max()) <= 2


def test_bake_records_linked_batchnorms_and_channels():
    """A baked filter layer names its linked BatchNorm, whose pruned channels are zero."""
    torch.manual_seed(0)
    _, pruner, _ = _filter_cnn()
    baked = bake(pruner)
    rec = baked.layers["conv1"]
    assert rec.batchnorms == ("bn1",)
    assert rec.channel_mask.sum().item() == rec.layout.k
    bn = baked.module("bn1")
    assert not bool(bn.weight[~rec.channel_mask].any())
    assert not bool(bn.bias[~rec.channel_mask].any())
    assert rec.dense_cls is nn.Conv2d


def test_bake_of_a_plain_model_needs_its_pruner():
    """Baking a model without DPP layers raises, saying to pass the Pruner instead."""
    with pytest.raises(ValueError, match=r"holds no DPP layer.*Pass the model before"):
        bake(nn.Sequential(nn.Linear(2, 2)), what="save_packed")
    with pytest.raises(TypeError, match=r"expects a pruned torch.nn.Module or a dpp.Pruner"):
        bake("model.pt")


def test_semi_structured_layers_from_every_source():
    """The 2:4 layers found (on CPU) are the same from every source."""
    names = [
        export.semi_structured.semi_structured_layers(_source(kind, _block_mlp)[0])
        for kind in SOURCES
    ]
    assert names[0] == names[1] == names[2] == ["0", "2"]


def test_pruner_copy_is_independent():
    """bake() of a copied pruner does not touch the original pruner's model."""
    torch.manual_seed(0)
    model, pruner, _ = _block_mlp()
    twin = pruner.copy()
    baked = bake(twin)
    assert dpp.is_dpp_layer(model[0]) and dpp.is_dpp_layer(twin.model[0])
    assert not any(dpp.is_dpp_layer(m) for m in baked.model.modules())
