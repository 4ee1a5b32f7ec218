"""Per-row grammar of an interleaved document: which ids are legal at each step.

    text   text ids, <eos>, and <boi>/<boa> when enabled and the remaining budget holds the span
    image  <boi> <grid_HxW> code*(H*W) <eoi>     grid and <eoi> are forced when only one is legal
    audio  <boa> slots <eoa>                      slots follow `AudioSpanState` (flat or delay layout)

`Grammar` precomputes every legal-id mask once as rows of one boolean tensor (M, V)
(from `Vocab`'s masks); a `RowState` answers `next() -> (mask row, forced id or -1, modality,
guide?)` in a few Python operations and `push(id)` advances, appending a `Span` to `spans` when a
segment completes. No tensors are built per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anygen.codecs.keep import last_image
from anygen.codecs.layout import AudioSpanState, stream_length
from anygen.config import ConfigError
from anygen.errors import AnygenError
from anygen.sampling.settings import GenerationConfig
from anygen.vocab import Vocab

TEXT, IMAGE, AUDIO = 0, 1, 2  # modality index: GenerationConfig.text / .image / .audio
_GRID, _CODES, _EOI = 1, 2, 3  # image sub-states (mode TEXT = 0, AUDIO = 4, DONE = 5)
_AUDIO, _DONE = 4, 5


@dataclass(frozen=True)
class Span:
    """One segment of a row's output: `ids[start:end]` of `SampleResult.ids`.

    text spans exclude the <eos>; image spans run <boi>..<eoi>, audio spans <boa>..<eoa>
    (inclusive). `complete` is False when the budget cut the segment. A span the prompt
    opened (a prompt ending inside an image or audio span) has start < 0: its first -start
    ids are the prompt's.
    """

    kind: str
    start: int
    end: int
    ids: tuple[int, ...]
    complete: bool = True
    grid: tuple[int, int] | None = None  # image spans

    @property
    def codes(self) -> tuple[int, ...]:
        """The code slots of an image/audio span (without the delimiters and grid token)."""
        if self.kind == "image":
            return self.ids[2:-1] if self.complete else self.ids[2:]
        if self.kind == "audio":
            return self.ids[1:-1] if self.complete else self.ids[1:]
        return ()


class Grammar:
    """All legal-id masks of one (vocab, config) pair, as rows of `masks` (M, V) on `device`."""

    ANY = 0  # all ids: rows whose token is forced anyway

    def __init__(self, vocab: Vocab, cfg: GenerationConfig, device: torch.device | str = "cpu"):
        self.vocab, self.cfg = vocab, cfg
        rows = [torch.ones(vocab.size, dtype=torch.bool)]
        self.has_image = vocab.image_codebook_size > 0 and cfg.allow_image
        self.has_audio = vocab.audio_levels > 0 and vocab.audio_codebook_size > 0 and cfg.allow_audio
        # text: index 1 + 4*eos + 2*boi + boa
        for eos in (False, True):
            for boi in (False, True):
                for boa in (False, True):
                    m = vocab.text_mask(allow_image=boi and self.has_image, allow_audio=boa and self.has_audio)
                    m[vocab.eos] = eos
                    rows.append(m)
        self.text_eos = cfg.stop_at_eos
        # image grids: fixed grid (forced) or the smallest-first prefix that fits the budget
        grids = list(vocab.image_grids) if vocab.image_codebook_size else []
        if cfg.image_grid is not None and vocab.image_codebook_size:
            if tuple(cfg.image_grid) not in set(vocab.image_grids):
                raise ConfigError(f"image_grid: {list(cfg.image_grid)} is not a grid of this model "
                                  f"(grids: {[list(g) for g in vocab.image_grids]})")
            grids = [tuple(cfg.image_grid)]
        self.grids = sorted(grids, key=lambda g: g[0] * g[1])
        self.fixed_grid = self.grids[0] if cfg.image_grid is not None and self.grids else None
        self.grid_ids = [vocab.grid_id(g) for g in self.grids]
        self.grid_sizes = [g[0] * g[1] for g in self.grids]
        self.grid_prefix = []  # index of the mask allowing grids[:k+1]
        for k in range(len(self.grids)):
            self.grid_prefix.append(len(rows))
            rows.append(vocab.mask(self.grid_ids[: k + 1]))
        self.grid_of_id = dict(zip(self.grid_ids, self.grids))
        self.image_codes = len(rows)
        rows.append(vocab.image_code_mask() if vocab.image_codebook_size else torch.zeros(vocab.size, dtype=torch.bool))
        self.image_codes_keep = len(rows)  # codes or <keep>: a previous image of the same grid exists
        rows.append(vocab.image_code_mask(allow_keep=True) if vocab.image_codebook_size
                    else torch.zeros(vocab.size, dtype=torch.bool))
        self.keep = vocab.keep
        self.min_image_span = 3 + self.grid_sizes[0] if self.grids else None
        # audio: index audio_base + 2*level + may_end
        self.n_q, self.layout = vocab.audio_levels, vocab.audio_layout
        self.audio_base = len(rows)
        for level in range(self.n_q if vocab.audio_codebook_size else 0):
            for end in (False, True):
                if self.layout == "flat":
                    rows.append(vocab.audio_level_mask(level, allow_end=end))
                else:
                    rows.append(vocab.audio_level_mask(level, allow_pad=end))
        self.min_audio_span = (2 + stream_length(cfg.audio_min_frames, self.n_q, self.layout)
                               if self.has_audio else None)
        masks = torch.stack(rows)  # (M, V)
        # each mask's legal ids lie in the columns [col_lo, col_hi): the logits the sampler needs
        any_legal = masks.any(-1)
        first = masks.float().argmax(-1)
        last = masks.size(1) - masks.flip(-1).float().argmax(-1)
        self.col_lo = [int(f) if a else 0 for f, a in zip(first, any_legal)]
        self.col_hi = [int(l) if a else 0 for l, a in zip(last, any_legal)]
        self.masks = masks.to(device)
        self.boi, self.eoi, self.boa, self.eoa = vocab.boi, vocab.eoi, vocab.boa, vocab.eoa
        self.eos, self.apad, self.pad = vocab.eos, vocab.apad, vocab.pad

    def text_mask_index(self, remaining: int) -> int:
        boi = self.has_image and remaining >= self.min_image_span
        boa = self.has_audio and remaining >= self.min_audio_span
        return 1 + 4 * self.text_eos + 2 * boi + boa

    def audio_frames_that_fit(self, remaining: int) -> int:
        """Most frames whose slots plus <eoa> fit in `remaining` tokens (after <boa>)."""
        n_frames = self.cfg.audio_max_frames
        while n_frames > 0 and stream_length(n_frames, self.n_q, self.layout) + 1 > remaining:
            n_frames -= 1
        return n_frames


class RowState:
    """One row's position in the grammar, its output ids and completed spans.

    `force`: ids the output must start with (e.g. `[<boi>]` for text→image).
    `source`/`editable`: for editing, the H*W source code ids of the first image span and
    which positions may change; the others are copied through (forced).
    `prev`: (grid, code ids) of the last finished image, from the prompt or generated; with a
    `<keep>` vocab a drawn `<keep>` is recorded as prev's code at that position
    (anygen.codecs.keep), so `ids` and `spans` hold plain codes while the model was fed `<keep>`.
    """

    __slots__ = ("g", "budget", "ids", "spans", "mode", "queue", "seg_start", "grid", "n_codes", "pos", "carried",
                 "audio", "audio_slots", "source", "editable", "finish", "guide_lo", "guide_hi", "edited", "prev")

    def __init__(self, grammar: Grammar, budget: int, force=(), source=None, editable=None, prompt=()):
        self.g, self.budget = grammar, budget
        self.ids: list[int] = []
        self.spans: list[Span] = []
        self.mode = TEXT
        self.queue = list(force)[::-1]  # pop() from the end
        self.seg_start = 0
        self.grid, self.n_codes, self.pos = None, 0, 0
        self.audio, self.audio_slots = None, 1
        self.source = list(source) if source is not None else None
        self.editable = list(editable) if editable is not None else None
        self.edited = False  # the copy-through applies to the first image span only
        self.finish: str | None = None
        self.guide_lo, self.guide_hi = grammar.cfg.guidance_interval
        self.carried: list[int] = []
        self.prev = last_image(prompt, grammar.vocab) if grammar.keep is not None else None
        self._resume(prompt)

    def _resume(self, prompt) -> None:
        """A prompt that ends inside an image/audio span continues that span.

        The span's ids already in the prompt are `carried`; the Span reported for it has a
        negative `start` (-len(carried)) and its `ids` include the carried part.
        """
        g, open_at = self.g, None
        for i, t in enumerate(prompt):
            if t == g.boi or t == g.boa:
                open_at = i
            elif t == g.eoi or t == g.eoa:
                open_at = None
        if open_at is None:
            return
        tail = [int(t) for t in prompt[open_at:]]
        budget, self.budget = self.budget, 1 << 30
        queue, self.queue = self.queue, []
        for t in tail:
            self.push(t)
        self.budget, self.queue = budget, queue
        self.carried, self.ids, self.spans, self.seg_start = tail, [], [], -len(tail)
        if self.mode == TEXT:  # the tail itself closed (cannot happen for a well-formed tail)
            self.seg_start = 0

    def _span_ids(self, start: int, end: int) -> tuple[int, ...]:
        if start >= 0:
            return tuple(self.ids[start:end])
        return tuple(self.carried[start:]) + tuple(self.ids[:end])

    @property
    def done(self) -> bool:
        return self.mode == _DONE

    def modality(self) -> int:
        m = self.mode
        return TEXT if m == TEXT or m == _DONE else (AUDIO if m == _AUDIO else IMAGE)

    def next(self) -> tuple[int, int, int, bool]:
        """(mask row, forced id or -1, modality, guide this step)."""
        g, mode = self.g, self.mode
        if self.queue:
            return g.ANY, self.queue[-1], self.modality(), False
        if mode == _CODES:
            mask, forced, guided = self.code_window(1)[0]
            return mask, forced, IMAGE, guided
        if mode == TEXT:
            return g.text_mask_index(self.budget - len(self.ids)), -1, TEXT, False
        if mode == _AUDIO:
            level, may_end, must_pad = self.audio.allowed()
            if level is None:
                return g.ANY, g.eoa, AUDIO, False
            if must_pad:
                return g.ANY, g.apad, AUDIO, False
            frac = self.audio.slot / self.audio_slots
            return g.audio_base + 2 * level + may_end, -1, AUDIO, self.guide_lo <= frac < self.guide_hi
        if mode == _GRID:
            source_grid = self._source_grid()
            if source_grid is not None:
                return g.ANY, g.vocab.grid_id(source_grid), IMAGE, False
            if g.fixed_grid is not None:
                return g.ANY, g.grid_ids[0], IMAGE, False
            remaining = self.budget - len(self.ids)
            k = sum(1 for n in g.grid_sizes if n + 2 <= remaining)
            if k <= 1:
                return g.ANY, g.grid_ids[0], IMAGE, False
            return g.grid_prefix[k - 1], -1, IMAGE, False
        if mode == _EOI:
            return g.ANY, g.eoi, IMAGE, False
        return g.ANY, g.pad, TEXT, False  # done: the row idles on <pad>

    def code_window(self, n: int) -> list[tuple[int, int, bool]]:
        """What `next()` would answer for each of the next `n` ids, as (mask row, forced id or -1, guide),
        as far as they are code slots of the open image span and fit the budget ([] elsewhere)."""
        if self.mode != _CODES or self.queue:
            return []
        g, prev, pos = self.g, self.prev, self.pos
        keep_ok = prev is not None and prev[0] == self.grid
        copying = self.source is not None and not self.edited and self.editable is not None
        mask = g.image_codes_keep if keep_ok else g.image_codes
        out = []
        for p in range(pos, min(self.n_codes, pos + n, pos + self.budget - len(self.ids))):
            if copying and not self.editable[p]:
                source = self.source[p]
                out.append((g.ANY, g.keep if keep_ok and prev[1][p] == source else source, False))
            else:
                out.append((mask, -1, self.guide_lo <= p / self.n_codes < self.guide_hi))
        return out

    def _source_grid(self):
        if self.source is None or self.edited:
            return None
        n = len(self.source)
        for grid in self.g.vocab.image_grids:
            if grid[0] * grid[1] == n:
                return grid
        raise AnygenError(f"source has {n} codes, which matches no image grid of the vocab {self.g.vocab.image_grids}")

    def push(self, tok: int) -> None:
        """Record the drawn (or forced) id; completed segments are appended to `spans`."""
        if self.mode == _DONE:
            return
        if self.queue:
            self.queue.pop()
        g = self.g
        mode = self.mode
        if mode == _CODES and tok == g.keep and self.prev is not None:
            tok = self.prev[1][self.pos]
        ids = self.ids
        ids.append(tok)
        n = len(ids)
        if mode == _CODES:
            self.pos += 1
            if self.pos == self.n_codes:
                self.mode = _EOI
        elif mode == TEXT:
            if tok == g.boi or tok == g.boa or tok == g.eos:
                self._close_text(n - 1)
                self.seg_start = n - 1
                if tok == g.boi and g.cfg.stop_at_image:
                    self.mode, self.finish = _DONE, "image"
                    return
                if tok == g.boi:
                    self.mode = _GRID
                elif tok == g.boa:
                    self.mode = _AUDIO
                    frames = max(g.audio_frames_that_fit(self.budget - n), 1)
                    self.audio = AudioSpanState(g.n_q, g.layout, frames, min(g.cfg.audio_min_frames, frames))
                    self.audio_slots = stream_length(frames, g.n_q, g.layout)
                else:
                    self.mode, self.finish = _DONE, "eos"
                    return
        elif mode == _GRID:
            self.grid = g.grid_of_id.get(tok) or g.vocab.grid_of(tok)
            self.n_codes, self.pos = self.grid[0] * self.grid[1], 0
            self.mode = _CODES
        elif mode == _EOI:
            span = Span("image", self.seg_start, n, self._span_ids(self.seg_start, n), True, self.grid)
            self.spans.append(span)
            if g.keep is not None:
                self.prev = (self.grid, list(span.codes))
            if self.source is not None:
                self.edited = True
            self.mode, self.seg_start = TEXT, n
        elif mode == _AUDIO:
            audio = self.audio
            level = audio.allowed()[0]
            audio.advance(tok == g.eoa or (tok == g.apad and level == 0 and audio.n_frames is None))
            if audio.closed:
                self.spans.append(Span("audio", self.seg_start, n, self._span_ids(self.seg_start, n), True))
                self.mode, self.seg_start = TEXT, n
        if n >= self.budget:
            self._close_open(n)
            self.mode, self.finish = _DONE, "length"

    def _close_text(self, end: int) -> None:
        if end > self.seg_start:
            self.spans.append(Span("text", self.seg_start, end, tuple(self.ids[self.seg_start:end]), True))

    def _close_open(self, n: int) -> None:
        """The budget ran out: the open segment ends here (an image/audio span is incomplete)."""
        if self.mode == TEXT:
            self._close_text(n)
        elif n > self.seg_start:
            kind = "audio" if self.mode == _AUDIO else "image"
            self.spans.append(Span(kind, self.seg_start, n, self._span_ids(self.seg_start, n), False,
                                   self.grid if kind == "image" else None))
