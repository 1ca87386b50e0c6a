"""``dpp report``: the figures and the page it writes, and its errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn.datasets")
pytest.importorskip("matplotlib")

from dpp.experiments import cli
from dpp.experiments.report import MissingPlotDependencyError, make_report
from dpp.experiments.runconfig import RunConfig
from dpp.experiments.trainer import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SINGLE_RUN_FIGURES = {
    "curves.png",
    "sparsity.png",
    "mask_metrics.png",
    "mask_fc1.png",
    "mask_fc2.png",
    "mask_fc3.png",
    "pixels_fc1.png",
}


def _config(name: str, method: str, out: Path) -> RunConfig:
    return RunConfig.from_dict(
        {
            "name": name,
            "method": method,
            "output_dir": str(out),
            "data": {"dataset": "digits", "batch_size": 64},
            "model": {"name": "lenet300"},
            "train": {"epochs": 2, "logit_lr": 1e-2, "device": "cpu"},
            "pruning": {
                "density": 0.1,
                "noise_scale": 0.5,
                "overrides": {"fc3": {"density": 0.5}},
            },
            "log": {"progress": "off", "metrics_samples": 8},
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-epoch DPP run and a 2-epoch dense run of LeNet-300-100 on sklearn's digits."""
    out = tmp_path_factory.mktemp("runs")
    found = {}
    for name, method in (("tiny-dpp", "dpp"), ("tiny-dense", "dense")):
        result = train(_config(name, method, out), run_dir=out / name, quiet=True)
        assert result.run_dir is not None
        found[method] = result.run_dir
    return found


def _check_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    assert 3_000 < len(data) < 150_000, f"{path}: {len(data)} bytes"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width >= 300 and img.height >= 200, f"{path}: {img.size}"
        colors = img.convert("RGB").getcolors(1 << 16)
        assert colors is None or len(colors) > 8, f"{path} is nearly blank"


def _referenced(page: Path) -> set[str]:
    text = page.read_text()
    return set(re.findall(r'src="([^"]+\.png)"', text)) | set(
        re.findall(r"\]\(([^)]+\.png)\)", text)
    )


def test_single_run_report_writes_every_figure(runs, capsys):
    """`dpp report RUN` writes every figure as a valid PNG into RUN/report; the page shows each."""
    assert cli.main(["report", str(runs["dpp"]), "--samples", "8", "-q"]) == 0
    out = runs["dpp"] / "report"
    assert str(out / "report.html") in capsys.readouterr().out
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs >= SINGLE_RUN_FIGURES, f"missing: {SINGLE_RUN_FIGURES - pngs}"
    for name in pngs:
        _check_png(out / name)
    assert _referenced(out / "report.html") == pngs
    html = (out / "report.html").read_text()
    assert "tiny-dpp" in html and "lenet300" in html and "digits" in html


def test_multi_run_report_plots_accuracy_against_compression(runs, tmp_path):
    """Several runs get the accuracy-vs-compression figure, with the dense run as reference."""
    out = tmp_path / "cmp"
    result = make_report([runs["dpp"], runs["dense"]], out=out, fmt="md", samples=8)
    assert result.page == out / "report.md"
    target = out / "accuracy_vs_compression.png"
    assert target in result.figures
    for path in result.figures:
        _check_png(path)
    refs = _referenced(result.page)
    assert "accuracy_vs_compression.png" in refs
    assert {(out / r).resolve() for r in refs} == {p.resolve() for p in result.figures}
    text = result.page.read_text()
    assert "tiny-dpp" in text and "tiny-dense" in text


def test_missing_matplotlib_gives_a_clear_error(runs, tmp_path, monkeypatch, capsys):
    """Without matplotlib, the report says to install the plot extra, before writing anything."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "nothing"
    with pytest.raises(MissingPlotDependencyError, match=r"pip install 'dpp\[plot\]'"):
        make_report([runs["dpp"]], out=out)
    assert not out.exists()
    assert cli.main(["report", str(runs["dpp"]), "--out", str(out)]) == 2
    assert "pip install 'dpp[plot]'" in capsys.readouterr().err


def test_bad_run_directory_is_named_in_the_error(tmp_path, capsys):
    """A missing directory, or one that is not a run, gives an error naming that directory."""
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        make_report([missing], out=tmp_path / "r1")
    not_a_run = tmp_path / "empty-dir"
    not_a_run.mkdir()
    assert cli.main(["report", str(not_a_run), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert str(not_a_run) in err and "metrics.jsonl" in err
