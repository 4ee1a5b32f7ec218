"""`<keep>` coding: an image span written as its differences from the previous image.

With `Vocab.image_keep`, a code of an image span that equals the code at the same grid
position of the previous complete image span (same grid) of the sequence is written
`<keep>`. The coding is lossless and length-preserving, so loss masks and span lengths
do not change:

    source  <boi> <grid> 17 17 40 17 … <eoi>
    target  <boi> <grid> <keep> <keep> 93 <keep> … <eoi>     (only the edited cell differs)

Why: an edit, or the next frame of a story, changes a few cells. Generating every code
asks the model to copy dozens of codes exactly from 67 positions back, and a small model
redraws the scene instead (edit success 18-35% for the 4-layer default model before
`<keep>`). With `<keep>` it learns only where and how the image changes; everything it
keeps is copied bit-for-bit by the sampler (`RowState`), which resolves each drawn
`<keep>` to the previous image's code while the model is fed the `<keep>` it drew.

`encode_keeps` is applied to every training sequence and prompt (`SequenceEncoder`,
`MultimodalTokenizer.encode`); `resolve_keeps` undoes it (`MultimodalTokenizer.decode`).
A `<keep>` with no previous image of the same grid cannot be resolved and stays, so its
span decodes as malformed (dropped, as any broken span).
"""

from __future__ import annotations

from typing import Iterator, Sequence

from anygen.vocab import Vocab


def image_spans(ids: Sequence[int], vocab: Vocab, closed: bool = False) -> Iterator[tuple[int, tuple[int, int]]]:
    """(index of the first code, grid) of every image span whose H*W slots are all codes or `<keep>`.

    `closed`: only spans followed by `<eoi>`.
    """
    lo, hi, keep = vocab.image_start, vocab.audio_start, vocab.keep
    i, n_ids = 0, len(ids)
    while i < n_ids:
        if ids[i] == vocab.boi and i + 1 < n_ids:
            grid = vocab.grid_of(ids[i + 1])
            if grid is not None:
                n, start = grid[0] * grid[1], i + 2
                body = ids[start:start + n]
                whole = len(body) == n and all(lo <= t < hi or t == keep for t in body)
                if whole and (not closed or (start + n < n_ids and ids[start + n] == vocab.eoi)):
                    yield start, grid
                    i = start + n
                    continue
        i += 1


def encode_keeps(ids: Sequence[int], vocab: Vocab) -> list[int]:
    """Write each image span's codes equal to the previous same-grid image's as `<keep>`."""
    out = [int(t) for t in ids]
    if not vocab.image_keep:
        return out
    prev: tuple[tuple[int, int], list[int]] | None = None
    for start, grid in list(image_spans(out, vocab)):
        n = grid[0] * grid[1]
        codes = out[start:start + n]
        if prev is not None and prev[0] == grid:
            out[start:start + n] = [vocab.keep if c == p else c for c, p in zip(codes, prev[1])]
        prev = (grid, codes)
    return out


def resolve_keeps(ids: Sequence[int], vocab: Vocab) -> list[int]:
    """Inverse of `encode_keeps`: every resolvable `<keep>` becomes the previous image's code."""
    out = [int(t) for t in ids]
    if not vocab.image_keep or vocab.keep not in out:
        return out
    prev: tuple[tuple[int, int], list[int]] | None = None
    for start, grid in list(image_spans(out, vocab)):
        n = grid[0] * grid[1]
        if prev is not None and prev[0] == grid:
            out[start:start + n] = [p if c == vocab.keep else c for c, p in zip(out[start:start + n], prev[1])]
        prev = (grid, out[start:start + n])
    return out


def last_image(ids: Sequence[int], vocab: Vocab) -> tuple[tuple[int, int], list[int]] | None:
    """(grid, code ids with keeps resolved) of the last image span closed by `<eoi>`, or None."""
    resolved = resolve_keeps(ids, vocab)
    last = None
    for start, grid in image_spans(resolved, vocab, closed=True):
        last = (grid, resolved[start:start + grid[0] * grid[1]])
    if last is not None and vocab.image_keep and vocab.keep in last[1]:
        return None  # an unresolvable span cannot be the reference
    return last
