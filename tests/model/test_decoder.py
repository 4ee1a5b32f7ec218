"""The early-fusion decoder: build, save/load, golden logits vs transformers, packing, loss."""

import json

import pytest
import torch

from anygen.config import ConfigError, build
from anygen.errors import AnygenError
from anygen.model.decoder import (META_FILE, DecoderConfig, LossConfig, build_decoder, decoder_loss,
                                  forward_logits, load_decoder, packed_attention_mask, read_decoder_meta,
                                  save_decoder, stats_to_metrics)
from anygen.vocab import Vocab

TINY = DecoderConfig(n_layers=2, hidden=32, n_heads=4, n_kv_heads=2, head_dim=8, intermediate=64, max_position=128)
VOCAB = Vocab(n_text=50, image_codebook_size=32, audio_codebook_size=8, audio_levels=2)


def packed_batch():
    """Row 0: documents of 5 and 7 tokens, then 4 pads; row 1: one document of 16."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB.size, (2, 16), generator=g)
    doc = torch.tensor([[1] * 5 + [2] * 7 + [0] * 4, [1] * 16])
    pos = torch.stack([torch.cat([torch.arange(5), torch.arange(7), torch.arange(4)]), torch.arange(16)])
    labels = torch.where(doc > 0, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "document_ids": doc}


def test_forward_backward_tiny():
    model = build_decoder(TINY, VOCAB, seed=0)
    assert model.config.vocab_size == VOCAB.size and model.config.head_dim == 8
    assert model.model.layers[0].self_attn.q_norm is not None  # Qwen3: per-head QK RMSNorm
    batch = packed_batch()
    logits = forward_logits(model, batch)
    assert logits.shape == (2, 16, VOCAB.size)
    loss, stats = decoder_loss(logits, batch["labels"], LossConfig(), VOCAB, batch["document_ids"])
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


def test_logits_equal_transformers_forward_on_saved_dir(tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_decoder(TINY, VOCAB, seed=1).eval()
    save_decoder(model, tmp_path / "dec", config=TINY, vocab=VOCAB)
    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path / "dec"), local_files_only=True).eval()
    assert type(ref).__name__ == "Qwen3ForCausalLM"
    ids = torch.randint(0, VOCAB.size, (2, 12))
    with torch.no_grad():
        ours = forward_logits(model, {"input_ids": ids, "document_ids": torch.ones_like(ids)})
        theirs = ref(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # the loader round-trips too, with anygen's metadata
    loaded = load_decoder(tmp_path / "dec").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, theirs, rtol=0, atol=0)
    meta = read_decoder_meta(tmp_path / "dec")
    assert meta["format_version"] == 1 and Vocab.from_dict(meta["vocab"]) == VOCAB
    assert build(DecoderConfig, meta["decoder"]) == TINY
    assert not list((tmp_path / "dec").glob("*.bin"))  # safetensors only


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_do_not_see_each_other(attn):
    cfg = build(DecoderConfig, {**TINY.__dict__, "attn_implementation": attn})
    model = build_decoder(cfg, VOCAB, seed=2).eval()
    batch = packed_batch()
    with torch.no_grad():
        packed = forward_logits(model, batch, attn)
        for lo, hi in ((0, 5), (5, 12)):
            alone = model(input_ids=batch["input_ids"][:1, lo:hi], position_ids=torch.arange(hi - lo)[None]).logits
            torch.testing.assert_close(packed[0, lo:hi], alone[0], rtol=1e-5, atol=1e-5)
        # changing document 1 leaves document 2's logits untouched
        other = dict(batch, input_ids=batch["input_ids"].clone())
        other["input_ids"][0, :5] = (other["input_ids"][0, :5] + 1) % VOCAB.size
        torch.testing.assert_close(forward_logits(model, other, attn)[0, 5:12], packed[0, 5:12], rtol=0, atol=1e-6)


def test_packed_mask_kinds():
    doc = torch.tensor([[1, 1, 2, 2, 0]])
    m = packed_attention_mask(doc, "sdpa")
    assert m.dtype == torch.bool and m.shape == (1, 1, 5, 5)
    expect = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]).bool()
    assert torch.equal(m[0, 0], expect)
    e = packed_attention_mask(doc, "eager", torch.float32)
    assert e.dtype == torch.float32 and torch.equal(e[0, 0] == 0, expect)  # additive, not boolean
    assert packed_attention_mask(torch.ones(2, 5, dtype=torch.long)) is None  # one document per row: plain causal


def test_loss_weights_z_loss_and_metrics():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, VOCAB.size)
    text, image, audio = 3, VOCAB.image_start + 1, VOCAB.audio_start + 2
    labels = torch.tensor([[text, text, image, audio, -100, image]])
    doc = torch.tensor([[1, 1, 1, 1, 1, 2]])  # the last target starts a new document: ignored
    lp = torch.log_softmax(logits[0, :-1], -1)
    ce = -lp[torch.arange(5), labels[0, 1:].clamp_min(0)]
    lse = torch.logsumexp(logits[0, :-1], -1)
    valid = torch.tensor([1, 1, 1, 0, 0.0])
    plain, _ = decoder_loss(logits, labels, LossConfig(z_loss=0), VOCAB, doc)
    torch.testing.assert_close(plain, (ce * valid).sum() / 3)
    z, stats = decoder_loss(logits, labels, LossConfig(z_loss=0.1), VOCAB, doc)
    torch.testing.assert_close(z, ((ce + 0.1 * lse ** 2) * valid).sum() / 3)
    img_only, _ = decoder_loss(logits, labels, LossConfig(z_loss=0, text_weight=0, audio_weight=0), VOCAB, doc)
    torch.testing.assert_close(img_only, ce[1])
    m = stats_to_metrics(stats)
    assert m["target_tokens"] == 3
    torch.testing.assert_close(torch.tensor(m["loss_text"]), ce[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.tensor(m["loss_image"]), ce[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.tensor(m["loss_audio"]), ce[2], rtol=1e-6, atol=1e-6)
    assert 0 <= m["acc_text"] <= 1 and "loss" in m and "lse2" in m


def test_tiny_model_overfits_a_handful_of_documents():
    torch.manual_seed(0)
    model = build_decoder(TINY, VOCAB, seed=0)
    ids = torch.randint(0, VOCAB.size, (4, 16))
    batch = {"input_ids": ids, "labels": ids, "document_ids": torch.ones_like(ids)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        loss, stats = decoder_loss(forward_logits(model, batch), ids, LossConfig())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.3, loss.item()
    assert stats_to_metrics(stats)["acc"] > 0.95


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="n_kv_heads"):
        build(DecoderConfig, {"n_heads": 4, "n_kv_heads": 3})
    with pytest.raises(ConfigError, match="attn_implementation"):
        build(DecoderConfig, {"attn_implementation": "flashy"})
    with pytest.raises(ConfigError, match="z_loss"):
        build(LossConfig, {"z_loss": -1})
    with pytest.raises(AnygenError, match="no config.json"):
        load_decoder(tmp_path)
    model = build_decoder(TINY, VOCAB, seed=0)
    save_decoder(model, tmp_path / "d")
    meta = json.loads((tmp_path / "d" / META_FILE).read_text())
    (tmp_path / "d" / META_FILE).write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(AnygenError, match="format_version"):
        load_decoder(tmp_path / "d")
