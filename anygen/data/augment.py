"""Image augmentation for training examples: small random affine warps.

A data set of a few thousand pictures is memorised by a decoder within a few epochs (its
held-out loss rises while the training loss falls). Each training picture can instead appear
as one of several warped variants: rotated, scaled, sheared and shifted a little, the way
handwriting or framing varies, with its content unchanged. `AffineJitter` draws a variant's
warp from its own seed, so a variant is the same picture every time it is drawn (token
shards cache a picture's codes by key) and a world can name it by (index, variant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from anygen.config import check


@dataclass(frozen=True)
class AffineJitter:
    """Random affine warps about the image centre: rotation within ±`rotate` degrees, scale in
    [1 - `scale`, 1 + `scale`], shear within ±`shear` degrees, shift within ±`shift` of the side
    in each axis; uncovered pixels take `fill`. Variant 0 is the picture itself."""

    rotate: float = 12.0
    scale: float = 0.1
    shear: float = 8.0
    shift: float = 0.07
    fill: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self):
        for name, top in (("rotate", 45.0), ("scale", 0.5), ("shear", 30.0), ("shift", 0.25)):
            value = getattr(self, name)
            check(0 <= value <= top, name, f"must be in [0, {top:g}], got {value}")

    def apply(self, image: PILImage.Image, seed: int | tuple[int, ...], variant: int) -> PILImage.Image:
        """`image` warped by variant `variant` of the warps `seed` names (0: unchanged)."""
        if variant == 0:
            return image
        rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), int(variant)])
        angle = math.radians(rng.uniform(-self.rotate, self.rotate))
        shear = math.radians(rng.uniform(-self.shear, self.shear))
        zoom = rng.uniform(1 - self.scale, 1 + self.scale)
        w, h = image.size
        dx, dy = rng.uniform(-self.shift, self.shift, 2) * (w, h)
        # forward map: x' = A (x - c) + c + d, with A = zoom * rotation * shear
        cos, sin, tan = math.cos(angle), math.sin(angle), math.tan(shear)
        a = zoom * np.array([[cos, cos * tan - sin], [sin, sin * tan + cos]])
        inverse = np.linalg.inv(a)  # PIL wants the output->input map
        cx, cy = w / 2, h / 2
        offset = np.array([cx, cy]) - inverse @ np.array([cx + dx, cy + dy])
        coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
        return image.transform(image.size, PILImage.Transform.AFFINE, coeffs, PILImage.Resampling.BILINEAR,
                               fillcolor=self.fill)
