"""Image-aligned position ids: jumps to stride multiples after grid tokens, per document, same in every path."""

import torch

from anygen.model.decoder import DecoderConfig, build_decoder, forward_logits
from anygen.model.positions import ImagePositions
from anygen.vocab import Vocab

GRID = 7
RULE = ImagePositions(8, torch.tensor([GRID]))
VOCAB = Vocab(n_text=40, image_codebook_size=16)


def tiny_decoder(stride: int):
    cfg = DecoderConfig(n_layers=1, hidden=32, n_heads=2, n_kv_heads=2, head_dim=16, intermediate=64,
                        image_position_stride=stride)
    return build_decoder(cfg, VOCAB, seed=0).eval()


def test_codes_after_a_grid_token_start_at_a_stride_multiple():
    ids = torch.tensor([[1, 2, GRID, 3, 3, 4, 5, GRID, 3]])
    got = RULE.align(ids, torch.arange(9)[None])
    assert got.tolist() == [[0, 1, 2, 8, 9, 10, 11, 12, 16]]


def test_a_grid_token_on_a_multiple_needs_no_jump_and_stride_0_is_consecutive():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, GRID, 3, 3]])
    assert RULE.align(ids, torch.arange(9)[None]).tolist() == [[0, 1, 2, 3, 4, 5, 6, 8, 9]]
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 1, GRID, 3]])
    assert RULE.align(ids, torch.arange(9)[None]).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8]]
    plain = ImagePositions(0, torch.tensor([GRID]))
    assert plain.align(ids, torch.arange(9)[None]).tolist() == [list(range(9))]


def test_jumps_stay_inside_their_packed_document():
    ids = torch.tensor([[1, GRID, 3, 3, 1, 2, GRID, 3]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    doc = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2]])
    assert RULE.align(ids, pos, doc).tolist() == [[0, 1, 8, 9, 0, 1, 2, 8]]


def test_stepping_with_after_reproduces_align():
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (3, 40))
    ref = RULE.align(ids, torch.arange(40).expand(3, 40))
    pos = torch.zeros(3, dtype=torch.long)
    for t in range(40):
        assert torch.equal(pos, ref[:, t])
        pos = RULE.after(pos, ids[:, t])
    assert RULE.max_position(40) >= int(ref.max())


def test_stride_is_saved_in_the_model_config_and_read_back(tmp_path):
    vocab = VOCAB
    tiny_decoder(32).save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    rule = ImagePositions.of(loaded, vocab)
    assert rule.stride == 32 and rule.grid_ids.tolist() == [vocab.grid_id((8, 8))]
    assert rule.min_span == 3 + 64 and rule.max_position(670) == 670 + 32 * 11
    assert ImagePositions.of(tiny_decoder(0), vocab).stride == 0


def test_packed_forward_with_aligned_positions_equals_each_document_alone():
    vocab = VOCAB
    model = tiny_decoder(32)
    rule = ImagePositions.of(model, vocab)
    g = vocab.grid_id((8, 8))
    a = [vocab.bos, 5, vocab.boi, g] + list(range(vocab.image_start, vocab.image_start + 6))
    b = [vocab.bos, 7, 8, vocab.boi, g] + list(range(vocab.image_start, vocab.image_start + 4))
    packed = {"input_ids": torch.tensor([a + b]),
              "position_ids": torch.tensor([list(range(len(a))) + list(range(len(b)))]),
              "document_ids": torch.tensor([[1] * len(a) + [2] * len(b)])}
    with torch.no_grad():
        both = forward_logits(model, packed, positions=rule)[0]
        alone_a = forward_logits(model, {"input_ids": torch.tensor([a])}, positions=rule)[0]
        alone_b = forward_logits(model, {"input_ids": torch.tensor([b])}, positions=rule)[0]
        plain_b = forward_logits(model, {"input_ids": torch.tensor([b])})[0]
    torch.testing.assert_close(both, torch.cat([alone_a, alone_b]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone_b[-1], plain_b[-1], atol=1e-3)  # the jump changes what codes see
