"""AffineJitter: reproducible small warps, the identity for variant 0, bad settings refused."""

import numpy as np
import pytest
from PIL import Image as PILImage

from anygen.data.augment import AffineJitter
from anygen.errors import AnygenError


@pytest.fixture
def square():
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[10:22, 12:20] = 255
    return PILImage.fromarray(pixels)


def test_variant_zero_is_the_picture(square):
    assert AffineJitter().apply(square, 5, 0) is square


def test_a_variant_is_the_same_warp_every_time_and_seeds_differ(square):
    jitter = AffineJitter()
    first = np.asarray(jitter.apply(square, (3, 4), 2))
    assert np.array_equal(first, np.asarray(jitter.apply(square, (3, 4), 2)))
    assert not np.array_equal(first, np.asarray(jitter.apply(square, (3, 5), 2)))
    assert not np.array_equal(first, np.asarray(jitter.apply(square, (3, 4), 3)))
    assert first.shape == (32, 32, 3)


def test_no_jitter_leaves_the_picture_unchanged(square):
    still = AffineJitter(rotate=0, scale=0, shear=0, shift=0).apply(square, 1, 1)
    assert np.array_equal(np.asarray(still), np.asarray(square))


def test_a_pure_shift_moves_the_ink(square):
    moved = np.asarray(AffineJitter(rotate=0, scale=0, shear=0, shift=0.2).apply(square, 0, 1), float)[..., 0]
    original = np.asarray(square, float)[..., 0]
    assert not np.array_equal(moved, original)
    assert abs(moved.sum() - original.sum()) / original.sum() < 0.05  # still inside the frame: same ink


@pytest.mark.parametrize("field,value", [("rotate", -1), ("rotate", 90), ("scale", 0.9), ("shear", 45),
                                         ("shift", 0.5)])
def test_out_of_range_settings_are_refused(field, value):
    with pytest.raises(AnygenError, match=field):
        AffineJitter(**{field: value})
