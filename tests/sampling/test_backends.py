"""KV-cached incremental decoding agrees with the model's own uncached forward."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from anygen.model.positions import ImagePositions
from anygen.sampling.backends import FastDecoder, HFDecoder, fast_supported, make_decoder, resolve_lm


def tiny(kv_heads=1, attn="sdpa", vocab=60, seed=0):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=kv_heads, head_dim=16, intermediate_size=64, max_position_embeddings=128)
    cfg._attn_implementation = attn
    return Qwen3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("decoder_cls", [FastDecoder, HFDecoder])
@pytest.mark.parametrize("kv_heads,attn", [(1, "sdpa"), (2, "sdpa"), (1, "eager")])
def test_cached_steps_match_full_forward(decoder_cls, kv_heads, attn):
    model = tiny(kv_heads, attn)
    ids = torch.randint(3, 60, (3, 14))
    n_pad = torch.tensor([0, 4, 1])
    for r in range(3):
        ids[r, : n_pad[r]] = 0
    cols = torch.arange(14)
    attn_mask = (cols[None] >= n_pad[:, None]).long()
    position_ids = (cols[None] - n_pad[:, None]).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=attn_mask, position_ids=position_ids).logits  # (3, 14, V)
    dec = decoder_cls(model, 3, 20)
    got = [dec.prefill(ids[:, :9], n_pad)]
    for t in range(9, 14):
        got.append(dec.step(ids[:, t]))
    got = torch.stack(got, 1)  # (3, 6, V)
    torch.testing.assert_close(got, ref[:, 8:14], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder_cls", [FastDecoder, HFDecoder])
def test_image_aligned_positions_match_full_forward(decoder_cls):
    rule = ImagePositions(8, torch.tensor([7]))  # token 7 plays <grid>: what follows starts at a multiple of 8
    model = tiny(2)
    ids = torch.randint(8, 60, (3, 16))
    ids[0, 3] = ids[1, 8] = ids[2, 10] = ids[2, 12] = 7  # jumps inside the prompt and while stepping
    n_pad = torch.tensor([0, 2, 1])
    for r in range(3):
        ids[r, : n_pad[r]] = 0
    cols = torch.arange(16)
    attn_mask = (cols[None] >= n_pad[:, None]).long()
    position_ids = rule.align(ids, (cols[None] - n_pad[:, None]).clamp(min=0))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=attn_mask, position_ids=position_ids).logits  # (3, 16, V)
    dec = decoder_cls(model, 3, 16, rule)
    got = [dec.prefill(ids[:, :9], n_pad)]
    for t in range(9, 16):
        got.append(dec.step(ids[:, t]))
    torch.testing.assert_close(torch.stack(got, 1), ref[:, 8:16], atol=1e-5, rtol=1e-5)


def test_unpadded_batch_matches_full_forward():
    model = tiny(2)
    ids = torch.randint(3, 60, (2, 10))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    dec = FastDecoder(model, 2, 12)
    got = [dec.prefill(ids[:, :5], torch.zeros(2, dtype=torch.long))]
    for t in range(5, 10):
        got.append(dec.step(ids[:, t]))
    torch.testing.assert_close(torch.stack(got, 1), ref[:, 4:10], atol=1e-5, rtol=1e-5)


def test_backend_choice():
    model = tiny()
    assert fast_supported(model)
    assert isinstance(make_decoder(model, 1, 8), FastDecoder)
    assert isinstance(make_decoder(model, 1, 8, "hf"), HFDecoder)

    class Wrapper(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

    assert resolve_lm(Wrapper(model)) is model


@pytest.mark.parametrize("decoder_cls", [FastDecoder, HFDecoder])
def test_column_window_is_a_slice_of_the_full_logits(decoder_cls):
    model = tiny()
    ids = torch.randint(3, 60, (2, 6))
    n_pad = torch.zeros(2, dtype=torch.long)
    full, part = decoder_cls(model, 2, 10), decoder_cls(model, 2, 10)
    torch.testing.assert_close(part.prefill(ids, n_pad, 10, 30), full.prefill(ids, n_pad)[:, 10:30])
    tok = torch.tensor([5, 7])
    torch.testing.assert_close(part.step(tok, 40, 60), full.step(tok)[:, 40:60])
    if decoder_cls is FastDecoder:
        assert part.step(tok, 0, 0) is None  # every row forced: no head at all


def test_prepared_weights_follow_in_place_updates():
    model = tiny()
    ids = torch.randint(3, 60, (1, 5))
    n_pad = torch.zeros(1, dtype=torch.long)
    before = FastDecoder(model, 1, 8).prefill(ids, n_pad)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(3.0)  # an optimiser-style in-place step
        ref = model(input_ids=ids).logits[:, -1]
    after = FastDecoder(model, 1, 8).prefill(ids, n_pad)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=1e-5)


def test_held_rows_skip_a_step():
    """A row held on a step (`FastDecoder.step(hold=...)`) continues as if that step's id was never fed."""
    model = tiny(2)
    ids = torch.randint(3, 60, (2, 8))
    extra = torch.randint(3, 60, (2,))
    dec = FastDecoder(model, 2, 16)
    dec.prefill(ids, torch.zeros(2, dtype=torch.long))
    dec.step(extra, hold=torch.tensor([False, True]))  # row 1 holds: its id is masked out
    got = dec.step(ids[:, 0])
    plain = FastDecoder(model, 2, 16)
    plain.prefill(ids, torch.zeros(2, dtype=torch.long))
    plain.step(extra)
    ref_row0 = plain.step(ids[:, 0])[0]  # row 0 fed both ids
    alone = FastDecoder(model, 1, 16)
    alone.prefill(ids[1:], torch.zeros(1, dtype=torch.long))
    ref_row1 = alone.step(ids[1:, 0])[0]  # row 1 never saw its extra id
    torch.testing.assert_close(got[0], ref_row0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref_row1, atol=1e-5, rtol=1e-5)
