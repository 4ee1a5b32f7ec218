"""Typed options of the API's strategies, validated once where they are made.

The Python API and the CLI both build these (`EditOptions(best_of=16, reason=True)`), so a
value that one refuses the other refuses too, with the same one-line message. Names follow
diffusers: `guidance_scale`, `image_guidance_scale`, `num_inference_steps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

from anygen.errors import AnygenError
from anygen.sampling.settings import MAX_GUIDANCE_SCALE

MAX_BEST_OF = 256  # candidates per row; more is better served by a larger model than by more samples


def check_scale(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_GUIDANCE_SCALE:
        raise AnygenError(f"{name} must be a number in [0, {MAX_GUIDANCE_SCALE:g}] (1 = unguided), got {value!r}")
    return float(value)


def _count(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"at least {low}" if high is None else f"in {low}..{high}"
        raise AnygenError(f"{name} must be an integer {span}, got {value!r}")
    return value


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise AnygenError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class DrawOptions:
    """text -> image. `guidance_scale`: classifier-free guidance (None: the model's recommended
    scale, else 1 for the tokens head, the diffusion head's default otherwise); `num_inference_steps`:
    denoising steps (diffusion head only); `best_of`: candidates per image, the one under which the
    prompt is most likely as its caption is kept (tokens head only); `greedy`: True draws the most
    likely codes, False samples them, None decides by the call (`AnyGen.draw`: greedy for one image,
    sampled for several)."""

    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    best_of: int = 1
    greedy: bool | None = None

    def __post_init__(self):
        if self.guidance_scale is not None:
            object.__setattr__(self, "guidance_scale", check_scale(self.guidance_scale, "guidance_scale"))
        if self.num_inference_steps is not None:
            _count(self.num_inference_steps, "num_inference_steps", 1, 1000)
        _count(self.best_of, "best_of", 1, MAX_BEST_OF)
        if self.greedy is not None:
            _flag(self.greedy, "greedy")


@dataclass(frozen=True)
class EditOptions:
    """(image, instruction) -> edited image.

    guidance_scale / image_guidance_scale: InstructPix2Pix dual guidance on the instruction and
    on the source image (1 = unguided). editable: H*W flags over the code grid (row-major); codes
    not editable are copied from the source. best_of: candidates per edit; the one under which
    the instruction is most likely (`describe_edit`) is kept. reason: the model first writes its
    plan in words (`reasoned_edit`; needs the world's plan format). plan_in_words: with reason,
    the plan is written again from the instruction and what the source shows alone
    (`reasoned_text`). greedy_plan: with reason, the plan text is greedy and only pictures are
    sampled. retries: with reason and best_of > 1, rows none of whose pictures shows its plan are
    sampled `best_of` more times, up to `retries` times. refuse: an edit whose instruction names an
    object the source does not hold, or that would change nothing, raises `EditRefused` instead of
    returning a picture, as the world's plan format (`PlanFormat.refusal`) decides from the model's
    caption of the source (and, for reasoned edits, the plan they wrote). Models whose worlds have
    no plan format refuse nothing.
    """

    guidance_scale: float = 1.0
    image_guidance_scale: float = 1.0
    editable: tuple[bool, ...] | None = None
    best_of: int = 1
    reason: bool = False
    plan_in_words: bool = False
    greedy_plan: bool = False
    retries: int = 0
    refuse: bool = True

    def __post_init__(self):
        object.__setattr__(self, "guidance_scale", check_scale(self.guidance_scale, "guidance_scale"))
        object.__setattr__(self, "image_guidance_scale", check_scale(self.image_guidance_scale, "image_guidance_scale"))
        if self.editable is not None:
            if isinstance(self.editable, (str, bytes)) or not isinstance(self.editable, Sequence):
                raise AnygenError(f"editable must be a sequence of H*W booleans, got {type(self.editable).__name__}")
            object.__setattr__(self, "editable", tuple(bool(x) for x in self.editable))
        _count(self.best_of, "best_of", 1, MAX_BEST_OF)
        _count(self.retries, "retries", 0, 16)
        for name in ("reason", "plan_in_words", "greedy_plan", "refuse"):
            _flag(getattr(self, name), name)
        if (self.plan_in_words or self.greedy_plan) and not self.reason:
            raise AnygenError("plan_in_words and greedy_plan shape a reasoned edit: they need reason")
        if self.retries and not (self.reason and self.best_of > 1):
            raise AnygenError("retries draw again where no picture shows its plan: they need reason and best_of > 1")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0 or self.image_guidance_scale != 1.0


@dataclass(frozen=True)
class StoryOptions:
    """An interleaved story: the opening, then `n_steps` (picture, next sentence) turns.

    best_of: each picture sampled that many times, the one that best explains its text kept.
    reason: each later picture is a reasoned edit of the one before (needs a plan format).
    plan_in_words: with reason, those edits keep their text greedy and re-plan it in words.
    sentences: each later step writes that many sentences and keeps the one its picture explains best.
    """

    n_steps: int = 3
    best_of: int = 1
    reason: bool = False
    plan_in_words: bool = False
    sentences: int = 1

    def __post_init__(self):
        _count(self.n_steps, "n_steps", 1, 64)
        _count(self.best_of, "best_of", 1, MAX_BEST_OF)
        _count(self.sentences, "sentences", 1, 16)
        _flag(self.reason, "reason")
        _flag(self.plan_in_words, "plan_in_words")
        if self.plan_in_words and not self.reason:
            raise AnygenError("plan_in_words re-plans the reasoned edits of a story: it needs reason")

    @property
    def stepwise(self) -> bool:
        """Whether the story is written one picture at a time (any strategy on)."""
        return self.best_of > 1 or self.reason or self.sentences > 1


def resolve(cls, options, overrides: dict):
    """(`options` of type `cls` with the fields named in `overrides` replaced, the other overrides).

    The API's methods take an options object, its fields as keywords, or both; what is left
    are sampling settings (`GenerationConfig` fields such as `text=SamplingSettings(...)`)."""
    names = {f.name for f in fields(cls)}
    given = {k: overrides[k] for k in overrides if k in names}
    rest = {k: v for k, v in overrides.items() if k not in names}
    if options is None:
        return cls(**given), rest
    if not isinstance(options, cls):
        raise AnygenError(f"options must be {cls.__name__}, got {type(options).__name__}")
    return (replace(options, **given) if given else options), rest
