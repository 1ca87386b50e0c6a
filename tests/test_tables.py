"""The table helper behind every terminal, Markdown and HTML table of the experiment side."""

from __future__ import annotations

import doctest
import importlib.util
import re
from pathlib import Path

import pytest

from dpp.experiments import tables
from dpp.experiments.tables import format_table

ROOT = Path(__file__).resolve().parent.parent


def test_cells_are_kept_verbatim():
    """Cells are shown as given: no number parsing, rounding or thousands regrouping."""
    out = format_table([["a", "1.000"], ["b", "1,234/5"], ["c", "007"]], ["x", "y"])
    assert "1.000" in out and "1,234/5" in out and "007" in out


def test_text_table_has_header_rule_and_right_aligned_numbers():
    """A text table puts a rule under the header and right-aligns all but the first column."""
    lines = format_table([["fc1", "5"], ["fc22", "100"]], ["layer", "k"]).splitlines()
    assert lines[0].split() == ["layer", "k"] and set(lines[1]) <= {"-", " "}
    assert lines[2].endswith("  5") and lines[3].endswith("100")
    assert len({len(line) for line in lines}) == 1


def test_markdown_table_has_one_column_per_cell_even_with_pipes():
    """A Markdown table escapes | in cells, so every line has the header's column count."""
    out = format_table([["a|b", "1"], ["c", "2"]], ["name", "n"], fmt="markdown", align="lr")
    lines = out.splitlines()
    assert lines[1] == "|:-------|----:|"
    assert all(len(re.split(r"(?<!\\)\|", line)) == 4 for line in lines)


def test_html_table_escapes_cells():
    """An HTML table escapes markup in headers and cells."""
    out = format_table([["<b>", "&"]], ["<h>", "y"], fmt="html")
    assert "&lt;b&gt;" in out and "&amp;" in out and "&lt;h&gt;" in out and "<b>" not in out


def test_plain_table_has_no_rules():
    """A plain table is aligned columns only, one line per row."""
    out = format_table([["todo", "run-a"], ["done", "run-bb"]], fmt="plain", align="ll")
    assert out.splitlines() == ["todo  run-a", "done  run-bb"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rows": [["a", "b"], ["c"]], "header": ["x", "y"]}, "row 1 has 1 cells, expected 2"),
        ({"rows": [["a"]], "header": ["x"], "align": "lr"}, "align must be 1 letters"),
        ({"rows": [["a"]], "header": ["x"], "align": "q"}, "l/r/c"),
        ({"rows": [["a"]], "header": ["x"], "fmt": "latex"}, "text, plain, markdown, html"),
    ],
    ids=["ragged-row", "align-width", "align-letter", "format"],
)
def test_bad_tables_are_rejected(kwargs, match):
    """A ragged row, a wrong alignment or an unknown format is a ValueError saying what."""
    with pytest.raises(ValueError, match=match):
        format_table(**kwargs)


def test_docstring_examples():
    """The examples in the helper's docstring run and print what they show."""
    assert doctest.testmod(tables).failed == 0


def _results_tables():
    spec = importlib.util.spec_from_file_location(
        "results_tables", ROOT / "scripts" / "results_tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (ROOT / "results").is_dir(), reason="no committed results")
@pytest.mark.parametrize("name", ["dense-vs-dpp", "quantization", "summary", "mask-metrics"])
def test_results_tables_are_well_formed_markdown(name):
    """Each docs table of results_tables.py has the same column count on every line."""
    out = _results_tables().TABLES[name]()
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(lines) >= 3
    widths = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
    assert len(widths) == 1


@pytest.mark.skipif(not (ROOT / "results").is_dir(), reason="no committed results")
def test_docs_tables_match_the_committed_results(monkeypatch):
    """Every table block of the docs is what its command prints from the committed results."""
    module = _results_tables()
    monkeypatch.chdir(ROOT)
    for doc in module.DOCS:
        text = doc.read_text()
        assert module.refreshed(text) == text, (
            f"{doc.relative_to(ROOT)} is stale: python scripts/results_tables.py --update-docs"
        )
