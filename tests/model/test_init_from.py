"""`--init-from`: extend a pretrained (here: tiny random, saved by the test) HF causal LM."""

import json

import pytest
import torch
from safetensors.torch import load_file

from anygen.errors import AnygenError
from anygen.model.init_from import embedding_matrices, extend_pretrained, keep_layers
from anygen.vocab import Vocab

N_TEXT = 40
VOCAB = Vocab(n_text=N_TEXT, image_codebook_size=16)


def save_pretrained_lm(directory, n_tokenizer=N_TEXT, rows=48, tie=False, layers=2):
    """A tiny random Llama whose embedding is padded past its tokenizer (rows > len(tokenizer))."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(directory)
    words = {f"w{i}": i for i in range(n_tokenizer - 1)} | {"<unk>": n_tokenizer - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(directory)
    return model


def test_extend_keeps_text_logits_and_inits_new_rows_at_the_mean(tmp_path):
    ref = save_pretrained_lm(tmp_path / "lm")
    model = extend_pretrained(tmp_path / "lm", VOCAB, noise=0.1).eval()
    assert model.config.vocab_size == VOCAB.size and len(embedding_matrices(model)) == 2
    ids = torch.randint(0, N_TEXT, (2, 10))
    with torch.no_grad():
        old, new = ref(input_ids=ids).logits, model(input_ids=ids).logits
    torch.testing.assert_close(new[..., :N_TEXT], old[..., :N_TEXT], rtol=0, atol=1e-6)  # text model intact
    for w_new, w_old in zip(embedding_matrices(model), embedding_matrices(ref)):
        assert torch.equal(w_new[:N_TEXT], w_old[:N_TEXT])
        mean, std = w_old[:N_TEXT].mean(0), w_old[:N_TEXT].std(0)
        dev = (w_new[N_TEXT:] - mean).abs()  # padded rows 40..47 are re-initialised too
        assert (dev <= 0.6 * std + 1e-6).all() and dev.sum() > 0
    # a new token's logit is about the average text logit (Hewitt): nothing dominates
    assert (new[..., N_TEXT:].max(-1).values < new[..., :N_TEXT].max(-1).values + 1.0).all()


def test_tokenizer_must_match_the_text_range(tmp_path):
    save_pretrained_lm(tmp_path / "lm", n_tokenizer=30)
    with pytest.raises(AnygenError, match="tokenizer has 30 ids"):
        extend_pretrained(tmp_path / "lm", VOCAB)
    with pytest.raises(AnygenError, match="no config.json"):
        extend_pretrained(tmp_path / "nothing", VOCAB)


@pytest.mark.parametrize("only_new", [True, False])
def test_train_from_pretrained(tmp_path, only_new):
    from anygen.training.decoder_trainer import reset_accelerate_state, train_decoder

    reset_accelerate_state()
    save_pretrained_lm(tmp_path / "lm")
    before = load_file(str(tmp_path / "lm" / "model.safetensors"))
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    out = train_decoder(None, [
        "data.kind=synthetic", f"data.vocab_file={tmp_path / 'vocab.json'}", "data.seq_len=24", "data.batch_size=2",
        "data.synthetic_doc_len=[4,12]", f"train.out_dir={tmp_path / 'run'}", "train.steps=3", "train.threads=1",
        "train.progress=false", f"train.init_from={tmp_path / 'lm'}", f"train.train_only_new_rows={only_new}",
        "optim.lr=1e-2", "optim.warmup_steps=0", "optim.weight_decay=0.1"])
    after = load_file(str(out / "model.safetensors"))
    meta = json.loads((out / "anygen_decoder.json").read_text())
    assert meta["init_from"]["n_pretrained_rows"] == N_TEXT and meta["vocab_size"] == VOCAB.size
    emb = ("model.embed_tokens.weight", "lm_head.weight")
    for k in emb:
        assert after[k].shape[0] == VOCAB.size
        assert not torch.equal(after[k][N_TEXT:], extend_pretrained(tmp_path / "lm", VOCAB).state_dict()[k][N_TEXT:])
        assert torch.equal(after[k][:N_TEXT], before[k][:N_TEXT]) == only_new
    others = [k for k in before if k not in emb]
    assert all(torch.equal(after[k], before[k]) for k in others) == only_new


def test_keep_layers(tmp_path):
    ref = save_pretrained_lm(tmp_path / "lm", layers=3)
    model = extend_pretrained(tmp_path / "lm", VOCAB, n_layers=2)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    kept, original = model.state_dict(), ref.state_dict()
    assert not any(k.startswith("model.layers.2.") for k in kept)
    for k, w in kept.items():
        if k.startswith(("model.layers.", "model.norm.")):
            assert torch.equal(w, original[k]), k
    with pytest.raises(AnygenError, match=r"train.init_layers: must be in 1..3 \(the model's layers\), got 4"):
        extend_pretrained(tmp_path / "lm", VOCAB, n_layers=4)
    with pytest.raises(AnygenError, match=r"train.init_layers: must be in 1..2 .*got 0"):
        keep_layers(model, 0)


def test_keep_first_and_last_layers_renumbers_the_cache(tmp_path):
    """init_top_layers: the kept blocks are the first and the last; generate() with a KV cache works and
    equals the same blocks run without a cache."""
    ref = save_pretrained_lm(tmp_path / "lm", layers=4)
    model = extend_pretrained(tmp_path / "lm", VOCAB, n_layers=3, top_layers=2).eval()
    original = ref.state_dict()
    for new, old in enumerate((0, 2, 3)):
        for k, w in model.model.layers[new].state_dict().items():
            assert torch.equal(w, original[f"model.layers.{old}.{k}"])
        assert model.model.layers[new].self_attn.layer_idx == new
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        for t in range(3, out.shape[1]):
            assert int(model(input_ids=out[:, :t], use_cache=False).logits[0, -1].argmax()) == int(out[0, t])
    with pytest.raises(AnygenError, match=r"train.init_top_layers: must be in 0..3"):
        keep_layers(model, 3, 4)


def train_args(tmp_path, *extra):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB.to_dict()))
    return ["data.kind=synthetic", f"data.vocab_file={tmp_path / 'vocab.json'}", "data.seq_len=24",
            "data.batch_size=2", "data.synthetic_doc_len=[4,12]", f"train.out_dir={tmp_path / 'run'}", "train.steps=3",
            "train.threads=1", "train.progress=false", f"train.init_from={tmp_path / 'lm'}", "optim.lr=1e-2",
            "optim.warmup_steps=0", *extra]


def test_train_shallower_with_frozen_lower_layers(tmp_path):
    """init_layers keeps the first k pretrained layers; freeze_layers keeps the first n of them as they were."""
    from anygen.model.decoder import load_decoder
    from anygen.training.decoder_trainer import reset_accelerate_state, train_decoder

    reset_accelerate_state()
    save_pretrained_lm(tmp_path / "lm", layers=3)
    before = load_file(str(tmp_path / "lm" / "model.safetensors"))
    out = train_decoder(None, train_args(tmp_path, "train.init_layers=2", "train.freeze_layers=1"))
    after = load_file(str(out / "model.safetensors"))
    meta = json.loads((out / "anygen_decoder.json").read_text())
    assert meta["init_from"]["layers_kept"] == 2 and meta["init_from"]["frozen_layers"] == 1
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert not any(k.startswith("model.layers.2.") for k in after)
    layer = {i: [k for k in after if k.startswith(f"model.layers.{i}.")] for i in (0, 1)}
    assert layer[0] and all(torch.equal(after[k], before[k]) for k in layer[0])  # frozen
    assert any(not torch.equal(after[k], before[k]) for k in layer[1])  # trained
    assert not torch.equal(after["model.embed_tokens.weight"][:N_TEXT], before["model.embed_tokens.weight"][:N_TEXT])
    assert load_decoder(out).config.num_hidden_layers == 2


def test_layer_options_are_checked(tmp_path):
    from anygen.config import ConfigError
    from anygen.training.decoder_trainer import load_train_config, reset_accelerate_state, train_decoder

    with pytest.raises(ConfigError, match="train.freeze_layers.*needs train.init_from"):
        load_train_config(None, ["data.kind=synthetic", "train.freeze_layers=1"])
    with pytest.raises(ConfigError, match=r"train.init_top_layers.*must be <= train.init_layers \(0\), got 1"):
        load_train_config(None, ["data.kind=synthetic", "train.init_from=x", "train.init_top_layers=1"])
    with pytest.raises(ConfigError, match=r"train.freeze_layers.*must be <= train.init_layers \(2\), got 3"):
        load_train_config(None, ["data.kind=synthetic", "train.init_from=x", "train.init_layers=2",
                                 "train.freeze_layers=3"])
    reset_accelerate_state()
    save_pretrained_lm(tmp_path / "lm", layers=2)
    with pytest.raises(AnygenError, match=r"train.freeze_layers: must be in 0..2"):
        train_decoder(None, train_args(tmp_path, "train.freeze_layers=3"))


def test_bench_measures_the_pretrained_set_up(tmp_path):
    from anygen.training.bench import measure_recipe_mfu

    save_pretrained_lm(tmp_path / "lm", layers=3)
    r = measure_recipe_mfu(None, train_args(tmp_path, "train.init_layers=2", "train.freeze_layers=1"), steps=1)
    full = measure_recipe_mfu(None, train_args(tmp_path), steps=1)
    assert r["trainable_params"] < r["params"] < full["params"] == full["trainable_params"]
    assert r["vocab_size"] == VOCAB.size and r["tokens_per_s"] > 0


def test_tokenizer_assembled_on_the_pretrained_models_own_tokenizer(tmp_path):
    """`tokenizer assemble --text <model directory>`: the LM's tokenizer is the text part, codes come after it."""
    from anygen.document import Document, Text
    from anygen.tokenizer import MultimodalTokenizer

    save_pretrained_lm(tmp_path / "lm")
    tok = MultimodalTokenizer.assemble(tmp_path / "lm")
    assert tok.vocab.n_text == N_TEXT and tok.text.kind == "huggingface"
    ids = tok.encode(Document([Text("w1 w3 w12")]))
    assert ids == [tok.vocab.bos, 1, 3, 12, tok.vocab.eos]  # whole words, the LM's own ids
    tok.save(tmp_path / "tok")
    again = MultimodalTokenizer.load(tmp_path / "tok")
    assert again.encode(Document([Text("w1 w3 w12")])) == ids and again.decode(ids).segments[0].text == "w1 w3 w12"
    assert extend_pretrained(tmp_path / "lm", again.vocab).config.vocab_size == again.vocab.size
