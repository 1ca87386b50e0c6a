"""Probe for torchrun tests: the threads each rank still runs as its interpreter shuts down.

Live gloo worker threads at interpreter shutdown are the likely cause of a rank's
intermittent SIGABRT at exit ("terminate called without an active exception"), so the
torchrun tests check that every rank has joined them.
"""

from __future__ import annotations

import ast
import re

import pytest

# Appended to an entry script: the names of the threads still alive (Linux's
# /proc/self/task), printed to stderr as the interpreter is about to shut down.
PRINT_THREADS_AT_EXIT = """
import os as _os, sys as _sys
_tasks = "/proc/self/task"
_names = None
if _os.path.isdir(_tasks):
    _names = [open(f"{_tasks}/{t}/comm").read().strip() for t in _os.listdir(_tasks)]
# One write of the whole line: the ranks share stderr, and print() may write the line and
# its newline apart, so two ranks' lines could run together.
_sys.stderr.flush()
_os.write(2, f"threads at exit of rank {_os.environ['RANK']}: {_names}\\n".encode())
"""


def assert_no_gloo_thread_at_exit(stderr: str, world: int) -> None:
    """Every rank of ``world`` printed its threads at exit, and none is a gloo thread."""
    lines = re.findall(r"threads at exit of rank (\d+): (\[[^\]]*\]|None)", stderr)
    assert sorted(int(rank) for rank, _ in lines) == list(range(world)), stderr
    if any(names == "None" for _, names in lines):
        pytest.skip("no /proc/self/task here to list a process's threads")
    for rank, names in lines:
        assert not [n for n in ast.literal_eval(names) if "gloo" in n], f"rank {rank}: {names}"
