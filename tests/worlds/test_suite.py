"""The eval suite's metric computations: a perfect generator scores 100%, a wrong one what it should."""

from dataclasses import replace

import numpy as np
import pytest

from anygen.worlds.shapes.world import (COLORS, EDIT_KINDS, Edit, Obj, Scene, ShapesWorld, WorldConfig, apply_instruction, parse_caption,
                                parse_melody_text, parse_slots, render_melody, render_scene)
from anygen.worlds.shapes.plans import REASON_FORMS, reasoning
from anygen.document import Audio, Document, Image, Text
from anygen.worlds.shapes.judges import judge_image, judge_melody
from anygen.worlds.shapes.suite import (PLAN_MISTAKES, evaluate_shapes, frechet_distance, plan_mistake, pooled_features,
                               preservation_psnr, score_scene, story_scores)


class Oracle:
    """Renders exactly what each prompt asks for: the ceiling of every metric. It hears a melody in
    another timbre by the notes `heard` recorded when it was played (see `played_timbres`)."""

    heard: dict = {}

    def draw_batch(self, texts, seed=0):
        return [render_scene(parse_caption(t)) for t in texts]

    def caption_batch(self, images, seed=0):
        return [judge_image(im).caption() for im in images]

    def edit_batch(self, images, instructions, seed=0):
        return [render_scene(apply_instruction(judge_image(im), ins)) for im, ins in zip(images, instructions)]

    def say(self, text, seed=0):
        return Audio(render_melody(parse_melody_text(text)), 16000)

    def transcribe(self, audio, seed=0):
        return "the notes " + " ".join(self.heard.get(audio[0].tobytes()) or judge_melody(*audio) or ())

    def story(self, opening, n_steps=3, seed=0):
        scene = parse_caption(opening)
        world = ShapesWorld(WorldConfig(seed=seed))
        doc = Document([Text(opening), Image(render_scene(scene))])
        for _ in range(n_steps - 1):
            e = world.sample_edit(scene=scene)
            scene = e.target
            doc = doc + Document([Text(e.narrative()), Image(render_scene(scene))])
        return doc


class RecolourEverything(Oracle):
    """Gets every colour wrong (red <-> others) and answers captions with a fixed sentence."""

    @staticmethod
    def _wrong(scene):
        colors = list(COLORS)
        return Scene(tuple(replace(o, color=colors[(colors.index(o.color) + 1) % len(colors)]) for o in scene.objects))

    def draw_batch(self, texts, seed=0):
        return [render_scene(self._wrong(parse_caption(t))) for t in texts]

    def caption_batch(self, images, seed=0):
        return ["a large red circle at the top left"] * len(images)


@pytest.fixture
def played_timbres(monkeypatch):
    """Records the notes of every melody the suite plays in another timbre, for `Oracle.heard`."""
    from anygen.worlds.shapes import suite

    heard, play = {}, suite.render_timbre_melody

    def recording(notes, timbre, sample_rate):
        wave = play(notes, timbre, sample_rate)
        heard[wave.tobytes()] = tuple(notes)
        return wave


    monkeypatch.setattr(suite, "render_timbre_melody", recording)
    monkeypatch.setattr(Oracle, "heard", heard)
    return heard


def test_perfect_generator_scores_100_percent(played_timbres):
    results = evaluate_shapes(Oracle(), n=6, seed=3)
    assert len(played_timbres) == 2 * 6  # the training and the held-out timbres
    assert results.pop("t2i.fd_pool8") == pytest.approx(0.0, abs=1e-6)
    assert results.pop("t2i.seconds_per_image") > 0 and results.pop("edit.seconds_per_edit") > 0
    for key, value in results.items():
        if key.endswith("preservation_db"):
            assert value == 60.0, key
        else:
            assert value == 1.0, key


def test_wrong_colours_score_exactly_what_they_should():
    results = evaluate_shapes(RecolourEverything(), n=8, seed=4, suites=("t2i", "i2t"))
    for k in (1, 2, 3):
        assert results[f"t2i.objects_{k}.color"] == 0.0
        assert results[f"t2i.objects_{k}.all_correct"] == 0.0
        assert results[f"t2i.objects_{k}.shape"] == 1.0 and results[f"t2i.objects_{k}.position"] == 1.0
        assert results[f"t2i.objects_{k}.count"] == 1.0
    assert results["t2i.fd_pool8"] > 0.5  # every object a different colour: the pooled colours move
    assert results["i2t.exact"] < 0.5


class Reasoner(Oracle):
    """Edits perfectly and says so in reasoning `form`; with `always_erase` (`object` form) it claims
    every edit leaves nothing (right for removals only)."""

    def __init__(self, form="object", always_erase=False):
        self.form, self.always_erase = form, always_erase

    def edit_batch_with_reasoning(self, images, instructions, seed=0):
        rows = []
        for image, instruction, edited in zip(images, instructions, self.edit_batch(images, instructions)):
            edit = Edit("", instruction, judge_image(image), judge_image(edited))
            text = reasoning(self.form, edit)
            rows.append((edited, f"before {edit.change()[0]} after nothing" if self.always_erase else text))
        return rows


def test_reasoning_exact_counts_edits_whose_text_names_the_change():
    for form in REASON_FORMS:
        results = evaluate_shapes(Reasoner(form), n=5, seed=1, suites=("edit",), edit_reason=True)
        assert all(results[f"edit.{kind}.{m}"] == 1.0 for kind in EDIT_KINDS for m in ("success", "reasoning_exact"))
    results = evaluate_shapes(Reasoner(always_erase=True), n=5, seed=1, suites=("edit",), edit_reason=True)
    assert {kind: results[f"edit.{kind}.reasoning_exact"] for kind in EDIT_KINDS} == {
        "recolor": 0.0, "move": 0.0, "resize": 0.0, "remove": 1.0, "add": 0.0}
    assert results["edit.move.success"] == 1.0  # the picture is scored on its own
    assert "edit.move.reasoning_exact" not in evaluate_shapes(Oracle(), n=2, seed=1, suites=("edit",))


class Planner(Oracle):
    """Plans every edit right from the source it is shown, in the `scene` form (`after <target
    caption>`) or the `slots` form (`after <source slots, edited in place>`); with `lazy` it plans
    that nothing changes."""

    def __init__(self, lazy=False, form="scene"):
        self.lazy, self.form = lazy, form

    def plan_edits(self, instructions, seen, seed=0):
        parse = parse_slots if self.form == "slots" else parse_caption
        plans = []
        for ins, s in zip(instructions, seen):
            source = parse(s.removeprefix("before "))
            target = source if self.lazy else apply_instruction(source, ins)
            after = Edit("any", ins, source, target).slots()[1] if self.form == "slots" else target.caption()
            plans.append(f"after {after}")
        return plans


def test_plan_exact_scores_the_plan_in_words():
    results = evaluate_shapes(Planner(), n=5, seed=1, suites=("plan",))
    assert results == {f"plan.{kind}.exact": 1.0 for kind in EDIT_KINDS}
    assert set(evaluate_shapes(Planner(lazy=True), n=5, seed=1, suites=("plan",)).values()) == {0.0}
    assert "plan.move.exact" not in evaluate_shapes(Oracle(), n=2, seed=1, suites=("i2t",))


def test_plan_mistakes_name_the_object_edited_instead():
    red_square, red_circle, blue_square = (Obj("square", "red", "small", 0), Obj("circle", "red", "large", 4),
                                           Obj("square", "blue", "small", 7))
    scene = Scene((red_square, red_circle, blue_square))
    edit = Edit("recolor", "make the red square green", scene, apply_instruction(scene, "make the red square green"))

    def plan_turning(obj):  # `after` slots with `obj` made green in place
        return "after " + ", ".join((replace(o, color="green") if o == obj else o).slot() for o in scene.objects)

    assert plan_mistake(edit, plan_turning(red_square)) is None
    assert plan_mistake(edit, plan_turning(red_circle)) == "same_colour"
    assert plan_mistake(edit, plan_turning(blue_square)) == "same_shape"
    assert plan_mistake(edit, "after " + edit.slots()[0]) == "other"  # nothing changed
    assert plan_mistake(edit, "after small red square") == "other"  # objects missing
    twins = Scene((red_square, replace(red_square, size="large", cell=4)))
    instruction = "make the large red square blue"
    edit = Edit("recolor", instruction, twins, apply_instruction(twins, instruction))
    assert plan_mistake(edit, "after small blue square top left, large red square center") == "same_colour_shape"
    # in the suite: shares of all plans, slots form only
    right = evaluate_shapes(Planner(form="slots"), n=4, seed=2, suites=("plan",), reason_form="slots")
    assert all(right[f"plan.{kind}.exact"] == 1.0 for kind in EDIT_KINDS)
    assert {m: right[f"plan.wrong.{m}"] for m in PLAN_MISTAKES} == dict.fromkeys(PLAN_MISTAKES, 0.0)
    lazy = evaluate_shapes(Planner(lazy=True, form="slots"), n=4, seed=2, suites=("plan",), reason_form="slots")
    assert lazy["plan.wrong.other"] == 1.0 and lazy["plan.wrong.same_colour"] == 0.0


def test_edit_kinds_score_the_same_samples_as_a_run_of_all_kinds():
    class Spy(Planner):
        def __init__(self):
            super().__init__(form="slots")
            self.asked = []

        def edit_batch(self, images, instructions, seed=0):
            self.asked += instructions
            return super().edit_batch(images, instructions, seed)

    every, move = Spy(), Spy()
    full = evaluate_shapes(every, n=3, seed=4, suites=("edit", "plan"), reason_form="slots")
    only = evaluate_shapes(move, n=3, seed=4, suites=("edit", "plan"), reason_form="slots", edit_kinds=("move",))
    assert move.asked == every.asked[3:6] and all(a.startswith("move") for a in move.asked)
    assert {k for k in only if k.startswith(("edit.", "plan."))} == {
        "edit.move.success", "edit.move.preservation_db", "edit.seconds_per_edit", "plan.move.exact",
        *(f"plan.wrong.{m}" for m in PLAN_MISTAKES)}
    assert only["edit.move.success"] == full["edit.move.success"] == 1.0
    with pytest.raises(ValueError, match="edit_kinds"):
        evaluate_shapes(Oracle(), n=1, suites=("edit",), edit_kinds=("rotate",))


def test_score_scene_partial_credit():
    target = Scene((Obj("circle", "red", "large", 0), Obj("square", "blue", "small", 4)))
    judged = Scene((Obj("circle", "red", "small", 0),))
    s = score_scene(target, judged)
    assert s == {"position": 0.5, "shape": 0.5, "color": 0.5, "size": 0.0, "count": 0.0, "all_correct": 0.0}
    assert score_scene(target, None)["position"] == 0.0


def test_preservation_ignores_edited_cells():
    a = render_scene(Scene((Obj("circle", "red", "large", 0), Obj("square", "blue", "small", 4))))
    b = render_scene(Scene((Obj("circle", "green", "large", 0), Obj("square", "blue", "small", 4))))
    assert preservation_psnr(b, a, {0}) == 60.0
    assert preservation_psnr(b, a, set()) < 40.0


def test_story_scores_detect_a_wrong_image():
    s0 = Scene((Obj("circle", "red", "large", 0),))
    s1 = apply_instruction(s0, "make the red circle blue")
    good = Document([Text(s0.caption()), Image(render_scene(s0)), Text("then the red circle turns blue"),
                     Image(render_scene(s1))])
    assert story_scores(good) == ([True, True], [True])
    bad = Document([Text(s0.caption()), Image(render_scene(s0)), Text("then the red circle turns blue"),
                    Image(render_scene(s0))])
    assert story_scores(bad) == ([True, False], [True])
    nonsense = Document([Text(s0.caption()), Image(render_scene(s0)), Text("then it rains"), Image(render_scene(s1))])
    assert story_scores(nonsense) == ([True, False], [False])


def test_frechet_distance_closed_form_and_features():
    import numpy as np
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    # same covariance, means 2 apart along one axis: FD = |mu_a - mu_b|^2 = 4
    assert frechet_distance(a, a + np.array([2.0, 0, 0])) == pytest.approx(4.0, abs=1e-6)
    # scaled covariance: FD = tr(C + s^2 C - 2 s C) = (1 - s)^2 tr(C) = 0.25 * 3 for s = 1.5
    assert frechet_distance(a, 1.5 * a) == pytest.approx(0.75, rel=0.02)
    red = PILImage.new("RGB", (64, 64), (255, 0, 0))
    f = pooled_features([red])
    assert f.shape == (1, 192) and np.allclose(f[0].reshape(64, 3), [1.0, 0.0, 0.0])


def test_a2t_in_other_timbres_hears_other_waveforms_of_the_same_melodies(played_timbres):
    """The timbre figures play the reference figure's melodies, in order, once per split; a listener
    that knows only the reference renders hears none of the other timbres."""
    class ReferenceListener(Oracle):
        def transcribe(self, audio, seed=0):
            notes = judge_melody(*audio)
            return "the notes " + " ".join(notes if notes and np.array_equal(audio[0], render_melody(notes)) else ())

    class Recorder(ReferenceListener):
        melodies = []

        def transcribe(self, audio, seed=0):
            self.melodies.append(played_timbres.get(audio[0].tobytes()) or judge_melody(*audio))
            return super().transcribe(audio, seed)

    results = evaluate_shapes(Recorder(), n=6, seed=3, suites=("a2t",))
    assert results == {"a2t.exact": 1.0, "a2t.timbres.train.exact": 0.0, "a2t.timbres.heldout.exact": 0.0}
    reference = Recorder.melodies[:6]
    assert all(reference) and Recorder.melodies == reference * 3
