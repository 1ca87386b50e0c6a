"""The language-model benchmark (dpp.experiments.lm) on a tiny model and a synthetic corpus."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from dpp.experiments.lm import corpus as corpus_mod
from dpp.experiments.lm.methods import MaskRunConfig, run_method
from dpp.experiments.lm.model import ModelSpec, train_batch
from dpp.experiments.lm.oneshot import block_linears, oneshot_masks
from dpp.experiments.lm.pretrain import PretrainConfig, load_dense, pretrain
from dpp.experiments.machine import describe as describe_machine

TINY = ModelSpec(hidden=16, layers=1, heads=2, intermediate=32, seq=32)


@pytest.fixture
def source_tree(tmp_path):
    """A small tree of '.py' files standing in for the standard library."""
    root = tmp_path / "src"
    g = torch.Generator().manual_seed(0)
    for i in range(60):
        path = root / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        words = torch.randint(0, 20, (300,), generator=g).tolist()
        path.write_text(" ".join(f"name{w}" for w in words) + "\n")
    return root


def _config(tmp_path, source_tree, **changes) -> PretrainConfig:
    data_dir = tmp_path / "data"
    corpus_mod.prepare("cpython-stdlib", data_dir / "cpython-stdlib", root=source_tree)
    cfg = PretrainConfig(
        data_dir=str(data_dir),
        spec=TINY,
        steps=6,
        batch=4,
        warmup=2,
        eval_windows=8,
        gap_every=3,
        checkpoint_every=2,
        calibration_batches=2,
    )
    return replace(cfg, **changes)


def test_corpus_is_split_by_file_and_digest_checked(tmp_path, source_tree):
    """Every file lands in one split, the manifest records its digests, and a changed byte
    in a prepared split is refused."""
    out = tmp_path / "prepared"
    corpus = corpus_mod.prepare("cpython-stdlib", out, root=source_tree)
    splits = {r["path"]: r["split"] for r in corpus.manifest["records"]}
    assert len(splits) == 60 and set(splits.values()) == {"train", "val"}
    assert all(corpus_mod.split_of(p) == s for p, s in splits.items())
    assert len(corpus.train) + len(corpus.val) == sum(
        p.stat().st_size + 1 for p in source_tree.rglob("*.py")
    )
    data = bytearray((out / "val.bin").read_bytes())
    data[3] ^= 1
    (out / "val.bin").write_bytes(bytes(data))
    with pytest.raises(corpus_mod.CorpusError, match="SHA-256"):
        corpus_mod.load(out)


def test_batches_are_a_function_of_seed_and_step():
    """The same (seed, step) gives the same windows; another step gives others."""
    data = torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy()
    a = train_batch(data, step=3, seed=1, batch=4, seq=16)
    assert torch.equal(a, train_batch(data, step=3, seed=1, batch=4, seq=16))
    assert not torch.equal(a, train_batch(data, step=4, seed=1, batch=4, seq=16))


def test_pretraining_resumes_to_the_same_weights(tmp_path, source_tree, monkeypatch):
    """A pretraining run interrupted after a checkpoint and resumed ends with exactly the
    weights of an uninterrupted run, and logs the one-shot gaps."""
    cfg = _config(tmp_path, source_tree)
    whole = load_dense_after(pretrain(cfg, tmp_path / "whole").parent)

    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "resumed")
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    resumed = load_dense_after(pretrain(cfg, tmp_path / "resumed").parent)
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
    gaps = [
        json.loads(line)
        for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()
        if '"gap"' in line
    ]
    assert [g["step"] for g in gaps] == [3, 6]
    assert all({"dense", "magnitude", "wanda"} <= set(g) for g in gaps)


def load_dense_after(run_dir):
    model, _ = load_dense(run_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_other_settings_in_a_run_directory_are_refused(tmp_path, source_tree):
    """Resuming with other settings than the saved ones is an error that says so."""
    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="other settings"):
        pretrain(replace(cfg, lr=1e-2), tmp_path / "run")


def test_sequential_sparsegpt_keeps_2_of_4_and_updates_the_weights(tmp_path, source_tree):
    """One-shot SparseGPT over the decoder keeps 2 of every 4 inputs per row and changes the
    kept weights; the mask-only variant leaves the weights alone."""
    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "run")
    model, _ = load_dense(tmp_path / "run")
    before = {n: m.weight.detach().clone() for n, m in block_linears(model).items()}
    calib = [torch.randint(0, 256, (4, 32)) for _ in range(2)]
    masks = oneshot_masks(model, "sparsegpt", k=2, m=4, calibration=calib)
    assert len(masks) == 7
    for name, layer in block_linears(model).items():
        assert (masks[name].reshape(-1, 4).sum(-1) == 2).all()
        assert (layer.weight[~masks[name]] == 0).all()
        assert not torch.equal(layer.weight[masks[name]], before[name][masks[name]])
    fresh, _ = load_dense(tmp_path / "run")
    oneshot_masks(fresh, "sparsegpt", k=2, m=4, calibration=calib, update=False)
    for name, layer in block_linears(fresh).items():
        assert torch.equal(layer.weight, before[name])


@pytest.mark.parametrize(
    "method", ["dense", "magnitude", "wanda+ft", "sparsegpt", "dpp-mask", "dpp-joint"]
)
def test_every_method_runs_and_records_its_budget(tmp_path, source_tree, method):
    """Each method writes a result with its validation loss and token budget, and is not run
    again once its result exists."""
    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "dense")
    run = MaskRunConfig(model=str(tmp_path / "dense"), method=method, steps=2, batch=2)
    result = run_method(run, tmp_path / "out")
    assert result["val_loss"] > 0 and result["val_bpb"] == pytest.approx(
        result["val_loss"] / 0.6931471805599453
    )
    assert result["tokens"] == (2 * 2 * TINY.seq if run.trains else 0)
    assert run_method(run, tmp_path / "out") == result
    if run.trains:
        assert [p["step"] for p in result["curve"]] == [2]
        assert ("mask_flips" in result["curve"][0]) == method.startswith("dpp")


@pytest.mark.parametrize("prior", ["sparsegpt", "sparsegpt-saliency"])
def test_dpp_from_sparsegpts_weights_starts_at_the_one_shot_sparsegpt_model(
    tmp_path, source_tree, prior
):
    """DPP started from SparseGPT's updated weights (weights_from="sparsegpt") and its mask or
    graded saliency, before any step, evaluates exactly as the one-shot SparseGPT model."""
    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "dense")
    oneshot = MaskRunConfig(model=str(tmp_path / "dense"), method="sparsegpt")
    start = replace(oneshot, method="dpp-mask", prior=prior, weights_from="sparsegpt", steps=0)
    a = run_method(oneshot, tmp_path / "a")
    b = run_method(start, tmp_path / "b")
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
    assert (
        b["val_loss"] < run_method(replace(start, weights_from="dense"), tmp_path / "c")["val_loss"]
    )
    from dpp.experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="prior='sparsegpt-saliency'"):
        replace(start, prior="wanda")
    with pytest.raises(ConfigError, match="needs a dpp method"):
        replace(start, method="sparsegpt+ft")


def test_dpp_from_sparsegpts_weights_and_saliency_starts_from_graded_logits(tmp_path, source_tree):
    """With weights_from="sparsegpt", the saliency prior gives graded starting logits (the
    kept weights of a group differ) and the 0/1 prior two values per group."""
    from dpp.experiments.lm.methods import _setup

    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "dense")
    calib = [torch.randint(0, 256, (2, 32)) for _ in range(2)]
    spread = {}
    for prior in ("sparsegpt", "sparsegpt-saliency"):
        run = MaskRunConfig(
            model=str(tmp_path / "dense"),
            method="dpp-mask",
            prior=prior,
            weights_from="sparsegpt",
            steps=1,
        )
        model, _ = load_dense(tmp_path / "dense")
        logits = _setup(run, model, calib).logits()[0].detach()
        spread[prior] = logits.round(decimals=4).unique().numel()
    assert spread["sparsegpt"] <= 4 < spread["sparsegpt-saliency"]


def test_a_finished_run_with_other_settings_is_refused(tmp_path, source_tree):
    """A run directory whose result was made with other settings, or from another dense
    model, is an error naming what differs, never a silently reused result."""
    from dpp.experiments.errors import ConfigError

    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "dense")
    run = MaskRunConfig(model=str(tmp_path / "dense"), method="dense", steps=1, batch=2)
    run_method(run, tmp_path / "out")
    with pytest.raises(ConfigError, match="lr differ"):
        run_method(replace(run, lr=1e-2), tmp_path / "out")
    assert run_method(replace(run, k=4, m=8), tmp_path / "out")["val_loss"] > 0  # dense: any k:m
    (tmp_path / "dense" / "dense.safetensors").write_bytes(b"other")
    with pytest.raises(ConfigError, match="the dense model"):
        run_method(run, tmp_path / "out")


def test_a_run_another_process_is_running_is_claimed(tmp_path):
    """While another process holds a run (its flock), the run is claimed; once that process
    is gone, however it ended, it is not."""
    import subprocess
    import sys

    from dpp.experiments.lm.methods import is_claimed

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; "
            f"lock = FileLock({str(run / '.lock')!r}); lock.acquire(); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_claimed(run)
    finally:
        holder.kill()
        holder.wait()
    assert not is_claimed(run)


def test_run_names_follow_the_settings_that_matter():
    """A run's directory changes with every setting its method uses and with nothing else:
    one-shot methods have no seed, dense continued no pattern."""
    base = MaskRunConfig(model="d", method="dpp-mask")
    assert base.run_name() != replace(base, noise_scale=0.1).run_name()
    assert base.run_name() != replace(base, steps=1000).run_name()
    assert base.run_name() == replace(base, lr=1e-2).run_name()  # frozen weights: lr unused
    oneshot = MaskRunConfig(model="d", method="wanda")
    assert oneshot.run_name() == replace(oneshot, seed=3, lr=1.0).run_name() == "2of4/wanda"
    dense = MaskRunConfig(model="d", method="dense")
    assert dense.run_name() == replace(dense, k=4, m=8).run_name()
    assert dense.run_name().startswith("dense-continued/")


def test_mask_only_dpp_leaves_the_pretrained_weights_unchanged(tmp_path, source_tree, monkeypatch):
    """dpp-mask trains the logits only: when the run finalizes its masks, every weight still
    equals the dense one."""
    import dpp

    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "dense")
    dense, _ = load_dense(tmp_path / "dense")
    seen = {}
    original = dpp.Pruner.finalize

    def spy(self):
        seen["weights"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return original(self)

    monkeypatch.setattr(dpp.Pruner, "finalize", spy)
    run = MaskRunConfig(model=str(tmp_path / "dense"), method="dpp-mask", steps=3, batch=2)
    run_method(run, tmp_path / "out")
    trained = seen["weights"]
    for key, value in dense.state_dict().items():
        assert torch.equal(trained[key], value), key


def test_a_grid_runs_every_setting_once_and_tables_the_best(tmp_path, source_tree, capsys):
    """`dpp lm grid` runs methods x swept values x seeds, resumes, and
    its table reports each method at the setting with the lowest loss on the tuning windows."""
    from dpp.experiments.cli import main
    from dpp.experiments.lm.grid import grid_runs, results_table, settings_table

    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "dense")
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'dense_dir = "{tmp_path / "dense"}"\noutput_dir = "{tmp_path / "out"}"\n'
        'pattern = "2:4"\nsteps = 2\nbatch = 2\nseeds = [0, 1]\n'
        '[[methods]]\nmethod = "dense"\nlr = [1e-4, 1e-2]\n'
        '[[methods]]\nmethod = "magnitude"\n'
        '[[methods]]\nmethod = "wanda+ft"\nseeds = [1]\n'
    )
    runs = grid_runs(grid)
    assert len(runs) == 6 and len({d for d, _ in runs}) == 6  # one-shot: once, not per seed
    assert [c.seed for _, c in runs if c.method == "wanda+ft"] == [1]  # its own seeds
    assert main(["lm", "grid", str(grid)]) == 0
    results = {d.name: json.loads((d / "result.json").read_text()) for d, _ in runs}
    table = results_table(grid)
    dense_rows = {n: r["tune_loss"] for n, r in results.items() if n.startswith("dense")}
    low = min(
        ("lr-0.0001_", "lr-0.01_"), key=lambda s: sum(v for n, v in dense_rows.items() if s in n)
    )
    setting = "lr 0.0001" if low == "lr-0.0001_" else "lr 0.01"
    assert f"| dense | steps 2, {setting} |" in table and "| magnitude |" in table
    assert main(["lm", "grid", str(grid)]) == 0  # resumes: nothing runs again
    assert "[1/6]" in capsys.readouterr().out
    assert all(r["machines"] == [describe_machine("cpu")] for r in results.values())
    assert "other machine" not in table
    for d, c in runs:  # the dense runs recorded on another machine: no step ratio against them
        if c.method == "dense":
            result = {**results[d.name], "machines": [{"cpu": "another CPU"}]}
            (d / "result.json").write_text(json.dumps(result))
    assert "| other machine |" in results_table(grid)
    for d, c in runs:  # dense runs written before the record: a ratio that may mix machines
        if c.method == "dense":
            result = {k: v for k, v in results[d.name].items() if k != "machines"}
            (d / "result.json").write_text(json.dumps(result))
    assert "| machine unknown |" in results_table(grid)
    every = settings_table(grid).splitlines()[2:]
    assert len(every) == 6 and sum(row.startswith("| dense |") for row in every) == 4


def test_a_mask_run_refuses_another_corpus_than_the_dense_models(tmp_path, source_tree):
    """A mask-phase run whose prepared corpus differs from the one the dense model recorded
    is an error naming both, before anything trains."""
    from dpp.experiments.errors import ConfigError

    cfg = _config(tmp_path, source_tree)
    pretrain(cfg, tmp_path / "dense")
    recorded = tmp_path / "dense" / "corpus.json"
    info = json.loads(recorded.read_text())
    info["train_sha256"] = "0" * 64
    recorded.write_text(json.dumps(info))
    run = MaskRunConfig(model=str(tmp_path / "dense"), method="dense", steps=1, batch=2)
    with pytest.raises(ConfigError, match="is not the one"):
        run_method(run, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".lock"]  # nothing written


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parent.parent / "configs" / "lm").glob("*.toml")),
    ids=lambda p: p.stem,
)
def test_shipped_lm_grids_are_valid(path):
    """Every grid file under configs/lm/ names its model and output directory, uses known
    keys and valid settings, and gives each run its own directory."""
    from dpp.experiments.lm.grid import grid_runs

    runs = grid_runs(path)
    assert runs and len({d for d, _ in runs}) == len(runs)
    assert all(d.is_relative_to(Path(str(runs[0][0]).split("/")[0])) for d, _ in runs)


def test_settings_that_change_the_numbers_are_part_of_a_runs_identity():
    """Windows, corpora, calibration and validation sizes, loss and bf16 change a run's
    directory; where it runs, gradient checkpointing and keeping the sampler's scores do
    not."""
    base = MaskRunConfig(model="d", method="dpp-mask")
    for change in (
        {"seq": 64},
        {"corpora": ("cpython-stdlib", "python-docs")},
        {"calibration_batches": 2},
        {"eval_windows": 8},
        {"loss": "kd"},
        {"bf16": True},
    ):
        assert replace(base, **change).run_name() != base.run_name(), change
    for change in ({"device": "cuda"}, {"grad_checkpointing": True}, {"keep_scores": True}):
        assert replace(base, **change).run_name() == base.run_name(), change
    both = replace(base, method="dpp-mask+ft")
    assert replace(both, mask_fraction=0.25).run_name() != both.run_name()
    assert replace(base, mask_fraction=0.25).run_name() == base.run_name()  # dpp-mask+ft only


def test_the_best_setting_is_judged_on_the_seeds_every_setting_has(tmp_path):
    """A setting run at more seeds is compared with the others on their shared seeds only,
    and then reported over all its seeds."""
    from dpp.experiments.lm.grid import grid_runs, results_table

    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'model = "{tmp_path / "model"}"\noutput_dir = "{tmp_path / "out"}"\n'
        'pattern = "2:4"\nsteps = 2\nbatch = 2\nseeds = [0]\n'
        '[[methods]]\nmethod = "dpp-mask"\nlogit_lr = [0.05, 0.1]\n'
        '[[methods]]\nmethod = "dpp-mask"\nlogit_lr = 0.05\nseeds = [1, 2]\n'
    )
    tune = {(0.05, 0): 1.0, (0.1, 0): 1.5, (0.05, 1): 2.0, (0.05, 2): 2.0}
    for out_dir, cfg in grid_runs(grid):  # the 3-seed mean (1.67) is above 0.1's seed 0
        out_dir.mkdir(parents=True)
        loss = tune[cfg.logit_lr, cfg.seed]
        result = {"tune_loss": loss, "val_loss": loss, "seconds": 1.0, "seconds_per_step": 0.5}
        (out_dir / "result.json").write_text(json.dumps({**result, "tokens": 8}))
    row = next(line for line in results_table(grid).splitlines() if line.startswith("| dpp-mask"))
    assert "| steps 2 |" in row and "| 3 |" in row  # logit lr 0.05 (the default), 3 seeds


def test_lm_prune_help_gives_each_flag_its_field_doc_and_the_commands_own_defaults(capsys):
    """`dpp lm prune --help` explains every run setting with its field's docstring, and shows
    the defaults prune uses (4 windows a step, both corpora), not the benchmark's."""
    from dpp.experiments.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["lm", "prune", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Windows per step. (default 4)" in text
    assert "(default cpython-stdlib,python-docs)" in text
    assert "--keep-scores, --no-keep-scores DPP: keep each draw's float32 scores" in text
    assert "evaluation stays in float32. (default off)" in text
