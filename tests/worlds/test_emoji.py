"""EmojiWorld: real Noto Color Emoji renders, clean names, real skin-tone/gender edit pairs."""

import numpy as np
import pytest
from PIL import features

import anygen.worlds.emoji as emoji_world
from anygen.worlds.emoji import EmojiWorld, clean_name
from anygen.errors import AnygenError

needs_font = pytest.mark.skipif(
    emoji_world.EMOJI_FONT_PATH is None,
    reason="Noto Color Emoji font missing: install the Debian package fonts-noto-color-emoji")
needs_raqm = pytest.mark.skipif(
    not features.check("raqm"),
    reason="Pillow has no raqm layout for emoji sequences: install the Debian package libfribidi0")


@pytest.fixture(scope="module")
def world():
    return EmojiWorld()  # renders every emoji once (a few seconds), cached for the module


def ink(image) -> int:
    return int(((255 - np.asarray(image, dtype=np.int16)).max(axis=2) > 16).sum())


def test_clean_name():
    assert clean_name(":red_apple:") == "red apple"
    assert clean_name(":thumbs_up_medium-light_skin_tone:") == "thumbs up, medium-light skin tone"
    assert clean_name(":man_medium_skin_tone_bald:") == "man bald, medium skin tone"
    assert clean_name(":man’s_shoe:") == "man's shoe"
    assert clean_name(":France:", "\U0001F1EB\U0001F1F7") == "flag: France"


def test_missing_font_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(emoji_world, "EMOJI_FONT_PATH", None)
    with pytest.raises(AnygenError, match="fonts-noto-color-emoji"):
        EmojiWorld()
    monkeypatch.setattr(emoji_world, "EMOJI_FONT_PATH", tmp_path / "NotoColorEmoji.ttf")
    with pytest.raises(AnygenError, match="fonts-noto-color-emoji"):
        emoji_world.emoji_font_path()
    with pytest.raises(AnygenError, match="fonts-noto-color-emoji"):
        EmojiWorld(font_path=tmp_path / "nope.ttf")


@needs_font
def test_small_world_renders_non_blank_64px():
    chars = ["\U0001F34E", "\U0001F436", "\u2764\ufe0f", "\U0001F600", "\U0001F680", "not an emoji"]
    world = EmojiWorld(chars=chars)
    items = world.items()
    names = {it.name for it in items}
    assert names == {"red apple", "dog face", "red heart", "grinning face", "rocket"}
    for it in items:
        assert it.image.size == (64, 64) and it.image.mode == "RGB"
        assert it.image.getpixel((0, 0)) == (255, 255, 255)  # white background
        assert ink(it.image) > 400, it.name
    assert world.stats()["rejected_not_fully_qualified"] == 1


@needs_font
def test_full_world_counts_names_and_split(world):
    items = world.items()
    stats = world.stats()
    assert len(items) > 1300 and stats["items"] == len(items)
    names = [it.name for it in items]
    assert len(set(names)) == len(names)
    for name in names:
        assert name and name == name.strip() and ":" not in name.replace("flag: ", "") and "_" not in name
    assert all(ink(it.image) >= 20 for it in items)
    train, heldout = world.items("train"), world.items("heldout")
    assert len(train) + len(heldout) == len(items)
    assert 0.05 < len(heldout) / len(items) < 0.2
    assert [it.name for it in EmojiWorld().items("heldout")] == [it.name for it in heldout]  # deterministic
    a, b = world.sample(np.random.default_rng(7)), world.sample(np.random.default_rng(7))
    assert a is b
    with pytest.raises(AnygenError, match="split"):
        world.items("test")


@needs_font
@needs_raqm
def test_edit_pairs_are_real_and_split_by_concept(world):
    pairs = world.edit_pairs()
    tone, gender = world.edit_pairs(kind="skin_tone"), world.edit_pairs(kind="gender")
    assert len(tone) > 3000 and len(gender) > 500 and len(tone) + len(gender) == len(pairs)
    assert len(world.items()) > 3500  # sequences shape to one glyph with raqm
    for e in pairs[::97]:
        assert e.source.char != e.target.char
        assert not np.array_equal(np.asarray(e.source.image), np.asarray(e.target.image))
        assert world.split_of(e.source) == world.split_of(e.target)  # no variant leaks across splits
    by_instruction = {(e.source.name, e.instruction): e.target.name for e in pairs}
    assert by_instruction[("thumbs up", "make it medium skin tone")] == "thumbs up, medium skin tone"
    assert by_instruction[("thumbs up, dark skin tone", "remove the skin tone")] == "thumbs up"
    assert by_instruction[("man health worker", "make it a woman")] == "woman health worker"
    assert by_instruction[("person running", "make it a woman")] == "woman running"
    assert by_instruction[("woman technologist, light skin tone", "make it gender-neutral")] == \
        "technologist, light skin tone"
    doc = pairs[0].document()
    assert [type(s).__name__ for s in doc] == ["Image", "Text", "Image"]
    assert world.edit_pairs("train") and world.edit_pairs("heldout")
