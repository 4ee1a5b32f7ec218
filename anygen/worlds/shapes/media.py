"""ShapesWorld's batch sources for codec training: rendered scenes and melodies."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image as PILImage

from anygen.codecs.image import images_to_tensor
from anygen.data.media_sources import BatchSource, fixed_length
from anygen.worlds.shapes import world as shapes
from anygen.worlds.shapes.world import ShapesWorld, WorldConfig, render_melody, render_scene
from anygen.worlds.shapes.timbres import render_timbre_melody, sample_timbre


class ShapesImages(BatchSource):
    """Fresh random ShapesWorld scenes, rendered at `image_size`.

    With `fill` > 0 the scenes are denser than the world's 1–3 objects: every cell holds an
    object with probability `fill` (at least one). Codes are local, so a dense scene shows the
    codec the same patches as sparse ones, only more of them per image (about 2.7× the object
    pixels per step at fill 0.6): the same training signal for less compute. Objects are drawn
    from the split's colour–shape pairs and rendered exactly like `render_scene`.
    """

    def __init__(self, batch_size: int, image_size: int = 64, seed: int = 0, world_seed: int = 0,
                 split: str = "train", max_objects: int = 3, prefetch: int = 0, fill: float = 0.0):
        super().__init__(batch_size, seed, prefetch)
        self.world = ShapesWorld(WorldConfig(seed=world_seed))
        self.render = render_scene
        self.image_size, self.split, self.max_objects, self.fill = image_size, split, max_objects, fill

    def dense_image(self, rng) -> PILImage.Image:
        cells = [c for c in range(9) if rng.random() < self.fill] or [int(rng.integers(9))]
        pairs = self.world.train_pairs if self.split == "train" else shapes.ALL_PAIRS
        size = self.image_size
        canvas = np.full((size, size, 3), 255.0, np.float32)  # (H, W, 3), as in shapes.render_scene
        for cell in cells:
            color, shape = pairs[int(rng.integers(len(pairs)))].split()
            obj_size = shapes.SIZES[int(rng.integers(len(shapes.SIZES)))]
            cx, cy = shapes.cell_center(cell, size)
            alpha = shapes.shape_coverage(shape, cx, cy, shapes.object_px(obj_size, size), size, size)[..., None]
            canvas = canvas * (1 - alpha) + np.asarray(shapes.COLORS[color], np.float32) * alpha
        return PILImage.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")

    def scenes(self, rng, n: int) -> list:
        out = []
        for _ in range(n):
            k = int(rng.integers(1, self.max_objects + 1))
            out.append(self.world.sample_scene(rng, n_objects=k, split=self.split))
        return out

    def make_batch(self, rng, batch_size):
        if self.fill > 0:
            return images_to_tensor([self.dense_image(rng) for _ in range(batch_size)], self.image_size)
        scenes = self.scenes(rng, batch_size)
        return images_to_tensor([self.render(s, size=self.image_size) for s in scenes], self.image_size)


class MelodyAudio(BatchSource):
    """ShapesWorld melodies (1–4 notes of 0.25 s): a shorter melody is padded with silence
    to `clip_seconds`, a longer one cropped at a random multiple of `crop_align` samples
    (short, frame-aligned crops: more note onsets per CPU second, never all silence).
    `melody_timbres` "augmented": `WorldConfig.augmented_share` of them are played in a random
    training-split timbre (`anygen.worlds.shapes.timbres`) instead of the reference one."""

    def __init__(self, batch_size: int, sample_rate: int = 16000, clip_seconds: float = 1.0,
                 seed: int = 0, world_seed: int = 0, prefetch: int = 0, crop_align: int = 1,
                 melody_timbres: str = "reference"):
        super().__init__(batch_size, seed, prefetch)
        self.world = ShapesWorld(WorldConfig(seed=world_seed, melody_timbres=melody_timbres))
        self.sample_rate, self.length = sample_rate, int(round(clip_seconds * sample_rate))
        self.align = crop_align

    def render(self, notes, rng) -> np.ndarray:
        c = self.world.config
        if c.melody_timbres == "augmented" and rng.random() < c.augmented_share:
            return render_timbre_melody(notes, sample_timbre(rng, "train"), self.sample_rate)
        return render_melody(notes, sample_rate=self.sample_rate)

    def make_batch(self, rng, batch_size):
        waves = [fixed_length(self.render(self.world.sample_melody(rng), rng), self.length, rng, self.align)
                 for _ in range(batch_size)]
        return torch.from_numpy(np.stack(waves))[:, None, :]  # (B,1,T)
