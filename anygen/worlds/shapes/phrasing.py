"""Many phrasings of one ShapesWorld scene or edit, from templates, with a fixed evaluation split.

The canonical forms (`anygen.worlds.shapes.world`) are one phrasing each; this module writes the
same scene or edit in many others: sentence frames (``draw ...``, ``show me ...``, ``a picture
of ...``, counts such as ``two shapes: ...``), object forms (word order: ``in the upper left
corner a big red ball``), joiners, synonyms (big/large, little/tiny, ball for circle, box for
square, upper left corner for top left, the middle for the centre), edit frames (``turn the blue
box red``, ``change the colour of ...``, ``shrink the ...``) and styles (capitals, punctuation).

Every piece is a *template item* with a stable id (``frame:show_me``, ``word:circle=ball``,
``edit:recolor:turn``, ...). Contract of the split (`held_out`): an item is held out when the
first 8 hex digits of sha256(`SPLIT_SALT` + id) modulo `HOLDOUT_MODULUS` are 0, except the
canonical items, which are always in training. Training phrasings (`phrase_caption(...,
"train")`) use training items only; held-out phrasings (``"heldout"``) use a held-out frame (a
held-out edit frame for edits) and any items for the rest, so every one contains at least one
piece no training example has. The split is a pure function of the ids: adding an item never
moves another.

Every phrasing parses back (`parse_phrased_caption`, `canonical_instruction`): the parser is
built from the same templates, so the round trip scene -> text -> scene is exact, and the judge
reads the scene from the generator as before (judging is unchanged).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from anygen.worlds.shapes.world import COLORS, POSITIONS, SHAPES, SIZES, Edit, Obj, Scene, _normalize, refer

__all__ = [
    "PHRASINGS", "PHRASING_SPLITS", "HOLDOUT_MODULUS", "SPLIT_SALT", "Phrased", "template_ids", "held_out",
    "held_out_ids", "phrase_caption", "phrase_instruction", "parse_phrased_caption", "canonical_instruction",
]

# ---- the split --------------------------------------------------------------------------------
PHRASINGS = ("canonical", "paraphrase")  # the world option `phrasing`: what a training example's input text is
PHRASING_SPLITS = ("train", "heldout")  # which template items a phrasing may use
# About one item in four is held out: enough held-out frames for every edit kind, while training
# still sees most synonyms of every value (a value whose only synonyms were held out could not be learned).
HOLDOUT_MODULUS = 4
# Salt of the split's hash, fixed once: with it every edit kind has at least one held-out frame
# (tests/worlds/test_phrasing.py lists the counts; changing it changes the split).
SPLIT_SALT = "anygen-phrasing-v1:"

# ---- the lexicon: canonical value -> its words (the first is the canonical word) ----------------
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge", "giant")}
COLOR_WORDS = {"red": ("red", "scarlet", "crimson"), "green": ("green", "emerald"), "blue": ("blue", "navy"),
               "yellow": ("yellow", "golden"), "purple": ("purple", "violet"), "orange": ("orange", "amber")}
SHAPE_WORDS = {"circle": ("circle", "ball", "disc", "round dot"), "square": ("square", "box", "block"),
               "triangle": ("triangle", "pyramid", "wedge")}
PLACE_WORDS = {  # a position as a noun phrase after "the"
    "top left": ("top left", "upper left", "upper left corner", "top left corner", "top-left"),
    "top": ("top", "top middle", "top centre", "upper middle", "top edge"),
    "top right": ("top right", "upper right", "upper right corner", "top right corner", "top-right"),
    "left": ("left", "left side", "middle left", "left edge", "centre left"),
    "center": ("center", "centre", "middle", "very middle"),
    "right": ("right", "right side", "middle right", "right edge", "centre right"),
    "bottom left": ("bottom left", "lower left", "lower left corner", "bottom left corner", "bottom-left"),
    "bottom": ("bottom", "bottom middle", "bottom centre", "lower middle", "bottom edge"),
    "bottom right": ("bottom right", "lower right", "lower right corner", "bottom right corner", "bottom-right"),
}
PREPS = ("at", "in", "on")  # where an object is: "<prep> the <place>"
COUNT_NUMBERS = ("one", "two", "three")
COUNT_NOUNS = ("shapes", "objects", "things")  # "two shapes: ..."

# ---- scene templates ----------------------------------------------------------------------------
FRAMES = {  # id -> frame; {objs} the objects, {count} "two shapes"
    "bare": "{objs}", "draw": "draw {objs}", "please_draw": "please draw {objs}", "show_me": "show me {objs}",
    "picture_of": "a picture of {objs}", "image_of": "an image of {objs}", "can_you": "can you draw {objs}",
    "want_to_see": "i want to see {objs}", "paint": "paint {objs}", "sketch": "sketch {objs}",
    "make_picture": "make a picture with {objs}", "there_is": "there is {objs}", "count": "{count}: {objs}",
    "draw_count": "draw {count}: {objs}", "scene_with": "a scene with {count}: {objs}",
    "white_background": "{objs} on a white background", "give_me": "give me {objs}", "render": "render {objs}",
    "image_showing": "generate an image showing {objs}", "could_you": "could you please draw {objs}",
    "drawing_of": "a drawing of {objs}", "lets_see": "let me see {objs}",
}
OBJECT_FORMS = {  # id -> one object; {a} a/an, {loc} "<prep> the <place>"
    "canonical": "{a} {size} {color} {shape} {loc}", "place_first": "{loc} {a} {size} {color} {shape}",
    "colour_in": "{a} {size} {shape} in {color} {loc}", "colour_first": "{a} {color} {size} {shape} {loc}",
    "placed": "{a} {size} {color} {shape} placed {loc}", "that_is": "{a} {color} {shape} {loc} that is {size}",
    "sitting": "{a} {size} {color} {shape} sitting {loc}", "coloured": "{a} {size} {shape} coloured {color} {loc}",
}
JOINERS = {"and": " and ", "plus": " plus ", "as_well_as": " as well as ", "with": " with ", "and_also": " and also "}
STYLES = ("plain", "sentence", "period", "sentence_period", "exclaim", "question")

# ---- edit templates -----------------------------------------------------------------------------
EDIT_FRAMES = {  # kind -> id -> frame; {ref} the object, {color}/{size}/{place}/{loc}/{obj} the change
    "recolor": {"make": "make the {ref} {color}", "turn": "turn the {ref} {color}",
                "change_colour": "change the colour of the {ref} to {color}",
                "change_color": "change the color of the {ref} to {color}", "paint": "paint the {ref} {color}",
                "should_be": "the {ref} should be {color}", "recolour": "recolour the {ref} {color}",
                "colour": "colour the {ref} {color}"},
    "move": {"move": "move the {ref} to the {place}", "put": "put the {ref} {loc}", "place": "place the {ref} {loc}",
             "shift": "shift the {ref} to the {place}", "drag": "drag the {ref} to the {place}",
             "should_go": "the {ref} should go to the {place}", "relocate": "relocate the {ref} to the {place}"},
    "resize": {"make": "make the {ref} {size}", "turn": "turn the {ref} {size}",
               "comparative": "make the {ref} {comparative}", "verb": "{verb} the {ref}",
               "should_be": "the {ref} should be {size}", "resize": "resize the {ref} to be {size}"},
    "remove": {"remove": "remove the {ref}", "delete": "delete the {ref}", "erase": "erase the {ref}",
               "take_away": "take away the {ref}", "get_rid": "get rid of the {ref}", "take_out": "take out the {ref}"},
    "add": {"add": "add {obj}", "put": "put {obj}", "also_draw": "also draw {obj}", "insert": "insert {obj}",
            "draw_too": "draw {obj} too", "include": "include {obj}"},
}
CANONICAL_EDIT = {"recolor": "make", "move": "move", "resize": "make", "remove": "remove", "add": "add"}
COMPARATIVES = {"large": "bigger", "small": "smaller"}  # resize to that size
RESIZE_VERBS = {"large": "enlarge", "small": "shrink"}

# the canonical item of each family: never held out (canonical captions are training data)
CANONICAL_IDS = frozenset(
    ["frame:bare", "object:canonical", "join:and", "style:plain", "prep:at", "count:shapes"]
    + [f"edit:{k}:{v}" for k, v in CANONICAL_EDIT.items()]
    + [f"word:{v}={w[0]}" for table in (SIZE_WORDS, COLOR_WORDS, SHAPE_WORDS, PLACE_WORDS) for v, w in table.items()])


def _word_items() -> list[str]:
    return [f"word:{v}={w}" for table in (SIZE_WORDS, COLOR_WORDS, SHAPE_WORDS, PLACE_WORDS)
            for v, words in table.items() for w in words]


def template_ids() -> tuple[str, ...]:
    """Every template item's id, in a fixed order."""
    return tuple([f"frame:{f}" for f in FRAMES] + [f"object:{f}" for f in OBJECT_FORMS]
                 + [f"join:{j}" for j in JOINERS] + [f"style:{s}" for s in STYLES] + [f"prep:{p}" for p in PREPS]
                 + [f"count:{n}" for n in COUNT_NOUNS]
                 + [f"edit:{k}:{f}" for k, frames in EDIT_FRAMES.items() for f in frames] + _word_items())


def held_out(item: str) -> bool:
    """Whether the template item `item` is used only for evaluation (the module docstring's rule)."""
    if item in CANONICAL_IDS:
        return False
    digest = hashlib.sha256((SPLIT_SALT + item).encode()).hexdigest()
    return int(digest[:8], 16) % HOLDOUT_MODULUS == 0


def held_out_ids() -> tuple[str, ...]:
    """The held-out template items."""
    return tuple(i for i in template_ids() if held_out(i))


# ---- rendering ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phrased:
    """A phrasing and the ids of the template items it used."""

    text: str
    items: tuple[str, ...]


class _Picker:
    """Draws template items of one split and records them."""

    def __init__(self, rng: np.random.Generator, split: str):
        if split not in PHRASING_SPLITS:
            raise ValueError(f"split: {split!r} is not one of {', '.join(PHRASING_SPLITS)}")
        self.rng, self.split, self.items = rng, split, []

    def pick(self, prefix: str, names, must_hold_out: bool = False) -> str:
        """One of `names` (item ids `prefix + name`): training items only in the train split; held-out
        ones only when `must_hold_out`; any otherwise."""
        names = list(names)
        if self.split == "train":
            names = [n for n in names if not held_out(prefix + n)]
        elif must_hold_out:
            names = [n for n in names if held_out(prefix + n)]
        if not names:
            raise ValueError(f"no {self.split} template item {prefix}*")
        name = names[int(self.rng.integers(len(names)))]
        self.items.append(prefix + name)
        return name

    def word(self, value: str, table: dict) -> str:
        return self.pick(f"word:{value}=", table[value])

    def loc(self, position: str) -> str:
        return f"{self.pick('prep:', PREPS)} the {self.word(position, PLACE_WORDS)}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object(p: _Picker, obj: Obj, form: str) -> str:
    fields = {"size": p.word(obj.size, SIZE_WORDS), "color": p.word(obj.color, COLOR_WORDS),
              "shape": p.word(obj.shape, SHAPE_WORDS), "loc": p.loc(obj.position)}
    text = OBJECT_FORMS[form].replace("{a} ", "\0 ").format(**fields)
    first = text.split("\0 ", 1)[1].split()[0]
    return text.replace("\0", _article(first))


def _join(p: _Picker, phrases: list[str]) -> str:
    joiner = JOINERS[p.pick("join:", JOINERS)] if len(phrases) > 1 else ""
    if len(phrases) <= 2:
        return joiner.join(phrases)
    return ", ".join(phrases[:-1]) + joiner + phrases[-1]


def _style(p: _Picker, text: str) -> str:
    style = p.pick("style:", STYLES)
    if style in ("sentence", "sentence_period", "exclaim", "question"):
        text = text[0].upper() + text[1:]
    return text + {"period": ".", "sentence_period": ".", "exclaim": "!", "question": "?"}.get(style, "")


def phrase_caption(scene: Scene, rng: np.random.Generator, split: str = "train") -> Phrased:
    """`scene` in a random phrasing of `split` (train: training items only; heldout: a held-out frame).

    One object form for the whole scene; objects in a random order (cell order in the train split
    half the time, as the canonical caption has them)."""
    p = _Picker(rng, split)
    frame = p.pick("frame:", FRAMES, must_hold_out=split == "heldout")
    form = p.pick("object:", OBJECT_FORMS)
    objs = list(scene.objects)
    if rng.random() < 0.5:
        objs = [objs[i] for i in rng.permutation(len(objs))]
    text = FRAMES[frame].replace("{objs}", _join(p, [_object(p, o, form) for o in objs]))
    if "{count}" in text:
        n = len(objs)
        noun = p.pick("count:", COUNT_NOUNS)
        text = text.replace("{count}", f"{COUNT_NUMBERS[n - 1]} {noun if n > 1 else noun[:-1]}")
    return Phrased(_style(p, text), tuple(p.items))


def _ref(p: _Picker, scene: Scene, obj: Obj, with_size: bool = False) -> str:
    """`refer(scene, obj)` with each word in a phrasing of the picker's split."""
    words = refer(scene, obj, with_size).split(" at the ")
    out = []
    if words[0].startswith(tuple(SIZES)):
        out.append(p.word(obj.size, SIZE_WORDS))
    out += [p.word(obj.color, COLOR_WORDS), p.word(obj.shape, SHAPE_WORDS)]
    text = " ".join(out)
    return text + f" {p.loc(obj.position)}" if len(words) > 1 else text


def phrase_instruction(edit: Edit, rng: np.random.Generator, split: str = "train") -> Phrased:
    """`edit`'s instruction in a random phrasing of `split` (heldout: a held-out edit frame of its kind)."""
    p = _Picker(rng, split)
    kind = edit.kind
    name = p.pick(f"edit:{kind}:", EDIT_FRAMES[kind], must_hold_out=split == "heldout")
    frame = EDIT_FRAMES[kind][name]
    before = [o for o in edit.source.objects if o not in edit.target.objects]
    after = [o for o in edit.target.objects if o not in edit.source.objects]
    fields: dict[str, str] = {}
    if kind == "add":
        fields["obj"] = _object(p, after[0], p.pick("object:", OBJECT_FORMS))
    else:
        fields["ref"] = _ref(p, edit.source, before[0], with_size=kind == "resize")
    if kind == "recolor":
        fields["color"] = p.word(after[0].color, COLOR_WORDS)
    elif kind == "move":
        if "{loc}" in frame:
            fields["loc"] = p.loc(after[0].position)
        else:
            fields["place"] = p.word(after[0].position, PLACE_WORDS)
    elif kind == "resize":
        size = after[0].size
        if "{size}" in frame:
            fields["size"] = p.word(size, SIZE_WORDS)
        fields["comparative"], fields["verb"] = COMPARATIVES[size], RESIZE_VERBS[size]
    text = frame.format(**{k: fields.get(k, "") for k in ("ref", "color", "size", "place", "loc", "obj",
                                                           "comparative", "verb")})
    return Phrased(_style(p, text), tuple(p.items))


# ---- parsing ------------------------------------------------------------------------------------
def _alts(table: dict) -> tuple[str, dict[str, str]]:
    """(regex alternation of every word, word -> canonical value)."""
    back = {w: v for v, words in table.items() for w in words}
    return "|".join(re.escape(w) for w in sorted(back, key=len, reverse=True)), back


_SIZE, _SIZE_BACK = _alts(SIZE_WORDS)
_COLOR, _COLOR_BACK = _alts(COLOR_WORDS)
_SHAPE, _SHAPE_BACK = _alts(SHAPE_WORDS)
_PLACE, _PLACE_BACK = _alts(PLACE_WORDS)
_LOC = rf"(?:{'|'.join(PREPS)}) the (?P<place>{_PLACE})"
_SLOTS = {"{a}": "an?", "{size}": f"(?P<size>{_SIZE})", "{color}": f"(?P<color>{_COLOR})",
          "{shape}": f"(?P<shape>{_SHAPE})", "{loc}": _LOC}


def _compile(form: str) -> re.Pattern:
    pattern = re.escape(form)
    for slot, sub in _SLOTS.items():
        pattern = pattern.replace(re.escape(slot), sub)
    return re.compile(pattern)


_OBJECT_RES = [_compile(f) for f in OBJECT_FORMS.values()]
_COUNT = rf"(?:{'|'.join(COUNT_NUMBERS)}) (?:{'|'.join(n[:-1] + 's?' for n in COUNT_NOUNS)})"
_FRAME_RES = sorted(((re.compile(re.escape(f).replace(re.escape("{objs}"), "(?P<objs>.+)")
                                 .replace(re.escape("{count}"), _COUNT)), f) for f in FRAMES.values()),
                    key=lambda pair: -len(pair[1]))  # the bare frame last
_JOIN_RE = re.compile("|".join([", and ", ", "] + sorted((re.escape(j) for j in JOINERS.values()), key=len,
                                                        reverse=True)))


def _phrase_obj(text: str) -> Obj | None:
    for pattern in _OBJECT_RES:
        if (m := pattern.fullmatch(text)) is not None:
            g = m.groupdict()
            return Obj(_SHAPE_BACK[g["shape"]], _COLOR_BACK[g["color"]], _SIZE_BACK[g["size"]],
                       POSITIONS.index(_PLACE_BACK[g["place"]]))
    return None


def _clean(text: str) -> str:
    return _normalize(text).rstrip("?").strip()


def parse_phrased_caption(text: str) -> Scene | None:
    """A caption in any phrasing of this module (or the canonical one) -> Scene, else None."""
    text = _clean(text)
    for pattern, _ in _FRAME_RES:
        if (m := pattern.fullmatch(text)) is None:
            continue
        objs = [_phrase_obj(part.strip()) for part in _JOIN_RE.split(m.group("objs"))]
        if objs and None not in objs:
            try:
                return Scene(tuple(objs))  # type: ignore[arg-type]
            except ValueError:
                continue
    return None


_REF = rf"(?P<ref>(?:(?:{_SIZE}) )?(?:{_COLOR}) (?:{_SHAPE})(?: (?:{'|'.join(PREPS)}) the (?:{_PLACE}))?)"
_REF_RE = re.compile(rf"(?:(?P<size>{_SIZE}) )?(?P<color>{_COLOR}) (?P<shape>{_SHAPE})(?: {_LOC})?")


def _canonical_ref(ref: str) -> str | None:
    m = _REF_RE.fullmatch(ref)
    if m is None:
        return None
    g = m.groupdict()
    out = f"{_COLOR_BACK[g['color']]} {_SHAPE_BACK[g['shape']]}"
    if g["size"]:
        out = f"{_SIZE_BACK[g['size']]} {out}"
    return out + (f" at the {_PLACE_BACK[g['place']]}" if g["place"] else "")


def _edit_res() -> list[tuple[str, re.Pattern]]:
    out = []
    slots = {"{ref}": _REF, "{color}": f"(?P<color>{_COLOR})", "{size}": f"(?P<size>{_SIZE})",
             "{place}": f"(?P<place>{_PLACE})", "{loc}": _LOC.replace("(?P<place>", "(?P<dest>"),
             "{obj}": "(?P<obj>.+)", "{comparative}": f"(?P<comparative>{'|'.join(COMPARATIVES.values())})",
             "{verb}": f"(?P<verb>{'|'.join(RESIZE_VERBS.values())})"}
    for kind, frames in EDIT_FRAMES.items():
        for frame in frames.values():
            pattern = re.escape(frame)
            for slot, sub in slots.items():
                pattern = pattern.replace(re.escape(slot), sub)
            out.append((kind, re.compile(pattern)))
    return out


_EDIT_RES = _edit_res()


def canonical_instruction(text: str) -> str | None:
    """An edit instruction in any phrasing of this module -> its canonical form (which
    `anygen.worlds.shapes.world.apply_instruction` reads), else None."""
    text = _clean(text)
    for kind, pattern in _EDIT_RES:
        if (m := pattern.fullmatch(text)) is None:
            continue
        g = m.groupdict()
        if kind == "add":
            obj = _phrase_obj(g["obj"])
            if obj is not None:
                return f"add {obj.phrase()}"
            continue
        ref = _canonical_ref(g["ref"])
        if ref is None:
            continue
        if kind == "remove":
            return f"remove the {ref}"
        if kind == "recolor":
            return f"make the {ref} {_COLOR_BACK[g['color']]}"
        if kind == "move":
            return f"move the {ref} to the {_PLACE_BACK[g.get('place') or g['dest']]}"
        if g.get("size"):
            size = _SIZE_BACK[g["size"]]
        elif g.get("comparative"):
            size = {v: k for k, v in COMPARATIVES.items()}[g["comparative"]]
        else:
            size = {v: k for k, v in RESIZE_VERBS.items()}[g["verb"]]
        return f"make the {ref} {size}"
    return None


assert set(SIZE_WORDS) == set(SIZES) and set(COLOR_WORDS) == set(COLORS) and set(SHAPE_WORDS) == set(SHAPES)
assert set(PLACE_WORDS) == set(POSITIONS) and set(EDIT_FRAMES) == set(CANONICAL_EDIT)
