"""How residual-VQ audio codes (n_q levels × F frames) are laid into one token stream.

- `flat`: frame-major, `c0(0) c1(0) … c{q-1}(0) c0(1) …`; F·q tokens.
- `delay`: MusicGen's delay pattern flattened: step s holds `c_l(s - l)` for l = 0..q-1,
  with `<apad>` where `s - l` is outside 0..F-1; (F + q - 1)·q tokens. A step's level-0
  slot holding `<apad>` marks the end of the frames; the tail then completes the
  higher levels.

Streams are `(values, levels)`: code values with -1 for `<apad>`, and each slot's level.
`AudioSpanState` tells the sampler what is legal at each slot of a span being generated.
"""

from __future__ import annotations

import torch

LAYOUTS = ("flat", "delay")


def stream_length(n_frames: int, n_q: int, layout: str) -> int:
    """Code slots (excluding <boa>/<eoa>) that `n_frames` frames take."""
    return n_frames * n_q if layout == "flat" else (n_frames + n_q - 1) * n_q


def codes_to_stream(codes: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """codes (q, F) -> values (L,), levels (L,); value -1 marks a pad slot."""
    q, n_frames = codes.shape
    if layout == "flat":
        values = codes.t().reshape(-1)  # (F*q,) frame-major
        levels = torch.arange(q).repeat(n_frames)
        return values.long(), levels
    if layout != "delay":
        raise ValueError(f"unknown audio layout {layout!r} (allowed: {', '.join(LAYOUTS)})")
    steps = n_frames + q - 1
    grid = torch.full((steps, q), -1, dtype=torch.long)  # (S, q)
    for level in range(q):
        grid[level:level + n_frames, level] = codes[level]
    return grid.reshape(-1), torch.arange(q).repeat(steps)


def stream_to_codes(values: torch.Tensor, levels: torch.Tensor, n_q: int, layout: str) -> torch.Tensor:
    """Inverse of `codes_to_stream`, tolerant of truncated streams: (L,) -> codes (q, F).

    Only whole frames are kept (a frame needs all q levels); pads are dropped.
    """
    values, levels = values.long().reshape(-1), levels.long().reshape(-1)
    if layout == "flat":
        n_frames = len(values) // n_q
        return values[: n_frames * n_q].reshape(n_frames, n_q).t().contiguous()
    steps = len(values) // n_q
    grid = values[: steps * n_q].reshape(steps, n_q)  # (S, q)
    per_level = [grid[:, l][grid[:, l] >= 0][: max(steps - l, 0)] for l in range(n_q)]
    # Level 0 codes stop at the first pad; every level must have the frame to keep it.
    first_pad = (grid[:, 0] < 0).nonzero()
    n0 = int(first_pad[0]) if len(first_pad) else steps
    n_frames = min([n0] + [len(p) for p in per_level])
    return torch.stack([p[:n_frames] for p in per_level]) if n_q else torch.zeros(0, 0, dtype=torch.long)


class AudioSpanState:
    """The sampler's view of an audio span: which level may be drawn at each slot, and when it may end.

    `allowed()` -> (level or None, may_end, must_pad):
      level     the codebook level this slot draws from (None: the span must close with <eoa>)
      may_end   whether <eoa> (flat) or the end-marking <apad> (delay) is legal here
      must_pad  the slot must be <apad> (delay layout only)
    `advance(is_end_or_pad)` moves to the next slot.
    """

    def __init__(self, n_q: int, layout: str, max_frames: int, min_frames: int = 1):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown audio layout {layout!r} (allowed: {', '.join(LAYOUTS)})")
        self.n_q, self.layout, self.max_frames, self.min_frames = n_q, layout, max_frames, min_frames
        self.slot = 0
        self.n_frames: int | None = None  # known once the end is decided
        self.closed = False

    def allowed(self) -> tuple[int | None, bool, bool]:
        step, level = divmod(self.slot, self.n_q)
        if self.layout == "flat":
            if self.n_frames is not None:
                return None, True, False
            at_frame_start = level == 0
            if at_frame_start and step >= self.max_frames:
                return None, True, False
            return level, at_frame_start and step >= self.min_frames, False
        # delay
        n_frames = self.n_frames
        if n_frames is None and level == 0 and step >= self.max_frames:
            n_frames = self.max_frames  # forced end
        if n_frames is not None and step >= n_frames + self.n_q - 1:
            return None, True, False
        frame = step - level
        if frame < 0 or (n_frames is not None and frame >= n_frames):
            return level, False, True
        if level == 0 and n_frames is None:
            return 0, step >= self.min_frames, False
        return level, False, False

    def advance(self, ended: bool = False) -> None:
        """Record the slot just sampled; `ended` when it was <eoa> (flat) or the end-<apad> (delay)."""
        step, level = divmod(self.slot, self.n_q)
        if self.layout == "flat":
            if ended:
                self.n_frames, self.closed = step, True
                return
        else:
            if self.n_frames is None and level == 0 and (ended or step >= self.max_frames):
                self.n_frames = step
            if self.n_frames is not None and step >= self.n_frames + self.n_q - 1:
                self.closed = True
                return
        self.slot += 1
