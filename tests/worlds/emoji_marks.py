"""Skip marks of the emoji tests: what drawing the Noto emoji needs from the system."""

import pytest
from PIL import features

import anygen.worlds.emoji as emoji_world

needs_font = pytest.mark.skipif(
    emoji_world.EMOJI_FONT_PATH is None,
    reason="Noto Color Emoji font missing: install the Debian package fonts-noto-color-emoji")
needs_raqm = pytest.mark.skipif(
    not features.check("raqm"),
    reason="Pillow has no raqm layout for emoji sequences: install the Debian package libfribidi0")
