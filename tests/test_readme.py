"""The README's usage example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    """The first Python block of the README (the training-loop example) runs and leaves a
    finalized model whose state dict loads into the dense architecture."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_blocks()[0], str(README), "exec"), namespace)
    model = namespace["model"]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(type(m) is torch.nn.Linear for m in linears)
    state = torch.load(tmp_path / "pruned.pt")
    dense = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(784, 300),
        torch.nn.ReLU(),
        torch.nn.Linear(300, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )
    dense.load_state_dict(state, strict=True)
    kept = (dense[1].weight != 0).sum(1)
    assert int(kept.max()) <= round(0.05 * 784)


def test_readme_commands_match_ci():
    """The README's test command is the one .ci/run runs (the line marked 'the test suite')."""
    lines = [
        ln for ln in README.read_text().splitlines() if ln.rstrip().endswith("# the test suite")
    ]
    assert len(lines) == 1
    assert "pytest" in lines[0] and "scripts/setup.sh" in lines[0]
