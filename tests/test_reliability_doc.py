"""docs/reliability.md cites tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) pairs: ``test_x.py::test_a`` and the ``::test_b`` that follow it in a cell."""
    pairs = []
    for cell in re.split(r"\|", text):
        current = None
        for match in re.finditer(r"(test_\w+\.py)?::(test_\w+)", cell):
            current = match.group(1) or current
            assert current, f"a citation without its file: {match.group(0)!r}"
            pairs.append((current, match.group(2)))
    return pairs


def test_every_cited_test_exists():
    """Each test named in docs/reliability.md is a test function of the file it names."""
    pairs = cited_tests((ROOT / "docs" / "reliability.md").read_text())
    assert len(pairs) > 30
    for file, name in pairs:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"docs/reliability.md cites {file}::{name}, which does not exist"
