"""Judges: accuracy on clean and mildly degraded renders, and "unparseable" rather than guesses.

The full measurement (n=2000, targets >= 99.5% clean and >= 97% degraded) is
`python -m anygen.worlds.shapes.judges`; these tests use smaller samples and slightly lower bars.
"""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from anygen.worlds.shapes.world import COLORS, Obj, Scene, ShapesWorld, WorldConfig, render_melody, render_scene
from anygen.worlds.shapes.judges import (degrade, degrade_audio, judge_image, judge_melody, measure_judges, parse_image,
                                parse_melody)

N = 150


def _accuracy(degraded: bool, seed: int) -> tuple[float, float]:
    world = ShapesWorld(WorldConfig(seed=seed))
    rng = np.random.default_rng(seed)
    img_ok = mel_ok = 0
    for _ in range(N):
        scene = world.sample_scene()
        image = render_scene(scene)
        notes = world.sample_melody()
        wave = render_melody(notes)
        if degraded:
            image, wave = degrade(image, rng), degrade_audio(wave, rng)
        img_ok += judge_image(image) == scene
        mel_ok += judge_melody(wave, 16000) == notes
    return img_ok / N, mel_ok / N


def test_judges_on_clean_renders():
    img, mel = _accuracy(degraded=False, seed=101)
    assert img >= 0.99 and mel >= 0.99


def test_judges_on_degraded_renders():
    img, mel = _accuracy(degraded=True, seed=202)
    assert img >= 0.96 and mel >= 0.96


def test_measure_judges_reports_rates():
    out = measure_judges(n=20, seed=3, degraded=True)
    assert set(out) >= {"image.exact", "image.unparseable", "image.n", "melody.exact", "melody.unparseable",
                        "melody.n"}
    assert out["image.n"] == 20 and 0 <= out["image.unparseable"] <= 1 - out["image.exact"] + 1e-9


def test_degrade_is_mild_and_seeded():
    img = render_scene(Scene((Obj("circle", "red", "large", 4),)))
    a = degrade(img, np.random.default_rng(0))
    b = degrade(img, np.random.default_rng(0))
    assert a.size == img.size and np.array_equal(np.asarray(a), np.asarray(b))
    diff = np.abs(np.asarray(a, int) - np.asarray(img, int))
    assert 0 < diff.mean() < 10
    w = render_melody(["C", "E"])
    noisy = degrade_audio(w, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(w ** 2) / np.mean((noisy - w * (noisy @ w) / (w @ w)) ** 2))
    assert 17 < snr < 23


@pytest.mark.parametrize("size", [32, 96, 128])
def test_judge_resizes_other_image_sizes(size):
    world = ShapesWorld(WorldConfig(seed=size))
    for _ in range(10):
        scene = world.sample_scene()
        assert judge_image(render_scene(scene, size)) == scene
    rgba = render_scene(scene).convert("RGBA")
    assert judge_image(rgba) == scene


def _canvas():
    im = Image.new("RGB", (64, 64), "white")
    return im, ImageDraw.Draw(im)


def test_garbage_images_are_unparseable():
    rng = np.random.default_rng(0)
    assert judge_image(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))) is None
    assert judge_image(Image.new("RGB", (64, 64), "white")) is None  # zero objects
    assert parse_image(Image.new("RGB", (64, 64), "white")).reason == "no objects"
    assert judge_image(Image.new("RGB", (64, 64), "black")) is None
    faint = Image.fromarray((255 - rng.integers(0, 40, (64, 64, 3))).astype(np.uint8))
    assert judge_image(faint) is None
    cases = {
        "gray blob": lambda d: d.ellipse((23, 23, 41, 41), fill=(128, 128, 128)),
        "ellipse": lambda d: d.ellipse((22, 27, 42, 37), fill=COLORS["red"]),
        "diamond": lambda d: d.polygon([(32, 22), (42, 32), (32, 42), (22, 32)], fill=COLORS["red"]),
        "upside-down triangle": lambda d: d.polygon([(23, 23), (41, 23), (32, 41)], fill=COLORS["red"]),
        "off-centre": lambda d: d.rectangle((15, 23, 33, 41), fill=COLORS["red"]),
        "between yellow and orange": lambda d: d.rectangle((23, 23, 41, 41), fill=(240, 165, 30)),
        "pale": lambda d: d.rectangle((23, 23, 41, 41), fill=(240, 200, 200)),
        "two colours": lambda d: (d.rectangle((23, 23, 41, 41), fill=COLORS["red"]),
                                  d.rectangle((32, 23, 41, 41), fill=COLORS["blue"])),
        "too big": lambda d: d.rectangle((5, 5, 55, 55), fill=COLORS["green"]),
        "between sizes": lambda d: d.rectangle((26, 26, 39, 39), fill=COLORS["green"]),
        "speck": lambda d: d.rectangle((5, 5, 7, 7), fill=COLORS["blue"]),
    }
    for name, draw in cases.items():
        im, d = _canvas()
        draw(d)
        assert judge_image(im) is None, name


def test_artifacts_next_to_real_objects():
    scene = Scene((Obj("circle", "red", "large", 3), Obj("square", "red", "large", 4)))
    base = np.asarray(render_scene(scene))
    tiny = base.copy()
    tiny[5, 50:52] = COLORS["blue"]  # a 2-px speck is noise, not an object
    assert judge_image(Image.fromarray(tiny)) == scene
    bridged = base.copy()
    bridged[30:34, 18:26] = COLORS["red"]  # two objects merged into one blob
    assert judge_image(Image.fromarray(bridged)) is None
    smudge = base.copy()
    smudge[2:10, 45:60] = (215, 215, 235)  # a washed-out extra object must not be silently dropped
    assert judge_image(Image.fromarray(smudge)) is None
    four = Scene((Obj("circle", "red", "small", 0), Obj("circle", "red", "small", 1), Obj("circle", "red", "small", 2)))
    extra = np.minimum(np.asarray(render_scene(four)),
                       np.asarray(render_scene(Scene((Obj("square", "blue", "small", 8),)))))
    assert judge_image(Image.fromarray(extra)) is None  # four objects


def test_melody_judge_unparseable_inputs():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    assert judge_melody(rng.normal(0, 0.3, 8000), 16000) is None  # noise
    assert judge_melody(np.zeros(8000), 16000) is None  # silence
    assert judge_melody(render_melody(["C"])[:1000], 16000) is None  # shorter than a note
    assert judge_melody(render_melody(["C", "D"])[:6000], 16000) is None  # 1.5 notes
    assert judge_melody(0.5 * np.sin(2 * np.pi * 261.63 * 2 ** (0.5 / 12) * t), 16000) is None  # quarter tone
    chord = 0.3 * np.sin(2 * np.pi * 261.63 * t) + 0.3 * np.sin(2 * np.pi * 392.0 * t)
    assert judge_melody(chord, 16000) is None
    gap = np.concatenate([render_melody(["C"]), np.zeros(4000), render_melody(["E"])])
    assert "silence" in parse_melody(gap, 16000).reason
    # other sample rates and pure sines are fine
    assert judge_melody(render_melody(["G", "A", "B"], sample_rate=24000), 24000) == ("G", "A", "B")
    assert judge_melody(0.5 * np.sin(2 * np.pi * 349.23 * t), 16000) == ("F",)
