"""`anygen worlds sample`: a preview Document of n samples from any world, one after another."""

from __future__ import annotations

import numpy as np

from anygen.document import Document, Text
from anygen.errors import AnygenError

SHAPES_KINDS = {"shapes": "shapes", "stories": "stories", "melodies": "melodies", "edits": "edits"}


def _speech_document(rng: np.random.Generator) -> Document:
    from anygen.data.speech import SpeechWorld

    text, waveform, sample_rate = SpeechWorld(seed=int(rng.integers(2**31))).sample_example()
    return Document.of(text, (waveform, sample_rate))


def sample_world_document(world: str, n: int = 8, seed: int = 0) -> Document:
    """n samples of `world` (shapes, stories, melodies, edits, emoji, speech), separated by headings."""
    if n < 1:
        raise AnygenError(f"--n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    if world in SHAPES_KINDS:
        from anygen.data.shapes import ShapesWorld, WorldConfig

        shapes = ShapesWorld(WorldConfig(seed=seed))
        make = lambda: shapes.sample_document(SHAPES_KINDS[world], rng)  # noqa: E731
    elif world == "emoji":
        from anygen.data.emoji import EmojiWorld

        emoji = EmojiWorld()
        make = lambda: (emoji.sample_edit(rng) if rng.random() < 0.3 else emoji.sample(rng)).document()  # noqa: E731
    elif world == "speech":
        make = lambda: _speech_document(rng)  # noqa: E731
    else:
        raise AnygenError(f"unknown world {world!r} (choose from shapes, stories, melodies, edits, emoji, speech)")
    document = Document()
    for i in range(n):
        document = document + Document([Text(f"— {world} sample {i + 1} —")]) + make()
    return document
