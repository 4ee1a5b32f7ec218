"""ShapesWorld: a synthetic world with exact ground truth, the measuring stick for every model.

A scene is 1–3 coloured shapes, each centred in its own cell of a 3×3 grid on a white
64×64 canvas. Everything about a scene can be said in text (a canonical caption), edited
with an instruction (with the exact target scene), and recovered from pixels by the judge
in `anygen.worlds.shapes.judges`. Melodies (1–4 notes, one per 0.25 s) and stories (2–4 steps, each
an edit of the previous scene) extend the world to audio and interleaved documents.

Canonical text forms (generation emits exactly these; the parsers also accept any
unambiguous variant, any object order and a trailing period):
- caption: objects in cell order, ``a {size} {color} {shape} at the {position}``;
  two objects joined by `` and ``, three as ``a A, a B and a C``.
- edit instructions (imperative):
  ``make the {ref} {color}`` (recolor), ``move the {ref} to the {position}`` (move),
  ``make the {ref} {size}`` (resize), ``remove the {ref}`` (remove),
  ``add a {size} {color} {shape} at the {position}`` (add).
- story narration (the same edits, narrative): ``then the {ref} turns {color}``,
  ``then the {ref} moves to the {position}``, ``then the {ref} becomes {size}``,
  ``then the {ref} disappears``, ``then a {size} {color} {shape} appears at the {position}``.
- ``{ref}`` names one object unambiguously: ``{color} {shape}`` when that is unique in
  the scene, else ``{size} {color} {shape}``, else ``{color} {shape} at the {position}``.
  A resize always names the current size (``make the small red circle large``), adding
  the position when two objects share size, colour and shape.
- melody text: ``the notes C E G``.

Other phrasings of captions and edit instructions (synonyms, word order, frames, a fixed
held-out split for evaluation) are in `anygen.worlds.shapes.phrasing`; `WorldConfig.phrasing`
trains on them.

Rendering: the shape's alpha is its exact area coverage of each pixel, estimated with
8×8 supersampling, composited over white. Sizes are bounding boxes of 10 px (small) and
18 px (large) at 64 px, scaled with the image size; triangles point up with base = height.
Melody timbre: partials 1, 2, 3 with amplitudes 1, 0.5, 0.25 (peak ≈ 0.5) and 10 ms
raised-cosine fades at each note's start and end, so consecutive notes never click.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np
from PIL import Image as PILImage

from anygen.config import ConfigError, check
from anygen.document import Audio, Document, Image, Text

__all__ = [
    "SHAPES", "SIZES", "COLORS", "POSITIONS", "SIZE_PX", "EDIT_KINDS", "SPLITS", "NOTES", "NOTE_FREQS",
    "SAMPLE_RATE", "NOTE_SECONDS", "MELODY_TIMBRES", "ALL_PAIRS", "Obj", "Scene", "parse_caption", "parse_slots", "cell_center",
    "object_px", "shape_coverage", "render_scene", "refer", "resolve", "Edit", "apply_instruction", "edit_refusal",
    "narrate",
    "valid_edit_kinds", "NOTHING", "REMOVED", "render_melody", "melody_text", "parse_melody_text", "StoryStep",
    "Story",
    "WorldConfig", "ShapesWorld", "scene_document", "edit_document", "melody_document", "story_document",
]

# ---- the world's vocabulary -------------------------------------------------------------
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 30),
}
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
SIZE_PX = {"small": 10.0, "large": 18.0}  # bounding-box side at 64 px
REFERENCE_SIZE = 64
MIN_OBJECTS, MAX_OBJECTS = 1, 3
EDIT_KINDS = ("recolor", "move", "resize", "remove", "add")
ALWAYS_VALID_EDITS = ("recolor", "move", "resize")  # remove needs 2+ objects, add a free slot
SPLITS = ("train", "holdout")
SUPERSAMPLE = 8
NOTHING = "nothing"  # Edit.change() of an object that is absent (before an add, after a remove)
REMOVED = "removed"  # Edit.slots(): the position of a removed object

NOTES = ("C", "D", "E", "F", "G", "A", "B")
NOTE_FREQS = {"C": 261.63, "D": 293.66, "E": 329.63, "F": 349.23, "G": 392.00, "A": 440.00, "B": 493.88}
SAMPLE_RATE = 16000
NOTE_SECONDS = 0.25
PARTIALS = ((1, 1.0), (2, 0.5), (3, 0.25))  # (harmonic, amplitude)
FADE_SECONDS = 0.01
# what a world's or a codec recipe's melodies play (`melody_timbres`): the reference timbre, or also the
# training-split timbres of `anygen.worlds.shapes.timbres`
MELODY_TIMBRES = ("reference", "augmented")

ALL_PAIRS = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


# ---- scenes -------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Obj:
    shape: str
    color: str
    size: str
    cell: int

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"Obj.shape: {self.shape!r} is not one of {', '.join(SHAPES)}")
        if self.color not in COLORS:
            raise ValueError(f"Obj.color: {self.color!r} is not one of {', '.join(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"Obj.size: {self.size!r} is not one of {', '.join(SIZES)}")
        if isinstance(self.cell, bool) or not isinstance(self.cell, (int, np.integer)) or not 0 <= self.cell < 9:
            raise ValueError(f"Obj.cell: {self.cell!r} is not a cell index 0..8")
        object.__setattr__(self, "cell", int(self.cell))

    @property
    def pair(self) -> str:
        """The colour–shape pair, e.g. ``red circle`` (the unit of held-out compositions)."""
        return f"{self.color} {self.shape}"

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self) -> str:
        """``a large red circle at the top left``."""
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"

    def slot(self) -> str:
        """``large red circle top left``: the phrase without the words every object repeats."""
        return f"{self.size} {self.color} {self.shape} {self.position}"

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "cell": self.cell,
                "position": self.position}


@dataclass(frozen=True)
class Scene:
    """1–3 objects in distinct cells; stored sorted by cell (the canonical order)."""

    objects: tuple[Obj, ...]

    def __post_init__(self):
        objs = tuple(sorted(self.objects, key=lambda o: o.cell))
        if not MIN_OBJECTS <= len(objs) <= MAX_OBJECTS:
            raise ValueError(f"Scene.objects: a scene has {MIN_OBJECTS}..{MAX_OBJECTS} objects, got {len(objs)}")
        cells = [o.cell for o in objs]
        if len(set(cells)) != len(cells):
            raise ValueError(f"Scene.objects: two objects share a cell ({cells})")
        object.__setattr__(self, "objects", objs)

    def caption(self) -> str:
        """Canonical caption: objects in cell order; ``A``, ``A and B``, ``A, B and C``."""
        phrases = [o.phrase() for o in self.objects]
        if len(phrases) <= 2:
            return " and ".join(phrases)
        return ", ".join(phrases[:-1]) + " and " + phrases[-1]

    def at(self, cell: int) -> Obj | None:
        for o in self.objects:
            if o.cell == cell:
                return o
        return None

    @property
    def cells(self) -> set[int]:
        return {o.cell for o in self.objects}

    @property
    def pairs(self) -> set[str]:
        return {o.pair for o in self.objects}

    def to_dict(self) -> dict:
        return {"caption": self.caption(), "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls(tuple(Obj(o["shape"], o["color"], o["size"], int(o["cell"])) for o in data["objects"]))

    def __str__(self) -> str:
        return self.caption()


def _words(alternatives: Iterable[str]) -> str:
    return "|".join(sorted((re.escape(a) for a in alternatives), key=len, reverse=True))


_POS = _words(POSITIONS)
_OBJ_RE = re.compile(rf"an? ({_words(SIZES)}) ({_words(COLORS)}) ({_words(SHAPES)}) at the ({_POS})")
_REF_RE = re.compile(rf"(?:({_words(SIZES)}) )?({_words(COLORS)}) ({_words(SHAPES)})(?: at the ({_POS}))?")


def _normalize(text: str) -> str:
    text = " ".join(str(text).lower().replace(",", " , ").split())
    text = text.replace(" ,", ",")
    return text.rstrip(" .!")


def parse_caption(text: str) -> Scene | None:
    """A caption (canonical or any object order, ``,``/``and`` joins) -> Scene, else None."""
    text = _normalize(text)
    if not text:
        return None
    parts = re.split(r", and |, | and ", text)
    objs = []
    for part in parts:
        m = _OBJ_RE.fullmatch(part.strip())
        if m is None:
            return None
        size, color, shape, pos = m.groups()
        objs.append(Obj(shape, color, size, POSITIONS.index(pos)))
    try:
        return Scene(tuple(objs))
    except ValueError:
        return None


_SLOT_RE = re.compile(rf"({_words(SIZES)}) ({_words(COLORS)}) ({_words(SHAPES)}) ({_POS}|{REMOVED})")


def parse_slots(text: str) -> Scene | None:
    """A list of `Obj.slot` texts joined by ``, `` (`Edit.slots`' form; ``removed`` slots are left out)
    -> Scene, else None."""
    objs = []
    for part in _normalize(text).split(", "):
        m = _SLOT_RE.fullmatch(part.strip())
        if m is None:
            return None
        size, color, shape, pos = m.groups()
        if pos != REMOVED:
            objs.append(Obj(shape, color, size, POSITIONS.index(pos)))
    try:
        return Scene(tuple(objs))
    except ValueError:
        return None


# ---- rendering ----------------------------------------------------------------------------
def cell_center(cell: int, image_size: int = REFERENCE_SIZE) -> tuple[float, float]:
    """(x, y) of a cell's centre in continuous pixel coordinates (pixel i covers [i, i+1))."""
    step = image_size / 3
    return ((cell % 3) + 0.5) * step, ((cell // 3) + 0.5) * step


def object_px(size: str, image_size: int = REFERENCE_SIZE) -> float:
    """Bounding-box side of an object of `size` in an `image_size` image."""
    return SIZE_PX[size] * image_size / REFERENCE_SIZE


def shape_coverage(shape: str, cx: float, cy: float, side: float, height: int, width: int,
                   supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Per-pixel area coverage (H, W) in [0, 1] of a shape with bounding box `side` centred at (cx, cy)."""
    half = side / 2
    x0, x1 = max(int(np.floor(cx - half)) - 1, 0), min(int(np.ceil(cx + half)) + 1, width)
    y0, y1 = max(int(np.floor(cy - half)) - 1, 0), min(int(np.ceil(cy + half)) + 1, height)
    out = np.zeros((height, width), np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    sub = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).reshape(-1) - cx  # (nx*ss,)
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).reshape(-1) - cy  # (ny*ss,)
    dx, dy = xs[None, :], ys[:, None]
    if shape == "circle":
        inside = dx * dx + dy * dy <= half * half
    elif shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":  # apex (cx, cy - half), base from (cx ± half, cy + half)
        inside = (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cov = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
    out[y0:y1, x0:x1] = cov
    return out


def render_scene(scene: Scene, size: int = REFERENCE_SIZE) -> PILImage.Image:
    """White canvas, each object centred in its cell, anti-aliased by exact-coverage supersampling."""
    canvas = np.full((size, size, 3), 255.0, np.float32)  # (H, W, 3)
    for o in scene.objects:
        cx, cy = cell_center(o.cell, size)
        alpha = shape_coverage(o.shape, cx, cy, object_px(o.size, size), size, size)[..., None]
        canvas = canvas * (1 - alpha) + np.asarray(COLORS[o.color], np.float32) * alpha
    return PILImage.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")


# ---- referring to objects; edits ----------------------------------------------------------
def refer(scene: Scene, obj: Obj, with_size: bool = False) -> str:
    """Shortest canonical unambiguous name of `obj` within `scene` (without ``the``)."""
    others = [o for o in scene.objects if o != obj]
    same_pair = [o for o in others if o.pair == obj.pair]
    if not with_size and not same_pair:
        return obj.pair
    if not [o for o in same_pair if o.size == obj.size]:
        return f"{obj.size} {obj.pair}"
    prefix = f"{obj.size} " if with_size else ""
    return f"{prefix}{obj.pair} at the {obj.position}"


def _named(scene: Scene, ref: str) -> list[Obj] | None:
    """Every object of `scene` that `ref` (``[size] color shape [at the position]``) fits, or None
    when `ref` is not such a name (``it``, a typo)."""
    m = _REF_RE.fullmatch(ref.strip())
    if m is None:
        return None
    size, color, shape, pos = m.groups()
    return [o for o in scene.objects if o.color == color and o.shape == shape and (size is None or o.size == size)
            and (pos is None or o.position == pos)]


def resolve(scene: Scene, ref: str) -> Obj | None:
    """The one object of `scene` that `ref` (``[size] color shape [at the position]``) names, else None."""
    matches = _named(scene, ref) or []
    return matches[0] if len(matches) == 1 else None


@dataclass
class Edit:
    kind: str
    instruction: str
    source: Scene
    target: Scene

    def narrative(self) -> str:
        """The same edit phrased as a story sentence (``then the red circle turns blue``)."""
        return narrate(self.instruction)

    def change(self) -> tuple[str, str]:
        """The edited object's full phrase in the source and in the target (``nothing`` where it is
        absent: before an add, after a remove): what a reasoned edit says it changes
        (`anygen.worlds.shapes.plans.reasoning`)."""
        before = [o for o in self.source.objects if o not in self.target.objects]
        after = [o for o in self.target.objects if o not in self.source.objects]
        return (before[0].phrase() if before else NOTHING), (after[0].phrase() if after else NOTHING)

    def slots(self) -> tuple[str, str]:
        """The source's objects as slots (`Obj.slot`, cell order, joined by ``, ``) and the same list
        with the edit made in place: the edited object's slot changes where it stands (``removed``
        for its position after a remove), an added object comes last. Unlike the target caption,
        which re-sorts a moved object, the second list is the first with one slot changed."""
        new = [o for o in self.target.objects if o not in self.source.objects]
        after = []
        for o in self.source.objects:
            if o in self.target.objects:
                after.append(o.slot())
            elif new:
                after.append(new.pop().slot())
            else:
                after.append(f"{o.size} {o.color} {o.shape} {REMOVED}")
        after += [o.slot() for o in new]
        return ", ".join(o.slot() for o in self.source.objects), ", ".join(after)


_INSTRUCTION_RES = (
    ("move", re.compile(rf"move the (.+) to the ({_POS})")),
    ("remove", re.compile(r"remove the (.+)")),
    ("add", re.compile(rf"add an? ({_words(SIZES)}) ({_words(COLORS)}) ({_words(SHAPES)}) at the ({_POS})")),
    ("make", re.compile(rf"make the (.+) ({_words(COLORS)}|{_words(SIZES)})")),
    # narrative forms
    ("move", re.compile(rf"then the (.+) moves to the ({_POS})")),
    ("remove", re.compile(r"then the (.+) disappears")),
    ("add", re.compile(rf"then an? ({_words(SIZES)}) ({_words(COLORS)}) ({_words(SHAPES)}) appears at the ({_POS})")),
    ("make", re.compile(rf"then the (.+) (?:turns|becomes) ({_words(COLORS)}|{_words(SIZES)})")),
)


def _replace_obj(scene: Scene, old: Obj, new: Obj | None) -> Scene | None:
    objs = [o for o in scene.objects if o != old] + ([new] if new is not None else [])
    try:
        return Scene(tuple(objs))
    except ValueError:
        return None


def _parse_instruction(instruction: str) -> tuple[str, tuple[str, ...]] | None:
    """(kind, groups) of an edit instruction (imperative or story narration, `_INSTRUCTION_RES`), else None."""
    text = _normalize(instruction)
    for kind, pattern in _INSTRUCTION_RES:
        if (m := pattern.fullmatch(text)) is not None:
            return kind, m.groups()
    return None


def apply_instruction(scene: Scene, instruction: str) -> Scene | None:
    """Scene after an edit instruction (imperative or story narration); None if the text is not a
    valid, unambiguous edit of `scene` that changes it."""
    if (parsed := _parse_instruction(instruction)) is None:
        return None
    kind, groups = parsed
    if kind == "add":
        size, color, shape, pos = groups
        cell = POSITIONS.index(pos)
        if cell in scene.cells:
            return None
        return _replace_obj(scene, None, Obj(shape, color, size, cell))  # type: ignore[arg-type]
    obj = resolve(scene, groups[0])
    if obj is None:
        return None
    if kind == "remove":
        return _replace_obj(scene, obj, None)
    if kind == "move":
        cell = POSITIONS.index(groups[1])
        if cell in scene.cells:
            return None
        return _replace_obj(scene, obj, replace(obj, cell=cell))
    value = groups[1]  # make: a colour or a size
    new = replace(obj, color=value) if value in COLORS else replace(obj, size=value)
    return None if new == obj else _replace_obj(scene, obj, new)


def edit_refusal(scene: Scene, instruction: str) -> str | None:
    """Why `instruction` (imperative or narrative) cannot edit `scene`: the object it names is not
    in the scene (``the image holds no yellow circle``), or the edit would change nothing (``the red
    circle is already red``). None otherwise: a valid edit, text that is not an edit instruction,
    or an object named ambiguously."""
    if (parsed := _parse_instruction(instruction)) is None:
        return None
    kind, groups = parsed
    if kind == "add":
        size, color, shape, pos = groups
        if scene.at(POSITIONS.index(pos)) == Obj(shape, color, size, POSITIONS.index(pos)):
            return f"nothing would change: a {size} {color} {shape} is already at the {pos}"
        return None
    ref, named = groups[0], _named(scene, groups[0])
    if named is None or len(named) > 1:
        return None
    if not named:
        return f"the image holds no {ref}"
    obj = named[0]
    if kind == "move" and obj.position == groups[1]:
        return f"nothing would change: the {ref} is already at the {obj.position}"
    if kind == "make" and groups[1] in (obj.color, obj.size):
        return f"nothing would change: the {ref} is already {groups[1]}"
    return None


def narrate(instruction: str) -> str:
    """Imperative edit instruction -> story sentence (see module docstring for the forms)."""
    text = _normalize(instruction)
    if m := re.fullmatch(rf"move the (.+) to the ({_POS})", text):
        return f"then the {m.group(1)} moves to the {m.group(2)}"
    if m := re.fullmatch(r"remove the (.+)", text):
        return f"then the {m.group(1)} disappears"
    if m := re.fullmatch(r"add (an? .+) at the (.+)", text):
        return f"then {m.group(1)} appears at the {m.group(2)}"
    if m := re.fullmatch(r"make the (.+) (\w+)", text):
        verb = "turns" if m.group(2) in COLORS else "becomes"
        return f"then the {m.group(1)} {verb} {m.group(2)}"
    raise ValueError(f"not an edit instruction: {instruction!r}")


def valid_edit_kinds(scene: Scene, max_objects: int = MAX_OBJECTS) -> tuple[str, ...]:
    """Edit kinds that can change `scene` (remove needs 2+ objects, add and move a free cell)."""
    kinds = []
    for kind in EDIT_KINDS:
        if kind == "remove" and len(scene.objects) < 2:
            continue
        if kind == "add" and len(scene.objects) >= max_objects:
            continue
        kinds.append(kind)
    return tuple(kinds)


# ---- melodies -----------------------------------------------------------------------------
def render_melody(notes: Iterable[str], sample_rate: int = SAMPLE_RATE,
                  note_seconds: float = NOTE_SECONDS) -> np.ndarray:
    """Notes -> float32 mono waveform, `note_seconds` per note (timbre: see module docstring)."""
    notes = tuple(notes)
    for n in notes:
        if n not in NOTE_FREQS:
            raise ValueError(f"unknown note {n!r} (notes: {' '.join(NOTES)})")
    seg = int(round(sample_rate * note_seconds))
    t = np.arange(seg) / sample_rate
    fade = min(int(round(sample_rate * FADE_SECONDS)), seg // 2)
    env = np.ones(seg)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
        env[:fade], env[-fade:] = ramp, ramp[::-1]
    norm = sum(a for _, a in PARTIALS)
    out = []
    for n in notes:
        f = NOTE_FREQS[n]
        tone = sum(a * np.sin(2 * np.pi * k * f * t) for k, a in PARTIALS) / norm
        out.append(0.5 * tone * env)
    return (np.concatenate(out) if out else np.zeros(0)).astype(np.float32)


def melody_text(notes: Iterable[str]) -> str:
    """``the notes C E G``."""
    return "the notes " + " ".join(notes)


def parse_melody_text(text: str) -> tuple[str, ...] | None:
    """``the notes C E G`` (case-insensitive, optional period) -> ('C', 'E', 'G'), else None."""
    words = str(text).strip().rstrip(".").split()
    if len(words) < 3 or [w.lower() for w in words[:2]] != ["the", "notes"]:
        return None
    notes = tuple(w.upper() for w in words[2:])
    return notes if all(n in NOTE_FREQS for n in notes) else None


# ---- stories ------------------------------------------------------------------------------
@dataclass
class StoryStep:
    text: str
    scene: Scene
    melody: tuple[str, ...] | None = None


@dataclass
class Story:
    steps: list[StoryStep]

    @property
    def text(self) -> str:
        return ". ".join(s.text for s in self.steps) + "."


# ---- the world ----------------------------------------------------------------------------
@dataclass
class WorldConfig:
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 3
    holdout: list[str] = field(default_factory=list)  # "color shape" pairs kept out of the train split
    image_size: int = 64
    min_notes: int = 1
    max_notes: int = 4
    sample_rate: int = SAMPLE_RATE
    note_seconds: float = NOTE_SECONDS
    min_steps: int = 2
    max_steps: int = 4
    melody_prob: float = 0.3  # chance that a story step carries a melody
    # chance that a sampled edit's scene gives the edited object a look-alike (another object
    # recoloured to its colour, the distractor small models confuse it with); a story's opening
    # scene gets one for a random object
    lookalike_prob: float = 0.0
    # relative chance of each edit kind when a sampled edit's kind is not given (unlisted kinds: 1;
    # e.g. {move: 2} makes moves twice as likely as each other kind); empty = uniform, the old stream.
    # Edit tasks only: a story's steps stay uniform
    edit_weights: dict[str, float] = field(default_factory=dict)
    # the input texts of text->image, edit and reasoned-edit examples: "canonical" (the one canonical
    # form) or "paraphrase" (`paraphrase_share` of them in a training-split phrasing of
    # `anygen.worlds.shapes.phrasing`, the rest canonical); outputs (captions, plans, stories) stay canonical
    phrasing: str = "canonical"
    paraphrase_share: float = 0.5
    # the melodies audio->text examples play: "reference" (the reference timbre) or "augmented"
    # (`augmented_share` of them in a random training-split timbre of `anygen.worlds.shapes.timbres`);
    # text->audio and stories keep the reference timbre, which the melody judge reads
    melody_timbres: str = "reference"
    augmented_share: float = 0.8

    def __post_init__(self):
        check(MIN_OBJECTS <= self.min_objects <= self.max_objects <= MAX_OBJECTS, "min_objects/max_objects",
              f"need {MIN_OBJECTS} <= min_objects <= max_objects <= {MAX_OBJECTS}, "
              f"got {self.min_objects}, {self.max_objects}")
        self.holdout = [" ".join(str(p).lower().split()) for p in self.holdout]
        for p in self.holdout:
            check(p in ALL_PAIRS, "holdout", f"{p!r} is not a 'color shape' pair (e.g. 'red triangle'; "
                                             f"colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)})")
        check(len(set(self.holdout)) < len(ALL_PAIRS), "holdout", "cannot hold out every colour-shape pair")
        check(self.image_size >= 8, "image_size", f"must be >= 8, got {self.image_size}")
        check(1 <= self.min_notes <= self.max_notes, "min_notes/max_notes",
              f"need 1 <= min_notes <= max_notes, got {self.min_notes}, {self.max_notes}")
        check(self.sample_rate >= 2000, "sample_rate", f"must be >= 2000, got {self.sample_rate}")
        check(0.05 <= self.note_seconds <= 5, "note_seconds", f"must be in [0.05, 5], got {self.note_seconds}")
        check(2 <= self.min_steps <= self.max_steps, "min_steps/max_steps",
              f"need 2 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        check(0.0 <= self.melody_prob <= 1.0, "melody_prob", f"must be in [0, 1], got {self.melody_prob}")
        check(0.0 <= self.lookalike_prob <= 1.0, "lookalike_prob", f"must be in [0, 1], got {self.lookalike_prob}")
        for kind, weight in self.edit_weights.items():
            check(kind in EDIT_KINDS, f"edit_weights.{kind}", f"not an edit kind ({', '.join(EDIT_KINDS)})")
            check(0 <= weight < float("inf"), f"edit_weights.{kind}", f"must be a number >= 0, got {weight!r}")
        check(self.phrasing in ("canonical", "paraphrase"), "phrasing",
              f"must be canonical or paraphrase, got {self.phrasing!r}")
        check(0.0 <= self.paraphrase_share <= 1.0, "paraphrase_share",
              f"must be in [0, 1], got {self.paraphrase_share}")
        check(self.melody_timbres in MELODY_TIMBRES, "melody_timbres",
              f"must be one of {', '.join(MELODY_TIMBRES)}, got {self.melody_timbres!r}")
        check(0.0 <= self.augmented_share <= 1.0, "augmented_share",
              f"must be in [0, 1], got {self.augmented_share}")
        check(any(self.edit_weight(k) > 0 for k in ALWAYS_VALID_EDITS), "edit_weights",
              f"one of {', '.join(ALWAYS_VALID_EDITS)} (valid in every scene) needs a weight > 0")

    def edit_weight(self, kind: str) -> float:
        """`kind`'s relative chance in a sampled edit (1 unless `edit_weights` says otherwise)."""
        return float(self.edit_weights.get(kind, 1.0))


class ShapesWorld:
    """Samples scenes, edits, melodies and stories; deterministic given the config seed.

    Every sampler takes an optional `rng` (numpy Generator); without one it draws from the
    world's own generator, seeded by `config.seed`. The train split never contains a
    held-out colour–shape pair; the holdout split's scenes contain at least one.
    """

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self.rng = np.random.default_rng(self.config.seed)
        held = set(self.config.holdout)
        self.train_pairs = tuple(p for p in ALL_PAIRS if p not in held)
        self.holdout_pairs = tuple(p for p in ALL_PAIRS if p in held)

    def _rng(self, rng) -> np.random.Generator:
        return self.rng if rng is None else rng

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
        if split == "holdout" and not self.holdout_pairs:
            raise ConfigError("holdout: the holdout split needs at least one held-out pair in the config")

    def _obj(self, rng, pairs: tuple[str, ...], cell: int) -> Obj:
        color, shape = pairs[rng.integers(len(pairs))].split()
        return Obj(shape, color, SIZES[rng.integers(len(SIZES))], int(cell))

    # -- scenes --
    def sample_scene(self, rng: np.random.Generator | None = None, n_objects: int | None = None,
                     split: str = "train") -> Scene:
        rng = self._rng(rng)
        self._check_split(split)
        c = self.config
        n = int(rng.integers(c.min_objects, c.max_objects + 1)) if n_objects is None else int(n_objects)
        if not MIN_OBJECTS <= n <= MAX_OBJECTS:
            raise ValueError(f"n_objects: must be {MIN_OBJECTS}..{MAX_OBJECTS}, got {n}")
        cells = rng.choice(9, size=n, replace=False)
        special = int(rng.integers(n)) if split == "holdout" else -1
        objs = [self._obj(rng, self.holdout_pairs if i == special else self.train_pairs, cell)
                for i, cell in enumerate(cells)]
        return Scene(tuple(objs))

    def in_split(self, scene: Scene, split: str) -> bool:
        """Train: no held-out pair; holdout: at least one."""
        held = bool(scene.pairs & set(self.holdout_pairs))
        return not held if split == "train" else held

    # -- edits --
    def sample_edit(self, rng: np.random.Generator | None = None, scene: Scene | None = None,
                    kind: str | None = None, split: str = "train", weighted: bool = True) -> Edit:
        """A random edit of `scene` (sampled from `split` when None) of `kind` (random valid when None:
        by `config.edit_weights` if `weighted`, else uniform).

        In the train split the edit never introduces a held-out pair (recolor, add).
        """
        rng = self._rng(rng)
        self._check_split(split)
        if kind is not None and kind not in EDIT_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(EDIT_KINDS)}")
        sampled = scene is None
        if scene is None:
            lo, hi = self.config.min_objects, self.config.max_objects
            if kind == "remove":
                lo = max(lo, 2)
            if kind == "add":
                hi = min(hi, MAX_OBJECTS - 1)
            if lo > hi:
                raise ValueError(f"kind {kind!r} is impossible with min_objects={self.config.min_objects}, "
                                 f"max_objects={self.config.max_objects}")
            scene = self.sample_scene(rng, int(rng.integers(lo, hi + 1)), split)
        if kind is None:
            kind = self._sample_kind(rng, valid_edit_kinds(scene, self.config.max_objects), weighted)
        elif kind not in valid_edit_kinds(scene):
            raise ValueError(f"kind: cannot {kind} in a scene of {len(scene.objects)} object(s)")
        allowed = set(self.train_pairs) if split == "train" else set(ALL_PAIRS)
        obj = scene.objects[rng.integers(len(scene.objects))]
        if sampled and kind != "add":
            scene = self._maybe_lookalike(rng, scene, obj, split)
        free = [c for c in range(9) if c not in scene.cells]
        objs = scene.objects
        if kind == "recolor":
            colors = [c for c in COLORS if c != obj.color and f"{c} {obj.shape}" in allowed]
            if not colors:  # every other colour of this shape is held out: pick another object
                candidates = [o for o in objs if any(c != o.color and f"{c} {o.shape}" in allowed for c in COLORS)]
                if not candidates:
                    raise ValueError("no recolor edit of this scene stays inside the split")
                obj = candidates[rng.integers(len(candidates))]
                colors = [c for c in COLORS if c != obj.color and f"{c} {obj.shape}" in allowed]
            color = colors[rng.integers(len(colors))]
            instruction = f"make the {refer(scene, obj)} {color}"
            new: Obj | None = replace(obj, color=color)
        elif kind == "move":
            cell = free[rng.integers(len(free))]
            instruction = f"move the {refer(scene, obj)} to the {POSITIONS[cell]}"
            new = replace(obj, cell=int(cell))
        elif kind == "resize":
            size = "large" if obj.size == "small" else "small"
            instruction = f"make the {refer(scene, obj, with_size=True)} {size}"
            new = replace(obj, size=size)
        elif kind == "remove":
            instruction = f"remove the {refer(scene, obj)}"
            new = None
        else:  # add
            pairs = sorted(allowed)
            new = self._obj(rng, tuple(pairs), int(free[rng.integers(len(free))]))
            obj = None  # type: ignore[assignment]
            instruction = f"add a {new.size} {new.pair} at the {new.position}"
        target = _replace_obj(scene, obj, new)
        if target is None or apply_instruction(scene, instruction) != target:  # generator/parser disagree
            raise RuntimeError(f"internal error: edit {instruction!r} of {scene.caption()!r} does not parse back")
        return Edit(kind, instruction, scene, target)

    def _sample_kind(self, rng: np.random.Generator, kinds: tuple[str, ...], weighted: bool = True) -> str:
        """One of `kinds` by `config.edit_weights`; uniform (one `integers` draw, the old stream) when
        not `weighted` or they are all weighted alike."""
        weights = np.array([self.config.edit_weight(k) if weighted else 1.0 for k in kinds])
        if np.all(weights == weights[0]) and weights[0] > 0:
            return kinds[rng.integers(len(kinds))]
        return kinds[rng.choice(len(kinds), p=weights / weights.sum())]

    def _maybe_lookalike(self, rng: np.random.Generator, scene: Scene, obj: Obj | None, split: str) -> Scene:
        """With chance `config.lookalike_prob`, `scene` with one other object recoloured to `obj`'s
        colour (a random object's when None): a look-alike that only the shape (or size, or position)
        tells apart. Colour, because a shared colour is the rarer coincidence (6 colours against 3
        shapes) and the distractor small models fall for (README, "The default model from scratch").
        Unchanged otherwise, when `scene` has no other object, or when the recoloured one would leave
        `split`; draws nothing from `rng` when off."""
        p = self.config.lookalike_prob
        if p <= 0 or rng.random() >= p:
            return scene
        obj = obj or scene.objects[rng.integers(len(scene.objects))]
        others = [o for o in scene.objects if o.color != obj.color]
        if not others:
            return scene
        other = others[rng.integers(len(others))]
        changed = _replace_obj(scene, other, replace(other, color=obj.color))
        return changed if changed is not None and self.in_split(changed, split) else scene

    # -- melodies --
    def sample_melody(self, rng: np.random.Generator | None = None, n_notes: int | None = None) -> tuple[str, ...]:
        rng = self._rng(rng)
        n = int(rng.integers(self.config.min_notes, self.config.max_notes + 1)) if n_notes is None else int(n_notes)
        return tuple(NOTES[i] for i in rng.integers(len(NOTES), size=n))

    def render_melody(self, notes: Iterable[str]) -> np.ndarray:
        return render_melody(notes, self.config.sample_rate, self.config.note_seconds)

    def render(self, scene: Scene) -> PILImage.Image:
        return render_scene(scene, self.config.image_size)

    # -- stories --
    def sample_story(self, rng: np.random.Generator | None = None, n_steps: int | None = None,
                     split: str = "train") -> Story:
        """2–4 steps: a caption, then narrated edits, each of the previous step's scene."""
        rng = self._rng(rng)
        c = self.config
        n = int(rng.integers(c.min_steps, c.max_steps + 1)) if n_steps is None else int(n_steps)
        if n < 1:
            raise ValueError(f"n_steps: must be >= 1, got {n}")
        scene = self.sample_scene(rng, split=split)
        scene = self._maybe_lookalike(rng, scene, None, split)  # two objects of one colour to tell apart
        steps = [StoryStep(scene.caption(), scene, self._maybe_melody(rng))]
        for _ in range(n - 1):
            # uniform kinds: a story trained on weighted ones writes the favoured kind nearly every time
            # (greedy text), e.g. moves to the cell the object stands on (README, "More moves")
            edit = self.sample_edit(rng, scene=scene, split=split, weighted=False)
            scene = edit.target
            steps.append(StoryStep(edit.narrative(), scene, self._maybe_melody(rng)))
        return Story(steps)

    def _maybe_melody(self, rng) -> tuple[str, ...] | None:
        return self.sample_melody(rng) if rng.random() < self.config.melody_prob else None

    # -- documents --
    def scene_document(self, scene: Scene) -> Document:
        return scene_document(scene, self.config.image_size)

    def edit_document(self, edit: Edit) -> Document:
        return edit_document(edit, self.config.image_size)

    def melody_document(self, notes: tuple[str, ...]) -> Document:
        return melody_document(notes, self.config.sample_rate, self.config.note_seconds)

    def story_document(self, story: Story) -> Document:
        return story_document(story, self.config.image_size, self.config.sample_rate, self.config.note_seconds)

    def sample_document(self, kind: str, rng: np.random.Generator | None = None, split: str = "train") -> Document:
        """One sample as a Document; kind: shapes | edits | melodies | stories."""
        rng = self._rng(rng)
        if kind == "shapes":
            return self.scene_document(self.sample_scene(rng, split=split))
        if kind == "edits":
            return self.edit_document(self.sample_edit(rng, split=split))
        if kind == "melodies":
            return self.melody_document(self.sample_melody(rng))
        if kind == "stories":
            return self.story_document(self.sample_story(rng, split=split))
        raise ValueError(f"kind: {kind!r} is not one of shapes, edits, melodies, stories")


# ---- documents ----------------------------------------------------------------------------
def scene_document(scene: Scene, size: int = REFERENCE_SIZE) -> Document:
    """[Text(caption), Image]."""
    return Document([Text(scene.caption()), Image(render_scene(scene, size))])


def edit_document(edit: Edit, size: int = REFERENCE_SIZE) -> Document:
    """[Image(source), Text(instruction), Image(target)]."""
    return Document([Image(render_scene(edit.source, size)), Text(edit.instruction),
                     Image(render_scene(edit.target, size))])


def melody_document(notes: tuple[str, ...], sample_rate: int = SAMPLE_RATE,
                    note_seconds: float = NOTE_SECONDS) -> Document:
    """[Text(``the notes ...``), Audio]."""
    return Document([Text(melody_text(notes)), Audio(render_melody(notes, sample_rate, note_seconds), sample_rate)])


def story_document(story: Story, size: int = REFERENCE_SIZE, sample_rate: int = SAMPLE_RATE,
                   note_seconds: float = NOTE_SECONDS) -> Document:
    """Per step: Text(step text), Image(scene), and when the step has a melody
    Text(``the notes ...``), Audio(melody)."""
    segments: list = []
    for step in story.steps:
        segments += [Text(step.text), Image(render_scene(step.scene, size))]
        if step.melody:
            segments += [Text(melody_text(step.melody)),
                         Audio(render_melody(step.melody, sample_rate, note_seconds), sample_rate)]
    return Document(segments)
