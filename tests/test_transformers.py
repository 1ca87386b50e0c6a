"""Hugging Face transformers models (built from small configs, nothing from a hub) under DPP."""

from __future__ import annotations

import warnings

import pytest
import torch

import dpp

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 64


def _llama(tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        use_cache=False,
    )
    return LlamaForCausalLM(cfg)


def _gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return GPT2LMHeadModel(cfg)


def _ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _two_of_four(model, **options):
    return dpp.prune(model, granularity="block", block_size=4, k=2, **options)


@pytest.mark.parametrize("factory", [_llama, lambda: _llama(tied=True), _gpt2])
def test_output_head_and_embeddings_stay_dense_by_default(factory):
    """Every block projection is pruned 2:4; the head (tied or not) and the embeddings stay
    dense, and the summary says so."""
    model = factory()
    pruner = _two_of_four(model)
    head = model.get_output_embeddings()
    assert not dpp.is_dpp_layer(head)
    assert "lm_head" in pruner.dense_by_default
    text = str(pruner)
    assert "output head" in text and "embeddings" in text
    proj = [n for n in pruner.layers if n.endswith(("q_proj", "down_proj", "c_attn", "c_fc"))]
    assert len(proj) == 4


def test_an_untied_head_is_pruned_when_included():
    """include=['lm_head', ...] prunes an untied head."""
    model = _llama()
    pruner = _two_of_four(model, include=["model.layers.*", "lm_head"])
    assert "lm_head" in pruner.layers and not pruner.dense_by_default.get("lm_head")


def test_a_tied_head_included_gets_a_clear_error():
    """Including a head tied to the embeddings raises, naming both and the fix."""
    model = _llama(tied=True)
    with pytest.raises(ValueError, match=r"lm_head.*tied"):
        _two_of_four(model, include=["lm_head"])


def test_bert_and_vit_linears_are_pruned_by_glob():
    """HF module names work in include/exclude globs (BERT's attention and MLP Linears)."""
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = BertForMaskedLM(cfg)
    pruner = _two_of_four(model, include=["bert.encoder.*"], exclude=["*.output.dense"])
    assert pruner.layers and all(n.startswith("bert.encoder.") for n in pruner.layers)
    assert not any(n.endswith("output.dense") for n in pruner.layers)


@pytest.mark.parametrize("factory", [_llama, _gpt2])
def test_finalize_then_save_pretrained_round_trips_exactly(tmp_path, factory):
    """finalize() -> save_pretrained -> from_pretrained gives the pruned model, bit for bit,
    without a warning."""
    model = factory()
    pruner = _two_of_four(model)
    model.eval()
    ids = _ids()
    with torch.no_grad():
        want = model(ids).logits
    pruner.finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, want)
    assert type(loaded).__name__ == type(model).__name__


def test_save_pretrained_of_a_live_model_writes_the_masked_weights(tmp_path):
    """save_pretrained before finalize() warns and writes the pruned model, not the dense one;
    the live model keeps its DPP layers."""
    model = _llama()
    _two_of_four(model)
    model.eval()
    ids = _ids()
    with torch.no_grad():
        want = model(ids).logits
    with pytest.warns(UserWarning, match="still holds DPP layers"):
        model.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, want)
    assert dpp.is_dpp_layer(model.model.layers[0].mlp.down_proj)
    q = loaded.model.layers[0].self_attn.q_proj.weight
    assert int((q.reshape(-1, 4) != 0).sum(-1).max()) <= 2


def test_pruned_llama_trains_under_bf16_autocast_with_checkpointing_and_generates():
    """Autocast bf16 and gradient checkpointing train the logits; generate() runs after."""
    model = _llama()
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
    (enable or model.gradient_checkpointing_enable)()
    pruner = _two_of_four(model)
    opt = torch.optim.AdamW(pruner.param_groups(lr=1e-3, logit_lr=1e-2))
    before = [p.detach().clone() for p in pruner.logits()]
    model.train()
    for step in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(_ids(seed=step), labels=_ids(seed=step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
    assert any(not torch.equal(a, b) for a, b in zip(pruner.logits(), before, strict=True))
    model.eval()
    out = model.generate(_ids(batch=1, length=4), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_wanda_prior_takes_tokenizer_style_batches():
    """calibration_data of {'input_ids': ...} dicts starts every block Linear from Wanda."""
    model = _llama()
    batches = [{"input_ids": _ids(seed=s)} for s in range(2)]
    pruner = _two_of_four(model, logit_init="wanda", logit_init_std=3.0, calibration_data=batches)
    assert len(pruner.layers) == 14


@pytest.mark.slow
def test_onnx_of_a_finalized_causal_lm_matches_onnxruntime(tmp_path):
    """to_onnx exports the logits of a finalized Llama (use_cache=False) and onnxruntime
    agrees with PyTorch."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from dpp.export import to_onnx
    from dpp.export.onnx import onnx_outputs

    model = _llama()
    pruner = _two_of_four(model)
    model.eval()
    pruner.finalize()
    ids = _ids()
    path = to_onnx(model, ids, tmp_path / "llama.onnx", forward_kwargs={"use_cache": False})
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
    got = torch.from_numpy(onnx_outputs(path, ids)[0])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_onnx_names_the_fields_when_the_output_is_unknown(tmp_path):
    """Asking to_onnx for a field the ModelOutput lacks lists the fields it has."""
    from dpp.export import to_onnx

    model = _llama()
    pruner = _two_of_four(model)
    model.eval()
    pruner.finalize()
    with pytest.raises(ValueError, match="logits"):
        to_onnx(model, _ids(), tmp_path / "m.onnx", output="nope", check=False)


@pytest.mark.slow
def test_trainer_callback_steps_the_pruner_and_logs_dpp_metrics(tmp_path):
    """DPPCallback advances the schedules once per optimizer step and adds dpp/* to the logs."""
    from transformers import Trainer, TrainingArguments

    from dpp.hf import DPPCallback

    model = _llama()
    pruner = _two_of_four(model, noise_scale=dpp.Schedule("linear", 1.0, 0.0, steps=4))
    data = [{"input_ids": ids, "labels": ids} for ids in _ids(batch=8, length=12)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=2,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3, logit_lr=1e-2))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizers=(optimizer, None),
        callbacks=[DPPCallback(pruner)],
    )
    trainer.train()
    assert pruner.current_step == 4
    logged = [h for h in trainer.state.log_history if "loss" in h]  # the two logging steps
    assert len(logged) == 2 and all("dpp/sparsity" in h for h in logged)
    assert logged[-1]["dpp/noise_scale"] == pytest.approx(0.0)
    assert 0.0 <= logged[-1]["dpp/mask_flips"] <= 1.0
    assert logged[0]["dpp/sparsity"] == pytest.approx(0.5)


def test_wanda_prior_on_gpt2_conv1d_scores_its_inputs():
    """On GPT-2's Conv1D (weight [in, out]) the Wanda prior keeps, per output unit and block of
    4 consecutive inputs, the 2 largest |W_io| * ||X_i||_2."""
    model = _gpt2()
    batches = [_ids(seed=s) for s in range(2)]
    fc = model.transformer.h[0].mlp.c_fc
    seen = []
    handle = fc.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, 32)))
    with torch.no_grad():
        model.eval()
        for ids in batches:
            model(ids)
    handle.remove()
    x = torch.cat(seen)
    score = (fc.weight.detach().abs() * x.norm(dim=0)[:, None]).t().reshape(-1, 4)
    want = torch.zeros_like(score).scatter_(-1, score.topk(2, -1).indices, 1.0)
    pruner = _two_of_four(model, logit_init="wanda", calibration_data=batches)
    model.eval()
    got = pruner.masks()["transformer.h.0.mlp.c_fc"]  # shaped like the [in, out] weight
    assert torch.equal(got.t().reshape(-1, 4).float(), want)


def test_gpt2_masks_round_trip_through_a_mask_file(tmp_path):
    """save_masks/load_masks on GPT-2's Conv1D layers restores every mask exactly."""
    model = _gpt2()
    pruner = _two_of_four(model)
    for p in pruner.logits():
        torch.nn.init.normal_(p)
    model.eval()
    dpp.save_masks(pruner, tmp_path / "m.safetensors")
    fixed = dpp.load_masks(_gpt2(seed=1), tmp_path / "m.safetensors")
    want, got = pruner.masks(), fixed.masks()
    assert set(want) == set(got) and all(torch.equal(want[n], got[n]) for n in want)
