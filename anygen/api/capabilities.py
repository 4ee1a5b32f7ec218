"""What a model directory says about itself that the API acts on: the tasks it learned and the
defaults it recommends (both in `anygen_decoder.json`).

- `"tasks"` (written by the decoder trainer from its shards' recipe): asking a model for a task
  it was never trained on is a one-line `AnygenError` naming the task and the model's tasks,
  not a meaningless sample. A model directory without the record (older models) is not checked.
- `"recommended"`: defaults used where the caller sets none; the caller's values always win.
  `{"guidance_scale": 3.0, "image": {"temperature": 1.0, "top_k": 64}}`: `guidance_scale` is
  text->image classifier-free guidance; `image` (`SamplingSettings` fields) is how `draw`
  samples images when it samples (n > 1, or `greedy=False`); `audio_max_frames` bounds the audio
  `say` writes when the caller gives no `max_frames` (a speech model's sentences outlast the
  sampler's default of 64 codec frames). Write it with
  `write_recommended(directory, ...)` after measuring the settings on held-out prompts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from anygen.api.options import check_scale
from anygen.config import ConfigError
from anygen.errors import AnygenError
from anygen.io import atomic_write_bytes
from anygen.sampling.settings import SamplingSettings

META_FILE = "anygen_decoder.json"  # the model directory's record (anygen.model.decoder)
# How draw samples images when nothing else says: the `sampling/best_of_n.yaml` preset
# (top-k 64 keeps the sampled codes on the likely ones, so the images stay on topic).
SAMPLED_IMAGE = SamplingSettings(temperature=1.0, top_k=64)
# What each task lets a user do, for "this model was not trained to ..." (other names print as is)
TASK_PHRASES = {
    "text_to_image": "draw images from text", "image_to_text": "caption images",
    "text_to_audio": "turn text into audio", "audio_to_text": "transcribe audio", "edit": "edit images",
    "describe_edit": "describe edits", "reasoned_edit": "edit images with reasoning",
    "reasoned_text": "plan edits in words", "story": "write illustrated stories",
}


@dataclass(frozen=True)
class Recommended:
    """A model's recommended defaults (see the module docstring); None: not recommended."""

    guidance_scale: float | None = None
    image: SamplingSettings | None = None
    audio_max_frames: int | None = None

    def __post_init__(self):
        if self.audio_max_frames is not None and (isinstance(self.audio_max_frames, bool) or not isinstance(
                self.audio_max_frames, int) or self.audio_max_frames < 1):
            raise AnygenError(f"audio_max_frames: expected a positive integer, got {self.audio_max_frames!r}")
        if self.guidance_scale is not None:
            object.__setattr__(self, "guidance_scale", check_scale(self.guidance_scale, "guidance_scale"))
        if isinstance(self.image, dict):
            try:
                object.__setattr__(self, "image", SamplingSettings(**self.image))
            except TypeError as e:  # an unknown key
                raise AnygenError(f"image: {e}") from None
        elif self.image is not None and not isinstance(self.image, SamplingSettings):
            raise AnygenError(f"image: expected sampling settings, got {type(self.image).__name__}")

    @classmethod
    def of(cls, record, where: str = META_FILE) -> Recommended:
        """The `"recommended"` record of a model directory, checked once; a bad value names the field."""
        if record is None:
            return cls()
        if not isinstance(record, dict):
            raise AnygenError(f'{where}: "recommended" must be a mapping, got {type(record).__name__}')
        if unknown := sorted(set(record) - {f.name for f in fields(cls)}):
            raise AnygenError(f'{where}: "recommended" has unknown key {unknown[0]!r} '
                              f"(known: {', '.join(f.name for f in fields(cls))})")
        try:
            return cls(**record)
        except (AnygenError, ConfigError) as e:
            raise AnygenError(f'{where}: "recommended" {e}') from None

    def to_dict(self) -> dict:
        out = {} if self.guidance_scale is None else {"guidance_scale": self.guidance_scale}
        if self.image is not None:
            out["image"] = asdict(self.image)
        if self.audio_max_frames is not None:
            out["audio_max_frames"] = self.audio_max_frames
        return out


class Capabilities:
    """The tasks a model learned (None: not recorded, nothing is refused) and its recommended defaults."""

    def __init__(self, tasks: Sequence[str] | None = None, recommended: Recommended | None = None,
                 model_type: str | None = None, why_not: dict[str, str] | None = None):
        self.tasks = None if tasks is None else tuple(tasks)
        self.recommended = recommended or Recommended()
        self.model_type, self.why_not = model_type, dict(why_not or {})

    @classmethod
    def of(cls, meta: dict) -> Capabilities:
        tasks = meta.get("tasks")
        if tasks is not None and (not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)):
            raise AnygenError(f'{META_FILE}: "tasks" must be a list of task names, got {tasks!r}')
        return cls(tasks, Recommended.of(meta.get("recommended")), meta.get("model_type"), meta.get("why_not"))

    def require(self, *tasks: str, why: str = "") -> None:
        """Raise, naming the first of `tasks` the model was not trained on (`why`: what needs it)."""
        if self.tasks is None:
            return
        for task in tasks:
            if task not in self.tasks:
                phrase = TASK_PHRASES.get(task, f"do the {task} task")
                if self.model_type:  # a released model adapted by anygen.interop: say which and why
                    reason = self.why_not.get(task, "anygen has no layout for it on this model")
                    raise AnygenError(f"{why + ': ' if why else ''}this {self.model_type} model cannot {phrase}: "
                                      f"{reason} (it can: {', '.join(self.tasks)})")
                raise AnygenError(f"{why + ': ' if why else ''}this model was not trained to {phrase} "
                                  f"(its tasks: {', '.join(self.tasks) or 'none recorded'})")


def edit_tasks(options) -> list[tuple[str, str]]:
    """(task, why) pairs an edit with `EditOptions` needs, the edit itself first."""
    needs = [("reasoned_edit" if options.reason else "edit", "")]
    if options.plan_in_words:
        needs.append(("reasoned_text", "plan_in_words re-plans in words"))
    if options.best_of > 1:
        needs.append(("describe_edit", "best_of ranks edits by how they describe the instruction"))
        if options.reason:
            needs.append(("image_to_text", "best_of with reason checks each picture's caption against its plan"))
    return needs


def story_tasks(options) -> list[tuple[str, str]]:
    """(task, why) pairs a story with `StoryOptions` needs, the story itself first."""
    needs = [("story", "")]
    if options.best_of > 1:
        needs += [("image_to_text", "best_of ranks a story's first picture by its caption"),
                  ("describe_edit", "best_of ranks a story's later pictures as edits")]
    if options.sentences > 1:
        needs.append(("describe_edit", "sentences ranks a story's sentences by their pictures"))
    if options.reason:
        needs.append(("reasoned_edit", "reason draws a story's later pictures as reasoned edits"))
    return needs


def write_recommended(directory: str | os.PathLike, recommended: Recommended | dict) -> Path:
    """Record `recommended` in a model directory's `anygen_decoder.json` (checked, written atomically)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise AnygenError(f"{directory}: not a model directory (missing {META_FILE})")
    if isinstance(recommended, dict):
        recommended = Recommended.of(recommended, where="recommended")
    meta = json.loads(path.read_text())
    meta["recommended"] = recommended.to_dict()
    atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())
    return path
