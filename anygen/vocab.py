"""The one global id space: text ids, special tokens, then one contiguous range per codebook.

Layout (nothing else in anygen hard-codes an id; ask the Vocab):

    [0, n_text)                      text-tokenizer ids
    specials                         <pad> <bos> <eos> <boi> <eoi> <boa> <eoa> <apad> <null>
                                     then one grid token per image grid, e.g. <grid_8x8>
    image codes                      [image_start, image_start + image_codebook_size)
    audio codes, level l             [audio_start + l*K, audio_start + (l+1)*K), K = audio_codebook_size
    <keep>                           the last id, only with `image_keep` (see anygen.codecs.keep)

Sequences:
    image span  <boi> <grid_HxW> code*(H*W) <eoi>
    audio span  <boa> code* <eoa>      codes laid out per `audio_layout` (see anygen.codecs.layout)
    <null>      stands in for dropped conditioning text (classifier-free guidance)
    <keep>      inside an image span: "the same code as the previous image here" (`image_keep`)

`<keep>` comes last so that turning it on adds one row and moves no other id: a model
trained without it is fine-tuned with it after growing its embeddings by that row.

The sampler asks `Vocab` for boolean masks of the ids that are legal in each state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<apad>", "<null>")


@dataclass(frozen=True)
class Vocab:
    n_text: int
    image_codebook_size: int = 0
    image_grids: tuple[tuple[int, int], ...] = ((8, 8),)
    audio_codebook_size: int = 0
    audio_levels: int = 0
    audio_layout: str = "flat"  # "flat" (frame-major) or "delay" (MusicGen delay pattern)
    image_keep: bool = False  # image spans coded against the previous image (anygen.codecs.keep)
    specials: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.n_text <= 0:
            raise ValueError(f"n_text must be positive, got {self.n_text}")
        if self.audio_layout not in ("flat", "delay"):
            raise ValueError(f"audio_layout must be 'flat' or 'delay', got {self.audio_layout!r}")
        object.__setattr__(self, "image_grids", tuple(tuple(int(x) for x in g) for g in self.image_grids))
        names = list(SPECIAL_TOKENS) + [self.grid_token(g) for g in self.image_grids]
        object.__setattr__(self, "specials", {name: self.n_text + i for i, name in enumerate(names)})

    # ---- ranges -------------------------------------------------------------------
    @staticmethod
    def grid_token(grid: tuple[int, int]) -> str:
        return f"<grid_{grid[0]}x{grid[1]}>"

    @property
    def image_start(self) -> int:
        return self.n_text + len(self.specials)

    @property
    def audio_start(self) -> int:
        return self.image_start + self.image_codebook_size

    @property
    def audio_stop(self) -> int:
        """One past the last audio code id."""
        return self.audio_start + self.audio_levels * self.audio_codebook_size

    @property
    def size(self) -> int:
        return self.audio_stop + int(self.image_keep)

    @property
    def keep(self) -> int | None:
        """The `<keep>` id, None when the vocab has none."""
        return self.size - 1 if self.image_keep else None

    def __len__(self) -> int:
        return self.size

    def special(self, name: str) -> int:
        return self.specials[name]

    def __getattr__(self, name):  # vocab.boi, vocab.eos, ... for the fixed specials
        specials = self.__dict__.get("specials")
        if specials is not None and f"<{name}>" in specials:
            return specials[f"<{name}>"]
        raise AttributeError(name)

    @property
    def image_range(self) -> range:
        return range(self.image_start, self.image_start + self.image_codebook_size)

    def audio_range(self, level: int) -> range:
        if not 0 <= level < self.audio_levels:
            raise IndexError(f"audio level {level} outside 0..{self.audio_levels - 1}")
        start = self.audio_start + level * self.audio_codebook_size
        return range(start, start + self.audio_codebook_size)

    def grid_id(self, grid: tuple[int, int]) -> int:
        name = self.grid_token(tuple(grid))
        if name not in self.specials:
            raise ValueError(f"image grid {grid} is not in this vocab (grids: {list(self.image_grids)})")
        return self.specials[name]

    def grid_of(self, token_id: int) -> tuple[int, int] | None:
        for g in self.image_grids:
            if self.specials[self.grid_token(g)] == token_id:
                return g
        return None

    # ---- code <-> id ----------------------------------------------------------------
    def image_ids(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.long() + self.image_start

    def image_codes(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.long() - self.image_start

    def audio_ids(self, codes: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        return codes.long() + self.audio_start + torch.as_tensor(level) * self.audio_codebook_size

    def audio_codes(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids inside the audio ranges -> (codes, levels)."""
        offset = ids.long() - self.audio_start
        return offset % self.audio_codebook_size, offset // self.audio_codebook_size

    def modality_of(self, ids: torch.Tensor) -> torch.Tensor:
        """0 = text or special, 1 = image code, 2 = audio code (same shape as ids)."""
        ids = ids.long()
        out = torch.zeros_like(ids)
        out[(ids >= self.image_start) & (ids < self.audio_start)] = 1
        out[(ids >= self.audio_start) & (ids < self.audio_stop)] = 2
        if self.image_keep:
            out[ids == self.keep] = 1
        return out

    # ---- legal-id masks for the sampler ---------------------------------------------
    def mask(self, ids) -> torch.Tensor:
        m = torch.zeros(self.size, dtype=torch.bool)
        if isinstance(ids, range):
            m[ids.start:ids.stop] = True
        else:
            m[list(ids)] = True
        return m

    def text_mask(self, allow_image: bool = True, allow_audio: bool = True) -> torch.Tensor:
        """Text mode: text ids, <eos>, and (when enabled and budget allows) <boi>/<boa>."""
        m = self.mask(range(0, self.n_text))
        m[self.eos] = True
        if allow_image and self.image_codebook_size:
            m[self.boi] = True
        if allow_audio and self.audio_levels:
            m[self.boa] = True
        return m

    def image_code_mask(self, allow_keep: bool = False) -> torch.Tensor:
        m = self.mask(self.image_range)
        if allow_keep and self.image_keep:
            m[self.keep] = True
        return m

    def audio_level_mask(self, level: int, allow_end: bool = False, allow_pad: bool = False) -> torch.Tensor:
        m = self.mask(self.audio_range(level))
        if allow_end:
            m[self.eoa] = True
        if allow_pad:
            m[self.apad] = True
        return m

    def grid_mask(self) -> torch.Tensor:
        return self.mask([self.grid_id(g) for g in self.image_grids])

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("specials")
        if not self.image_keep:  # vocabs saved before <keep> existed read back equal
            d.pop("image_keep")
        d["image_grids"] = [list(g) for g in self.image_grids]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        d = dict(d)
        d["image_grids"] = tuple(tuple(g) for g in d.get("image_grids", ((8, 8),)))
        return cls(**d)
