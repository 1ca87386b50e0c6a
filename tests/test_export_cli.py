"""``dpp export RUN --format torch|packed|onnx|shrunk`` on a trained run, and its bad inputs."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from digits_runs import digits, run_cli
from dpp import export
from dpp.experiments import cli
from dpp.experiments.data import load_dataset
from dpp.experiments.export_cli import FORMATS
from dpp.experiments.models import create_model
from dpp.experiments.runconfig import RunConfig
from dpp.experiments.trainer import train

pytestmark = pytest.mark.slow  # trains two small runs

# Filter level on fc1/fc2 (channels can be removed), the output layer dense.
SETTINGS = (
    "name=export",
    "pruning.granularity=filter",
    "pruning.density=0.5",
    "pruning.overrides={fc3: {prune: false}}",
    "log.metrics_samples=4",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A filter-pruned DPP run and a dense run on digits, one epoch each."""
    tmp = tmp_path_factory.mktemp("export")
    out = {}
    for method in ("dpp", "dense"):
        cfg = RunConfig.from_dict(digits(*SETTINGS, f"method={method}", f"output_dir={tmp}"))
        out[method] = train(cfg, run_dir=tmp / method, quiet=True).run_dir
    torch.set_flush_denormal(False)
    return out


def digits_batch() -> torch.Tensor:
    return load_dataset("digits").test.images[:64]


def finalized(run_dir: Path) -> torch.nn.Module:
    """The run's finalized model (model.safetensors) in the dense architecture."""
    info = load_dataset("digits").info
    model = create_model("lenet300", info.num_classes, input_shape=info.input_shape)
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")), strict=True)
    return model.eval()


def exported_outputs(fmt: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    """What the exported file computes on ``x``, loaded the way a user would load it."""
    if fmt == "torch":
        info = load_dataset("digits").info
        model = create_model("lenet300", info.num_classes, input_shape=info.input_shape)
        model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    elif fmt == "packed":
        info = load_dataset("digits").info
        model = create_model("lenet300", info.num_classes, input_shape=info.input_shape)
        export.load_packed(path, model)
    elif fmt == "shrunk":
        model = torch.load(path, weights_only=False)  # a pickled module: shapes differ
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return torch.from_numpy(np.asarray(session.run(None, {name: x.numpy()})[0]))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_computes_what_the_finalized_model_computes(runs, tmp_path: Path, fmt):
    """Each --format writes a file whose model gives the finalized model's outputs."""
    out = tmp_path / FORMATS[fmt]
    code, stdout, err = run_cli("export", str(runs["dpp"]), "--format", fmt, "--out", str(out))
    assert code == 0, err
    assert f"wrote {out}" in stdout and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    x = digits_batch()
    with torch.no_grad():
        expected = finalized(runs["dpp"])(x)
    got = exported_outputs(fmt, out, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if fmt == "shrunk":  # the pruned feature maps are gone
        small = torch.load(out, weights_only=False)
        dense = finalized(runs["dpp"])
        assert small.fc1.out_features < dense.fc1.out_features


def test_default_output_path_is_inside_the_run(runs):
    """Without --out the file goes to RUN/export/<format's file name>."""
    code, _, err = run_cli("export", str(runs["dpp"]), "--format", "torch")
    assert code == 0, err
    assert (runs["dpp"] / "export" / FORMATS["torch"]).is_file()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["{missing}"], ["neither a run directory nor a checkpoint"]),
        (["{empty}"], ["has no checkpoint.pt"]),
        (["{dense}", "--format", "packed"], ["dense run has no k-of-n masks", "torch or onnx"]),
        (["{dense}", "--format", "shrunk"], ["dense run has no k-of-n masks"]),
        (["{dpp}", "--out", "{empty}"], ["is a directory"]),
        (["{damaged}"], ["damaged", "Delete it"]),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(runs, tmp_path: Path, args, words):
    """A missing or empty run, a dense run for a k-of-n format, a directory as --out, a
    damaged checkpoint: exit code 2 and a one-line message, no traceback, no file."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray((runs["dpp"] / "checkpoint.pt").read_bytes())
    state = torch.load(runs["dpp"] / "checkpoint.pt", weights_only=True)
    weight = state["model"]["fc1.weight"].numpy().tobytes()
    at = bytes(data).find(weight)  # inside a tensor's storage, not zip padding
    assert at > 0
    data[at + 4 * 10 + 3] ^= 0x40
    (damaged / "checkpoint.pt").write_bytes(bytes(data))
    (tmp_path / "empty").mkdir()
    names = {
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "damaged": damaged,
        **runs,
    }
    argv = [a.format(**{k: str(v) for k, v in names.items()}) for a in args]
    code, stdout, err = run_cli("export", *argv)
    assert code == 2 and stdout == ""
    assert err.startswith("dpp export: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert "Traceback" not in err


def test_unknown_format_is_refused_by_the_parser(runs):
    """--format outside torch/packed/onnx/shrunk: argparse's usage error (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(io.StringIO()):
        cli.main(["export", str(runs["dpp"]), "--format", "tflite"])
    assert exit_info.value.code == 2
