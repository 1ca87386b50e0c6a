"""Tests for dpp.export.packed: the packed k-of-n safetensors format."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import dpp
from dpp.export import PackedFileError, load_packed, read_packed, save_packed
from dpp.export.packed import index_dtype, tensor_digest

# These tests prune filters without example inputs on purpose: shrink() must handle the
# BatchNorm shift of unlinked masks (dpp.prune warns about it).
pytestmark = pytest.mark.filterwarnings("ignore:filter-level pruning of a model with BatchNorm")


def small_cnn() -> nn.Sequential:
    """Conv(3->8, pad) -> BN -> ReLU -> Conv(8->16) -> ReLU -> Flatten -> Linear(256->12)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 12),
    )


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))


GRANULARITY = {
    # granularity -> (dpp.prune options, overrides for layers it cannot apply to)
    "weight": ({}, {}),
    "block": ({"block_size": 3}, {"6": {"block_size": 4}}),
    "kernel": ({}, {"6": {"granularity": "weight"}}),
    "filter": ({}, {}),
}


def _pruned(factory, granularity: str, bits, seed: int = 0):
    torch.manual_seed(seed)
    model = factory()
    fresh = copy.deepcopy(model)
    options, overrides = GRANULARITY[granularity]
    if factory is mlp:
        options = {"block_size": 4} if granularity == "block" else {}
        overrides = {}
    pruner = dpp.prune(
        model,
        granularity=granularity,
        density=0.5,
        weight_bits=bits,
        overrides=overrides,
        **options,
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), fresh.eval(), pruner


@pytest.mark.parametrize("bits", [None, 4, "binary"])
@pytest.mark.parametrize("granularity", ["weight", "block", "kernel", "filter"])
def test_round_trip_cnn_every_granularity(tmp_path, granularity, bits):
    """Finalized CNN (Conv2d + Linear) -> packed file -> fresh model computes identical outputs."""
    model, fresh, pruner = _pruned(small_cnn, granularity, bits)
    x = torch.randn(3, 3, 6, 6)
    pruner.finalize()
    with torch.no_grad():
        expected = model(x)
    save_packed(pruner, tmp_path / "m.safetensors")
    restored = load_packed(tmp_path / "m.safetensors", fresh)
    with torch.no_grad():
        assert torch.equal(restored(x), expected)


@pytest.mark.parametrize("bits", [None, 4, "binary"])
@pytest.mark.parametrize("granularity", ["weight", "block", "filter"])
def test_round_trip_mlp_live_model(tmp_path, granularity, bits):
    """A live pruned MLP (not finalized) packs to what finalize() would compute, exactly."""
    model, fresh, pruner = _pruned(mlp, granularity, bits)
    x = torch.randn(5, 64)
    save_packed(model, tmp_path / "live.safetensors")
    pruner.finalize()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(load_packed(tmp_path / "live.safetensors", fresh)(x), expected)


def test_live_pruner_and_finalized_pruner_write_the_same_tensors(tmp_path):
    """save_packed gives the same tensors for a live Pruner and for the same Pruner finalized."""
    _model, _, pruner = _pruned(small_cnn, "kernel", 4)
    save_packed(pruner, tmp_path / "a.safetensors")
    pruner.finalize()
    save_packed(pruner, tmp_path / "b.safetensors")
    with (
        safe_open(str(tmp_path / "a.safetensors"), "pt") as a,
        safe_open(str(tmp_path / "b.safetensors"), "pt") as b,
    ):
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():  # noqa: SIM118
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def test_kept_zero_weights_keep_their_indices(tmp_path):
    """A kept weight that is exactly 0 stays kept: masks come from the pruner, never from zeros."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 4))
    fresh = copy.deepcopy(model)
    pruner = dpp.prune(model, k=4)
    mask = model[0].dpp_masks()
    with torch.no_grad():
        model[0].weight[mask] = 0.0  # every kept weight is zero
    model.eval()
    pruner.finalize()
    save_packed(pruner, tmp_path / "z.safetensors")
    packed = read_packed(tmp_path / "z.safetensors")
    assert torch.equal(packed.layers["0"].mask(), mask)
    x = torch.randn(2, 16)
    assert torch.equal(load_packed(tmp_path / "z.safetensors", fresh)(x), model(x))


def test_packed_layout_shapes_and_metadata(tmp_path):
    """Values are [G, k] (weight/block) or [G, k, wpc] (kernel/filter); metadata has the layout."""
    _model, _, pruner = _pruned(small_cnn, "kernel", None)
    save_packed(pruner, tmp_path / "k.safetensors")
    with safe_open(str(tmp_path / "k.safetensors"), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("0.weight.values").shape == (8, 2, 9)  # 8 filters, k=2 of 3, 3x3
        assert f.get_tensor("0.weight.indices").shape == (8, 2)
        assert f.get_tensor("6.weight.values").shape == (12, 128)  # weight: k = 128 of 256
        assert "0.weight" not in f.keys()  # noqa: SIM118
        assert "1.running_var" in f.keys()  # noqa: SIM118
    info = json.loads(meta["dpp"])["layers"]["0"]
    assert meta["format"] == "dpp-packed" and meta["format_version"] == "1"
    assert (info["granularity"], info["n"], info["k"], info["weight_shape"]) == (
        "kernel",
        3,
        2,
        [8, 3, 3, 3],
    )


def test_quantized_file_stores_int8_codes_and_scales(tmp_path):
    """A 4-bit layer stores int8 codes in [-7, 7] and per-channel scales, no float values."""
    _, _, pruner = _pruned(mlp, "weight", 4)
    save_packed(pruner, tmp_path / "q.safetensors")
    with safe_open(str(tmp_path / "q.safetensors"), "pt") as f:
        codes = f.get_tensor("0.weight.codes")
        assert codes.dtype == torch.int8 and codes.shape == (32, 32)
        assert int(codes.abs().max()) <= 7
        assert f.get_tensor("0.weight.scale").shape == (32, 1)
        assert "0.weight.values" not in f.keys()  # noqa: SIM118


@pytest.mark.parametrize(
    ("n", "dtype"),
    [(2, torch.uint8), (256, torch.uint8), (257, torch.int16), (32768, torch.int16),
     (32769, torch.int32)],
)  # fmt: skip
def test_index_dtype_is_the_narrowest(n, dtype):
    """Indices use uint8 up to n=256, int16 up to n=32768, int32 beyond."""
    assert index_dtype(n) == dtype


def test_index_dtype_in_file(tmp_path):
    """A layer with n=300 candidates stores int16 indices; one with n=32 stores uint8."""
    model = nn.Sequential(nn.Linear(300, 32), nn.ReLU(), nn.Linear(32, 4))
    pruner = dpp.prune(model, density=0.1)
    save_packed(pruner, tmp_path / "i.safetensors")
    packed = read_packed(tmp_path / "i.safetensors")
    assert packed.layers["0"].indices.dtype == torch.int16
    assert packed.layers["2"].indices.dtype == torch.uint8


def test_activation_quantized_layer_round_trips(tmp_path):
    """A layer with 8-bit input quantization restores its input quantization (identical outputs)."""
    torch.manual_seed(0)
    model = mlp()
    fresh = copy.deepcopy(model)
    pruner = dpp.prune(model, density=0.5, weight_bits=8, activation_bits=8)
    model(torch.randn(16, 64))  # calibrate the activation ranges
    model.eval()
    pruner.finalize()
    x = torch.randn(4, 64)
    save_packed(pruner, tmp_path / "a.safetensors")
    assert torch.equal(load_packed(tmp_path / "a.safetensors", fresh)(x), model(x))


def test_save_reports_sizes(tmp_path):
    """save_packed reports the file size next to the theoretical and dense fp32 sizes."""
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    pruner = dpp.prune(model, density=0.05, overrides={"2": {"prune": False}})
    info = save_packed(pruner, tmp_path / "s.safetensors")
    assert info.file_bytes == (tmp_path / "s.safetensors").stat().st_size
    assert 0 < info.theoretical_bytes < info.file_bytes < info.dense_fp32_bits / 8
    assert "bytes on disk" in str(info)


# ---------------------------------------------------------------------------- corrupt files
@pytest.fixture
def packed_file(tmp_path):
    _model, fresh, pruner = _pruned(small_cnn, "weight", None)
    path = tmp_path / "good.safetensors"
    save_packed(pruner, path)
    return path, fresh


def _rewrite(src, dst, *, tensors=None, meta=None):
    """A copy of a packed file with some tensors or metadata changed, its digests made to match
    (a consistent but wrong file, as a buggy writer would make it)."""
    with safe_open(str(src), "pt") as f:
        all_tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        metadata = dict(f.metadata())
    if tensors:
        all_tensors.update(tensors)
        info = json.loads(metadata["dpp"])
        info["digests"] = {k: tensor_digest(t) for k, t in all_tensors.items()}
        metadata["dpp"] = json.dumps(info)
    if meta:
        metadata.update(meta(metadata))
    save_file(all_tensors, str(dst), metadata=metadata)
    return dst


def test_wrong_format_version_is_refused(packed_file, tmp_path):
    """A file of another format version names the file, both versions and the fix."""
    path, fresh = packed_file
    bad = _rewrite(path, tmp_path / "v2.safetensors", meta=lambda m: {"format_version": "2"})
    with pytest.raises(PackedFileError, match=r"v2\.safetensors.*version 2.*reads version 1"):
        load_packed(bad, fresh)


def test_shape_mismatch_names_layer(packed_file):
    """Loading into a model with other layer sizes names the layer and both shapes."""
    path, _ = packed_file
    other = small_cnn()
    other[6] = nn.Linear(256, 10)
    with pytest.raises(PackedFileError, match=r"layer '6'.*\[12, 256\].*\[10, 256\]"):
        load_packed(path, other)


def test_missing_layer_names_layer(packed_file):
    """A file layer absent from the model names the layer and says to use the same architecture."""
    path, _ = packed_file
    other = nn.Sequential(*list(small_cnn())[:6])
    with pytest.raises(PackedFileError, match=r"layer '6'.*same architecture"):
        load_packed(path, other)


def test_truncated_file_is_refused(packed_file, tmp_path):
    """A truncated file gives a clear error naming the file and the fix (re-export)."""
    path, fresh = packed_file
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        PackedFileError, match=r"cut\.safetensors.*truncated or corrupt.*save_packed"
    ):
        load_packed(bad, fresh)


def _flip_bit(path, dst, key: str, byte: int, bit: int):
    """A copy of a safetensors file with one bit of tensor ``key``'s data flipped."""
    raw = bytearray(path.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    start, _ = json.loads(raw[8 : 8 + header_len])[key]["data_offsets"]
    raw[8 + header_len + start + byte] ^= 1 << bit
    dst.write_bytes(bytes(raw))
    return dst


def test_flipped_exponent_bit_in_values_is_refused(packed_file, tmp_path):
    """A flipped exponent bit in a values tensor is caught by its digest; the error names the
    file, the tensor and what to do."""
    path, fresh = packed_file
    bad = _flip_bit(path, tmp_path / "flip.safetensors", "6.weight.values", byte=3, bit=6)
    with safe_open(str(bad), "pt") as f:  # still a readable file, with one wrong weight
        assert not torch.equal(
            f.get_tensor("6.weight.values"), read_packed(path).layers["6"].values
        )
    with pytest.raises(
        PackedFileError,
        match=r"flip\.safetensors: the tensor '6\.weight\.values' does not match the SHA-256.*"
        r"re-export",
    ):
        load_packed(bad, fresh)


def test_removed_tensor_is_refused(packed_file, tmp_path):
    """A file that lost a tensor names the file, the key and what to do."""
    path, _ = packed_file
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "6.bias"}  # noqa: SIM118
        metadata = dict(f.metadata())
    bad = tmp_path / "lost.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(
        PackedFileError, match=r"lost\.safetensors: lacks the tensor\(s\) \['6\.bias'\].*restore"
    ):
        read_packed(bad)


def test_file_without_digests_loads_with_a_warning(packed_file, tmp_path):
    """A file written before digests existed still loads, with a warning that it is unverified."""
    path, fresh = packed_file

    def drop(meta):
        info = json.loads(meta["dpp"])
        del info["digests"]
        return {"dpp": json.dumps(info)}

    old = _rewrite(path, tmp_path / "old.safetensors", meta=drop)
    with pytest.warns(UserWarning, match=r"old\.safetensors: written without tensor digests"):
        load_packed(old, fresh)


def test_save_is_atomic(packed_file, tmp_path, monkeypatch):
    """A write that fails midway leaves the previous file intact and no temporary file."""
    path, _ = packed_file
    good = path.read_bytes()
    _model, _fresh, pruner = _pruned(small_cnn, "weight", None, seed=1)

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_packed(pruner, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_indices_out_of_range_are_refused(packed_file, tmp_path):
    """An index >= n is reported with the layer and the group."""
    path, fresh = packed_file
    with safe_open(str(path), "pt") as f:
        idx = f.get_tensor("0.weight.indices").clone()
    idx[3, 0] = 200  # n = 27
    bad = _rewrite(path, tmp_path / "range.safetensors", tensors={"0.weight.indices": idx})
    with pytest.raises(PackedFileError, match=r"layer '0': group 3 .*outside \[0, n=27\)"):
        load_packed(bad, fresh)


def test_duplicate_indices_are_refused(packed_file, tmp_path):
    """A group that repeats an index is reported with the layer and the group."""
    path, fresh = packed_file
    with safe_open(str(path), "pt") as f:
        idx = f.get_tensor("3.weight.indices").clone()
    idx[5, 1] = idx[5, 0]
    bad = _rewrite(path, tmp_path / "dup.safetensors", tensors={"3.weight.indices": idx})
    with pytest.raises(PackedFileError, match=r"layer '3': group 5 repeats an index"):
        load_packed(bad, fresh)


def test_wrong_index_dtype_is_refused(packed_file, tmp_path):
    """Indices of the wrong dtype or shape are reported with the layer."""
    path, fresh = packed_file
    with safe_open(str(path), "pt") as f:
        idx = f.get_tensor("0.weight.indices")
    bad = _rewrite(path, tmp_path / "dt.safetensors", tensors={"0.weight.indices": idx.int()})
    with pytest.raises(PackedFileError, match=r"layer '0': weight.indices is int32"):
        load_packed(bad, fresh)


def test_not_a_packed_file(tmp_path):
    """A plain safetensors state dict is recognised as not a dpp packed file."""
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(PackedFileError, match="not a dpp packed file"):
        read_packed(tmp_path / "plain.safetensors")


def test_missing_file():
    """A missing path raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        read_packed("nope.safetensors")


def test_loading_into_a_dpp_model_is_refused(packed_file):
    """Loading into a model that still holds DPP layers says to use the plain architecture."""
    path, _ = packed_file
    model = small_cnn()
    dpp.prune(model, density=0.5, overrides={"0": {"granularity": "weight"}})
    with pytest.raises(PackedFileError, match="plain architecture"):
        load_packed(path, model)


def test_plain_model_without_pruner_is_refused(tmp_path):
    """A finalized model alone says nothing about its masks: save_packed asks for the Pruner."""
    model = mlp()
    pruner = dpp.prune(model, density=0.5)
    pruner.finalize()
    with pytest.raises(ValueError, match="Pruner"):
        save_packed(model, tmp_path / "x.safetensors")


def test_size_report_is_storage_report_also_at_n_1(tmp_path):
    """save_packed's theoretical size is dpp.storage's count, n = 1 groups (no index bits)
    included."""
    from dpp.storage import storage_report

    model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 8))
    pruner = dpp.prune(model, k=1, weight_bits=4)
    info = save_packed(pruner, tmp_path / "n1.safetensors")
    report = storage_report(pruner)
    assert report["0"].packed.indices == 0  # n = 1: nothing to index
    assert (info.theoretical_bits, info.dense_fp32_bits) == (
        report.packed_bits,
        report.dense_fp32_bits,
    )
    assert info.accounting == "dpp.storage"
