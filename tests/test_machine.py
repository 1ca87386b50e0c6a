"""The machine record that results keep beside their timings."""

from __future__ import annotations

import json

import torch

from dpp.experiments.machine import describe, same_machine


def test_description_names_this_cpu_and_survives_json():
    """A description holds the CPU, ATen's capability and the threads, and round-trips JSON."""
    machine = describe("cpu")
    assert machine["cpu"] and machine["accelerator"] is None
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["threads"] == torch.get_num_threads()
    assert json.loads(json.dumps(machine)) == machine


def test_runs_on_one_machine_compare_and_others_do_not():
    """Same identity on every run: True; another CPU or capability: False; no record: None."""
    here = describe("cpu")
    assert same_machine([here], [dict(here)]) is True
    assert same_machine([here], [{**here, "torch": "0.0"}]) is True  # versions are not identity
    assert same_machine([here], [{**here, "cpu_capability": "other"}]) is False
    assert same_machine([here, {**here, "cpu": "other"}], [here]) is False  # resumed elsewhere
    assert same_machine([here], None) is None
    assert same_machine([here], []) is None
