"""The protocols through which a world brings its data and knowledge to the library.

A *world* is a source of examples (synthetic scenes, emoji, speech, the user's folders) and
of what only it knows: what a reasoned edit's plan text says (`PlanFormat`), which regions of
an image a named part means (`regions`), how to judge outputs. The library (codecs, model,
sampler, `anygen.api`) never imports a world; it receives these objects. A strategy that
needs one (reasoned edits' self-check, plans in words) is unavailable, with a clear error,
when the model's worlds bring none. Worlds register by name in `anygen.worlds.WORLDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

EVAL_STREAM = 0x5EED  # held-out evaluation samples of a seed: never a training batch stream (those use 0..2)

if TYPE_CHECKING:
    import numpy as np

    from anygen.document import Document
    from anygen.tasks.layouts import Spec, TaskMix


@runtime_checkable
class PlanFormat(Protocol):
    """The text a reasoned edit writes before its picture: `<lead> <seen> <plan>`.

    `seen` says what the source shows, `plan` what the edit will draw. The sampler forces
    `lead`, allows `budget` text tokens before the picture, re-plans with `seen_prompt(seen)`
    as the prompt of the `reasoned_text` task, and keeps a picture whose caption
    `follows` its text. `refusal` turns down an edit whose instruction names an object the
    source does not hold, or that would change nothing (`anygen.api.options.EditOptions.refuse`).
    """

    lead: str  # every plan text starts with it
    budget: int  # the most text tokens written before the picture

    def split(self, text: str) -> tuple[str, str] | None:
        """(seen, plan) of a plan text, or None when it does not parse."""

    def seen_prompt(self, seen: str) -> str:
        """`seen` as the `reasoned_text` task's prompt writes it (the text the plan continues)."""

    def join(self, seen: str, plan: str) -> str:
        """The whole text of `seen` followed by a plan written after `seen_prompt(seen)`."""

    def follows(self, text: str, caption: str) -> bool:
        """Whether a picture whose caption is `caption` shows what `text` planned."""

    def refusal(self, instruction: str, seen: str, plan: str | None = None) -> str | None:
        """Why an edit by `instruction` should be refused, or None: `seen` is the model's caption of
        the source, `plan` the plan part of a reasoned edit's text (None for a plain edit). Optional:
        a plan format without it refuses nothing."""


class TaskSource(Protocol):
    """Samples one training example of a task as a `Spec` (`anygen.tasks.layouts`)."""

    tasks: tuple[str, ...]

    def sample(self, task: str, rng: np.random.Generator, split: str = "train") -> Spec: ...


class World(Protocol):
    """A world: its tasks, text, media, previews and optional strategies.

    Required: `name`, `tasks`, `task_source(mix)`, `text_corpus(n, rng)`, `preview(rng)`.
    Optional (None when the world has none): `plan_format`, `regions(spec, grid)` (H*W
    editable flags for a named region such as a grid cell), `image_batches(...)` /
    `audio_batches(...)` for codec training, and `evaluate(generator, ...)` (its suite).
    """

    name: str
    tasks: tuple[str, ...]
    plan_format: PlanFormat | None

    def task_source(self, mix: TaskMix) -> TaskSource: ...

    def text_corpus(self, n: int, rng: np.random.Generator) -> list[str]: ...

    def preview(self, rng: np.random.Generator) -> Document: ...
