"""ShapesWorld as a task source: scenes, edits, melodies and stories -> `Spec`s."""

from __future__ import annotations

import numpy as np

from anygen.config import ConfigError
from anygen.tasks.layouts import (Media, Piece, Spec, TaskMix, _Ids, _marker, audio_to_text, describe_edit, edit,
                                  image_to_text, reasoned_edit, reasoned_text, text_to_audio, text_to_image)
from anygen.worlds.shapes.phrasing import phrase_caption, phrase_instruction
from anygen.worlds.shapes.plans import REASON_FORMS, reasoning, reasoning_parts
from anygen.worlds.shapes.timbres import render_timbre_melody, sample_timbre
from anygen.worlds.shapes.world import melody_text

SHAPES_TASKS = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "edit", "describe_edit",
                "reasoned_edit", "reasoned_text", "story")


class ShapesTasks:
    """Samples a Spec of any task from a ShapesWorld; scenes and melodies are the cache keys."""

    tasks = SHAPES_TASKS

    def __init__(self, world, mix: TaskMix):
        if mix.reasoned_edit.form not in REASON_FORMS:
            raise ConfigError(f"tasks.reasoned_edit.form: must be one of {', '.join(REASON_FORMS)}, "
                              f"got {mix.reasoned_edit.form!r}")
        self.world, self.mix = world, mix

    def _scene(self, scene) -> Media:
        size = self.world.config.image_size
        return Media("image", ("scene", size, scene), lambda: self.world.render(scene))

    def _melody(self, notes) -> Media:
        c = self.world.config
        return Media("audio", ("melody", c.sample_rate, c.note_seconds, tuple(notes)),
                     lambda: (self.world.render_melody(notes), c.sample_rate))

    def _heard_melody(self, notes, rng: np.random.Generator) -> Media:
        """The audio of an audio->text example: `WorldConfig.augmented_share` of them in a random
        training-split timbre when `melody_timbres` is "augmented" (draws nothing from `rng` otherwise,
        so reference streams are unchanged)."""
        c = self.world.config
        if c.melody_timbres != "augmented" or rng.random() >= c.augmented_share:
            return self._melody(notes)
        timbre = sample_timbre(rng, "train")
        return Media("audio", ("melody", c.sample_rate, timbre, tuple(notes)),
                     lambda: (render_timbre_melody(notes, timbre, c.sample_rate), c.sample_rate))

    def _paraphrase(self, rng: np.random.Generator) -> bool:
        """Whether this example's input text is a paraphrase (`WorldConfig.phrasing`); draws nothing
        from `rng` with canonical phrasing, so canonical streams are unchanged."""
        c = self.world.config
        return c.phrasing == "paraphrase" and rng.random() < c.paraphrase_share

    def sample(self, task: str, rng: np.random.Generator, split: str = "train") -> Spec:
        w, mix = self.world, self.mix
        if task == "text_to_image":
            scene = w.sample_scene(rng, split=split)
            text = phrase_caption(scene, rng).text if self._paraphrase(rng) else scene.caption()
            return text_to_image(text, self._scene(scene), mix.text_to_image, rng)
        if task == "image_to_text":
            scene = w.sample_scene(rng, split=split)
            return image_to_text(self._scene(scene), scene.caption(), mix.image_to_text, rng)
        if task == "text_to_audio":
            notes = w.sample_melody(rng)
            return text_to_audio(melody_text(notes), self._melody(notes), mix.text_to_audio, rng)
        if task == "audio_to_text":
            notes = w.sample_melody(rng)
            return audio_to_text(self._heard_melody(notes, rng), melody_text(notes), mix.audio_to_text, rng)
        if task in ("edit", "describe_edit", "reasoned_edit", "reasoned_text"):
            e = w.sample_edit(rng, split=split)
            p = mix.spec(task).p_narrative if task != "edit" else 0.0  # story sentences instead of imperatives
            text = e.narrative() if p > 0 and rng.random() < p else e.instruction
            if task != "describe_edit" and text == e.instruction and self._paraphrase(rng):
                text = phrase_instruction(e, rng).text  # an input: outputs (describe_edit, plans) stay canonical
            if task == "reasoned_text":
                return reasoned_text(text, *reasoning_parts(mix.reasoned_edit.form, e), mix.reasoned_text)
            if task == "reasoned_edit":
                why = reasoning(mix.reasoned_edit.form, e)
                return reasoned_edit(self._scene(e.source), text, self._scene(e.target), why, mix.reasoned_edit, rng)
            if task == "describe_edit":  # stories are re-ranked by their sentences: some answers are narrative
                return describe_edit(self._scene(e.source), self._scene(e.target), text, mix.describe_edit, rng)
            return edit(self._scene(e.source), text, self._scene(e.target), mix.edit, rng)
        if task == "story":
            return self.story(w.sample_story(rng, split=split))
        raise ValueError(f"ShapesWorld has no task {task!r} (tasks: {', '.join(SHAPES_TASKS)})")

    def story(self, story) -> Spec:
        """The world's `story_document(story)` as a Spec, built from the steps so that cached
        scenes and melodies are not rendered again (a test checks it equals the document's encoding)."""
        pieces = [_marker(_Ids.BOS)]
        for step in story.steps:
            pieces += [Piece("text", step.text, True), Piece("image", self._scene(step.scene), True)]
            if step.melody:
                pieces += [Piece("text", melody_text(step.melody), True),
                           Piece("audio", self._melody(step.melody), True)]
        pieces.append(Piece("ids", _Ids.EOS, True))
        return Spec("story", pieces)
