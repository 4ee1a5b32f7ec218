"""RVQ stream layouts (flat / delay) and the sampler's AudioSpanState."""

import pytest
import torch

from anygen.codecs.layout import AudioSpanState, codes_to_stream, stream_length, stream_to_codes


def random_codes(n_q, n_frames, seed=0):
    return torch.randint(0, 50, (n_q, n_frames), generator=torch.Generator().manual_seed(seed))


def test_flat_is_frame_major():
    codes = torch.tensor([[1, 2, 3], [10, 20, 30]])  # (q=2, F=3)
    values, levels = codes_to_stream(codes, "flat")
    assert values.tolist() == [1, 10, 2, 20, 3, 30]
    assert levels.tolist() == [0, 1, 0, 1, 0, 1]


def test_delay_pattern():
    codes = torch.tensor([[1, 2, 3], [10, 20, 30]])
    values, levels = codes_to_stream(codes, "delay")
    # step s holds c0(s), c1(s-1); -1 is <apad>
    assert values.tolist() == [1, -1, 2, 10, 3, 20, -1, 30]
    assert levels.tolist() == [0, 1] * 4


@pytest.mark.parametrize("layout", ["flat", "delay"])
@pytest.mark.parametrize("n_q,n_frames", [(1, 1), (1, 5), (2, 1), (4, 7), (8, 3)])
def test_round_trip(layout, n_q, n_frames):
    codes = random_codes(n_q, n_frames)
    values, levels = codes_to_stream(codes, layout)
    assert len(values) == len(levels) == stream_length(n_frames, n_q, layout)
    assert torch.equal(stream_to_codes(values, levels, n_q, layout), codes)


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_truncated_streams_keep_whole_frames(layout):
    n_q, n_frames = 4, 6
    codes = random_codes(n_q, n_frames)
    values, levels = codes_to_stream(codes, layout)
    for cut in range(len(values) + 1):
        got = stream_to_codes(values[:cut], levels[:cut], n_q, layout)
        assert got.shape[0] == n_q
        assert torch.equal(got, codes[:, : got.shape[1]])  # a prefix of the frames, never garbage
    assert stream_to_codes(values[:0], levels[:0], n_q, layout).shape == (n_q, 0)


def generate(codes: torch.Tensor, layout: str, max_frames: int) -> list[int]:
    """Drive AudioSpanState the way the sampler does, ending after codes.shape[1] frames."""
    n_q, n_frames = codes.shape
    state = AudioSpanState(n_q, layout, max_frames=max_frames)
    out = []
    for _ in range(10 * (n_frames + n_q) * n_q):
        level, may_end, must_pad = state.allowed()
        if level is None:
            assert may_end
            return out  # <eoa>
        step = len(out) // n_q
        frame = step - level if layout == "delay" else step
        if must_pad:
            out.append(-1)
            state.advance(False)
        elif level == 0 and frame == n_frames:  # the model decides to stop here
            assert may_end
            if layout == "delay":
                out.append(-1)  # the end-marking <apad>
            state.advance(True)
            if layout == "flat":
                return out
        else:
            assert not may_end or level == 0
            out.append(int(codes[level, frame]))
            state.advance(False)
    raise AssertionError("span never closed")


@pytest.mark.parametrize("layout", ["flat", "delay"])
@pytest.mark.parametrize("n_q,n_frames", [(2, 1), (4, 5), (3, 8)])
def test_span_state_produces_the_layout(layout, n_q, n_frames):
    codes = random_codes(n_q, n_frames, seed=n_frames)
    stream = generate(codes, layout, max_frames=n_frames + 3)
    values, levels = codes_to_stream(codes, layout)
    assert stream == values.tolist()
    assert torch.equal(stream_to_codes(torch.tensor(stream), levels, n_q, layout), codes)


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_span_state_forces_the_end_at_max_frames(layout):
    n_q, max_frames = 3, 4
    codes = random_codes(n_q, max_frames + 2)  # more frames than allowed
    state = AudioSpanState(n_q, layout, max_frames=max_frames)
    n_slots = 0
    while True:
        level, may_end, must_pad = state.allowed()
        if level is None:
            break
        state.advance(False)
        n_slots += 1
    assert n_slots == stream_length(max_frames, n_q, layout)


def test_span_state_min_frames_and_bad_layout():
    state = AudioSpanState(2, "flat", max_frames=5, min_frames=2)
    assert state.allowed() == (0, False, False)  # no empty span
    for _ in range(4):
        state.advance(False)
    assert state.allowed() == (0, True, False)
    with pytest.raises(ValueError, match="layout"):
        AudioSpanState(2, "zigzag", max_frames=5)
    with pytest.raises(ValueError, match="layout"):
        codes_to_stream(torch.zeros(2, 2, dtype=torch.long), "zigzag")
