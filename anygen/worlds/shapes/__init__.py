"""ShapesWorld as a world plugin: scenes, edits, melodies and stories with exact ground truth.

`world` holds the scenes and their text forms, `tasks` the task source, `plans` the plan
format of reasoned edits, `judges` the image and melody parsers, `suite` `anygen eval shapes`,
`media` the codec-training batches and `demo` the demo page.
"""

from __future__ import annotations

import numpy as np

from anygen.document import Document
from anygen.errors import AnygenError
from anygen.tasks.world import EVAL_STREAM
from anygen.worlds.shapes.plans import ShapesPlanFormat
from anygen.worlds.shapes.world import ShapesWorld, WorldConfig, melody_text

GRID_CELLS = 3  # scenes place objects in a 3x3 grid of cells; a region names a cell 0-8, row-major
PREVIEWS = ("shapes", "edits", "melodies", "stories")


class Shapes:
    """The `shapes` world (`anygen.tasks.world.World`): a `ShapesWorld` and its strategies."""

    name = "shapes"
    previews = PREVIEWS
    plan_format = ShapesPlanFormat()

    def __init__(self, config: WorldConfig | None = None, seed: int | None = None):
        self.world = ShapesWorld(WorldConfig(seed=seed) if config is None and seed is not None else config)

    @property
    def tasks(self) -> tuple[str, ...]:
        from anygen.worlds.shapes.tasks import SHAPES_TASKS

        return SHAPES_TASKS

    def task_source(self, mix):
        from anygen.worlds.shapes.tasks import ShapesTasks

        return ShapesTasks(self.world, mix)

    def text_corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """`n` captions, n/4 edit instructions and melody texts, n/20 stories (the corpus of the bundled
        model's text tokenizer; story sentences of single edits are not in it); with paraphrase phrasing
        also n/4 training-split phrased captions and instructions."""
        world, lines = self.world, []
        for _ in range(n):
            lines.append(world.sample_scene(rng).caption())
        for _ in range(max(1, n // 4)):
            edit = world.sample_edit(rng)
            lines += [edit.instruction, melody_text(world.sample_melody(rng))]
        for _ in range(max(1, n // 20)):
            lines.append(world.sample_story(rng).text)
        if world.config.phrasing == "paraphrase":  # the training phrasings, so a text tokenizer learns their words
            from anygen.worlds.shapes.phrasing import phrase_caption, phrase_instruction

            for _ in range(max(1, n // 4)):
                lines += [phrase_caption(world.sample_scene(rng), rng).text,
                          phrase_instruction(world.sample_edit(rng), rng).text]
        return lines

    def preview(self, rng: np.random.Generator, kind: str = "shapes") -> Document:
        return self.world.sample_document(kind, rng)

    def regions(self, spec: str, grid: tuple[int, int]) -> list[bool]:
        """H*W editable flags of the cells in `spec` ("0,4": top left and center, row-major 3x3)."""
        h, w = grid
        editable = [False] * (h * w)
        for cell in spec.split(","):
            if not cell.strip().isdigit() or not 0 <= int(cell) < GRID_CELLS ** 2:
                raise AnygenError(f"--mask: {cell!r} is not a cell 0-8 (row-major 3x3) or box:r0,c0,r1,c1")
            row, col = divmod(int(cell), GRID_CELLS)
            for r in range(h):
                for c in range(w):
                    if r * GRID_CELLS // h == row and c * GRID_CELLS // w == col:
                        editable[r * w + c] = True
        return editable

    # -- codec training and evaluation --
    def image_batches(self, data, batch_size: int, seed: int, image_size: int):
        from anygen.worlds.shapes.media import ShapesImages

        return ShapesImages(batch_size, image_size, seed, data.seed, data.split, data.max_objects, data.prefetch,
                            data.fill)

    def audio_batches(self, data, batch_size: int, seed: int, sample_rate: int):
        from anygen.worlds.shapes.media import MelodyAudio

        return MelodyAudio(batch_size, sample_rate, data.clip_seconds, seed, data.seed, data.prefetch,
                           data.crop_align, data.melody_timbres)

    def eval_scenes(self, n: int, seed: int) -> list:
        """`n` scenes (1–3 objects, uniform) from the evaluation stream of `seed`."""
        world = ShapesWorld(WorldConfig(seed=seed))
        rng = np.random.default_rng([seed & 0xFFFFFFFF, EVAL_STREAM])
        return [world.sample_scene(rng) for _ in range(n)]

    def eval_images(self, n: int, seed: int) -> tuple[list, list]:
        """(images, their scenes) held out for codec evaluation."""
        from anygen.worlds.shapes.world import render_scene

        scenes = self.eval_scenes(n, seed)
        return [render_scene(s) for s in scenes], scenes

    def eval_audio(self, n: int, seed: int, sample_rate: int) -> tuple[list, list]:
        """(waveforms, their note tuples) held out for codec evaluation."""
        from anygen.worlds.shapes.world import render_melody

        world = ShapesWorld(WorldConfig(seed=seed))
        rng = np.random.default_rng([seed & 0xFFFFFFFF, EVAL_STREAM])
        notes = [world.sample_melody(rng) for _ in range(n)]
        return [render_melody(m, sample_rate=sample_rate) for m in notes], notes

    def judge_images(self, originals: list, recons: list, scenes: list) -> dict[str, float]:
        """The scene judge's exact-scene accuracy on reconstructions (and on the originals), per object count."""
        from anygen.worlds.shapes.judges import judge_image

        right = np.array([judge_image(im) == s for im, s in zip(recons, scenes)])
        baseline = np.array([judge_image(im) == s for im, s in zip(originals, scenes)])
        out = {"judge_accuracy": float(right.mean()), "judge_accuracy_originals": float(baseline.mean())}
        counts = np.array([len(s.objects) for s in scenes])
        for k in (1, 2, 3):
            if (counts == k).any():
                out[f"judge_accuracy_{k}obj"] = float(right[counts == k].mean())
        return out

    def judge_audio(self, originals: list, recons: list, notes: list, sample_rate: int) -> dict[str, float]:
        """The melody judge's exact-notes accuracy on reconstructions (and on the originals)."""
        from anygen.worlds.shapes.judges import judge_melody

        right = [judge_melody(r, sample_rate) == tuple(m) for r, m in zip(recons, notes)]
        base = [judge_melody(w, sample_rate) == tuple(m) for w, m in zip(originals, notes)]
        return {"note_accuracy": float(np.mean(right)), "note_accuracy_originals": float(np.mean(base))}
