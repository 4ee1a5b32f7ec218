"""Sequence layouts shared by training and inference: examples -> token sequences with loss masks.

Every example is one document of ids, `<bos> … <eos>`, with a parallel loss mask. Layouts
(`span(x)` is `<boi> <grid> codes <eoi>` for an image, `<boa> codes <eoa>` for audio):

    text_to_image   <bos> caption        span(image)     <eos>
    image_to_text   <bos> span(image)    caption         <eos>
    text_to_audio   <bos> text           span(audio)     <eos>
    audio_to_text   <bos> span(audio)    text            <eos>
    edit            <bos> instruction span(source) span(target) <eos>
    describe_edit   <bos> span(source) span(target) instruction <eos>
    reasoned_edit   <bos> instruction span(source) plan text span(target) <eos>
    reasoned_text   <bos> instruction seen-text plan-text <eos>
    story           <bos> text span(image) [text span(audio)] text span(image) … <eos>
    document        <bos> any Document's segments <eos>

The *prompt* of a conditional task is everything before its generated part; the
generated part (the last span or text, plus `<eos>`) always carries the loss, the prompt
only with `loss_on_prompt: true`. Stories and documents carry the loss everywhere.
`<bos>` and `<null>` never carry it (nothing should learn to emit them, and a packed
document's first token must not be predicted from the previous document).

Classifier-free guidance: a dropped condition is replaced by exactly one `<null>` in its
place. The unconditional forms (`null_condition_prompt` builds them for the sampler):

    text_to_image / text_to_audio     <bos> <null>             | then <boi>… / <boa>…
    image_to_text / audio_to_text     <bos> <null>             | then the text
    edit, instruction dropped         <bos> <null> span(source) | then <boi>…   (image-only row)
    edit, source image dropped        <bos> instruction <null>  | then <boi>…
    edit, both dropped                <bos> <null> <null>       | then <boi>…   (null row)

Edits put the instruction first so that target code j sits a fixed distance (one span)
after source code j whatever the instruction's length: copying the unchanged codes is then
one relative-position lookup under RoPE. With a `<keep>` vocab (`Vocab.image_keep`) every
sequence is `<keep>`-coded (`anygen.codecs.keep`): an edit's target span holds `<keep>`
wherever it equals the source. InstructPix2Pix's dual guidance uses the full prompt, the
image-only row and the null row; the three edit drops are mutually exclusive.

`describe_edit` is the edit read backwards (which instruction turns the source into the
target): the verifier of best-of-N editing. `reasoned_edit` says in words what it sees and
what it will draw before drawing it; `reasoned_text` is that text alone, the plan as the
answer. What the plan text says is the world's (`anygen.tasks.world.PlanFormat`).

Building is split in two so the slow part (the codecs) can be cached and batched: `Spec`s
(pure, cheap, hold media lazily under a cache key) are made first, then
`anygen.tasks.encoder.SequenceEncoder` encodes them into `TokenSequence`s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image as PILImage

from anygen.codecs.keep import encode_keeps
from anygen.config import check
from anygen.document import Audio, Document, Image, Text
from anygen.errors import AnygenError

TASKS = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "edit", "describe_edit",
         "reasoned_edit", "reasoned_text", "story", "document")
CONDITIONAL = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "edit", "describe_edit",
               "reasoned_edit", "reasoned_text")
EDIT_DROPS = ("instruction", "image", "both")

# ---- configuration ------------------------------------------------------------------------
@dataclass
class TaskSpec:
    """One conditional task's share of the mix and its conditioning settings."""

    weight: float = 1.0  # relative share of the examples (0 = off)
    p_null: float = 0.1  # probability that the condition is replaced by <null> (classifier-free guidance)
    loss_on_prompt: bool = False  # also train on the prompt (the conditioning text or media)

    def __post_init__(self):
        check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        check(0.0 <= self.p_null <= 1.0, "p_null", f"must be in [0, 1], got {self.p_null}")


@dataclass
class TextToImageSpec(TaskSpec):
    weight: float = 3.0


@dataclass
class ImageToTextSpec(TaskSpec):
    p_null: float = 0.0  # captioning needs no guidance by default


@dataclass
class TextToAudioSpec(TaskSpec):
    pass


@dataclass
class AudioToTextSpec(TaskSpec):
    p_null: float = 0.0


@dataclass
class EditSpec:
    weight: float = 2.0
    p_null_instruction: float = 0.05  # instruction -> <null> (the image-only row of dual guidance)
    p_null_image: float = 0.05  # source image -> <null>
    p_null_both: float = 0.05  # both -> <null> <null> (the null row)
    loss_on_prompt: bool = False

    def __post_init__(self):
        check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        for name in ("p_null_instruction", "p_null_image", "p_null_both"):
            p = getattr(self, name)
            check(0.0 <= p <= 1.0, name, f"must be in [0, 1], got {p}")
        total = self.p_null_instruction + self.p_null_image + self.p_null_both
        check(total <= 1.0, "p_null_both", f"the three drop probabilities are exclusive and sum to {total} > 1")


@dataclass
class DescribeEditSpec(TaskSpec):
    weight: float = 0.0  # off unless a recipe asks for it (the best-of-N edit verifier)
    p_null: float = 0.0
    p_narrative: float = 0.0  # a world with stories: answer with the story sentence instead ("then the red circle turns blue")

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.p_narrative <= 1.0, "p_narrative", f"must be in [0, 1], got {self.p_narrative}")


@dataclass
class ReasonedEditSpec(TaskSpec):
    weight: float = 0.0  # off unless a recipe asks for it (AnyGen.edit(reason=True))
    p_null: float = 0.0
    p_narrative: float = 0.0  # a world with stories: the instruction is the story sentence (story(reason=True))
    form: str = "scene"  # what the plan text says: one of the world's plan forms (checked by the world)

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.p_narrative <= 1.0, "p_narrative", f"must be in [0, 1], got {self.p_narrative}")
        check(bool(self.form), "form", "must name one of the world's plan forms")


@dataclass
class ReasonedTextSpec(TaskSpec):
    weight: float = 0.0  # off unless a recipe asks for it (practice for reasoned_edit's plan)
    p_null: float = 0.0
    p_narrative: float = 0.0  # as reasoned_edit's: that share of instructions are story sentences

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.p_narrative <= 1.0, "p_narrative", f"must be in [0, 1], got {self.p_narrative}")


@dataclass
class StorySpec:
    weight: float = 1.0  # interleaved stories: loss on every token

    def __post_init__(self):
        check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")


@dataclass
class DocumentSpec:
    weight: float = 1.0  # a world's interleaved documents (and the user's): loss on every token

    def __post_init__(self):
        check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")


@dataclass
class TaskMix:
    """Per-task weights and conditioning settings (a recipe section: `tasks.edit.weight=3`)."""

    text_to_image: TextToImageSpec = field(default_factory=TextToImageSpec)
    image_to_text: ImageToTextSpec = field(default_factory=ImageToTextSpec)
    text_to_audio: TextToAudioSpec = field(default_factory=TextToAudioSpec)
    audio_to_text: AudioToTextSpec = field(default_factory=AudioToTextSpec)
    edit: EditSpec = field(default_factory=EditSpec)
    describe_edit: DescribeEditSpec = field(default_factory=DescribeEditSpec)
    reasoned_edit: ReasonedEditSpec = field(default_factory=ReasonedEditSpec)
    reasoned_text: ReasonedTextSpec = field(default_factory=ReasonedTextSpec)
    story: StorySpec = field(default_factory=StorySpec)
    document: DocumentSpec = field(default_factory=DocumentSpec)

    def __post_init__(self):
        check(sum(self.weights().values()) > 0, "tasks", "at least one task needs a weight > 0")

    def weights(self) -> dict[str, float]:
        return {name: getattr(self, name).weight for name in TASKS if hasattr(self, name)}

    def spec(self, task: str):
        if not hasattr(self, task):
            raise ValueError(f"task {task!r} has no settings in TaskMix (tasks: {', '.join(self.weights())})")
        return getattr(self, task)


def allocate(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split `n` examples over tasks in proportion to `weights`, exactly (largest remainder)."""
    names = [k for k, w in weights.items() if w > 0]
    total = sum(weights[k] for k in names)
    if not names or total <= 0:
        raise AnygenError("no task has a weight > 0")
    raw = {k: n * weights[k] / total for k in names}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(names, key=lambda k: (-(raw[k] - counts[k]), names.index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


# ---- captioned sequences: several captioned images as one interleaved document -------------
SEQUENCE_JOIN = "then "  # joins the items of a captioned sequence


def sequence_text(captions) -> str:
    """The list a captioned sequence starts with: "c1, then c2, then c3"."""
    return ", ".join((SEQUENCE_JOIN if i else "") + c for i, c in enumerate(captions))


def captioned_sequence(captions, images) -> Document:
    """Several captioned images as one document: the whole list first, then each caption followed by
    its image ("c1" <image> "then c2" <image>). Given the list as a prompt, a model trained on these
    continues with the captions and their pictures: interleaved generation from captioned data."""
    segments = [Text(sequence_text(captions))]
    for j, (c, image) in enumerate(zip(captions, images)):
        segments += [Text((SEQUENCE_JOIN if j else "") + c), Image(image)]
    return Document(segments)


# ---- specs: what an example is made of, before the codecs run -----------------------------
@dataclass
class Media:
    """An image or audio clip under a cache key; `make()` produces it only on a cache miss."""

    kind: str  # "image" | "audio"
    key: Any  # hashable; equal keys must mean equal media
    make: Callable[[], Any]  # -> PIL image, or (waveform, sample_rate)

    @classmethod
    def image(cls, image: PILImage.Image, key: Any = None) -> "Media":
        """A PIL image; keyed by a hash of its pixels unless `key` is given."""
        if key is None:
            key = ("pixels", image.mode, image.size, hashlib.sha1(image.tobytes()).hexdigest())
        return cls("image", key, lambda: image)

    @classmethod
    def audio(cls, waveform: np.ndarray, sample_rate: int, key: Any = None) -> "Media":
        waveform = np.asarray(waveform, dtype=np.float32)
        if key is None:
            key = ("samples", int(sample_rate), hashlib.sha1(waveform.tobytes()).hexdigest())
        return cls("audio", key, lambda: (waveform, int(sample_rate)))


@dataclass
class Piece:
    """One stretch of a sequence: literal ids, text, or a media span."""

    kind: str  # "ids" | "text" | "image" | "audio"
    value: Any  # list[int] | str | Media
    loss: bool


@dataclass
class Spec:
    task: str
    pieces: list[Piece]
    dropped: str = ""  # which condition was replaced by <null>: "", "condition", "instruction", "image", "both"


@dataclass
class TokenSequence:
    task: str
    ids: np.ndarray  # (L,) int64
    loss: np.ndarray  # (L,) uint8, 1 where the token is a training target

    def __len__(self) -> int:
        return len(self.ids)


def _as_media(kind: str, value) -> Media:
    if isinstance(value, Media):
        return value
    if kind == "image":
        if not isinstance(value, PILImage.Image):
            raise TypeError(f"image must be a PIL image or Media, got {type(value).__name__}")
        return Media.image(value)
    if isinstance(value, Audio):
        return Media.audio(value.waveform, value.sample_rate)
    if isinstance(value, tuple) and len(value) == 2:
        return Media.audio(value[0], value[1])
    raise TypeError(f"audio must be (waveform, sample_rate), Audio or Media, got {type(value).__name__}")


class _Ids:
    """Markers resolved against the vocab at encode time."""

    BOS, EOS, NULL = "<bos>", "<eos>", "<null>"


def _marker(name: str) -> Piece:
    return Piece("ids", name, False)


def _layout(task: str, *, text: str | None = None, media=None, instruction: str | None = None, source=None,
            target=None, reasoning: str | tuple[str, str] | None = None, drop: str = "",
            loss_on_prompt: bool = False) -> list[Piece]:
    """The pieces of a conditional task; the one place the sequence layouts live (training and prompts)."""
    gen = True
    cond = loss_on_prompt
    if task in ("text_to_image", "text_to_audio"):
        kind = "image" if task == "text_to_image" else "audio"
        prompt = [_marker(_Ids.NULL) if drop else Piece("text", text, cond)]
        body = [Piece(kind, _as_media(kind, media), gen)] if media is not None else []
    elif task in ("image_to_text", "audio_to_text"):
        kind = "image" if task == "image_to_text" else "audio"
        prompt = [_marker(_Ids.NULL) if drop else Piece(kind, _as_media(kind, media), cond)]
        body = [Piece("text", text, gen)] if text is not None else []
    elif task == "edit":
        if drop not in ("",) + EDIT_DROPS:
            raise ValueError(f"edit drop must be one of {', '.join(EDIT_DROPS)} or empty, got {drop!r}")
        src = (_marker(_Ids.NULL) if drop in ("image", "both")
               else Piece("image", _as_media("image", source), cond))
        ins = (_marker(_Ids.NULL) if drop in ("instruction", "both")
               else Piece("text", instruction, cond))
        prompt = [ins, src]  # instruction first: fixed source->target offset (module docstring)
        body = [Piece("image", _as_media("image", target), gen)] if target is not None else []
    elif task == "describe_edit":
        prompt = [Piece("image", _as_media("image", source), cond), Piece("image", _as_media("image", target), cond)]
        body = [Piece("text", instruction, gen)] if instruction is not None else []
    elif task == "reasoned_edit":
        prompt = [Piece("text", instruction, cond), Piece("image", _as_media("image", source), cond)]
        body = ([Piece("text", reasoning, gen), Piece("image", _as_media("image", target), gen)]
                if target is not None else [])
    elif task == "reasoned_text":  # `reasoning` = (what the source shows, the plan): the plan is the answer
        if not isinstance(reasoning, tuple):
            raise ValueError("reasoned_text needs reasoning=(seen, plan)")
        seen, plan = reasoning
        prompt = [Piece("text", instruction, cond), Piece("text", seen, cond)]
        body = [Piece("text", plan, gen)]
    else:
        raise ValueError(f"unknown conditional task {task!r} (tasks: {', '.join(CONDITIONAL)})")
    end = [Piece("ids", _Ids.EOS, True)] if body else []
    return [_marker(_Ids.BOS)] + prompt + body + end


def _draw_drop(task: str, spec, rng: np.random.Generator) -> str:
    u = float(rng.random())
    if task == "edit":
        p1, p2, p3 = spec.p_null_instruction, spec.p_null_image, spec.p_null_both
        if u < p1:
            return "instruction"
        if u < p1 + p2:
            return "image"
        if u < p1 + p2 + p3:
            return "both"
        return ""
    return "condition" if u < spec.p_null else ""


# ---- task builders (generic: any source of captions, images, clips) ------------------------
def text_to_image(caption: str, image, spec: TaskSpec, rng: np.random.Generator) -> Spec:
    drop = _draw_drop("text_to_image", spec, rng)
    return Spec("text_to_image", _layout("text_to_image", text=caption, media=image, drop=drop,
                                         loss_on_prompt=spec.loss_on_prompt), drop)


def image_to_text(image, caption: str, spec: TaskSpec, rng: np.random.Generator) -> Spec:
    drop = _draw_drop("image_to_text", spec, rng)
    return Spec("image_to_text", _layout("image_to_text", text=caption, media=image, drop=drop,
                                         loss_on_prompt=spec.loss_on_prompt), drop)


def text_to_audio(text: str, audio, spec: TaskSpec, rng: np.random.Generator) -> Spec:
    drop = _draw_drop("text_to_audio", spec, rng)
    return Spec("text_to_audio", _layout("text_to_audio", text=text, media=audio, drop=drop,
                                         loss_on_prompt=spec.loss_on_prompt), drop)


def audio_to_text(audio, text: str, spec: TaskSpec, rng: np.random.Generator) -> Spec:
    drop = _draw_drop("audio_to_text", spec, rng)
    return Spec("audio_to_text", _layout("audio_to_text", text=text, media=audio, drop=drop,
                                         loss_on_prompt=spec.loss_on_prompt), drop)


def edit(source, instruction: str, target, spec: EditSpec, rng: np.random.Generator) -> Spec:
    drop = _draw_drop("edit", spec, rng)
    return Spec("edit", _layout("edit", source=source, instruction=instruction, target=target, drop=drop,
                                loss_on_prompt=spec.loss_on_prompt), drop)


def describe_edit(source, target, instruction: str, spec: TaskSpec, rng: np.random.Generator) -> Spec:
    return Spec("describe_edit", _layout("describe_edit", source=source, target=target, instruction=instruction,
                                         loss_on_prompt=spec.loss_on_prompt))


def reasoned_edit(source, instruction: str, target, text: str, spec: TaskSpec,
                  rng: np.random.Generator) -> Spec:
    """An edit that first says what it sees and what it will draw (`text`, in the world's plan form), then draws it."""
    return Spec("reasoned_edit", _layout("reasoned_edit", source=source, instruction=instruction, target=target,
                                         reasoning=text, loss_on_prompt=spec.loss_on_prompt))


def reasoned_text(instruction: str, seen: str, plan: str, spec: TaskSpec) -> Spec:
    """The text half of a reasoned edit without its pictures: instruction and `seen` (what the source
    shows, given) -> `plan` (what the edit makes of it). Dozens of tokens where the reasoned edit
    spends about 170, so a step holds several times more of the decision the model gets wrong most:
    which object the instruction names and what becomes of it."""
    return Spec("reasoned_text", _layout("reasoned_text", instruction=instruction, reasoning=(seen, plan),
                                         loss_on_prompt=spec.loss_on_prompt))


def document(doc: Document, task: str = "document", media_keys: dict[int, Any] | None = None) -> Spec:
    """A whole interleaved Document (stories, user documents): loss on every token but <bos>.

    `media_keys` maps segment index -> cache key (default: a hash of the pixels / samples).
    """
    media_keys = media_keys or {}
    pieces = [_marker(_Ids.BOS)]
    for i, seg in enumerate(doc):
        if isinstance(seg, Text):
            if seg.text:
                pieces.append(Piece("text", seg.text, True))
        elif isinstance(seg, Image):
            pieces.append(Piece("image", Media.image(seg.image, media_keys.get(i)), True))
        elif isinstance(seg, Audio):
            pieces.append(Piece("audio", Media.audio(seg.waveform, seg.sample_rate, media_keys.get(i)), True))
        else:
            raise TypeError(f"unknown segment type {type(seg).__name__}")
    pieces.append(Piece("ids", _Ids.EOS, True))
    return Spec(task, pieces)


# ---- prompts for the sampler (the same layouts, cut before the generated part) -------------
def _prompt_ids(tokenizer, pieces: list[Piece]) -> list[int]:
    ids: list[int] = []
    for p in pieces:
        if p.kind == "ids":
            ids.append(tokenizer.vocab.special(p.value))
        elif p.kind == "text":
            ids += tokenizer.encode_text(p.value)
        elif p.kind == "image":
            ids += tokenizer.image_span(_image_codes(tokenizer, p.value.make()))
        else:
            ids += tokenizer.audio_span(_audio_codes(tokenizer, p.value.make()))
    return encode_keeps(ids, tokenizer.vocab)


def _image_codes(tokenizer, value) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    return tokenizer.image_codes(value)


def _audio_codes(tokenizer, value) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    wave, sr = value
    return tokenizer.audio_codes(wave, sr)


def _codes_media(kind: str, value):
    """Prompt inputs may be raw media or ready codes (image (H, W), audio (n_q, F))."""
    if value is None:
        return None
    if torch.is_tensor(value):
        return Media(kind, None, lambda: value)
    if kind == "audio" and isinstance(value, Audio):
        value = (value.waveform, value.sample_rate)
    return Media(kind, None, lambda: value)


def task_prompt(tokenizer, task: str, *, text: str | None = None, image=None, audio=None,
                instruction: str | None = None, target=None, drop: str = "") -> list[int]:
    """The ids a sampler feeds before generating `task`'s output: exactly the training prompt.

    text_to_image/text_to_audio: `text`; image_to_text: `image`; audio_to_text: `audio`;
    edit and reasoned_edit: `image` (the source) and `instruction`; describe_edit: `image` (the
    source) and `target`. Images may be PIL images or codes (H, W);
    audio (waveform, sample_rate), an Audio segment or codes (n_q, F). `drop` names the
    condition replaced by <null>: "condition" (single-condition tasks) or, for edits,
    "instruction", "image" or "both". The generated part then starts with `<boi>` (image),
    `<boa>` (audio) or the text, and ends with `<eos>`.
    """
    if task not in CONDITIONAL:
        raise ValueError(f"task_prompt: {task!r} is not a conditional task ({', '.join(CONDITIONAL)})")
    if task == "edit":
        pieces = _layout("edit", source=_codes_media("image", image) if drop not in ("image", "both") else None,
                         instruction=instruction, drop=drop)
    elif task == "reasoned_edit":
        pieces = _layout(task, source=_codes_media("image", image), instruction=instruction)
    elif task == "describe_edit":
        pieces = _layout(task, source=_codes_media("image", image), target=_codes_media("image", target))
    elif task in ("text_to_image", "text_to_audio"):
        pieces = _layout(task, text=text, drop=drop)
    else:
        kind = "image" if task == "image_to_text" else "audio"
        pieces = _layout(task, media=_codes_media(kind, image if kind == "image" else audio) if not drop else None,
                         drop=drop)
    return _prompt_ids(tokenizer, pieces)


def null_condition_prompt(tokenizer, task: str, *, drop: str | None = None, image=None,
                          instruction: str | None = None) -> list[int]:
    """The unconditional prompt of `task` (see the module docstring for every form).

    Single-condition tasks: `<bos> <null>`. Edits: `drop="both"` (default) gives the null
    row `<bos> <null> <null>`; `drop="instruction"` the image-only row
    `<bos> span(image) <null>` (needs `image`); `drop="image"` gives `<bos> <null> instruction`.
    """
    if task == "edit":
        drop = drop or "both"
        if drop == "instruction" and image is None:
            raise ValueError("null_condition_prompt(edit, drop='instruction') needs the source image")
        if drop == "image" and instruction is None:
            raise ValueError("null_condition_prompt(edit, drop='image') needs the instruction")
        return task_prompt(tokenizer, "edit", image=image, instruction=instruction, drop=drop)
    return task_prompt(tokenizer, task, drop=drop or "condition")
