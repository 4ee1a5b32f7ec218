"""EmojiWorld: real Noto Color Emoji renders, clean names, real skin-tone/gender edit pairs, the fixed
generalisation split (its counts as measured) and the training tasks it allows."""

import hashlib
from collections import Counter

import numpy as np
import pytest

import anygen.worlds.emoji as emoji_world
from anygen.errors import AnygenError
from anygen.tasks.layouts import DescribeEditSpec, TaskMix
from anygen.worlds.emoji import Emoji, EmojiWorld, clean_name, is_heldout_base, phrase, strip_tones

from emoji_marks import needs_font, needs_raqm


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


def test_the_heldout_rule_is_sha1_of_the_base():
    assert strip_tones("\U0001F44D\U0001F3FF") == "\U0001F44D"  # thumbs up, dark skin tone -> thumbs up
    assert strip_tones("\U0001F9D1\U0001F3FD\u200d\U0001F680") == "\U0001F9D1\u200d\U0001F680"  # astronaut
    for base in ("\U0001F44D", "\U0001F9D1\u200d\U0001F680", "\u261d\ufe0f", "\U0001F34E"):
        assert is_heldout_base(base) == (hashlib.sha1(base.encode("utf-8")).digest()[0] % 10 == 0)
    assert is_heldout_base("\U0001F9D1\u200d\U0001F680") and is_heldout_base("\U0001F44D")  # astronaut, thumbs up
    assert not is_heldout_base("\U0001F44B") and not is_heldout_base("\U0001F3C3")  # waving hand, person running


# The split measured on Debian's fonts-noto-color-emoji (NotoColorEmoji.ttf of 2023-11-30, 10,980,856 bytes)
# with the pip package emoji 2.16.0 and Pillow's raqm: other versions draw other emoji, hence other counts.
MEASURED = {"items": 3771, "edit_pairs": 12756, "bases": 1892, "heldout_bases": 173,
            "heldout_bases_with_variants": 38, "heldout_items": 483, "heldout_edit_pairs": 3042,
            "heldout_base_edits": 221}


@needs_font
@needs_raqm
def test_the_split_holds_out_these_bases_and_variants(world):
    stats = world.stats()
    if (stats["items"], stats["edit_pairs"]) != (MEASURED["items"], MEASURED["edit_pairs"]):
        pytest.skip(f"this font/emoji package draws {stats['items']} emoji and {stats['edit_pairs']} edit pairs, "
                    f"not the measured {MEASURED['items']} and {MEASURED['edit_pairs']}")
    assert {k: stats[k] for k in MEASURED} == MEASURED
    assert len(world.heldout_bases()) == MEASURED["heldout_bases"]
    assert len(world.base_edits("heldout")) == 36 and len(world.base_edits("train")) == 255
    held = set(world.heldout_bases())
    assert all(is_heldout_base(b) for b in held) and not any(is_heldout_base(b) for b in set(world.bases()) - held)
    by_name = world.by_name()
    astronaut = by_name["astronaut"]
    assert world.base_of(astronaut) in held and world.split_of(astronaut) == "train"  # the default stays
    assert world.split_of(by_name["astronaut, dark skin tone"]) == "heldout"
    assert world.split_of(by_name["woman astronaut"]) == "heldout"  # a gender variant of a held-out base
    assert world.split_of(by_name["woman astronaut, light skin tone"]) == "heldout"
    # ☝🏻's base is ☝️ (the modifier takes the presentation selector's place)
    assert world.base_of(by_name["index pointing up, light skin tone"]) == "\u261d\ufe0f"


@needs_font
@needs_raqm
def test_no_training_task_touches_a_heldout_variant(world):
    held = world.items("heldout")
    held_keys = {("emoji", world.size, it.char) for it in held}
    train_keys = {("emoji", world.size, it.char) for it in world.items("train")}
    assert held and not held_keys & train_keys
    heldout_bases, held_chars = set(world.heldout_bases()), {it.char for it in held}
    for e in world.edit_pairs("train"):
        assert e.source.char not in held_chars and e.target.char not in held_chars
        assert world.base_of(e.source) not in heldout_bases and world.base_of(e.target) not in heldout_bases
    defaults = [c.source for c in world.base_edits("heldout")]
    assert defaults and all(world.split_of(d) == "train" for d in defaults)  # drawn and captioned in training
    tasks = Emoji().task_source(TaskMix(describe_edit=DescribeEditSpec(weight=1)))
    tasks.world = world
    rng = np.random.default_rng(0)
    seen = set()
    for task in ("text_to_image", "image_to_text", "edit", "describe_edit"):
        for _ in range(3000 if task == "edit" else 1500):
            seen |= {p.value.key for p in tasks.sample(task, rng, "train").pieces if p.kind == "image"}
    assert not seen & held_keys
    assert {("emoji", world.size, d.char) for d in defaults} & seen  # held-out defaults are trained on


@needs_font
@needs_raqm
def test_edit_pairs_are_real_and_phrased(world):
    pairs = world.edit_pairs()
    tone, gender = world.edit_pairs(kind="skin_tone"), world.edit_pairs(kind="gender")
    assert len(tone) > 3000 and len(gender) > 500 and len(tone) + len(gender) == len(pairs)
    assert len(world.items()) > 3500  # sequences shape to one glyph with raqm
    for e in pairs[::97]:
        assert e.source.char != e.target.char
        assert not np.array_equal(np.asarray(e.source.image), np.asarray(e.target.image))
        if world.edit_split(e) == "train":
            assert world.split_of(e.source) == world.split_of(e.target) == "train"
        assert e.phrasings[0] == e.instruction and len(set(e.phrasings)) == len(e.phrasings) >= 3
    by_instruction = {(e.source.name, e.instruction): e.target.name for e in pairs}
    assert by_instruction[("thumbs up", "give it a medium skin tone")] == "thumbs up, medium skin tone"
    assert by_instruction[("thumbs up", "give it a dark skin tone")] == "thumbs up, dark skin tone"
    assert by_instruction[("thumbs up, dark skin tone", "remove the skin tone")] == "thumbs up"
    assert by_instruction[("man health worker", "make it a woman")] == "woman health worker"
    assert by_instruction[("woman health worker", "make it a man")] == "man health worker"
    assert by_instruction[("person running", "make it a woman")] == "woman running"
    assert by_instruction[("woman technologist, light skin tone", "make it gender-neutral")] == \
        "technologist, light skin tone"
    doc = pairs[0].document()
    assert [type(s).__name__ for s in doc] == ["Image", "Text", "Image"]
    assert world.edit_pairs("train") and world.edit_pairs("heldout")
    rng = np.random.default_rng(0)
    e = next(e for e in pairs if e.instruction == "give it a dark skin tone")
    written = Counter(phrase(e, rng) for _ in range(2000))
    assert set(written) == set(e.phrasings) and 0.45 < written[e.instruction] / 2000 < 0.55


@needs_font
@needs_raqm
def test_text_corpus_holds_names_and_every_phrasing(world):
    emoji = Emoji()
    emoji.world = world
    corpus = emoji.text_corpus(0, None)
    assert "thumbs up" in corpus and "give it a dark skin tone" in corpus and "back to the default yellow" in corpus
    assert not {it.name for it in world.items("heldout")} & set(corpus)
