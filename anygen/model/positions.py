"""Image-aligned position ids: each image's first code sits at a multiple of a stride.

With plain consecutive positions, cell k of a story's next image and cell k of the image
before it are (image span + sentence length) apart: a RoPE distance that changes with every
sentence, so "copy or change the cell I am drawing" becomes a content search. (An edit puts
its instruction before the source image, so source and target are adjacent either way.)
With `stride` S, the position after every `<grid_HxW>` token jumps up to the next
multiple of S, so the same cell of consecutive images is always S (or 2S, ...) apart, a
fixed offset attention finds by position alone. Text positions still count up by one;
positions only ever jump forward, so they still restart at 0 exactly at each document
start (what packed-sequence detection relies on).

The stride is a decoder setting (`DecoderConfig.image_position_stride`, stored in the
model's `config.json` as `image_position_stride`; 0 = consecutive positions). Every
forward over a sequence — training, scoring, incremental sampling — derives its position
ids through `ImagePositions`, so all of them agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anygen.vocab import Vocab


@dataclass(frozen=True)
class ImagePositions:
    """The position rule of one model + vocab: `stride` 0 means plain consecutive positions."""

    stride: int
    grid_ids: torch.Tensor  # (G,) the vocab's <grid_HxW> ids
    min_span: int = 3  # tokens in the shortest image span (<boi> <grid> codes <eoi>)

    @classmethod
    def of(cls, model, vocab: Vocab | None) -> "ImagePositions":
        """The rule `model` was trained with (its config's `image_position_stride`)."""
        config = getattr(model, "config", None)
        stride = int(getattr(config, "image_position_stride", 0) or 0)
        if stride and vocab is None:
            raise ValueError("a model with image_position_stride needs the vocab to place its positions")
        grids = list(vocab.image_grids) if vocab is not None else []
        return cls(stride, torch.tensor([vocab.grid_id(g) for g in grids], dtype=torch.long),
                   3 + min((h * w for h, w in grids), default=0))

    def _is_grid(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(ids, self.grid_ids.to(ids.device))

    def align(self, ids: torch.Tensor, positions: torch.Tensor,
              document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Consecutive positions (B, T) of `ids` (B, T) -> image-aligned positions (B, T).

        Each jump moves the rest of its document (its `document_ids` run; the rest of the
        row when None) up to the next multiple of the stride.
        """
        if not self.stride:
            return positions
        out = positions.clone()
        T = ids.shape[1]
        for r, c in self._is_grid(ids).nonzero().tolist():  # row-major: each row's jumps in order
            n = T - c - 1  # tokens after the grid token in its document
            if document_ids is not None:
                n = int((document_ids[r, c + 1:] == document_ids[r, c]).long().cumprod(0).sum())
            if n:
                rest = out[r, c + 1: c + 1 + n]  # a view: shifted in place
                rest += (-int(rest[0])) % self.stride
        return out

    def after(self, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Position (R,) of the token that follows each of `tokens` (R,) placed at `positions` (R,)."""
        nxt = positions + 1
        if not self.stride:
            return nxt
        return torch.where(self._is_grid(tokens), nxt + (-nxt) % self.stride, nxt)

    def run(self, first: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Positions (R, n+1) of `tokens` (R, n) when the first sits at `first` (R,), and of the token after them."""
        n = tokens.shape[1]
        if not self.stride or not bool(self._is_grid(tokens).any()):  # no jump: consecutive
            return first[:, None] + torch.arange(n + 1, device=first.device)
        out = [first]
        for i in range(n):
            out.append(self.after(out[-1], tokens[:, i]))
        return torch.stack(out, 1)

    def max_position(self, length: int) -> int:
        """An upper bound on any position in a row of `length` tokens (one jump per image span)."""
        return length + (self.stride * (length // self.min_span + 1) if self.stride else 0)


CONSECUTIVE = ImagePositions(0, torch.zeros(0, dtype=torch.long))
