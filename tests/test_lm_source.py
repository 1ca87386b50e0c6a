"""Loading local causal LMs and their tokenizers (dpp.experiments.lm.source), offline."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from safetensors.torch import save_file  # noqa: E402

from dpp.experiments.errors import UserError  # noqa: E402
from dpp.experiments.lm import corpus as corpus_mod  # noqa: E402
from dpp.experiments.lm.model import ModelSpec, build_model  # noqa: E402
from dpp.experiments.lm.pretrain import PretrainConfig  # noqa: E402
from dpp.experiments.lm.source import (  # noqa: E402
    ModelError,
    check_gguf_digest,
    file_sha256,
    load_causal_lm,
    model_digest,
)

TEXTS = [
    "def add ( a , b ) : return a + b",
    "the quick brown fox jumps over the lazy dog",
    "import os import sys print ( os . path )",
]


def tiny_tokenizer(extra_words: int = 0):
    """A WordLevel tokenizer trained on TEXTS (plus ``extra_words`` made-up words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = [f"w{i}" for i in range(extra_words)]
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"])
    tok.train_from_iterator([*TEXTS, " ".join(words)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def tiny_llama(vocab: int = 100, seed: int = 0):
    """A random 1-layer LlamaForCausalLM of hidden size 16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def write_tiny_gguf(path, seed: int = 0):
    """Write a tiny Llama (GQA, untied head) with a byte-level BPE tokenizer as a float32 GGUF
    file, as llama.cpp's converter would (q/k rows permuted); returns (model, tokenizer)."""
    gguf = pytest.importorskip("gguf")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 5, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    eos = vocab["<|endoftext|>"]
    heads, kv_heads = 2, 1
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config).eval()

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i == eos else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(eos)
    writer.add_bos_token_id(eos)
    top = {
        "model.embed_tokens.weight": "token_embd",
        "model.norm.weight": "output_norm",
        "lm_head.weight": "output",
    }
    block = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for key, tensor in model.state_dict().items():
        w = tensor.numpy()
        if key in top:
            name = top[key]
        else:  # model.layers.<i>.<module path>.weight
            parts = key.split(".")
            name = f"blk.{parts[2]}.{block['.'.join(parts[3:-1])]}"
        if name.endswith("attn_q"):
            w = permute(w, heads).reshape(w.shape)
        elif name.endswith("attn_k"):
            w = permute(w, kv_heads).reshape(w.shape)
        writer.add_tensor(f"{name}.weight", np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tok


@pytest.fixture
def hf_dir(tmp_path):
    """A tiny Llama and its tokenizer saved with save_pretrained."""
    d = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_save_pretrained_dir_loads_with_same_logits_and_tokenizer(hf_dir):
    """A save_pretrained directory loads in eval mode with the saved logits and its tokenizer."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    loaded = load_causal_lm(hf_dir)
    reference = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    assert not loaded.model.training
    assert torch.equal(loaded.model(ids).logits, reference(ids).logits)
    assert loaded.name == "tiny-llama" and loaded.vocab_size == 100
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert loaded.eos_id == tok.eos_token_id
    assert loaded.tokenizer_id.startswith("sha256:")
    text = "the quick fox return a"
    assert loaded.encode(text.encode()).tolist() == tok.encode(text, add_special_tokens=False)
    assert loaded.model(ids, labels=ids).loss.ndim == 0


def test_weights_digest_follows_the_weights(hf_dir, tmp_path):
    """The weights' SHA-256 is the same for the same weights and changes with one weight."""
    first = load_causal_lm(hf_dir)
    assert load_causal_lm(hf_dir).sha256 == first.sha256
    model = first.model
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    other = tmp_path / "changed"
    model.save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    changed = load_causal_lm(other)
    assert changed.sha256 != first.sha256
    assert (model_digest(hf_dir), model_digest(other)) == (first.sha256, changed.sha256)
    assert changed.tokenizer_id == first.tokenizer_id


def test_byte_level_run_dir_loads_as_bytes(tmp_path):
    """A byte-level pretraining run directory loads with tokens = bytes and EOS = NUL."""
    spec = ModelSpec(hidden=16, layers=1, heads=2, intermediate=32, seq=32)
    run = tmp_path / "pretrain"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(PretrainConfig(spec=spec).to_dict()))
    model = build_model(spec, seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "dense.safetensors")
    loaded = load_causal_lm(run)
    assert (loaded.name, loaded.tokenizer_id, loaded.eos_id, loaded.vocab_size) == (
        "byte-level",
        "bytes",
        0,
        256,
    )
    assert loaded.sha256 == file_sha256(run / "dense.safetensors") == model_digest(run)
    assert loaded.encode(b"ab\x00").tolist() == [97, 98, 0]
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded.model(ids).logits, model.eval()(ids).logits)


def test_gguf_file_loads_with_same_logits_and_its_tokenizer(tmp_path):
    """A GGUF file written by the gguf package loads with the written model's logits, its own
    tokenizer and the file's SHA-256 as its identity."""
    path = tmp_path / "tiny-llama.F32.gguf"
    reference, tok = write_tiny_gguf(path)
    loaded = load_causal_lm(path)
    ids = torch.tensor([[1, 5, 7, 9, 2, 250]])
    assert not loaded.model.training
    torch.testing.assert_close(loaded.model(ids).logits, reference(ids).logits)
    assert loaded.name == "tiny-llama.F32.gguf" and loaded.vocab_size == 300
    assert loaded.sha256 == file_sha256(path) == model_digest(path)
    check_gguf_digest(path, loaded.sha256)
    text = "the lazy fox: import sys"
    assert loaded.encode(text.encode()).tolist() == tok.encode(text).ids
    assert loaded.eos_id == tok.token_to_id("<|endoftext|>")
    again = tmp_path / "again"
    again.mkdir()
    write_tiny_gguf(again / "tiny-llama.F32.gguf", seed=1)
    assert model_digest(again / "tiny-llama.F32.gguf") != loaded.sha256


def test_a_model_loaded_from_gguf_saves_as_a_plain_checkpoint(tmp_path):
    """A GGUF model (dequantized on load) saves with save_pretrained, and that directory
    loads back with the same logits."""
    path = tmp_path / "tiny-llama.F32.gguf"
    write_tiny_gguf(path)
    loaded = load_causal_lm(path)
    loaded.model.save_pretrained(tmp_path / "saved")
    loaded.tokenizer.save_pretrained(tmp_path / "saved")
    again = load_causal_lm(tmp_path / "saved")
    ids = torch.tensor([[1, 5, 7, 9, 2, 250]])
    torch.testing.assert_close(again.model(ids).logits, loaded.model(ids).logits)
    assert again.tokenizer_id == loaded.tokenizer_id


def test_gguf_of_an_unknown_architecture_is_refused(tmp_path):
    """A GGUF file transformers cannot read as a causal LM gives a ModelError naming it."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-arch")
    writer.add_tensor("x.weight", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match=r"odd\.gguf: .*no-such-arch.*pass a GGUF file of an"):
        load_causal_lm(path)


def test_token_corpus_with_a_real_tokenizer(hf_dir, tmp_path):
    """prepare_tokens with a loaded model stores each file's tokenizer ids, then its EOS."""
    loaded = load_causal_lm(hf_dir)
    root = tmp_path / "src"
    for i in range(40):
        (root / f"m{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"m{i}.py").write_text(TEXTS[i % 3] + f" fox{i}\n")
    corpus = corpus_mod.prepare_tokens("cpython-stdlib", tmp_path / "data", loaded, root=root)
    assert corpus.train.dtype == np.uint8 and corpus.tokenizer_id == loaded.tokenizer_id
    first = sorted(r["path"] for r in corpus.manifest["records"] if r["split"] == "train")[0]
    expected = loaded.tokenizer.encode((root / first).read_text(), add_special_tokens=False)
    assert corpus.train[: len(expected) + 1].tolist() == [*expected, loaded.eos_id]


# ----------------------------------------------------------------------------- errors
def test_missing_path_is_refused(tmp_path):
    """A path that does not exist gives a ModelError naming it."""
    missing = tmp_path / "nothing-here"
    with pytest.raises(ModelError, match=r"nothing-here.*does not exist"):
        load_causal_lm(missing)


def test_directory_without_config_is_refused(tmp_path):
    """A directory without config.json is not a causal LM (error names the directory)."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty is not a causal language model.*config\.json"):
        load_causal_lm(tmp_path / "empty")


def test_config_of_another_architecture_is_refused(hf_dir):
    """A config whose architectures give no *ForCausalLM is refused, naming the directory."""
    config = json.loads((hf_dir / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    config["model_type"] = "bert"
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"tiny-llama is not a causal language model.*BertModel"):
        load_causal_lm(hf_dir)


def test_missing_tokenizer_files_are_refused(hf_dir):
    """A model directory without tokenizer files is refused, naming the directory."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf_dir / name).unlink(missing_ok=True)
    with pytest.raises(ModelError, match="tiny-llama has no tokenizer files"):
        load_causal_lm(hf_dir)


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    """A tokenizer with more tokens than the model's embedding rows is refused."""
    d = tmp_path / "mismatch"
    tiny_llama(vocab=8).save_pretrained(d)
    tiny_tokenizer(extra_words=20).save_pretrained(d)
    with pytest.raises(ModelError, match=r"mismatch: the tokenizer has \d+ tokens.*8 rows"):
        load_causal_lm(d)


def test_file_that_is_not_gguf_is_refused(tmp_path):
    """A file without the GGUF magic is refused, naming it."""
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ModelError, match=r"model\.gguf is not a GGUF file"):
        load_causal_lm(bad)
    other = tmp_path / "weights.pt"
    other.write_bytes(b"\x80\x02 pickle")
    with pytest.raises(ModelError, match=r"weights\.pt is not a GGUF file"):
        load_causal_lm(other)


def test_gguf_without_the_gguf_package_is_refused(tmp_path, monkeypatch):
    """A GGUF file without the gguf package installed says `pip install gguf`."""
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ModelError, match=r"model\.gguf is a GGUF file.*pip install gguf"):
        load_causal_lm(path)


def test_gguf_digest_check_names_both_digests(tmp_path):
    """check_gguf_digest passes the right digest and names the file and both digests otherwise."""
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(10))
    good = file_sha256(path)
    check_gguf_digest(path, good.upper())
    with pytest.raises(ModelError, match=rf"m\.gguf: SHA-256 {good} is not the expected 0+"):
        check_gguf_digest(path, "0" * 64)
    assert issubclass(ModelError, UserError)
