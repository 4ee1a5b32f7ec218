"""EmojiWorld: real, captioned 64×64 images from the Noto Color Emoji font, plus real edit pairs.

Images come from Debian's `fonts-noto-color-emoji` rendered with Pillow; names come from
the pip package `emoji` (CLDR English names, cleaned: ":red_apple:" -> "red apple").
Only fully-qualified emoji that the installed font draws as one non-blank glyph are kept,
and emoji that render to the same pixels (e.g. flags shared by several regions, skin-tone
variants Noto does not distinguish) are kept once, under the shortest name.

Edit pairs are variants of the same emoji the font really draws: skin tone
(`make it medium skin tone`, `remove the skin tone`) and gender (`make it a woman`).

The train/heldout split hashes the name of each emoji's *concept* (all skin-tone and
gender variants of one emoji share it), so no variant of a held-out emoji, and no edit
pair touching one, is in the training split.

Rendering ~3,800 emoji takes a few seconds; results are cached per process.
Shaping ZWJ/skin-tone sequences needs Pillow's raqm layout (Pillow wheels bundle it and
load the system `libfribidi0`); without it those sequences are not single glyphs and are
left out, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont, features

from anygen.document import Document
from anygen.errors import AnygenError
from anygen.tasks.layouts import Media, Spec, TaskMix, describe_edit, edit, image_to_text, text_to_image

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "fonts-noto-color-emoji"
FONT_ENV_VAR = "ANYGEN_EMOJI_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
    "~/.local/share/fonts/NotoColorEmoji.ttf",
    "~/.fonts/NotoColorEmoji.ttf",
)
BITMAP_SIZE = 109  # the one bitmap strike in NotoColorEmoji.ttf (CBDT); other sizes fail to load
SPLITS = ("all", "train", "heldout")

SKIN_TONES = {
    "\U0001F3FB": "light",
    "\U0001F3FC": "medium-light",
    "\U0001F3FD": "medium",
    "\U0001F3FE": "medium-dark",
    "\U0001F3FF": "dark",
}
ZWJ, VS16 = "\u200d", "\ufe0f"
MALE_SIGN, FEMALE_SIGN = "\u2642", "\u2640"
PERSON, MAN, WOMAN = "\U0001F9D1", "\U0001F468", "\U0001F469"
# single code points that form a (neutral, man, woman) triple without ZWJ sequences
GENDER_TRIPLES = (
    (PERSON, MAN, WOMAN),
    ("\U0001F9D2", "\U0001F466", "\U0001F467"),  # child, boy, girl
    ("\U0001F9D3", "\U0001F474", "\U0001F475"),  # older person, old man, old woman
    ("\U0001FAC5", "\U0001F934", "\U0001F478"),  # person with crown, prince, princess
    (PERSON + ZWJ + "\U0001F384", "\U0001F385", "\U0001F936"),  # mx claus, Santa Claus, Mrs. Claus
)
PEOPLE = set("\U0001F9D1\U0001F468\U0001F469\U0001F466\U0001F467\U0001F9D2\U0001F476\U0001F48B\u2764")


def _discover_font() -> Path | None:
    env = os.environ.get(FONT_ENV_VAR)
    if env:
        return Path(env).expanduser()
    for candidate in FONT_CANDIDATES:
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
    return None


EMOJI_FONT_PATH: Path | None = _discover_font()  # set ANYGEN_EMOJI_FONT to override


def emoji_font_path() -> Path:
    """The Noto Color Emoji font file, or a clear error that names the package to install."""
    path = EMOJI_FONT_PATH
    if path is None or not Path(path).is_file():
        where = f" ({path} does not exist)" if path is not None else ""
        raise AnygenError(
            f"Noto Color Emoji font not found{where}: install the Debian package {DEBIAN_PACKAGE} "
            f"(apt-get install {DEBIAN_PACKAGE}) or set {FONT_ENV_VAR} to NotoColorEmoji.ttf")
    return Path(path)


def clean_name(raw: str, char: str = "") -> str:
    """':thumbs_up_medium_skin_tone:' -> 'thumbs up, medium skin tone'; flags -> 'flag: France'."""
    name = raw.strip(":").replace("_", " ").replace("\u2019", "'")
    tone = r"(?:medium-light|medium-dark|medium|light|dark) skin tone"
    tones = re.findall(tone, name)
    name = re.sub(r"\s+", " ", re.sub(tone, " ", name)).strip()  # 'man medium skin tone bald'
    name = ", ".join([name] + tones) if name else ", ".join(tones)  # -> 'man bald, medium skin tone'
    if char and (_is_regional_flag(char) or (char[0] == "\U0001F3F4" and "\U000E007F" in char)):
        name = f"flag: {name}"
    return name


def _is_regional_flag(char: str) -> bool:
    return len(char) == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in char)


@dataclass(frozen=True, eq=False)
class EmojiItem:
    char: str
    name: str
    image: PILImage.Image  # (size, size) RGB on white; shared by the cache, do not mutate

    def document(self) -> Document:
        """Image then its name, as a captioned Document."""
        return Document.of(self.image, self.name)


@dataclass(frozen=True, eq=False)
class EmojiEdit:
    instruction: str
    source: EmojiItem
    target: EmojiItem
    kind: str  # "skin_tone" or "gender"

    def document(self) -> Document:
        """Source image, instruction, target image."""
        return Document.of(self.source.image, self.instruction, self.target.image)


# ---- rendering -----------------------------------------------------------------------------
def _load_font(path: Path) -> ImageFont.FreeTypeFont:
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    try:
        return ImageFont.truetype(str(path), size=BITMAP_SIZE, layout_engine=layout)
    except OSError as e:
        raise AnygenError(f"{path}: cannot load as a {BITMAP_SIZE}px bitmap emoji font ({e}); "
                          f"expected NotoColorEmoji.ttf from {DEBIAN_PACKAGE}") from None


class _Renderer:
    """Draws one emoji centred in a square cell on white, resized to `size`."""

    def __init__(self, path: Path, size: int):
        self.font = _load_font(path)
        self.size = size
        reference = "\U0001F600"  # grinning face: one glyph in every Noto Color Emoji version
        left, top, right, bottom = self.font.getbbox(reference)
        self.advance = self.font.getlength(reference)
        self.cell_w, self.cell_h = right, bottom  # (136, 128) for Noto's 109px strike
        self.side = max(self.cell_w, self.cell_h)
        self.tofu = self.render("\U0010FFFD")  # what the font draws for a missing glyph

    def single_glyph(self, char: str) -> bool:
        return self.font.getlength(char) <= self.advance * 1.05

    def render(self, char: str) -> PILImage.Image:
        # Drawn straight onto white: Pillow blends the glyph's colour by its alpha once. (Drawing on a
        # transparent canvas and compositing afterwards would blend twice and wash out the edges.)
        canvas = PILImage.new("RGB", (self.side, self.side), (255, 255, 255))
        offset = ((self.side - self.cell_w) // 2, (self.side - self.cell_h) // 2)
        ImageDraw.Draw(canvas).text(offset, char, font=self.font, embedded_color=True)
        return canvas.resize((self.size, self.size), PILImage.Resampling.LANCZOS)


def _is_blank(image: PILImage.Image) -> bool:
    ink = (255 - np.asarray(image, dtype=np.int16)).max(axis=2) > 16  # (S, S)
    return int(ink.sum()) < max(8, ink.size // 200)


def _core(char: str) -> str:
    """The emoji without presentation selectors and skin-tone modifiers."""
    return "".join(c for c in char if c != VS16 and c not in SKIN_TONES)


def _tones(char: str) -> tuple[str, ...]:
    return tuple(c for c in char if c in SKIN_TONES)


def _gender_form(core: str) -> tuple[str, str] | None:
    """(gender-neutral core, gender) for a single-person emoji that has gendered forms."""
    for triple in GENDER_TRIPLES:
        for gender, form in zip(("neutral", "man", "woman"), triple):
            if core == form:
                return triple[0], gender
    for sign, gender in ((MALE_SIGN, "man"), (FEMALE_SIGN, "woman")):
        if ZWJ + sign in core:  # 🏃‍♀️ woman running, 🏃‍♀️‍➡️ woman running facing right
            return core.replace(ZWJ + sign, ""), gender
    if len(core) > 2 and core[0] in (PERSON, MAN, WOMAN) and core[1] == ZWJ and not (set(core[2:]) & PEOPLE):
        return PERSON + core[1:], {PERSON: "neutral", MAN: "man", WOMAN: "woman"}[core[0]]
    return None


@dataclass
class _Catalogue:
    items: list[EmojiItem]
    edits: list[EmojiEdit]
    concept: dict[str, str]  # item name -> concept name (shared by all its variants)
    rejected: dict[str, int]


def _tone_instruction(tones: tuple[str, ...]) -> str:
    return f"make it {SKIN_TONES[tones[0]]} skin tone" if tones else "remove the skin tone"


def _gender_instruction(gender: str, target_name: str) -> str:
    plural = target_name.split(" ", 1)[0] in ("people", "men", "women")
    if gender == "neutral":
        return "make them gender-neutral" if plural else "make it gender-neutral"
    if plural:
        return f"make them {'men' if gender == 'man' else 'women'}"
    return f"make it a {gender}"


@lru_cache(maxsize=4)
def _catalogue(font_path: str, size: int, chars: tuple[str, ...] | None) -> _Catalogue:
    import emoji as emoji_pkg

    renderer = _Renderer(Path(font_path), size)
    tofu = renderer.tofu.tobytes()
    fully_qualified = emoji_pkg.STATUS["fully_qualified"]
    names = {c: d["en"] for c, d in emoji_pkg.EMOJI_DATA.items() if d.get("status") == fully_qualified}
    candidates = list(names) if chars is None else [c for c in chars if c in names]
    rejected = {"multi_glyph": 0, "blank": 0, "duplicate_image": 0, "not_fully_qualified": 0}
    if chars is not None:
        rejected["not_fully_qualified"] = len(set(chars) - set(names))

    by_pixels: dict[bytes, list[EmojiItem]] = {}
    for char in candidates:
        if not renderer.single_glyph(char):
            rejected["multi_glyph"] += 1
            continue
        image = renderer.render(char)
        if _is_blank(image) or image.tobytes() == tofu:
            rejected["blank"] += 1
            continue
        by_pixels.setdefault(image.tobytes(), []).append(EmojiItem(char, clean_name(names[char], char), image))
    items = []
    for group in by_pixels.values():
        group.sort(key=lambda it: (len(it.name), it.name))
        items.append(group[0])
        rejected["duplicate_image"] += len(group) - 1
    items.sort(key=lambda it: it.name)

    # edit pairs: variants of one emoji, grouped by (core, tones) for gender and core for tone
    edits: list[EmojiEdit] = []
    parent = {it.name: it.name for it in items}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def link(a: EmojiItem, b: EmojiItem) -> None:
        ra, rb = find(a.name), find(b.name)
        if ra != rb:
            keep, drop = sorted((ra, rb), key=lambda n: (len(n), n))
            parent[drop] = keep

    tone_groups: dict[str, dict[tuple[str, ...], EmojiItem]] = {}
    gender_groups: dict[tuple[str, tuple[str, ...]], dict[str, EmojiItem]] = {}
    for it in items:
        core, tones = _core(it.char), _tones(it.char)
        if len(set(tones)) <= 1:  # mixed-tone emoji (two people, two tones) have no single-tone edit
            tone_groups.setdefault(core, {})[tones[:1]] = it
        neutral, gender = _gender_form(core) or (core, "neutral")  # 🏃 is the neutral of 🏃‍♀️
        gender_groups.setdefault((neutral, tones), {})[gender] = it

    for group in tone_groups.values():
        for src_tones, src in group.items():
            for dst_tones, dst in group.items():
                if src is not dst:
                    edits.append(EmojiEdit(_tone_instruction(dst_tones), src, dst, "skin_tone"))
                    link(src, dst)
    for group in gender_groups.values():
        for src in group.values():
            for gender, dst in group.items():
                if src is not dst:
                    edits.append(EmojiEdit(_gender_instruction(gender, dst.name), src, dst, "gender"))
                    link(src, dst)
    edits.sort(key=lambda e: (e.kind, e.source.name, e.target.name))
    concept = {it.name: find(it.name) for it in items}
    return _Catalogue(items, edits, concept, rejected)


# ---- the world -----------------------------------------------------------------------------
def _as_rng(rng) -> random.Random | np.random.Generator:
    if isinstance(rng, (random.Random, np.random.Generator)):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be an int seed, random.Random or numpy Generator, got {type(rng).__name__}")


def _pick(rng, seq):
    rng = _as_rng(rng)
    if isinstance(rng, random.Random):
        return seq[rng.randrange(len(seq))]
    return seq[int(rng.integers(len(seq)))]


class EmojiWorld:
    """Captioned emoji images and their skin-tone/gender edit pairs.

    `chars` limits the world to these emoji (handy for quick tests); default: all of them.
    """

    def __init__(self, size: int = 64, heldout_fraction: float = 0.1, chars: Iterable[str] | None = None,
                 font_path: str | os.PathLike | None = None):
        if not isinstance(size, int) or not 8 <= size <= 512:
            raise AnygenError(f"size must be an integer in [8, 512], got {size!r}")
        if not 0.0 <= heldout_fraction < 1.0:
            raise AnygenError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
        path = Path(font_path) if font_path is not None else emoji_font_path()
        if not path.is_file():
            raise AnygenError(f"{path}: emoji font not found (install the Debian package {DEBIAN_PACKAGE})")
        self.size, self.heldout_fraction, self.font_path = size, heldout_fraction, path
        self._chars = None if chars is None else tuple(sorted(set(chars)))
        if not features.check("raqm"):
            log.warning("Pillow has no raqm layout (install libfribidi0): skin-tone, gender, flag and "
                        "other sequence emoji cannot be rendered and are left out")

    @property
    def _cat(self) -> _Catalogue:
        return _catalogue(str(self.font_path), self.size, self._chars)

    def split_of(self, item: EmojiItem) -> str:
        concept = self._cat.concept[item.name]
        digest = hashlib.sha256(concept.encode("utf-8")).digest()
        return "heldout" if int.from_bytes(digest[:8], "big") / 2**64 < self.heldout_fraction else "train"

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise AnygenError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")

    def items(self, split: str = "all") -> list[EmojiItem]:
        """Emoji sorted by name; "train"/"heldout" split by a hash of the emoji's concept name."""
        self._check_split(split)
        return [it for it in self._cat.items if split == "all" or self.split_of(it) == split]

    def edit_pairs(self, split: str = "all", kind: str | None = None) -> list[EmojiEdit]:
        """Skin-tone and gender edits; source and target always differ in pixels and share a split."""
        self._check_split(split)
        if kind not in (None, "skin_tone", "gender"):
            raise AnygenError(f"kind must be skin_tone, gender or None; got {kind!r}")
        return [e for e in self._cat.edits if (kind is None or e.kind == kind)
                and (split == "all" or self.split_of(e.source) == split)]

    def stats(self) -> dict[str, int]:
        """Counts of rendered emoji, edit pairs, and candidates left out (and why)."""
        cat = self._cat
        out = {"items": len(cat.items), "edit_pairs": len(cat.edits),
               "heldout_items": len(self.items("heldout"))}
        out.update({f"rejected_{k}": v for k, v in cat.rejected.items()})
        return out

    def sample(self, rng, split: str = "all") -> EmojiItem:
        pool = self.items(split)
        if not pool:
            raise AnygenError(f"no emoji in split {split!r}")
        return _pick(rng, pool)

    def sample_edit(self, rng, split: str = "all") -> EmojiEdit:
        pool = self.edit_pairs(split)
        if not pool:
            raise AnygenError(f"no emoji edit pairs in split {split!r}")
        return _pick(rng, pool)


class EmojiTasks:
    """Text->image, image->text and edits from an EmojiWorld; the emoji character is the cache key."""

    TASKS = ("text_to_image", "image_to_text", "edit", "describe_edit")

    def __init__(self, world, mix: TaskMix):
        self.world, self.mix = world, mix

    def _image(self, item) -> Media:
        return Media("image", ("emoji", self.world.size, item.char), lambda: item.image)

    def sample(self, task: str, rng: np.random.Generator, split: str = "train") -> Spec:
        if task == "text_to_image":
            item = self.world.sample(rng, split)
            return text_to_image(item.name, self._image(item), self.mix.text_to_image, rng)
        if task == "image_to_text":
            item = self.world.sample(rng, split)
            return image_to_text(self._image(item), item.name, self.mix.image_to_text, rng)
        if task in ("edit", "describe_edit"):
            e = self.world.sample_edit(rng, split)
            if task == "describe_edit":
                return describe_edit(self._image(e.source), self._image(e.target), e.instruction,
                                     self.mix.describe_edit, rng)
            return edit(self._image(e.source), e.instruction, self._image(e.target), self.mix.edit, rng)
        raise ValueError(f"EmojiWorld has no task {task!r} (tasks: {', '.join(self.TASKS)})")


class Emoji:
    """The `emoji` world (`anygen.tasks.world.World`): captioned emoji and their real edit pairs.
    Splits: `train` / `heldout` (by concept); a training recipe's `holdout` split maps to `heldout`."""

    name = "emoji"
    tasks = EmojiTasks.TASKS
    previews = ("emoji",)
    plan_format = None  # edits are single attribute changes: no plan in words

    def __init__(self, size: int = 64, seed: int = 0):
        self.size = size  # `seed`: unused, the emoji are fixed

    @cached_property
    def world(self) -> EmojiWorld:
        """Built on first use: the font is needed only when emoji are drawn."""
        return EmojiWorld(size=self.size)

    def task_source(self, mix) -> EmojiTasks:
        return EmojiTasks(self.world, mix)

    def text_corpus(self, n: int, rng) -> list[str]:
        """Every training emoji's name (`n` and `rng` are unused: the names are few and fixed)."""
        return [item.name for item in self.world.items("train")]

    def preview(self, rng, kind: str = "emoji") -> Document:
        world = self.world
        return (world.sample_edit(rng) if rng.random() < 0.3 else world.sample(rng)).document()

    def image_batches(self, data, batch_size: int, seed: int, image_size: int):
        from anygen.data.media_sources import ImageListSource

        images = [item.image for item in self.world.items(data.split)]
        return ImageListSource(images, batch_size, image_size, seed, data.prefetch, "emoji", data.hflip)

    def eval_images(self, n: int, seed: int) -> tuple[list, None]:
        """(held-out emoji images, no ground truth to judge)."""
        return [it.image for it in self.world.items("heldout")[:n]], None
