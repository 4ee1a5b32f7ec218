"""Vocab id ranges and legal-id masks; audio stream layouts and the sampler's span state."""

import pytest
import torch

from anygen.codecs.layout import LAYOUTS, AudioSpanState, codes_to_stream, stream_length, stream_to_codes
from anygen.vocab import Vocab


def test_ranges_are_contiguous_and_disjoint():
    v = Vocab(n_text=100, image_codebook_size=50, image_grids=((8, 8), (16, 16)),
              audio_codebook_size=16, audio_levels=3)
    specials = sorted(v.specials.values())
    assert specials == list(range(100, 100 + len(specials)))
    assert v.image_start == specials[-1] + 1
    assert v.audio_range(0).start == v.image_range.stop
    assert v.audio_range(2).stop == v.size == 100 + len(specials) + 50 + 48
    assert v.grid_of(v.grid_id((16, 16))) == (16, 16)
    with pytest.raises(ValueError, match="grid"):
        v.grid_id((4, 4))


def test_masks():
    v = Vocab(n_text=10, image_codebook_size=5, audio_codebook_size=4, audio_levels=2)
    text = v.text_mask()
    assert text[:10].all() and text[v.eos] and text[v.boi] and text[v.boa]
    assert not text[v.eoi] and not text[v.null] and not text[v.image_range.start]
    assert not v.text_mask(allow_image=False)[v.boi]
    assert v.image_code_mask().sum() == 5 and v.image_code_mask()[v.image_range].all()
    m = v.audio_level_mask(1, allow_end=True)
    assert m.sum() == 5 and m[v.eoa] and m[v.audio_range(1)].all()


def test_code_id_round_trip_and_modality():
    v = Vocab(n_text=10, image_codebook_size=5, audio_codebook_size=4, audio_levels=2)
    codes = torch.tensor([0, 4, 2])
    assert torch.equal(v.image_codes(v.image_ids(codes)), codes)
    ids = v.audio_ids(torch.tensor([3, 1]), torch.tensor([0, 1]))
    values, levels = v.audio_codes(ids)
    assert values.tolist() == [3, 1] and levels.tolist() == [0, 1]
    assert v.modality_of(torch.tensor([3, v.boi, v.image_range.start, ids[1]])).tolist() == [0, 0, 1, 2]
    assert Vocab.from_dict(v.to_dict()) == v


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n_frames", [1, 4, 7])
def test_stream_round_trip_and_span_state(layout, n_frames):
    q = 3
    codes = torch.randint(0, 16, (q, n_frames))
    values, levels = codes_to_stream(codes, layout)
    assert len(values) == stream_length(n_frames, q, layout)
    assert torch.equal(stream_to_codes(values, levels, q, layout), codes)
    # Replaying the stream through the sampler's state machine: every slot is legal.
    state, slot = AudioSpanState(q, layout, max_frames=7), 0
    while not state.closed:
        level, may_end, must_pad = state.allowed()
        if level is None:  # must close with <eoa>
            assert slot >= len(values)
            state.advance(ended=True)
            continue
        if slot == len(values):  # flat: the stream is over, <eoa> must be legal
            assert may_end
            state.advance(ended=True)
            continue
        assert level == levels[slot]
        value = int(values[slot])
        if value < 0:
            assert must_pad or may_end
            state.advance(ended=not must_pad)
        else:
            assert not must_pad
            state.advance()
        slot += 1
    assert slot == len(values)


def test_truncated_stream_keeps_whole_frames():
    codes = torch.randint(0, 16, (2, 5))
    values, levels = codes_to_stream(codes, "flat")
    assert torch.equal(stream_to_codes(values[:7], levels[:7], 2, "flat"), codes[:, :3])
