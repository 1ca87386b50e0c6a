"""The ``dpp`` command line, called in-process (and once as ``python -m dpp``) on digits."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import torch

from digits_runs import ROOT, digits, run_cli, subprocess_env, train_argv, write_config
from dpp.experiments import cli
from dpp.experiments.data import DATASETS, load_dataset
from dpp.experiments.runconfig import OPTIMIZERS, load_config_file

# The config file: 3 epochs (the tests --set 1), the temperature annealed over one epoch.
FILE_SETTINGS = ("name=cli-digits", "train.epochs=3", "pruning.temperature.epochs=1")


@pytest.fixture(autouse=True)
def _restore_flush_denormal():
    """train() turns on flush-denormal for CPU runs; give the default back to later tests."""
    yield
    torch.set_flush_denormal(False)


def line_starting(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.split()[:1] == [prefix]]
    assert len(lines) >= 1, f"no line starts with {prefix!r} in:\n{text}"
    return lines[0]


def final_table(text: str) -> str:
    """The table a run ends with: from the last header line starting with 'layer'."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.split()[:1] == ["layer"]]
    assert starts, text
    return "\n".join(lines[starts[-1] :])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``dpp train --config digits.toml --set train.epochs=1 ...``: (run dir, stdout, summary)."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("cli")
    config = write_config(tmp / "digits.yaml", *FILE_SETTINGS)
    out_dir = tmp / "runs"
    code, out, err = run_cli(*train_argv(config, out_dir, "train.epochs=1", "train.lr=1e-3"))
    torch.set_flush_denormal(False)
    assert code == 0, err
    (run_dir,) = out_dir.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, out, summary


# ------------------------------------------------------------------ train
@pytest.mark.slow
def test_train_prints_the_final_table(trained):
    """dpp train prints a final table: per-layer k/n, parameters, storage, accuracy, run dir."""
    run_dir, out, summary = trained
    assert summary["epochs"] == 1  # --set beat the file's epochs = 3
    assert line_starting(out, "epoch").split()[1] == "1/1"
    out = final_table(out)
    for row in summary["layers"]:
        assert f"{row['k']}/{row['n']}" in line_starting(out, row["layer"])
    params = line_starting(out, "parameters")
    assert f"{summary['params_dense']:,} dense" in params
    assert f"{summary['params_kept']:,} kept" in params
    ratio = summary["storage"]["total"]["compression_ratio"]
    assert f"{ratio:.1f}x" in line_starting(out, "storage")
    assert f"{100 * summary['test_acc']:.2f}%" in line_starting(out, "test")
    assert line_starting(out, "run").split()[-1] == str(run_dir)
    cfg = (run_dir / "config.yaml").read_text()
    assert "lr: 0.001" in cfg  # the resolved config, overrides applied


# ------------------------------------------------------------------ eval
@pytest.mark.slow
def test_eval_reports_the_run_test_accuracy(trained):
    """dpp eval RUN_DIR prints the test accuracy that summary.json recorded."""
    run_dir, _, summary = trained
    code, out, err = run_cli("eval", str(run_dir), "--json")
    assert code == 0, err
    results = json.loads(out)
    assert results["test"]["acc"] == summary["test_acc"]
    assert results["test"]["n"] == len(load_dataset("digits").test)
    assert "train" not in results and "val" not in results

    code, out, err = run_cli("eval", str(run_dir / "checkpoint.pt"), "--train")
    assert code == 0, err
    assert f"{100 * summary['test_acc']:.2f}%" in line_starting(out, "test")
    assert "%" in line_starting(out, "train")


# ------------------------------------------------------------------ summary
@pytest.mark.slow
def test_summary_prints_layers_and_storage(trained):
    """dpp summary RUN_DIR prints the per-layer table (names, k, n) and the storage table."""
    run_dir, _, summary = trained
    code, out, err = run_cli("summary", str(run_dir))
    assert code == 0, err
    assert f"{100 * summary['test_acc']:.2f}%" in out
    for row in summary["layers"]:
        lines = [line.split() for line in out.splitlines() if line.split()[:1] == [row["layer"]]]
        assert len(lines) == 2, f"{row['layer']}: expected a pruner row and a storage row"
        pruner_row, storage_row = lines
        assert str(row["n"]) in pruner_row and str(row["k"]) in pruner_row
        assert f"{row['k']}/{row['n']}" in storage_row
    assert "k-of-n" in out and "CSR" in out
    ratio = summary["storage"]["total"]["compression_ratio"]
    assert f"{ratio:.2f}x" in line_starting(out, "bits:")


# ------------------------------------------------------------------ data
def test_data_list_names_every_dataset():
    """dpp data list prints one line per known dataset; digits (sklearn) is found."""
    code, out, err = run_cli("data", "list")
    assert code == 0, err
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == list(DATASETS)
    assert "not found" not in line_starting(out, "digits")


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("assignment", "valid"),
    [
        ("train.optimizer=adamx", OPTIMIZERS),
        ("data.dataset=imagenet", DATASETS),
        ("train.bogus=1", ("epochs", "optimizer", "lr")),
    ],
)
def test_config_errors_exit_2_with_valid_values_on_stderr(tmp_path: Path, assignment, valid):
    """A bad config exits with code 2, a message on stderr listing what is valid, no run dir."""
    config = write_config(tmp_path / "digits.yaml", *FILE_SETTINGS)
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(*train_argv(config, out_dir, assignment))
    assert code == 2
    assert "config error" in err
    for value in valid:
        assert value in err
    assert out == ""
    assert not out_dir.exists()


def test_missing_config_file_exits_2(tmp_path: Path):
    """A config file that does not exist exits with code 2 and names the file."""
    missing = tmp_path / "nope.toml"
    code, _, err = run_cli("train", "--config", str(missing))
    assert code == 2 and str(missing) in err


@pytest.mark.slow
def test_resume_refuses_config_changes(trained):
    """--resume continues the saved config: --config/--set with it is refused."""
    run_dir, _, _ = trained
    code, _, err = run_cli("train", "--resume", str(run_dir), "--set", "train.lr=0.1")
    assert code == 2 and "--resume continues the saved config" in err


def test_eval_of_a_missing_run_exits_2(tmp_path: Path):
    """dpp eval of a directory without a checkpoint exits with code 2 and says why."""
    code, _, err = run_cli("eval", str(tmp_path))
    assert code == 2 and "checkpoint.pt" in err


@pytest.mark.slow
def test_truncated_checkpoint_exits_2(trained, tmp_path: Path):
    """dpp eval of a truncated checkpoint exits with code 2 and names the file."""
    run_dir, _, _ = trained
    data = (run_dir / "checkpoint.pt").read_bytes()
    broken = tmp_path / "checkpoint.pt"
    broken.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli("eval", str(broken))
    assert code == 2 and str(broken) in err


@pytest.mark.slow
def test_dense_run_eval_and_summary(tmp_path: Path):
    """A dense run: eval reports its summary accuracy, summary says it is not pruned."""
    config = write_config(tmp_path / "digits.yaml", *FILE_SETTINGS)
    run_dir = tmp_path / "dense"
    sets = ["--set", "method=dense", "--set", "train.epochs=1"]
    code, out, err = run_cli("train", "-c", str(config), *sets, "--run-dir", str(run_dir), "-q")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "layers" not in summary and summary["params_kept"] == summary["params_dense"]
    assert f"{100 * summary['test_acc']:.2f}%" in line_starting(out, "test")
    code, out, err = run_cli("eval", str(run_dir), "--json")
    assert code == 0 and json.loads(out)["test"]["acc"] == summary["test_acc"]
    code, out, err = run_cli("summary", str(run_dir))
    assert code == 0 and "no pruning" in out


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "drop_key"])
def test_damaged_checkpoint_is_one_line_for_every_command(trained, tmp_path: Path, damage):
    """A bit flip or a missing key: train --resume, eval, summary and export all exit 2 with
    one line naming the file and the fix, and --resume writes nothing."""
    run_dir, _, _ = trained
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    ckpt = copy / "checkpoint.pt"
    if damage == "flip":
        data = bytearray(ckpt.read_bytes())
        weight = torch.load(ckpt, weights_only=True)["model"]["fc1.weight"]
        at = data.find(weight.numpy().tobytes()[:64])
        assert at >= 0
        data[at + 7] ^= 0x40  # an exponent bit of fc1.weight[0, 1]
        ckpt.write_bytes(bytes(data))
    else:
        state = torch.load(ckpt, weights_only=True)
        del state["optimizer"]
        torch.save(state, ckpt)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    for argv in (["train", "--resume"], ["eval"], ["summary"], ["export"]):
        code, _, err = run_cli(*argv, str(copy))
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and str(ckpt) in err, err
        assert ("fc1.weight" if damage == "flip" else "lacks optimizer") in err, err
        assert "Delete it" in err
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["train", "--resume", "{tmp}/missing"], "{tmp}/missing"),
        (["eval", "{tmp}/missing"], "{tmp}/missing"),
        (["summary", "{tmp}"], "{tmp} has no checkpoint.pt"),
        (["export", "{tmp}/missing"], "{tmp}/missing"),
        (["eval", "{tmp}", "--device", "tpu"], "--device = 'tpu'"),
    ],
)
def test_bad_run_directory_is_one_line(tmp_path: Path, argv, word):
    """A run directory that does not exist or holds no checkpoint, a bad device: exit 2, one
    line that names it."""
    code, out, err = run_cli(*[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and word.format(tmp=tmp_path) in err, err


@pytest.mark.parametrize("kind", ["finished", "checkpointed", "file"])
def test_run_dir_holding_a_run_is_never_overwritten(tmp_path: Path, kind):
    """dpp train --run-dir DIR refuses a directory that holds a run (or is a file): exit 2,
    and DIR is left as it was."""
    run_dir = tmp_path / "run"
    if kind == "file":
        run_dir.write_text("not a directory")
    else:
        run_dir.mkdir()
        (run_dir / ("summary.json" if kind == "finished" else "checkpoint.pt")).write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_cli("train", "--set", "data.dataset=digits", "--run-dir", str(run_dir))
    assert code == 2 and str(run_dir) in err
    assert ("is a file" if kind == "file" else "already holds a run") in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(("name", "word"), [("imagenet", "unknown dataset"), (None, "name a")])
def test_data_download_of_an_unknown_dataset_is_one_line(name, word):
    """dpp data download with an unknown or no dataset name: exit 2, one line, the names."""
    code, _, err = run_cli("data", "download", *([name] if name else []))
    assert code == 2 and word in err and "fashion-mnist" in err
    assert len(err.strip().splitlines()) == 1


def test_cuda_without_a_gpu_is_a_config_error_before_the_run_dir(tmp_path: Path, monkeypatch):
    """train.device = cuda on a machine without CUDA: exit 2 naming the key, no run dir."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out_dir = tmp_path / "runs"
    code, _, err = run_cli(
        "train", "--set", "train.device=cuda", "--set", f"output_dir={out_dir}", "-q"
    )
    assert code == 2 and "train.device = 'cuda'" in err and "no CUDA device" in err
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "error", [RuntimeError("a bug"), ValueError("a bug"), KeyError("a bug"), OSError("a bug")]
)
def test_a_bug_keeps_its_traceback(monkeypatch, error):
    """An exception that is not a user's mistake propagates out of main (a traceback)."""
    from dpp.experiments import trainer

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(trainer, "train", broken)
    with pytest.raises(type(error), match="a bug"):
        cli.main(["train", "--set", "train.epochs=1"])


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied", "/srv/runs"),
        OSError(errno.ENOSPC, "No space left on device", "/srv/runs/checkpoint.pt"),
    ],
)
def test_a_path_the_machine_refuses_is_one_line(monkeypatch, error):
    """A directory that cannot be written or a full disk: one line naming the path, exit 2."""
    from dpp.experiments import trainer

    def refused(*args, **kwargs):
        raise error

    monkeypatch.setattr(trainer, "train", refused)
    code, _, err = run_cli("train", "--set", "train.epochs=1")
    assert code == 2 and error.filename in err and len(err.strip().splitlines()) == 1


def test_stop_after_epochs_must_be_a_count():
    """--stop-after-epochs -1 is refused by the parser (exit code 2), not run as 'no epochs'."""
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(io.StringIO()):
        cli.main(["train", "--stop-after-epochs", "-1"])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------ demo
def test_demo_falls_back_to_digits(monkeypatch):
    """Without Fashion-MNIST files the demo trains on digits and says so."""
    from dpp.experiments import demo
    from dpp.experiments.data import DatasetNotFoundError

    def not_found(name, data_dir=None):
        raise DatasetNotFoundError(f"{name} not found")

    monkeypatch.setattr(demo, "find_dataset_dir", not_found)
    cfg, note = demo.demo_config()
    assert cfg.data.dataset == "digits" and "digits" in note
    assert cfg.pruning == demo.demo_config("fashion-mnist")[0].pruning  # same sparsity


@pytest.mark.slow
def test_demo_on_digits(tmp_path: Path):
    """dpp demo --dataset digits --epochs 1 prints parameters, per-layer k/n, accuracy, run dir."""
    torch.manual_seed(0)
    out_dir = tmp_path / "tmp"
    code, out, err = run_cli(
        "demo", "--dataset", "digits", "--epochs", "1", "--output-dir", str(out_dir)
    )
    assert code == 0, err
    (run_dir,) = out_dir.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["dataset"] == "digits"
    params = line_starting(out, "parameters")
    assert f"{summary['params_dense']:,} dense" in params
    assert f"{summary['params_kept']:,} kept" in params
    assert summary["params_kept"] < summary["params_dense"]
    out = final_table(out)
    for row in summary["layers"]:
        assert f"{row['k']}/{row['n']}" in line_starting(out, row["layer"])
    assert f"{100 * summary['test_acc']:.2f}%" in line_starting(out, "test")
    assert line_starting(out, "run").split()[-1] == str(run_dir)


# ------------------------------------------------------------------ entry points
@pytest.mark.slow
def test_console_entry_points():
    """`python -m dpp --help` lists the subcommands; the `dpp` script points at cli.main."""
    env = subprocess_env()
    proc = subprocess.run(
        [sys.executable, "-m", "dpp", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "summary", "data", "demo"):
        assert command in proc.stdout
    script = load_config_file(ROOT / "pyproject.toml")["project"]["scripts"]["dpp"]
    module, _, attr = script.partition(":")
    assert getattr(import_module(module), attr) is cli.main


def test_a_missing_optional_package_names_its_extra(monkeypatch, capsys):
    """A missing optional dependency is one line naming the extra that installs it; a missing
    module that is not optional keeps its traceback."""
    from dpp.experiments import trainer

    def needs_onnx(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setattr(trainer, "train", needs_onnx)
    assert cli.main(["train", "--set", "train.epochs=1"]) == 2
    assert "pip install 'dpp[onnx]'" in capsys.readouterr().err

    def typo(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'dpp.nonexistent'", name="dpp.nonexistent")

    monkeypatch.setattr(trainer, "train", typo)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["train", "--set", "train.epochs=1"])


# ------------------------------------------------------------------ pruning mistakes
# (case, top-level keys and pruning keys to set on the digits config, the key the error names,
# a piece of dpp.prune's text): every configuration mistake dpp.prune raises for LeNet-300-100.
PRUNING_MISTAKES = [
    ("unknown-override", {}, {"overrides": {"fc9": {"density": 0.5}}}, "overrides", "fc9"),
    ("include-no-layer", {}, {"include": ["conv*"]}, "include", "matching no prunable"),
    ("all-excluded", {}, {"exclude": ["fc*"]}, "exclude", "nothing to prune"),
    ("k-too-large", {}, {"density": None, "k": 1000}, "k", "k must satisfy"),
    ("override-k-too-large", {}, {"overrides": {"fc3": {"k": 500}}}, "overrides", "k = 500"),
    ("conv-granularity", {}, {"granularity": "kernel"}, "granularity", "convolutions only"),
    ("block-size", {}, {"granularity": "block", "block_size": 9}, "block_size", "divide"),
    ("override-excluded", {}, {"exclude": ["fc3"]}, "exclude", "only excluded layers"),
    ("nothing-touched", {}, {"density": None, "overrides": {}}, "", "nothing to prune"),
    ("no-calibration", {}, {"logit_init": "wanda"}, "logit_init", "calibration"),
    ("prior-and-baseline", {"method": "srste"}, {"logit_init": "wanda"}, "logit_init", "drop one"),
]


def _toml(value) -> str:
    """A TOML value (strings, numbers, lists, inline tables) for the cases above."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _mistake_argv(tmp_path: Path, source: str, top: dict, pruning: dict) -> list[str]:
    """``dpp train`` with the mistake in a TOML file or in ``--set`` assignments."""
    if source == "set":
        sets = [f"{k}={json.dumps(v)}" for k, v in top.items()]
        sets += [f"pruning.{k}={json.dumps(v)}" for k, v in pruning.items()]
        return train_argv(write_config(tmp_path / "digits.yaml"), tmp_path / "runs", *sets)
    data = {**digits(), **top}
    data["pruning"] = {k: v for k, v in {**data["pruning"], **pruning}.items() if v is not None}
    lines = [f"{k} = {_toml(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in table.items())]
    config = tmp_path / "run.toml"
    config.write_text("\n".join(lines) + "\n")
    return train_argv(config, tmp_path / "runs")


@pytest.mark.parametrize("source", ["toml", "set"])
@pytest.mark.parametrize(
    ("top", "pruning", "key", "text"),
    [case[1:] for case in PRUNING_MISTAKES],
    ids=[case[0] for case in PRUNING_MISTAKES],
)
def test_a_pruning_section_dpp_prune_refuses_is_one_line(
    tmp_path: Path, source, top, pruning, key, text
):
    """A pruning section dpp.prune refuses (file or --set): exit 2, one line naming the key
    with dpp.prune's text, no traceback, no run directory."""
    code, out, err = run_cli(*_mistake_argv(tmp_path, source, top, pruning))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("dpp train: config error: pruning"), err
    named = err.removeprefix("dpp train: config error: ").split(": ")[0].split(", ")
    assert (f"pruning.{key}" in named) if key else named == ["pruning"], err
    assert text in err
    assert out == "" and not (tmp_path / "runs").exists()


def test_a_pruning_mistake_is_found_before_the_data_is_read(tmp_path: Path, monkeypatch):
    """The pruning section is checked against the model before any dataset is loaded."""
    from dpp.experiments import trainer

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the pruning section was checked")

    monkeypatch.setattr(trainer, "load_dataset", no_data)
    config = write_config(tmp_path / "digits.yaml")
    code, _, err = run_cli(*train_argv(config, tmp_path / "runs", "pruning.include=[conv1]"))
    assert code == 2 and "pruning.include" in err


def test_an_error_after_dpp_prune_changed_the_model_keeps_its_traceback(
    tmp_path: Path, monkeypatch
):
    """A ValueError raised once dpp.prune has built the layers is a bug, not a config error."""
    import dpp.pruner
    from dpp.experiments.errors import UserError

    def broken(model):
        raise ValueError("a bug")

    monkeypatch.setattr(dpp.pruner, "guard_save_pretrained", broken)
    config = write_config(tmp_path / "digits.yaml")
    with pytest.raises(ValueError, match="a bug") as caught:
        cli.main(train_argv(config, tmp_path / "runs"))
    assert not isinstance(caught.value, UserError)
