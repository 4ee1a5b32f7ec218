"""Edits that name an object the source does not hold, or would change nothing, are refused through
the world's plan format (`PlanFormat.refusal`, `EditOptions.refuse`); the pictures of the edits it
lets through are those drawn without the check. A story's opening is closed as written."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from anygen.api import load_model
from anygen.api.editing import EditRefused
from anygen.document import Image, Text
from anygen.errors import AnygenError
from anygen.sampling import SamplingSettings
from anygen.worlds.shapes.plans import ShapesPlanFormat

from test_pipeline import Recorder

SOURCE = "a small red circle at the top and a large blue square at the center"  # what the source "shows"
GREEDY = SamplingSettings(greedy=True)


@dataclass(frozen=True)
class Plans(ShapesPlanFormat):
    """The shapes plan format, reading every reasoned edit's text as planning `plan`."""

    plan: str = "small red circle top, large blue square center"

    def split(self, text):
        return "", self.plan


def captioning(gen, recorder):
    """The recorder's calls that caption an image (image_to_text prompts: <bos> <boi> ...)."""
    return [p for p, _, _ in recorder.calls if isinstance(p[0], list) and p[0][:2] == [gen.vocab.bos, gen.vocab.boi]]


def scripted(model_dir, plan_format, caption=SOURCE):
    """A tiny model whose captions say `caption`, with `plan_format`, and its recorder."""
    gen = load_model(model_dir, plan_format=plan_format)
    recorder = Recorder({(gen.vocab.bos, gen.vocab.boi): gen.tokenizer.encode_text(caption) + [gen.vocab.eos]})
    return load_model(model_dir, plan_format=plan_format, sampler=recorder), recorder


@pytest.mark.parametrize("instruction,message", [
    ("remove the yellow circle", "edit refused: the image holds no yellow circle"),
    ("make the large red circle blue", "the image holds no large red circle"),
    ("move the green triangle to the left", "the image holds no green triangle"),
    ("make the red circle red", "nothing would change: the red circle is already red"),
    ("move the blue square to the center", "nothing would change: the blue square is already at the center"),
    ("make the small red circle small", "nothing would change"),
    ("add a small red circle at the top", "nothing would change"),
])
def test_plain_edit_is_refused_before_sampling_by_the_models_caption(model_dir, instruction, message):
    gen, recorder = scripted(model_dir, ShapesPlanFormat())
    image = PILImage.new("RGB", (8, 8), "white")
    with pytest.raises(EditRefused, match=message) as refused:
        gen.edit(image, instruction)
    assert refused.value.row == 0 and isinstance(refused.value, AnygenError)
    assert len(recorder.calls) == 1 and len(captioning(gen, recorder)) == 1  # the caption only: nothing drawn
    with pytest.raises(EditRefused, match=f"edit 2 of 2 refused: {message.removeprefix('edit refused: ')}"):
        gen.edit_batch([image, image], ["make the red circle blue", instruction])


def test_valid_edits_are_let_through_with_the_pictures_drawn_without_the_check(any_model_dir):
    gen, recorder = scripted(any_model_dir, ShapesPlanFormat())
    image = gen.draw("a small red circle at the top", seed=0)[0]
    for instruction in ("make the red circle blue", "remove the blue square", "make it red",
                        "move the red circle to the left"):
        checked = gen.edit(image, instruction, seed=1, image=GREEDY)
        unchecked = gen.edit(image, instruction, seed=1, image=GREEDY, refuse=False)
        assert np.array_equal(np.asarray(checked), np.asarray(unchecked))
    recorder.calls.clear()
    gen.edit(image, "remove the yellow circle", refuse=False)  # refuse off: no caption, an edit
    assert not captioning(gen, recorder) and len(recorder.calls) == 1


def test_a_caption_that_does_not_parse_refuses_nothing(model_dir):
    gen, _ = scripted(model_dir, ShapesPlanFormat(), caption="three dogs on a lawn")
    gen.edit(PILImage.new("RGB", (8, 8), "white"), "remove the yellow circle")


def test_models_without_a_plan_format_refuse_nothing_and_caption_nothing(model_dir):
    recorder = Recorder()
    gen = load_model(model_dir, sampler=recorder)
    gen.edit(PILImage.new("RGB", (8, 8), "white"), "remove the yellow circle")
    assert len(recorder.calls) == 1 and not captioning(gen, recorder)


def test_reasoned_edit_is_refused_by_the_caption_and_its_plan(any_model_dir):
    """A reasoned edit is checked after it is drawn: the instruction against the model's caption of the
    source, and, where the world's grammar cannot tell, its plan against that caption."""
    gen, recorder = scripted(any_model_dir, Plans())
    image = gen.draw("a small red circle at the top", seed=0)[0]
    with pytest.raises(EditRefused, match="the image holds no yellow circle"):
        gen.edit(image, "remove the yellow circle", reason=True)
    with pytest.raises(EditRefused, match="already red"):
        gen.edit_with_reasoning(image, "make the red circle red")
    # no valid change in the world's grammar ("it"), and a plan that draws what the caption says: nothing changes
    with pytest.raises(EditRefused, match="the plan draws the image as it is"):
        gen.edit(image, "make it red", reason=True)
    gen, recorder = scripted(any_model_dir, Plans(plan="small red circle left, large blue square center"))
    for instruction in ("make it red", "move the red circle to the left"):
        checked = gen.edit_with_reasoning(image, instruction, seed=2, image=GREEDY)
        unchecked = gen.edit_with_reasoning(image, instruction, seed=2, image=GREEDY, refuse=False)
        assert np.array_equal(np.asarray(checked[0]), np.asarray(unchecked[0])) and checked[1] == unchecked[1]


def test_refuse_is_a_flag():
    from anygen.api.options import EditOptions

    with pytest.raises(AnygenError, match="refuse must be True or False"):
        EditOptions(refuse="no")


def test_story_opening_is_closed_as_written_and_its_picture_follows(any_model_dir):
    """Plain stories: the first picture is forced right after the opening (`<boi>`), so the model
    cannot extend the user's sentence; the first text of the story is the opening, then its picture."""
    recorder = Recorder()
    gen = load_model(any_model_dir, sampler=recorder)
    for opening in ("a small red circle at the top", "a large blue square at the bottom"):
        recorder.calls.clear()
        doc = gen.story(opening, n_steps=2, seed=0)
        [([prompt], _, [result])] = recorder.calls
        assert list(prompt.force) == [gen.vocab.boi] and result.ids[0] == gen.vocab.boi
        segments = list(doc)
        assert segments[0] == Text(opening) and isinstance(segments[1], Image)
        assert torch.equal(gen.tokenizer.image_codes(segments[1].image), gen.session.image_codes_of(result))
