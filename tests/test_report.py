"""``dpp report``: the figures and the page it writes, and its errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn.datasets")
pytest.importorskip("matplotlib")

from dpp.experiments import cli
from dpp.experiments.errors import UserError
from dpp.experiments.report import MissingPlotDependencyError, ReportError, make_report, read_run
from dpp.experiments.report.render import render
from dpp.experiments.report.sections import Figure, Page, Paragraph, Section, Table
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ without training
def _fake_run(path: Path, name: str = "fake", method: str = "dpp", epochs: int = 3) -> Path:
    """A run directory as dpp train writes it (metrics, summary, config), no checkpoint."""
    path.mkdir(parents=True)
    records = [
        {
            "event": "epoch",
            "epoch": e,
            "train_loss": 1.0 / e,
            "test_loss": 1.2 / e,
            "train_acc": 0.5 + 0.1 * e,
            "test_acc": 0.45 + 0.1 * e,
            "temperature": 0.5,
            "noise_scale": 0.3,
            "sparsity": {"layers": {"fc1": 0.9, "fc2|x": 0.9}, "total": 0.9},
            "mask_metrics": {"layers": {"fc1": {"confidence": 0.5, "diversity": 0.9}}},
        }
        for e in range(1, epochs + 1)
    ]
    lines = [json.dumps(r) for r in records]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = {
        "name": name,
        "method": method,
        "model": "lenet300",
        "dataset": "digits",
        "epochs": epochs,
        "test_acc": records[-1]["test_acc"],
        "params_dense": 1000,
        "params_kept": 100,
        "seconds_per_epoch": 0.5,
        "layers": [
            {"layer": "fc1", "type": "Linear", "granularity": "weight", "k": 6, "n": 64,
             "density": 0.094, "kept": 60, "weights": 640},
            {"layer": "fc2|x", "type": "Linear", "granularity": "-", "k": None, "n": None,
             "density": 1.0, "kept": 10, "weights": 10},
        ],
    }  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.yaml").write_text("method: dpp\ntrain:\n  optimizer: adam\n  lr: 0.001\n")
    return path


def _visible_text(page: str) -> str:
    """The words a reader sees on a rendered page: no tags, image links or table markup."""
    import html

    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", page)  # Markdown images
    text = html.unescape(re.sub(r"<[^>]+>", " ", text)).replace("\\|", "|")
    return " ".join(re.sub(r"[|*#>`:-]+", " ", text).split())


def test_html_and_markdown_show_the_same_page(tmp_path):
    """HTML and Markdown show the same text, tables, notes and figures of one page."""
    run = _fake_run(tmp_path / "run")
    html_page = make_report([run], out=tmp_path / "h", fmt="html", samples=2).page
    md_page = make_report([run], out=tmp_path / "m", fmt="md", samples=2).page
    assert html_page.name == "report.html" and md_page.name == "report.md"
    assert _referenced(html_page) == _referenced(md_page)
    html_text = _visible_text(html_page.read_text()).split(" Summary ", 1)[1]
    md_text = _visible_text(md_page.read_text()).split(" Summary ", 1)[1]
    assert html_text == md_text
    for phrase in ("Mask images skipped", "Training curves", "6 / 64", "dense", "fc2 x"):
        assert phrase in md_text, phrase
    assert f"directory `{run}`" in md_page.read_text()
    assert f"directory <code>{run}</code>" in html_page.read_text()


def test_markdown_table_escapes_pipes():
    """A pipe inside a table cell is escaped so the Markdown table keeps its columns."""
    page = Page("T", "t", [], [Section("S", [Table(["a", "b"], [["x|y", "1"]])])])
    rows = [line for line in render(page, "md").splitlines() if line.startswith("|")]
    assert len(rows) == 3
    assert all(len(re.split(r"(?<!\\)\|", line)) == 4 for line in rows)


def test_html_escapes_text_and_renders_code_and_notes():
    """HTML rendering escapes every text, turns `code` spans into <code> and marks notes."""
    blocks = [
        Paragraph("a <b> `x<y`"),
        Paragraph("careful", note=True),
        Figure("f.png", "T", "c&d"),
    ]
    page = Page("<T>", "t", [], [Section("S", blocks, anchor="s")])
    out = render(page, "html")
    assert "<h1>&lt;T&gt;</h1>" in out and "a &lt;b&gt; <code>x&lt;y</code>" in out
    assert '<p class="note">careful</p>' in out and "c&amp;d" in out and '<h2 id="s">' in out
    assert "> careful" in render(page, "md")


def test_unknown_page_format_is_rejected():
    """render refuses a format other than html or md, naming the valid ones."""
    with pytest.raises(ValueError, match="html, md"):
        render(Page("T", "t", [], []), "pdf")


def test_bad_arguments_are_user_errors(tmp_path, capsys):
    """A bad format or sample count raises ReportError, a UserError (exit code 2 in the CLI)."""
    run = _fake_run(tmp_path / "run")
    with pytest.raises(ReportError, match="format"):
        make_report([run], out=tmp_path / "r", fmt="pdf")
    with pytest.raises(ReportError, match="samples"):
        make_report([run], out=tmp_path / "r", samples=0)
    assert issubclass(ReportError, UserError)
    assert cli.main(["report", str(run), "--samples", "0", "--out", str(tmp_path / "r")]) == 2
    assert "samples" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / "metrics.jsonl").write_text('{"event": "epoch", "epoch": 1}\n{oops\n'),
         r"metrics.jsonl, line 2"),
        (lambda d: (d / "metrics.jsonl").write_text('{"event": "final"}\n'), "no epoch record"),
        (lambda d: (d / "summary.json").write_text("{"), r"summary.json: not valid JSON"),
        (lambda d: (d / "config.yaml").write_text("a: [1"), r"config.yaml: not valid YAML"),
    ],
    ids=["bad-json-line", "no-epochs", "bad-summary", "bad-config"],
)  # fmt: skip
def test_damaged_run_files_are_named(tmp_path, damage, match):
    """A damaged metrics.jsonl, summary.json or config.yaml gives a ReportError naming it."""
    run = _fake_run(tmp_path / "run")
    damage(run)
    with pytest.raises(ReportError, match=match):
        read_run(run)


def test_several_runs_get_sub_directories_and_overview(tmp_path):
    """Several runs: figures per run sub-directory plus overview; the page links all."""
    a = _fake_run(tmp_path / "a", name="same")
    b = _fake_run(tmp_path / "b", name="same", method="dense")
    result = make_report([a, b], out=tmp_path / "out", fmt="md", samples=2)
    assert (tmp_path / "out" / "a" / "curves.png") in result.figures
    assert (tmp_path / "out" / "b" / "curves.png") in result.figures
    assert (tmp_path / "out" / "accuracy_vs_compression.png") in result.figures
    refs = {(tmp_path / "out" / r).resolve() for r in _referenced(result.page)}
    assert refs == {p.resolve() for p in result.figures}
    assert "## a" in result.page.read_text() and "## b" in result.page.read_text()


def test_render_docstring_example():
    """The example in the renderer's docstring runs and prints what it shows."""
    import doctest

    from dpp.experiments.report import render as module

    assert doctest.testmod(module).failed == 0
