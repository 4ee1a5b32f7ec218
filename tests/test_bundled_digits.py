"""The package ships a digits model (`anygen.load("digits")`): small, and it draws and reads digits
as an independent classifier sees them."""

import numpy as np

import anygen
from anygen.api import bundled_models
from anygen.worlds.digits import caption, parse_digit
from anygen.worlds.digits.classifier import load_classifier

BUDGET_BYTES = 10e6  # the largest digits model the package ships


def test_digits_model_is_bundled_by_name_within_the_budget():
    directory = bundled_models()["digits"]
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert size < BUDGET_BYTES, f"the digits model is {size / 1e6:.1f} MB, over {BUDGET_BYTES / 1e6:.0f} MB"
    gen = anygen.load("digits")
    assert tuple(gen.capabilities.tasks) == ("text_to_image", "image_to_text", "document")
    assert gen.capabilities.recommended.guidance_scale == 3.0


def test_digits_model_draws_different_sevens_and_reads_them():
    gen = anygen.load("digits")
    for prompt in (caption(7, 0), caption(7, 1), caption(7, 2)):  # each caption form it accepts
        images = gen.draw(prompt, n=4, seed=0)
        pixels = [np.asarray(im, dtype=np.float32) for im in images]
        assert all(np.abs(a - b).mean() > 1 for k, a in enumerate(pixels) for b in pixels[k + 1:])  # sampled
        assert (load_classifier().predict(images) == 7).sum() >= 3, prompt
        assert sum(parse_digit(text) == 7 for text in gen.caption_batch(images)) >= 3, prompt
