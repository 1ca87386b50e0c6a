"""The LM benchmark's one harness on a Hugging Face model: two corpora, resume, outputs, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from dpp.experiments.errors import ConfigError
from dpp.experiments.lm import methods as lm_methods
from dpp.experiments.lm.methods import MaskRunConfig, run_method
from dpp.experiments.machine import describe as describe_machine
from test_lm_source import TEXTS, tiny_llama, tiny_tokenizer


def _write_corpus(root, words, suffix, files=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in range(files):
        path = root / f"d{i % 4}" / f"f{i}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        picks = torch.randint(0, len(words), (40,), generator=g).tolist()
        path.write_text(" ".join(words[p] for p in picks) + "\n")


@pytest.fixture
def setting(tmp_path):
    """A tiny Llama with its tokenizer (save_pretrained) and two small corpora of its words."""
    model_dir = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    words = " ".join(TEXTS).split()
    code, prose = tmp_path / "code", tmp_path / "prose"
    _write_corpus(code, words[:10], ".py", seed=1)
    _write_corpus(prose, words[10:], ".txt", seed=2)
    return {
        "model": str(model_dir),
        "corpora": (f"cpython-stdlib={code}", f"python-docs={prose}"),
        "seq": 16,
        "batch": 2,
        "eval_windows": 2,
        "calibration_batches": 1,
        "data_dir": str(tmp_path / "data"),
    }


def test_a_hugging_face_model_is_pruned_evaluated_per_corpus_and_saved(tmp_path, setting):
    """A save_pretrained model runs DPP on a mix of two corpora: its result reports each
    corpus, its pruned model is a plain checkpoint with exactly 2 of every 4 weights kept in
    every decoder projection, and its mask file loads onto the dense model."""
    from transformers import AutoModelForCausalLM

    import dpp

    cfg = MaskRunConfig(method="dpp-mask", steps=3, bf16=True, **setting)
    result = run_method(cfg, tmp_path / "run")
    assert list(result["val"]) == ["cpython-stdlib", "python-docs"]
    mean = sum(r["val_loss"] for r in result["val"].values()) / 2
    assert result["val_loss"] == pytest.approx(mean)
    assert list(result["pretrained"]["val"]) == ["cpython-stdlib", "python-docs"]
    assert result["tokens"] == 3 * 2 * 16 and result["pruned_layers"] == 7
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / result["files"]["model"])
    for name, module in pruned.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            kept = (module.weight != 0).reshape(-1, 4).sum(-1)
            assert (kept == 2).all(), name
    fresh = AutoModelForCausalLM.from_pretrained(setting["model"])
    pruner = dpp.load_masks(fresh, tmp_path / "run" / result["files"]["masks"])
    fresh.eval()
    for name, mask in pruner.masks().items():
        weight = pruned.get_submodule(name).weight
        assert torch.equal(mask, weight != 0) or bool((weight[~mask] == 0).all()), name


@pytest.mark.parametrize(
    ("method", "steps"),
    [
        ("dpp-joint", 30),
        ("wanda+ft", 30),
        ("dpp-mask+ft", 30),  # the checkpoint (step 25) is in the fine-tuning phase
        ("dpp-mask+ft", 50),  # the checkpoint is at the switch (step 25)
    ],
)
def test_an_interrupted_run_resumes_to_the_same_result(
    tmp_path, setting, method, steps, monkeypatch
):
    """A run killed after its checkpoint and run again ends with exactly the result of a run
    that was never interrupted (same losses, curve and masks)."""
    cfg = MaskRunConfig(method=method, steps=steps, **setting)
    whole = run_method(cfg, tmp_path / "whole")

    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 28:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        run_method(cfg, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    here = describe_machine("cpu")
    elsewhere = {**here, "cpu": "the machine it resumed on"}
    monkeypatch.setattr(lm_methods, "describe_machine", lambda device: elsewhere)
    resumed = run_method(cfg, tmp_path / "resumed")
    assert whole["machines"] == [here] and resumed["machines"] == [here, elsewhere]
    assert resumed["val"] == whole["val"] and resumed["tune"] == whole["tune"]
    assert resumed["curve"] == whole["curve"]
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()
    a = json.loads((tmp_path / "whole" / "model" / "config.json").read_text())
    assert a == json.loads((tmp_path / "resumed" / "model" / "config.json").read_text())


def test_keep_scores_reaches_the_pruner_and_gives_the_same_run(tmp_path, setting, monkeypatch):
    """keep_scores=True (scores kept for backward, not redrawn) prunes with
    DPPConfig(keep_scores=True) and ends with exactly the default run's losses and masks."""
    from safetensors.torch import load_file

    import dpp

    seen = []
    prune = dpp.prune

    def recording_prune(*args, **kwargs):
        pruner = prune(*args, **kwargs)
        seen.append(pruner.config.keep_scores)
        return pruner

    monkeypatch.setattr(dpp, "prune", recording_prune)
    cfg = MaskRunConfig(method="dpp-joint", steps=4, bf16=True, **setting)
    default = run_method(cfg, tmp_path / "default")
    kept = run_method(replace(cfg, keep_scores=True), tmp_path / "kept")
    assert seen == [False, True]
    assert kept["val"] == default["val"] and kept["curve"] == default["curve"]
    a = load_file(tmp_path / "default" / "masks.safetensors")
    b = load_file(tmp_path / "kept" / "masks.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dpp_mask_then_ft_learns_the_masks_of_dpp_mask_then_trains_weights_under_them(
    tmp_path, setting
):
    """dpp-mask+ft's first phase is dpp-mask for that many steps (the same masks, bit for bit);
    its second phase keeps those masks and trains the weights (so its loss differs)."""
    from safetensors.torch import load_file

    both = MaskRunConfig(method="dpp-mask+ft", steps=12, mask_fraction=0.5, **setting)
    assert both.mask_steps == 6 and "maskfrac-0.5" in both.run_name()
    mask_only = replace(both, method="dpp-mask", steps=6)
    a = run_method(both, tmp_path / "both")
    b = run_method(mask_only, tmp_path / "mask-only")
    masks_a = load_file(tmp_path / "both" / "masks.safetensors")
    masks_b = load_file(tmp_path / "mask-only" / "masks.safetensors")
    assert masks_a.keys() == masks_b.keys()
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    assert a["tokens"] == 2 * b["tokens"] and a["val"] != b["val"]


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.01])
def test_dpp_mask_then_ft_needs_a_step_in_each_phase(setting, fraction):
    """A mask fraction that leaves a phase without a step is refused, naming the option."""
    with pytest.raises(ConfigError, match="mask_fraction"):
        MaskRunConfig(method="dpp-mask+ft", steps=12, mask_fraction=fraction, **setting)


def test_a_checkpoint_of_other_settings_is_refused(tmp_path, setting, monkeypatch):
    """Resuming a run directory whose checkpoint was written with other settings is an error
    that names them, never a silent mix of two runs."""
    cfg = MaskRunConfig(method="dense", steps=30, **setting)

    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt

    original = torch.optim.AdamW.step
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 27:
            stop(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        run_method(cfg, tmp_path / "run")
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    with pytest.raises(ConfigError, match="lr"):
        run_method(replace(cfg, lr=1e-2), tmp_path / "run")


def test_distillation_loss_is_the_kl_divergence_from_the_dense_model(setting):
    """loss="kd" is the mean over tokens of KL(teacher || student): zero for the teacher
    itself, and equal to torch's kl_div otherwise."""
    from dpp.experiments.lm.methods import _loss

    cfg = MaskRunConfig(method="dpp-mask", loss="kd", **setting)
    teacher, student = tiny_llama(seed=0), tiny_llama(seed=1)
    ids = torch.randint(0, 20, (2, 16))
    assert float(_loss(cfg, teacher, ids, teacher).detach()) == pytest.approx(0.0, abs=1e-6)
    t = torch.log_softmax(teacher(ids).logits, -1).reshape(-1, 100)
    s = torch.log_softmax(student(ids).logits, -1).reshape(-1, 100)
    expected = torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")
    assert float(_loss(cfg, student, ids, teacher).detach()) == pytest.approx(
        float(expected), rel=1e-5
    )


def _args(setting):
    corpora = ",".join(setting["corpora"])
    return [
        "--model",
        setting["model"],
        "--corpora",
        corpora,
        "--seq",
        "16",
        "--eval-windows",
        "2",
        "--data-dir",
        setting["data_dir"],
    ]


def test_lm_prune_and_eval_commands_give_the_pruned_checkpoint_and_its_table(
    tmp_path, setting, capsys
):
    """`dpp lm prune` turns a token budget into steps, writes the pruned checkpoint and prints
    the per-corpus table beside the dense model; `dpp lm eval` evaluates that checkpoint to
    the same numbers."""
    from dpp.experiments.cli import main

    out = tmp_path / "pruned"
    args = _args(setting)
    common = ["--batch", "2", "--calibration-batches", "1", "--method", "wanda+ft"]
    assert main(["lm", "prune", *args, *common, "--tokens", "100", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dense, as loaded" in printed and "wanda+ft 2:4" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["tokens"] == 96  # 3 steps of 2 x 16 tokens
    assert main(["lm", "eval", *args, "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert dense["val_loss"] == pytest.approx(result["pretrained"]["val_loss"], rel=1e-6)
    args[1] = str(out / "model")
    assert main(["lm", "eval", *args, "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["val_loss"] == pytest.approx(result["val_loss"], rel=1e-5)


def test_a_budget_smaller_than_one_step_is_a_one_line_error(tmp_path, setting, capsys):
    """`dpp lm prune --tokens N` with N below one step's tokens exits 2 naming --tokens."""
    from dpp.experiments.cli import main

    argv = ["lm", "prune", *_args(setting), "--batch", "2", "--tokens", "31"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--tokens 31" in err and "32" in err and "Traceback" not in err


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, setting, monkeypatch, native):
    """bf16 autocast on a CPU without native bf16 warns with the run and the fix; with it, not."""
    import warnings

    from dpp.experiments.lm import methods

    monkeypatch.setattr(methods, "cpu_has_native_bf16", lambda: native)
    cfg = MaskRunConfig(method="dense", steps=1, bf16=True, **setting)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_method(cfg, tmp_path / "run")
    slow = [w for w in caught if "without native bf16" in str(w.message)]
    if native:
        assert not slow
    else:
        assert len(slow) == 1 and issubclass(slow[0].category, RuntimeWarning)
        assert cfg.label() in str(slow[0].message) and "drop --bf16" in str(slow[0].message)
