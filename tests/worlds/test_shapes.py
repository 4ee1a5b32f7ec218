"""ShapesWorld: determinism, canonical text round trips, exact edits, holdout splits, rendering."""

import numpy as np
import pytest

from anygen.config import ConfigError, build
from anygen.worlds.shapes.world import (ALL_PAIRS, COLORS, EDIT_KINDS, NOTE_FREQS, NOTES, POSITIONS, Edit, Obj, Scene,
                                ShapesWorld, WorldConfig, apply_instruction, melody_text, narrate, parse_caption,
                                parse_melody_text, parse_slots, refer, render_melody, render_scene, story_document)
from anygen.document import Audio, Image, Text


def _world(seed=0, **kw):
    return ShapesWorld(WorldConfig(seed=seed, **kw))


def test_deterministic_by_seed():
    def draw(world):
        rng = np.random.default_rng(7)
        return ([world.sample_scene().caption() for _ in range(20)],
                [world.sample_edit().instruction for _ in range(20)],
                [world.sample_melody() for _ in range(20)],
                [[s.text for s in world.sample_story().steps] for _ in range(5)],
                [world.sample_scene(rng).caption() for _ in range(5)])

    assert draw(_world(3)) == draw(_world(3))
    assert draw(_world(3))[0] != draw(_world(4))[0]
    # an explicit generator makes the draw independent of the world's own stream
    a, b = _world(1), _world(2)
    assert a.sample_scene(np.random.default_rng(5)) == b.sample_scene(np.random.default_rng(5))


def test_caption_canonical_form_and_round_trip():
    scene = Scene((Obj("square", "blue", "small", 4), Obj("circle", "red", "large", 0)))
    assert scene.objects[0].cell == 0  # sorted by cell
    assert scene.caption() == "a large red circle at the top left and a small blue square at the center"
    three = Scene(scene.objects + (Obj("triangle", "green", "small", 8),))
    assert three.caption() == ("a large red circle at the top left, a small blue square at the center "
                               "and a small green triangle at the bottom right")
    world = _world(0)
    for _ in range(300):
        s = world.sample_scene()
        assert parse_caption(s.caption()) == s
    # lenient: any order, "and" joins, case, trailing period
    assert parse_caption("A small green triangle at the bottom right and a large red circle at the top left "
                         "and a small blue square at the center.") == three
    for bad in ["", "a red circle", "a huge red circle at the top", "a small red circle at the top and",
                "a small red circle at the top and a large blue square at the top",  # same cell
                ", ".join(["a small red circle at the " + p for p in POSITIONS[:4]])]:  # 4 objects
        assert parse_caption(bad) is None, bad


def test_scene_and_object_validation():
    with pytest.raises(ValueError, match="color"):
        Obj("circle", "pink", "small", 0)
    with pytest.raises(ValueError, match="cell"):
        Obj("circle", "red", "small", 9)
    with pytest.raises(ValueError, match="share a cell"):
        Scene((Obj("circle", "red", "small", 1), Obj("square", "red", "small", 1)))
    with pytest.raises(ValueError, match="1..3"):
        Scene(())
    with pytest.raises(ValueError, match="1..3"):
        Scene(tuple(Obj("circle", "red", "small", c) for c in range(4)))
    s = Scene((Obj("circle", "red", "small", 1),))
    assert Scene.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_edit_kind_has_exact_target(kind):
    world = _world(11)
    for _ in range(150):
        e = world.sample_edit(kind=kind)
        assert isinstance(e, Edit) and e.kind == kind
        src, tgt = e.source, e.target
        assert tgt != src
        assert apply_instruction(src, e.instruction) == tgt
        assert apply_instruction(src, e.narrative()) == tgt
        changed_src = set(src.objects) - set(tgt.objects)
        changed_tgt = set(tgt.objects) - set(src.objects)
        if kind == "remove":
            assert len(changed_src) == 1 and not changed_tgt
            assert e.change() == (next(iter(changed_src)).phrase(), "nothing")
        elif kind == "add":
            assert len(changed_tgt) == 1 and not changed_src
            assert e.instruction == f"add a {next(iter(changed_tgt)).phrase()[2:]}"
            assert e.change() == ("nothing", next(iter(changed_tgt)).phrase())
        else:
            (old,), (new,) = changed_src, changed_tgt
            diffs = [f for f in ("shape", "color", "size", "cell") if getattr(old, f) != getattr(new, f)]
            assert diffs == {"recolor": ["color"], "move": ["cell"], "resize": ["size"]}[kind]
            assert e.change() == (old.phrase(), new.phrase())


def test_edit_slots_change_one_slot_in_place():
    """The after list is the before list with the edited object's slot changed where it stood
    (a moved object keeps its place even when the target caption re-sorts it)."""
    src = Scene((Obj("square", "red", "large", 1), Obj("circle", "orange", "small", 3)))
    before = "large red square top, small orange circle left"
    def slots(instruction, kind):
        return Edit(kind, instruction, src, apply_instruction(src, instruction)).slots()
    assert slots("move the red square to the bottom right", "move") == (
        before, "large red square bottom right, small orange circle left")
    assert apply_instruction(src, "move the red square to the bottom right").caption().startswith("a small orange")
    assert slots("make the orange circle blue", "recolor") == (before, "large red square top, small blue circle left")
    assert slots("make the large red square small", "resize") == (
        before, "small red square top, small orange circle left")
    assert slots("remove the red square", "remove") == (before, "large red square removed, small orange circle left")
    assert slots("add a small green triangle at the top left", "add") == (
        before, "large red square top, small orange circle left, small green triangle top left")
    world = _world(12)
    for kind in EDIT_KINDS:  # sampled edits: same number of slots, exactly one differs (or one more)
        for _ in range(50):
            b, a = (x.split(", ") for x in world.sample_edit(kind=kind).slots())
            assert len(a) == len(b) + (kind == "add")
            assert sum(x != y for x, y in zip(b, a)) == (kind != "add")


def test_edit_kinds_respect_scene_size():
    world = _world(2)
    one = Scene((Obj("circle", "red", "small", 4),))
    with pytest.raises(ValueError, match="remove"):
        world.sample_edit(scene=one, kind="remove")
    full = world.sample_scene(n_objects=3)
    with pytest.raises(ValueError, match="add"):
        world.sample_edit(scene=full, kind="add")
    for _ in range(50):
        assert world.sample_edit(scene=one).kind != "remove"
        assert world.sample_edit(scene=full).kind != "add"


def test_instruction_examples_and_ambiguity():
    scene = Scene((Obj("circle", "red", "large", 0), Obj("square", "blue", "small", 4)))
    red_blue = Scene((Obj("circle", "blue", "large", 0), Obj("square", "blue", "small", 4)))
    assert apply_instruction(scene, "make the red circle blue") == red_blue
    assert apply_instruction(scene, "Move the blue square to the left.") == Scene(
        (Obj("circle", "red", "large", 0), Obj("square", "blue", "small", 3)))
    assert apply_instruction(scene, "make the large red circle small") == Scene(
        (Obj("circle", "red", "small", 0), Obj("square", "blue", "small", 4)))
    assert apply_instruction(scene, "remove the blue square") == Scene((Obj("circle", "red", "large", 0),))
    assert apply_instruction(scene, "add a small green triangle at the top") == Scene(
        scene.objects + (Obj("triangle", "green", "small", 1),))
    assert narrate("make the red circle blue") == "then the red circle turns blue"
    assert apply_instruction(scene, "then the red circle turns blue") == red_blue
    # not a valid edit of this scene
    for bad in ["make the red circle red",            # no change
                "make the large red circle large",   # no change
                "move the blue square to the top left",  # occupied
                "add a small red square at the center",  # occupied
                "make the green circle blue",        # no such object
                "paint the red circle blue", ""]:
        assert apply_instruction(scene, bad) is None, bad
    assert apply_instruction(Scene((Obj("circle", "red", "large", 0),)), "remove the red circle") is None
    # two red circles: colour+shape is ambiguous, size disambiguates
    two = Scene((Obj("circle", "red", "large", 0), Obj("circle", "red", "small", 2)))
    assert refer(two, two.objects[1]) == "small red circle"
    assert apply_instruction(two, "make the red circle blue") is None
    assert apply_instruction(two, "make the small red circle blue") is not None
    # same size too: position disambiguates
    same = Scene((Obj("circle", "red", "small", 0), Obj("circle", "red", "small", 2)))
    assert refer(same, same.objects[1]) == "red circle at the top right"
    assert refer(same, same.objects[1], with_size=True) == "small red circle at the top right"
    assert apply_instruction(same, "make the small red circle large") is None
    assert apply_instruction(same, "make the small red circle at the top right large") == Scene(
        (Obj("circle", "red", "small", 0), Obj("circle", "red", "large", 2)))


def test_holdout_split():
    cfg = WorldConfig(seed=5, holdout=["red triangle", "Blue  Circle"])
    assert cfg.holdout == ["red triangle", "blue circle"]
    world = ShapesWorld(cfg)
    held = set(cfg.holdout)
    for _ in range(300):
        assert not world.sample_scene().pairs & held
        e = world.sample_edit()
        assert not (e.source.pairs | e.target.pairs) & held
        for step in world.sample_story().steps:
            assert not step.scene.pairs & held
        hs = world.sample_scene(split="holdout")
        assert hs.pairs & held and world.in_split(hs, "holdout")
    with pytest.raises(ConfigError, match="holdout"):
        build(WorldConfig, {"holdout": ["pink circle"]})
    with pytest.raises(ConfigError, match="holdout"):
        _world(0).sample_scene(split="holdout")
    with pytest.raises(ConfigError, match="max_objects"):
        build(WorldConfig, {"max_objects": 4})
    assert build(WorldConfig, {"holdout": ["red triangle"], "seed": 3}).seed == 3
    assert len(ALL_PAIRS) == 18


def _share_colour_with_edited(e: Edit) -> bool:
    edited = [o for o in e.source.objects if o not in e.target.objects][0]
    return any(o.color == edited.color for o in e.source.objects if o != edited)


def test_lookalike_prob_gives_the_edited_object_a_same_colour_distractor():
    def edits(world, n=600):
        rng = np.random.default_rng(0)
        return [e for e in (world.sample_edit(rng) for _ in range(n)) if e.kind != "add"]

    # off by default, and then the world draws exactly what it drew before the option existed
    assert edits(_world(3)) == edits(_world(3, lookalike_prob=0.0))
    plain, always = edits(_world(3)), edits(_world(3, lookalike_prob=1.0))
    multi = [e for e in always if len(e.source.objects) > 1]
    assert sum(map(_share_colour_with_edited, plain)) / len(plain) < 0.25
    assert all(map(_share_colour_with_edited, multi))  # every scene with another object gets one
    for e in always:  # still exact, unambiguous edits
        assert apply_instruction(e.source, e.instruction) == e.target
    # stories: unchanged when off; with it on, every opening of 2+ objects repeats a colour
    rng = np.random.default_rng(1)
    off, zero = _world(2), _world(2, lookalike_prob=0.0)
    assert [off.sample_story() for _ in range(20)] == [zero.sample_story() for _ in range(20)]
    openings = [_world(2, lookalike_prob=1.0).sample_story(rng).steps[0].scene for _ in range(200)]
    assert all(len({o.color for o in s.objects}) < len(s.objects) for s in openings if len(s.objects) > 1)
    # a given scene (a story's next step) is never changed
    scene = Scene((Obj("circle", "red", "small", 0), Obj("square", "blue", "large", 4)))
    for _ in range(20):
        assert _world(1, lookalike_prob=1.0).sample_edit(scene=scene, kind="remove").source == scene
    # the look-alike never brings a held-out pair into the train split
    held = _world(5, holdout=["red triangle", "blue circle"], lookalike_prob=1.0)
    for _ in range(300):
        e = held.sample_edit()
        assert not (e.source.pairs | e.target.pairs) & {"red triangle", "blue circle"}
    with pytest.raises(ConfigError, match="lookalike_prob"):
        build(WorldConfig, {"lookalike_prob": 1.5})


def test_edit_weights_set_how_often_each_kind_is_sampled():
    def kinds(world, n=3000):
        rng = np.random.default_rng(0)
        return [world.sample_edit(rng).kind for _ in range(n)]

    # unlisted kinds weigh 1, so equal weights are the uniform draw: the very same stream as before
    assert kinds(_world(4)) == kinds(_world(4, edit_weights={"move": 1, "add": 1}))
    uniform, weighted = kinds(_world(4)), kinds(_world(4, edit_weights={"move": 2, "add": 0}))
    assert "add" not in weighted and "add" in uniform
    # recolor, move and resize are valid in every scene: with move at 2, moves are ~twice each of them
    assert 1.7 < weighted.count("move") / weighted.count("recolor") < 2.3
    assert 1.7 < weighted.count("move") / weighted.count("resize") < 2.3
    assert 0.8 < uniform.count("move") / uniform.count("recolor") < 1.2
    # a given kind is still honoured, whatever its weight
    assert _world(4, edit_weights={"move": 0}).sample_edit(kind="move").kind == "move"
    # a story's steps stay uniform: the same stories as without weights
    moves_only = {"recolor": 0, "resize": 0, "remove": 0, "add": 0}
    assert [_world(2).sample_story() for _ in range(30)] == \
        [_world(2, edit_weights=moves_only).sample_story() for _ in range(30)]
    assert _world(2, edit_weights=moves_only).sample_edit(weighted=False) == _world(2).sample_edit()
    for bad, match in (({"jump": 1}, "edit_weights.jump: not an edit kind"),
                       ({"move": -1}, "edit_weights.move: must be a number >= 0"),
                       ({"recolor": 0, "move": 0, "resize": 0}, "needs a weight > 0")):
        with pytest.raises(ConfigError, match=match):
            build(WorldConfig, {"edit_weights": bad})


def test_render_scene():
    scene = Scene((Obj("square", "red", "large", 0), Obj("circle", "blue", "small", 4),
                   Obj("triangle", "yellow", "large", 8)))
    img = render_scene(scene)
    assert img.size == (64, 64) and img.mode == "RGB"
    a = np.asarray(img).astype(int)
    assert (a[0, 63] == 255).all() and (a[63, 0] == 255).all()  # white background
    assert tuple(a[10, 10]) == COLORS["red"]  # centre of the top-left cell
    assert tuple(a[32, 32]) == COLORS["blue"]
    assert tuple(a[56, 53]) == COLORS["yellow"]  # low in the triangle (apex up)
    assert (a[46, 45] == 255).all()  # top-left corner of the triangle's box is outside it
    # anti-aliasing: partially covered pixels have intermediate colours
    edge = a[:, :, 1][(a[:, :, 1] > 40) & (a[:, :, 1] < 255)]
    assert len(edge) > 20
    # sizes: large square ~18 px wide, small circle ~10 px
    assert 17 <= (a[10, :21, 1] < 150).sum() <= 19
    assert 9 <= (a[32, 21:43, 0] < 150).sum() <= 11
    assert render_scene(scene, 32).size == (32, 32)
    assert render_scene(scene, 128).size == (128, 128)


def test_melodies():
    notes = ("C", "E", "G")
    wave = render_melody(notes)
    assert wave.dtype == np.float32 and wave.shape == (3 * 4000,)
    assert np.abs(wave).max() <= 1.0
    assert abs(wave[0]) < 1e-3 and abs(wave[-1]) < 1e-3  # fades, no clicks
    assert abs(wave[3999]) < 0.01 and abs(wave[4000]) < 0.01
    assert melody_text(notes) == "the notes C E G"
    assert parse_melody_text("The notes c e g.") == notes
    for bad in ["the notes", "the notes H", "notes C E", ""]:
        assert parse_melody_text(bad) is None
    assert NOTES == ("C", "D", "E", "F", "G", "A", "B")
    assert NOTE_FREQS["C"] == pytest.approx(261.63) and NOTE_FREQS["A"] == 440.0
    world = _world(4)
    lengths = {len(world.sample_melody()) for _ in range(200)}
    assert lengths == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="note"):
        render_melody(["H"])


def test_stories_and_documents():
    world = _world(8, melody_prob=0.5)
    n_steps, with_audio = set(), 0
    for _ in range(40):
        story = world.sample_story()
        steps = story.steps
        n_steps.add(len(steps))
        assert steps[0].text == steps[0].scene.caption()
        for prev, step in zip(steps, steps[1:]):
            assert step.text.startswith("then ")
            assert apply_instruction(prev.scene, step.text) == step.scene
        doc = story_document(story)
        kinds = [type(s) for s in doc.segments]
        assert kinds.count(Image) == len(steps)
        assert kinds.count(Audio) == sum(s.melody is not None for s in steps)
        with_audio += kinds.count(Audio) > 0
        assert isinstance(doc.segments[0], Text) and doc.segments[0].text == steps[0].text
    assert n_steps == {2, 3, 4} and with_audio > 0
    for kind in ("shapes", "edits", "melodies", "stories"):
        assert len(world.sample_document(kind)) >= 2
    with pytest.raises(ValueError, match="kind"):
        world.sample_document("emoji")


def test_parse_slots_reads_edit_slots_lists():
    """parse_slots: an `Edit.slots()` list -> its Scene (``removed`` slots left out); else None."""
    world = _world(1)
    rng = np.random.default_rng(2)
    for kind in EDIT_KINDS:
        for _ in range(30):
            e = world.sample_edit(rng, kind=kind)
            before, after = e.slots()
            assert parse_slots(before) == e.source and parse_slots(after) == e.target
    assert parse_slots("large red circle top, small blue square removed") == Scene((Obj("circle", "red", "large", 1),))
    for bad in ["", "large red circle", "large red circle top, small blue square top",  # same cell
                "small blue square removed", "a large red circle at the top"]:
        assert parse_slots(bad) is None, bad
