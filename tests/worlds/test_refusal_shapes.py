"""ShapesWorld's refusals: an edit that names an object the scene does not hold, or would change
nothing, is refused (`edit_refusal`, `ShapesPlanFormat.refusal`); no edit the world samples is; the
eval's `refuse` suite counts them and its story suite whether the opening was kept."""

import numpy as np
import pytest

from anygen.api.editing import EditRefused
from anygen.document import Document, Image, Text
from anygen.worlds.shapes.judges import judge_image
from anygen.worlds.shapes.plans import ShapesPlanFormat
from anygen.worlds.shapes.suite import absent_edit, evaluate_shapes, noop_edit, opening_of
from anygen.worlds.shapes.world import (ShapesWorld, WorldConfig, apply_instruction, edit_refusal,
                                        parse_caption, render_scene)

SCENE = parse_caption("a small red circle at the top, a large red circle at the left and a large blue square at the center")


@pytest.mark.parametrize("instruction,reason", [
    ("remove the yellow circle", "the image holds no yellow circle"),
    ("Remove the yellow circle.", "the image holds no yellow circle"),
    ("then the green square disappears", "the image holds no green square"),
    ("make the small blue square red", "the image holds no small blue square"),
    ("move the red circle at the bottom to the right", "the image holds no red circle at the bottom"),
    ("make the blue square blue", "nothing would change: the blue square is already blue"),
    ("make the large blue square large", "nothing would change: the large blue square is already large"),
    ("then the blue square moves to the center", "nothing would change: the blue square is already at the center"),
    ("add a large blue square at the center", "nothing would change: a large blue square is already at the center"),
    ("make the red circle blue", None),  # two red circles: ambiguous, not absent
    ("make it red", None),  # not an instruction of the world's grammar
    ("add a small blue square at the center", None),  # another kind of failure (the cell is taken)
    ("make the small red circle red", "nothing would change: the small red circle is already red"),
])
def test_edit_refusal(instruction, reason):
    assert edit_refusal(SCENE, instruction) == reason


def test_no_edit_the_world_samples_is_refused_and_every_absent_or_noop_edit_is():
    world = ShapesWorld(WorldConfig(seed=5))
    rng = np.random.default_rng(0)
    for _ in range(300):
        e = world.sample_edit(rng)
        assert edit_refusal(e.source, e.instruction) is None and edit_refusal(e.source, e.narrative()) is None
    for _ in range(100):
        scene, instruction = absent_edit(world, rng)
        assert edit_refusal(scene, instruction).startswith("the image holds no "), instruction
        scene, instruction = noop_edit(world, rng)
        assert edit_refusal(scene, instruction).startswith("nothing would change"), instruction


def test_plan_format_reads_seen_as_a_caption_or_slots_and_the_plan_where_the_grammar_cannot_decide():
    plan = ShapesPlanFormat()
    for seen in ("a small red circle at the top", "small red circle top"):
        assert plan.refusal("remove the yellow circle", seen) == "the image holds no yellow circle"
        assert plan.refusal("make the red circle blue", seen, "small blue circle top") is None
        assert plan.refusal("make it red", seen, "small red circle top").startswith("nothing would change")
        assert plan.refusal("make it blue", seen, "small blue circle top") is None
        assert plan.refusal("make the red circle blue", seen, "small red circle top") is None  # the grammar decides
    assert plan.refusal("remove the yellow circle", "something red") is None  # unreadable: nothing known


class Refuser:
    """Edits exactly (the judge's scene, the instruction applied), refusing what `ShapesPlanFormat`
    refuses given the judge's caption of the source."""

    def edit_batch(self, images, instructions, seed=0, refuse=True):
        out = []
        for row, (image, instruction) in enumerate(zip(images, instructions)):
            scene = judge_image(image)
            why = ShapesPlanFormat().refusal(instruction, scene.caption()) if refuse else None
            if why is not None:
                raise EditRefused(row, why, len(images))
            out.append(render_scene(apply_instruction(scene, instruction) or scene))
        return out


def test_refuse_suite_counts_refusals_and_compares_the_pictures_let_through():
    results = evaluate_shapes(Refuser(), n=4, seed=2, suites=("refuse",))
    assert results.pop("refuse.seconds_per_edit.checked") > 0 and results.pop("refuse.seconds_per_edit.unchecked") > 0
    assert results == {"refuse.absent.refused": 1.0, "refuse.noop.refused": 1.0, "refuse.valid.refused": 0.0,
                       "refuse.valid.same_image": 1.0}


def test_opening_of_is_the_text_before_the_first_picture():
    picture = Image(render_scene(SCENE))
    assert opening_of(Document([Text("a small red circle at the top"), picture, Text("then")])) == \
        "a small red circle at the top"
    assert opening_of(Document([Text("a small red circle at the top"), Text(" left, a large"), picture])) == \
        "a small red circle at the top left, a large"
