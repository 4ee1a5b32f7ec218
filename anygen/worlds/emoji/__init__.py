"""EmojiWorld: real, captioned 64×64 images from the Noto Color Emoji font, plus real edit pairs.

Images come from Debian's `fonts-noto-color-emoji` rendered with Pillow; names come from
the pip package `emoji` (CLDR English names, cleaned: ":red_apple:" -> "red apple").
Only fully-qualified emoji that the installed font draws as one non-blank glyph are kept,
and emoji that render to the same pixels (e.g. flags shared by several regions, skin-tone
variants Noto does not distinguish) are kept once, under the shortest name.

Edit pairs are variants of the same emoji the font really draws, both directions: skin tone
("give it a dark skin tone", "remove the skin tone" back to the default yellow) and gender
("make it a woman", "make it a man", "make it gender-neutral"). Each instruction has one
canonical phrasing (`EmojiEdit.instruction`, what the eval prompts with) and a few others
(`phrasings`) that training samples too.

The generalisation split is a fixed rule (`is_heldout_base`). A *base* is an emoji sequence with
its skin-tone modifiers U+1F3FB–U+1F3FF removed, written as its default picture is (where a
modifier took the place of a presentation selector, ☝🏻 -> ☝️, the default's spelling). A base is
held out when `sha1(base.encode("utf-8")).digest()[0] % 10 == 0`. A held-out base's *variants*
are every picture joined to it by skin-tone or gender edits (its tones, its other genders and
their tones: the emoji's whole family), except the default pictures of held-out bases, which
stay in training (text→image, image→text). No training task shows a variant, and no edit within
a held-out family is trained; `anygen eval emoji` edits the held-out bases' default pictures.

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
# The fixed generalisation split: a base is held out when the first byte of its SHA-1 is 0 mod 10
# (about a tenth of the bases; a hash, not a random draw, so every machine and version agrees).
HELDOUT_MODULUS, HELDOUT_RESIDUE = 10, 0
# Training writes an edit in its canonical phrasing this often, else in one of the others: the
# eval prompts with the canonical one, the others teach that the instruction, not its words, matters.
CANONICAL_SHARE = 0.5

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
    instruction: str  # the canonical phrasing (phrasings[0])
    source: EmojiItem
    target: EmojiItem
    kind: str  # "skin_tone" or "gender"
    phrasings: tuple[str, ...] = ()  # every phrasing training writes, the canonical one first

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
    concept: dict[str, str]  # item name -> concept name (shared by all its variants: the family)
    base: dict[str, str]  # item name -> its base (`strip_tones`, spelt as the default picture is)
    rejected: dict[str, int]


def _bases(items: list[EmojiItem]) -> dict[str, str]:
    """Item name -> base: the sequence without skin-tone modifiers; where that is not a drawn emoji
    but one differing only in presentation selectors is (☝ from ☝🏻, drawn as ☝️), that one."""
    drawn = {it.char for it in items}
    by_plain = {it.char.replace(VS16, ""): it.char for it in items if not _tones(it.char)}
    out = {}
    for it in items:
        stripped = strip_tones(it.char)
        out[it.name] = stripped if stripped in drawn else by_plain.get(stripped.replace(VS16, ""), stripped)
    return out


# ---- instructions: one canonical phrasing (first) and the others training also writes ------
TONE_PHRASINGS = ("give it a {tone} skin tone", "make it {tone} skin tone", "change the skin tone to {tone}",
                  "{tone} skin tone, please")
REMOVE_TONE_PHRASINGS = ("remove the skin tone", "back to the default yellow", "make the skin the default yellow",
                         "no skin tone")
GENDER_PHRASINGS = ("make it a {gender}", "turn it into a {gender}", "change it to a {gender}")
PLURAL_GENDER_PHRASINGS = ("make them {genders}", "turn them into {genders}", "change them to {genders}")
NEUTRAL_PHRASINGS = ("make it gender-neutral", "turn it into a person of no stated gender", "no gender")
PLURAL_NEUTRAL_PHRASINGS = ("make them gender-neutral", "turn them into people of no stated gender", "no gender")


def _tone_phrasings(tones: tuple[str, ...]) -> tuple[str, ...]:
    if not tones:
        return REMOVE_TONE_PHRASINGS
    return tuple(p.format(tone=SKIN_TONES[tones[0]]) for p in TONE_PHRASINGS)


def _gender_phrasings(gender: str, target_name: str) -> tuple[str, ...]:
    plural = target_name.split(" ", 1)[0] in ("people", "men", "women")
    if gender == "neutral":
        return PLURAL_NEUTRAL_PHRASINGS if plural else NEUTRAL_PHRASINGS
    if plural:
        return tuple(p.format(genders="men" if gender == "man" else "women") for p in PLURAL_GENDER_PHRASINGS)
    return tuple(p.format(gender=gender) for p in GENDER_PHRASINGS)


# ---- the generalisation split ---------------------------------------------------------------
def strip_tones(char: str) -> str:
    """The emoji sequence without its skin-tone modifiers (U+1F3FB–U+1F3FF)."""
    return "".join(c for c in char if c not in SKIN_TONES)


def is_heldout_base(base: str) -> bool:
    """The fixed rule: `sha1(base.encode("utf-8")).digest()[0] % 10 == 0`."""
    return hashlib.sha1(base.encode("utf-8")).digest()[0] % HELDOUT_MODULUS == HELDOUT_RESIDUE


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
                    phrasings = _tone_phrasings(dst_tones)
                    edits.append(EmojiEdit(phrasings[0], src, dst, "skin_tone", phrasings))
                    link(src, dst)
    for group in gender_groups.values():
        for src in group.values():
            for gender, dst in group.items():
                if src is not dst:
                    phrasings = _gender_phrasings(gender, dst.name)
                    edits.append(EmojiEdit(phrasings[0], src, dst, "gender", phrasings))
                    link(src, dst)
    edits.sort(key=lambda e: (e.kind, e.source.name, e.target.name))
    concept = {it.name: find(it.name) for it in items}
    return _Catalogue(items, edits, concept, _bases(items), rejected)


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


@dataclass(frozen=True)
class _Split:
    heldout_bases: frozenset[str]
    heldout_families: frozenset[str]  # concepts holding a held-out base


@dataclass(frozen=True, eq=False)
class BaseEdits:
    """The edits of one base's default picture (`EmojiWorld.base_edits`): `edits` all start from
    `source`; `renders` are every picture of the base an edit judge chooses among (the default,
    then each edit's target: its tones and its other genders)."""

    base: str
    source: EmojiItem
    edits: tuple[EmojiEdit, ...]

    @property
    def renders(self) -> tuple[EmojiItem, ...]:
        return (self.source,) + tuple(e.target for e in self.edits)


class EmojiWorld:
    """Captioned emoji images and their skin-tone/gender edit pairs, split by the fixed rule of the
    module docstring: "train" is what training may show, "heldout" the held-out bases' variants.

    `chars` limits the world to these emoji (handy for quick tests); default: all of them.
    """

    def __init__(self, size: int = 64, chars: Iterable[str] | None = None,
                 font_path: str | os.PathLike | None = None):
        if not isinstance(size, int) or not 8 <= size <= 512:
            raise AnygenError(f"size must be an integer in [8, 512], got {size!r}")
        path = Path(font_path) if font_path is not None else emoji_font_path()
        if not path.is_file():
            raise AnygenError(f"{path}: emoji font not found (install the Debian package {DEBIAN_PACKAGE})")
        self.size, self.font_path = size, path
        self._chars = None if chars is None else tuple(sorted(set(chars)))
        if not features.check("raqm"):
            log.warning("Pillow has no raqm layout (install libfribidi0): skin-tone, gender, flag and "
                        "other sequence emoji cannot be rendered and are left out")

    @property
    def _cat(self) -> _Catalogue:
        return _catalogue(str(self.font_path), self.size, self._chars)

    @cached_property
    def _split(self) -> _Split:
        cat = self._cat
        heldout = frozenset(b for b in set(cat.base.values()) if is_heldout_base(b))
        families = frozenset(cat.concept[name] for name, b in cat.base.items() if b in heldout)
        return _Split(heldout, families)

    def base_of(self, item: EmojiItem) -> str:
        """The item's base (module docstring)."""
        return self._cat.base[item.name]

    def is_default(self, item: EmojiItem) -> bool:
        """Whether the item is its base's default picture (no skin tone)."""
        return item.char == self._cat.base[item.name]

    def split_of(self, item: EmojiItem) -> str:
        """"heldout" for a held-out base's variant, else "train" (held-out bases' defaults included)."""
        split = self._split
        if self._cat.concept[item.name] not in split.heldout_families:
            return "train"
        return "train" if self.is_default(item) and self.base_of(item) in split.heldout_bases else "heldout"

    def edit_split(self, edit: EmojiEdit) -> str:
        """"heldout" for every edit within a held-out base's family (source and target share it)."""
        return "heldout" if self._cat.concept[edit.source.name] in self._split.heldout_families else "train"

    def heldout_bases(self) -> list[str]:
        """Every held-out base, sorted (bases without a default picture included)."""
        return sorted(self._split.heldout_bases)

    def bases(self) -> list[str]:
        """Every base of the drawn emoji, sorted."""
        return sorted(set(self._cat.base.values()))

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise AnygenError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")

    def items(self, split: str = "all") -> list[EmojiItem]:
        """Emoji sorted by name; "train": every picture training may show, "heldout": the held-out variants."""
        self._check_split(split)
        return [it for it in self._cat.items if split == "all" or self.split_of(it) == split]

    def edit_pairs(self, split: str = "all", kind: str | None = None) -> list[EmojiEdit]:
        """Skin-tone and gender edits; source and target always differ in pixels and share a family.
        "train": edits outside the held-out families; "heldout": those within them."""
        self._check_split(split)
        if kind not in (None, "skin_tone", "gender"):
            raise AnygenError(f"kind must be skin_tone, gender or None; got {kind!r}")
        return [e for e in self._cat.edits if (kind is None or e.kind == kind)
                and (split == "all" or self.edit_split(e) == split)]

    def base_edits(self, split: str) -> list[BaseEdits]:
        """Per base with a default picture and at least one edit of it, sorted by the default's name:
        "heldout": the held-out bases (edits never trained); "train": bases outside every held-out
        family (edits trained on)."""
        self._check_split(split)
        split_bases = self._split.heldout_bases
        by_source: dict[str, list[EmojiEdit]] = {}
        for e in self._cat.edits:
            by_source.setdefault(e.source.name, []).append(e)
        out = []
        for it in self._cat.items:
            if not self.is_default(it) or it.name not in by_source:
                continue
            base = self.base_of(it)
            heldout = base in split_bases
            trained = self._cat.concept[it.name] not in self._split.heldout_families
            if split == "all" or (split == "heldout" and heldout) or (split == "train" and trained):
                out.append(BaseEdits(base, it, tuple(by_source[it.name])))
        return out

    def stats(self) -> dict[str, int]:
        """Counts of rendered emoji, edit pairs, the split, and candidates left out (and why)."""
        cat = self._cat
        held = self._split.heldout_bases
        out = {"items": len(cat.items), "edit_pairs": len(cat.edits), "bases": len(set(cat.base.values())),
               "heldout_bases": len(held),
               "heldout_bases_with_variants": self._with_variants(held),
               "heldout_items": len(self.items("heldout")),
               "heldout_edit_pairs": len(self.edit_pairs("heldout")),
               "heldout_base_edits": sum(len(b.edits) for b in self.base_edits("heldout"))}
        out.update({f"rejected_{k}": v for k, v in cat.rejected.items()})
        return out

    def _with_variants(self, bases) -> int:
        """How many of `bases` have a held-out variant in one of their families."""
        cat = self._cat
        variant_families = {cat.concept[it.name] for it in self.items("heldout")}
        families: dict[str, set[str]] = {}
        for name, concept in cat.concept.items():
            families.setdefault(cat.base[name], set()).add(concept)
        return sum(1 for b in bases if families[b] & variant_families)

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

    def by_name(self) -> dict[str, EmojiItem]:
        """Every emoji by its name."""
        return {it.name: it for it in self._cat.items}


def phrase(e: EmojiEdit, rng) -> str:
    """The edit's instruction as training writes it: canonical with probability `CANONICAL_SHARE`,
    else one of its other phrasings."""
    rng = _as_rng(rng)
    if len(e.phrasings) < 2 or rng.random() < CANONICAL_SHARE:
        return e.instruction
    return _pick(rng, e.phrasings[1:])


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
            if task == "describe_edit":  # the verifier answers in the canonical phrasing
                return describe_edit(self._image(e.source), self._image(e.target), e.instruction,
                                     self.mix.describe_edit, rng)
            return edit(self._image(e.source), phrase(e, rng), self._image(e.target), self.mix.edit, rng)
        raise ValueError(f"EmojiWorld has no task {task!r} (tasks: {', '.join(self.TASKS)})")


class Emoji:
    """The `emoji` world (`anygen.tasks.world.World`): captioned emoji and their real edit pairs.
    Splits: `train` / `heldout` (the fixed rule on bases, module docstring); a training recipe's
    `holdout` split maps to `heldout`. Its CLI verb is `anygen eval emoji` (`anygen.worlds.emoji.cli`)."""

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
        """Every training emoji's name, then every phrasing of the training edits' instructions, each
        once (`n` and `rng` are unused: the texts are few and fixed)."""
        world = self.world
        phrasings = dict.fromkeys(p for e in world.edit_pairs("train") for p in e.phrasings)
        return [item.name for item in world.items("train")] + list(phrasings)

    def preview(self, rng, kind: str = "emoji") -> Document:
        world = self.world
        return (world.sample_edit(rng) if rng.random() < 0.3 else world.sample(rng)).document()

    def image_batches(self, data, batch_size: int, seed: int, image_size: int):
        from anygen.data.media_sources import ImageListSource

        images = [item.image for item in self.world.items(data.split)]
        return ImageListSource(images, batch_size, image_size, seed, data.prefetch, "emoji", data.hflip)

    def eval_images(self, n: int, seed: int) -> tuple[list, None]:
        """(held-out variants' images, no ground truth to judge)."""
        return [it.image for it in self.world.items("heldout")[:n]], None
