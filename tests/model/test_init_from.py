"""`--init-from`: extend a pretrained (here: tiny random, saved by the test) HF causal LM."""

import json

import pytest
import torch
from safetensors.torch import load_file

from anygen.errors import AnygenError
from anygen.model.init_from import embedding_matrices, extend_pretrained
from anygen.vocab import Vocab

N_TEXT = 40
VOCAB = Vocab(n_text=N_TEXT, image_codebook_size=16)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_pretrained_lm(directory, n_tokenizer=N_TEXT, rows=48, tie=False):
    """A tiny random Llama whose embedding is padded past its tokenizer (rows > len(tokenizer))."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
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
