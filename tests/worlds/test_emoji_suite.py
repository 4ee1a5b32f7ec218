"""`anygen eval emoji`: its judges on the true renders and on degraded ones, a scripted perfect and a
do-nothing generator, and the real CLI on the tiny random model (`--n 2`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageFilter

from anygen.errors import AnygenError
from anygen.worlds.emoji import EmojiWorld
from anygen.worlds.emoji.suite import (EvalSettings, NearestEmoji, evaluate_emoji, format_report, judge_edit,
                                       pixels, psnr, split_name)

from emoji_marks import needs_font, needs_raqm


@pytest.fixture(scope="module")
def world():
    return EmojiWorld()  # every emoji rendered once per process (cached)


def degrade(image: PILImage.Image, seed: int) -> PILImage.Image:
    """What a lossy codec does at worst: blurred, then noisy (sigma 0.05 of full scale)."""
    a = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    a = a + np.random.default_rng(seed).normal(0, 0.05 * 255, a.shape)
    return PILImage.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_split_name_and_psnr():
    assert split_name("thumbs up, dark skin tone") == ("thumbs up", ("dark",))
    assert split_name("  thumbs   up ") == ("thumbs up", ())
    assert split_name("kiss man man, medium-dark skin tone, light skin tone") == \
        ("kiss man man", ("medium-dark", "light"))
    assert split_name("waving hand, medium-light skin tone") == ("waving hand", ("medium-light",))
    white = pixels([PILImage.new("RGB", (32, 32), (255, 255, 255))])[0]
    assert pixels([PILImage.new("RGB", (32, 32))]).shape == (1, 64 * 64 * 3)
    assert psnr(white, white) == 100.0 and psnr(white, 0 * white) == pytest.approx(0.0)
    with pytest.raises(AnygenError, match="--n"):
        EvalSettings(n=0)


@needs_font
@needs_raqm
def test_judges_identify_the_true_renders_and_degraded_ones(world):
    items = world.items()
    judge = NearestEmoji([it.image for it in items])
    queries = list(range(0, len(items), 10))
    top = judge.rank([items[i].image for i in queries], 5)
    assert (top[:, 0] == np.array(queries)).all()  # the true render is itself: 100%
    degraded = judge.rank([degrade(items[i].image, i) for i in queries], 5)
    top1, top5 = (degraded[:, 0] == np.array(queries)).mean(), (degraded == np.array(queries)[:, None]).any(1).mean()
    assert top1 >= 0.9 and top5 >= 0.97, (top1, top5)
    cases = world.base_edits("heldout")
    true = [judge_edit(c, j, c.edits[j].target.image) for c in cases for j in range(len(c.edits))]
    assert len(true) == sum(len(c.edits) for c in cases) and all(r["success"] == 1 and r["psnr_db"] == 100 for r in true)
    noisy = [judge_edit(c, j, degrade(c.edits[j].target.image, j)) for c in cases for j in range(len(c.edits))]
    assert np.mean([r["success"] for r in noisy]) >= 0.95
    untouched = [judge_edit(c, j, c.source.image) for c in cases for j in range(len(c.edits))]
    assert not any(r["success"] for r in untouched)
    assert all(r["psnr_db"] == r["baseline_psnr_db"] < 100 for r in untouched)


class Scripted:
    """A generator that answers with the true renders (`perfect`) or returns its inputs unchanged."""

    def __init__(self, world: EmojiWorld, perfect: bool = True):
        self.perfect = perfect
        self.by_name = world.by_name()
        self.by_pixels = {it.image.tobytes(): it for it in world.items()}
        self.edits = {(e.source.name, e.instruction): e.target for e in world.edit_pairs()}
        self.calls = []

    def draw_batch(self, texts, seed=0, **options):
        self.calls.append(("draw", len(texts)))
        return [self.by_name[t].image if self.perfect else PILImage.new("RGB", (64, 64), "white") for t in texts]

    def caption_batch(self, images, max_new_tokens=64, seed=0, **settings):
        self.calls.append(("caption", len(images)))
        return [self.by_pixels[im.tobytes()].name if self.perfect else "a picture" for im in images]

    def edit_batch(self, images, instructions, seed=0, **options):
        self.calls.append(("edit", len(images), options.get("refuse")))
        if not self.perfect:
            return list(images)
        return [self.edits[(self.by_pixels[im.tobytes()].name, i)].image for im, i in zip(images, instructions)]


@needs_font
@needs_raqm
def test_a_perfect_generator_scores_one_and_doing_nothing_scores_zero(world):
    settings = EvalSettings(n=12, batch_size=5)
    perfect = Scripted(world)
    results = evaluate_emoji(perfect, world, settings)
    for key in ("edit.heldout.success", "edit.heldout.skin_tone.success", "edit.seen.success", "t2i.top1", "t2i.top5",
                "i2t.exact", "i2t.heldout.base", "i2t.heldout.tone", "i2t.heldout.both"):
        assert results[key] == 1.0, key
    assert results["edit.heldout.psnr_db"] == 100 and results["edit.heldout.psnr_gain_db"] > 50
    assert results["t2i.n"] == results["i2t.n"] == results["i2t.heldout.n"] == 12
    assert results["edit.seconds_per_edit"] >= 0 and results["edit.heldout.n"] >= 12  # 12 bases, 2-7 edits each
    assert all(c[2] is False for c in perfect.calls if c[0] == "edit")  # nothing refused: pictures are scored
    assert max(c[1] for c in perfect.calls) <= 5
    lazy = evaluate_emoji(Scripted(world, perfect=False), world, settings, suites=("edit", "seen", "i2t"))
    assert lazy["edit.heldout.success"] == lazy["edit.seen.success"] == 0
    assert lazy["edit.heldout.psnr_gain_db"] == pytest.approx(0.0) and lazy["i2t.exact"] == 0
    assert "t2i.top1" not in lazy
    table = format_report(results)
    assert "| edit.heldout.success | 1.000 |" in table and "| t2i.n | 12 |" in table
    full = evaluate_emoji(perfect, world, EvalSettings(batch_size=64), suites=("edit",))
    assert full["edit.heldout.n"] == 221  # every edit of every held-out base's default
    with pytest.raises(AnygenError, match="unknown emoji suite"):
        evaluate_emoji(perfect, world, settings, suites=("story",))


@needs_font
@needs_raqm
def test_eval_emoji_command_on_the_tiny_model(model_dir, tmp_path, capsys):
    from anygen.cli import main

    out = tmp_path / "results.json"
    assert main(["eval", "emoji", "--model", str(model_dir), "--n", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    for key in ("edit.heldout.success", "edit.heldout.psnr_db", "edit.heldout.baseline_psnr_db",
                "edit.heldout.psnr_gain_db", "edit.seen.success", "edit.seconds_per_edit", "t2i.top1", "t2i.top5",
                "i2t.exact", "i2t.heldout.base", "i2t.heldout.tone", "i2t.heldout.both"):
        assert key in results and f"| {key} |" in printed, key
    assert results["t2i.n"] == results["i2t.n"] == 2 and 0 <= results["t2i.top1"] <= results["t2i.top5"] <= 1
    assert main(["eval", "emoji", "--only", "story", "--model", str(model_dir)]) == 2
    assert "unknown suite 'story'" in capsys.readouterr().err
    assert main(["eval", "emoji", "--n", "0", "--model", str(model_dir)]) == 2
