"""Task builders: sequence layouts, loss masks, null-condition dropout, prompts, code caching."""

import math
from pathlib import Path

import numpy as np
import pytest

from anygen.config import ConfigError, build
from anygen.worlds.shapes.world import ShapesWorld, WorldConfig, melody_text, render_scene
from anygen.document import Document, Image, Text
from anygen.tasks.encoder import SequenceEncoder
from anygen.tasks.layouts import (TaskMix, allocate, edit, null_condition_prompt, reasoned_edit, reasoned_text,
                                  task_prompt, text_to_image)
from anygen.worlds.shapes.plans import (REASON_LEAD, follows_plan, parse_reasoning, planned_scene, reasoning,
                                        reasoning_parts)
from anygen.worlds.shapes.tasks import ShapesTasks

import fakes as fake_codecs


@pytest.fixture(scope="module")
def tok():
    return fake_codecs.make_tokenizer()


@pytest.fixture
def world():
    return ShapesWorld(WorldConfig(seed=0))


def mix(**overrides):
    data = {t: {"p_null": 0.0} for t in ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text")}
    data["edit"] = {"p_null_instruction": 0.0, "p_null_image": 0.0, "p_null_both": 0.0}
    for k, v in overrides.items():
        data.setdefault(k, {}).update(v)
    return build(TaskMix, data)


def span_of(tok, image):
    return tok.image_span(tok.image_codes(image))


def test_layouts_and_loss_masks(tok, world):
    rng = np.random.default_rng(0)
    enc = SequenceEncoder(tok)
    tasks = ShapesTasks(world, mix())
    v = tok.vocab
    # text -> image: loss on <boi> … <eoi> <eos> only
    spec = tasks.sample("text_to_image", rng)
    caption = spec.pieces[1].value
    image = spec.pieces[2].value.make()
    seq = enc.encode([spec])[0]
    cap, span = tok.encode_text(caption), span_of(tok, image)
    assert seq.ids.tolist() == [v.bos] + cap + span + [v.eos]
    assert seq.loss.tolist() == [0] * (1 + len(cap)) + [1] * (len(span) + 1)
    # image -> text: loss on the caption and <eos>
    spec = tasks.sample("image_to_text", rng)
    image, caption = spec.pieces[1].value.make(), spec.pieces[2].value
    seq = enc.encode([spec])[0]
    cap, span = tok.encode_text(caption), span_of(tok, image)
    assert seq.ids.tolist() == [v.bos] + span + cap + [v.eos]
    assert seq.loss.tolist() == [0] * (1 + len(span)) + [1] * (len(cap) + 1)
    # text -> audio / audio -> text
    spec = tasks.sample("text_to_audio", rng)
    text, (wave, sr) = spec.pieces[1].value, spec.pieces[2].value.make()
    seq = enc.encode([spec])[0]
    aspan = tok.audio_span(tok.audio_codes(wave, sr))
    assert text.startswith("the notes ")
    assert seq.ids.tolist() == [v.bos] + tok.encode_text(text) + aspan + [v.eos]
    assert seq.loss.sum() == len(aspan) + 1 and seq.ids[seq.loss == 1][0] == v.boa
    spec = tasks.sample("audio_to_text", rng)
    seq = enc.encode([spec])[0]
    assert seq.ids[1] == v.boa and seq.ids[seq.loss == 1].tolist() == tok.encode_text(spec.pieces[2].value) + [v.eos]
    # edit: <bos> instruction span(src) span(tgt) <eos>, loss on span(tgt) <eos>
    spec = tasks.sample("edit", rng)
    ins, src, tgt = spec.pieces[1].value, spec.pieces[2].value.make(), spec.pieces[3].value.make()
    seq = enc.encode([spec])[0]
    prompt = [v.bos] + tok.encode_text(ins) + span_of(tok, src)
    assert seq.ids.tolist() == prompt + span_of(tok, tgt) + [v.eos]
    # target code j is exactly one span after source code j, whatever the instruction
    first_src, first_tgt = len(prompt) - len(span_of(tok, src)) + 2, len(prompt) + 2
    assert first_tgt - first_src == len(span_of(tok, src))
    assert seq.loss.tolist() == [0] * len(prompt) + [1] * (len(seq.ids) - len(prompt))


def test_describe_edit_is_the_edit_read_backwards(tok, world):
    """<bos> span(src) span(tgt) instruction <eos>: the Document [source, target, instruction]
    (so `<keep>` coding of the target works as in any document), loss on the instruction and
    <eos>; the sampler's prompt is its prefix; off unless a recipe weights it."""
    assert TaskMix().describe_edit.weight == 0
    keep_tok = type(tok)(tok.text, tok.image, tok.audio, image_keep=True)
    for t in (tok, keep_tok):
        rng = np.random.default_rng(9)
        spec = ShapesTasks(world, mix(describe_edit={"weight": 1})).sample("describe_edit", rng)
        src, tgt, ins = spec.pieces[1].value.make(), spec.pieces[2].value.make(), spec.pieces[3].value
        seq = SequenceEncoder(t).encode([spec])[0]
        assert seq.ids.tolist() == t.encode(Document([Image(src), Image(tgt), Text(ins)]))
        prompt = task_prompt(t, "describe_edit", image=t.image_codes(src), target=t.image_codes(tgt))
        assert seq.ids[:len(prompt)].tolist() == prompt
        assert seq.loss.tolist() == [0] * len(prompt) + [1] * (len(seq.ids) - len(prompt))
        assert seq.ids[seq.loss == 1].tolist() == t.encode_text(ins) + [t.vocab.eos]
    assert (seq.ids == keep_tok.vocab.keep).any()
    # p_narrative: that share of the answers is the edit's story sentence
    tasks = ShapesTasks(world, mix(describe_edit={"weight": 1, "p_narrative": 0.5}))
    rng = np.random.default_rng(10)
    answers = [tasks.sample("describe_edit", rng).pieces[3].value for _ in range(400)]
    assert 0.4 < np.mean([a.startswith("then ") for a in answers]) < 0.6


def test_reasoned_edit_says_what_it_sees_and_draws_before_drawing(tok, world):
    """<bos> instruction span(src) reasoning span(tgt) <eos>: the prompt is the plain edit's, the loss
    covers the text, the target and <eos>, the target is `<keep>`-coded against the source, the
    sampler's forced lead is a prefix of the text's ids; each form writes its text."""
    assert TaskMix().reasoned_edit.weight == 0 and TaskMix().reasoned_edit.form == "scene"
    keep_tok = type(tok)(tok.text, tok.image, tok.audio, image_keep=True)
    for t in (tok, keep_tok):
        rng = np.random.default_rng(11)
        e = world.sample_edit(np.random.default_rng(11))
        spec = ShapesTasks(world, mix(reasoned_edit={"weight": 1})).sample("reasoned_edit", rng)
        ins, src, text, tgt = spec.pieces[1].value, spec.pieces[2].value.make(), spec.pieces[3].value, \
            spec.pieces[4].value.make()
        assert ins == e.instruction and text == f"before {e.source.caption()} after {e.target.caption()}"
        assert parse_reasoning(text) == (e.source.caption(), e.target.caption())
        seq = SequenceEncoder(t).encode([spec])[0]
        assert seq.ids.tolist() == t.encode(Document([Text(ins), Image(src), Text(text), Image(tgt)]))
        prompt = task_prompt(t, "reasoned_edit", image=t.image_codes(src), instruction=ins)
        assert prompt == task_prompt(t, "edit", image=t.image_codes(src), instruction=ins)
        assert seq.ids[:len(prompt)].tolist() == prompt
        assert seq.loss.tolist() == [0] * len(prompt) + [1] * (len(seq.ids) - len(prompt))
        lead = t.encode_text(REASON_LEAD)
        assert seq.ids[len(prompt):len(prompt) + len(lead)].tolist() == lead
    assert (seq.ids == keep_tok.vocab.keep).any()
    before, after = e.change()
    expected = {"object": f"before {before} after {after}",
                "caption_object": f"before {e.source.caption()} change {before} to {after}",
                "slots": "before {} after {}".format(*e.slots())}
    for form, want in expected.items():
        spec = ShapesTasks(world, mix(reasoned_edit={"weight": 1, "form": form})).sample(
            "reasoned_edit", np.random.default_rng(11))
        assert spec.pieces[3].value == want == reasoning(form, e)
    assert parse_reasoning("a red circle") is None and parse_reasoning(expected["object"]) == (before, after)
    assert parse_reasoning(expected["slots"]) == e.slots()
    with pytest.raises(ConfigError, match="form"):
        ShapesTasks(world, mix(reasoned_edit={"form": "poem"}))  # the world knows its plan forms
    # p_narrative: that share of the instructions is the story sentence (story(reason=True) edits with it)
    tasks = ShapesTasks(world, mix(reasoned_edit={"weight": 1, "p_narrative": 0.5}))
    rng = np.random.default_rng(12)
    instructions = [tasks.sample("reasoned_edit", rng).pieces[1].value for _ in range(400)]
    assert 0.4 < np.mean([a.startswith("then ") for a in instructions]) < 0.6


@pytest.mark.parametrize("form", ["scene", "slots"])
def test_reasoned_text_is_the_reasoned_edit_text_without_pictures(tok, world, form):
    """<bos> instruction <before ...> <after ...> <eos>: the ids are the reasoned edit's with both images
    taken out, and the loss covers the plan (` after ...`) and <eos> only."""
    m = mix(reasoned_text={"weight": 1}, reasoned_edit={"weight": 1, "form": form})
    for kind in ("move", "remove"):
        e = world.sample_edit(np.random.default_rng(13), kind=kind)
        seen, plan = reasoning_parts(form, e)
        assert seen + plan == reasoning(form, e) and plan.startswith(" after ")
        spec = reasoned_text(e.instruction, seen, plan, m.reasoned_text)
        seq = SequenceEncoder(tok).encode([spec])[0]
        full = SequenceEncoder(tok).encode([reasoned_edit(render_scene(e.source), e.instruction,
                                                          render_scene(e.target), seen + plan, m.reasoned_edit,
                                                          np.random.default_rng(0))])[0]
        text_ids = [int(i) for i in full.ids if int(i) < tok.vocab.n_text or int(i) in (tok.vocab.bos, tok.vocab.eos)]
        assert seq.ids.tolist() == text_ids
        n_plan = len(tok.encode_text(plan))
        assert seq.loss.tolist() == [0] * (len(seq.ids) - n_plan - 1) + [1] * (n_plan + 1)
    sampled = ShapesTasks(world, m).sample("reasoned_text", np.random.default_rng(13))
    assert sampled.task == "reasoned_text" and sampled.pieces[3].value.startswith(" after ")
    with pytest.raises(ValueError, match="seen, plan"):
        task_prompt(tok, "reasoned_text", instruction="remove the red circle")


def test_loss_on_prompt_option(tok, world):
    enc = SequenceEncoder(tok)
    rng = np.random.default_rng(1)
    spec = ShapesTasks(world, mix(text_to_image={"loss_on_prompt": True})).sample("text_to_image", rng)
    seq = enc.encode([spec])[0]
    assert seq.loss[0] == 0 and seq.loss[1:].all()  # everything but <bos>
    spec = ShapesTasks(world, mix(edit={"loss_on_prompt": True})).sample("edit", rng)
    seq = enc.encode([spec])[0]
    assert seq.loss[0] == 0 and seq.loss[1:].all()


def test_story_is_the_world_document_with_loss_everywhere(tok, world):
    rng = np.random.default_rng(2)
    tasks = ShapesTasks(world, mix())
    enc = SequenceEncoder(tok)
    stories = [world.sample_story(rng) for _ in range(12)]
    assert any(step.melody for s in stories for step in s.steps)  # melodies covered
    for story in stories:
        seq = enc.encode([tasks.story(story)])[0]
        assert seq.ids.tolist() == tok.encode(world.story_document(story))
        assert seq.loss[0] == 0 and seq.loss[1:].all()
        assert seq.task == "story"


def test_null_condition_rate_and_forms(tok, world):
    p, n = 0.1, 4000
    m = build(TaskMix, {"text_to_image": {"p_null": p}})
    rng = np.random.default_rng(3)
    tasks = ShapesTasks(world, m)
    specs = [tasks.sample("text_to_image", rng) for _ in range(n)]
    dropped = sum(s.dropped == "condition" for s in specs)
    sd = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 5 * sd  # binomial: fails with probability < 1e-6
    enc = SequenceEncoder(tok)
    v = tok.vocab
    seqs = enc.encode(specs[:200])
    nulls = [s for s, sp in zip(seqs, specs) if sp.dropped]
    kept = [s for s, sp in zip(seqs, specs) if not sp.dropped]
    assert nulls and kept
    for s in nulls:  # <bos> <null> <boi> … <eoi> <eos>; no loss on <null>
        assert s.ids[:3].tolist() == null_condition_prompt(tok, "text_to_image") + [v.boi]
        assert s.loss[:2].tolist() == [0, 0] and s.loss[2:].all()
    assert all(v.null not in s.ids for s in kept)


def test_edit_drops_are_exclusive_with_their_rates(tok, world):
    m = build(TaskMix, {"edit": {"p_null_instruction": 0.1, "p_null_image": 0.2, "p_null_both": 0.05}})
    rng = np.random.default_rng(4)
    img = world.render(world.sample_scene(rng))
    n = 4000
    kinds = [edit(img, "make it blue", img, m.edit, rng).dropped for _ in range(n)]
    for kind, p in (("instruction", 0.1), ("image", 0.2), ("both", 0.05), ("", 0.65)):
        assert abs(kinds.count(kind) - n * p) < 5 * math.sqrt(n * p * (1 - p)), kind


def test_edit_null_rows_match_training_sequences(tok, world):
    """The sampler's three InstructPix2Pix rows are exactly the prompts of the dropped training examples."""
    rng = np.random.default_rng(5)
    e = world.sample_edit(rng)
    src, tgt = world.render(e.source), world.render(e.target)
    enc = SequenceEncoder(tok)
    v = tok.vocab
    cases = {
        "": task_prompt(tok, "edit", image=src, instruction=e.instruction),
        "instruction": null_condition_prompt(tok, "edit", drop="instruction", image=src),
        "image": null_condition_prompt(tok, "edit", drop="image", instruction=e.instruction),
        "both": null_condition_prompt(tok, "edit"),
    }
    probs = {"": (0, 0, 0), "instruction": (1, 0, 0), "image": (0, 1, 0), "both": (0, 0, 1)}
    for drop, prompt in cases.items():
        spec_cfg = build(TaskMix, {"edit": dict(zip(("p_null_instruction", "p_null_image", "p_null_both"),
                                                    map(float, probs[drop])))}).edit
        spec = edit(src, e.instruction, tgt, spec_cfg, rng)
        assert spec.dropped == drop
        seq = enc.encode([spec])[0]
        assert seq.ids[:len(prompt)].tolist() == prompt
        assert seq.ids[len(prompt)] == v.boi and not seq.loss[:len(prompt)].any()
    assert cases["both"] == [v.bos, v.null, v.null]
    assert cases["image"] == [v.bos] + tok.encode_text(e.instruction) + [v.null]
    # codes may stand in for the PIL image
    codes = tok.image_codes(src)
    assert task_prompt(tok, "edit", image=codes, instruction=e.instruction) == cases[""]


def test_prompts_are_training_prefixes(tok, world):
    rng = np.random.default_rng(6)
    enc = SequenceEncoder(tok)
    tasks = ShapesTasks(world, mix())
    scene = world.sample_scene(rng)
    spec = text_to_image(scene.caption(), world.render(scene), mix().text_to_image, rng)
    seq = enc.encode([spec])[0]
    prompt = task_prompt(tok, "text_to_image", text=scene.caption())
    assert seq.ids[:len(prompt)].tolist() == prompt and seq.loss[len(prompt)] == 1
    spec = tasks.sample("image_to_text", rng)
    seq = enc.encode([spec])[0]
    prompt = task_prompt(tok, "image_to_text", image=spec.pieces[1].value.make())
    assert seq.ids[:len(prompt)].tolist() == prompt and seq.loss[len(prompt)] == 1
    notes = ("C", "E", "G")
    wave = world.render_melody(notes)
    spec = tasks.sample("audio_to_text", rng)
    seq = enc.encode([spec])[0]
    prompt = task_prompt(tok, "audio_to_text", audio=spec.pieces[1].value.make())
    assert seq.ids[:len(prompt)].tolist() == prompt
    assert task_prompt(tok, "text_to_audio", text=melody_text(notes))[1:] == tok.encode_text("the notes C E G")
    assert null_condition_prompt(tok, "text_to_audio") == [tok.vocab.bos, tok.vocab.null]
    assert len(wave) > 0


def test_codes_are_cached_per_scene_and_batched(world):
    tok = fake_codecs.make_tokenizer()
    enc = SequenceEncoder(tok, batch_size=4)
    rng = np.random.default_rng(7)
    scenes = [world.sample_scene(rng, n_objects=2) for _ in range(10)]
    m = mix()
    specs = [text_to_image(s.caption(), ShapesTasks(world, m)._scene(s), m.text_to_image, rng) for s in scenes * 3]
    seqs = enc.encode(specs)
    assert tok.image.images_encoded == 10  # each distinct scene through the codec once
    assert tok.image.calls == 3  # ceil(10 / 4) batched calls
    enc.encode(specs[:5])
    assert tok.image.images_encoded == 10  # all cached
    assert [s.ids.tolist() for s in seqs[:10]] == [s.ids.tolist() for s in seqs[10:20]]
    # melodies too
    tasks = ShapesTasks(world, m)
    specs = [tasks.sample("text_to_audio", np.random.default_rng(8)) for _ in range(3)]
    enc.encode(specs)
    assert tok.audio.calls == 1


def test_task_mix_config():
    m = build(TaskMix, {"image_to_text": {"weight": 2.0}, "edit": {"weight": 0}})
    assert m.image_to_text.p_null == 0.0  # per-task default survives a partial section
    assert m.text_to_image.p_null == 0.1 and m.edit.weight == 0
    with pytest.raises(ConfigError, match="p_null"):
        build(TaskMix, {"text_to_image": {"p_null": 1.5}})
    with pytest.raises(ConfigError, match="edit"):
        build(TaskMix, {"edit": {"p_null_image": 0.6, "p_null_both": 0.6}})
    zero = {t: {"weight": 0} for t in ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text",
                                       "edit", "story", "document")}
    with pytest.raises(ConfigError, match="weight"):
        build(TaskMix, zero)
    counts = allocate({t: w for t, w in TaskMix().weights().items() if t != "document"}, 1000)
    assert sum(counts.values()) == 1000 and counts["text_to_image"] == 334
    assert allocate({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}


def test_keep_vocab_writes_edit_targets_as_changes(tok, world):
    """With <keep> the target span holds <keep> exactly where its codes equal the source's;
    lengths and loss masks are those of the plain vocab, and decoding gives the same images."""
    keep_tok = type(tok)(tok.text, tok.image, tok.audio, image_keep=True)
    v = keep_tok.vocab
    specs = [ShapesTasks(world, mix()).sample("edit", np.random.default_rng(s)) for s in range(4)]
    plain = SequenceEncoder(tok).encode(specs)
    coded = SequenceEncoder(keep_tok).encode(specs)
    n_keeps = 0
    for p, c in zip(plain, coded):
        assert np.array_equal(p.loss, c.loss) and len(p.ids) == len(c.ids)
        starts = np.flatnonzero(p.ids == v.boi)
        src, tgt = (slice(s + 2, s + 2 + 4) for s in starts)  # the fake codec's 2x2 grid
        same = p.ids[src] == p.ids[tgt]
        assert np.array_equal(c.ids[tgt] == v.keep, same) and np.array_equal(c.ids[tgt][~same], p.ids[tgt][~same])
        assert np.array_equal(c.ids[src], p.ids[src])
        n_keeps += int(same.sum())
        assert [np.asarray(im).tolist() for im in keep_tok.decode(c.ids).images] == \
            [np.asarray(im).tolist() for im in tok.decode(p.ids).images]
    assert n_keeps > 0


def test_planned_scene_reads_what_a_reasoning_says_it_will_draw(world):
    """planned_scene: the `scene` and `slots` forms' after part is the edit's target for every kind
    (a removed slot left out); follows_plan holds for exactly the caption of that target."""
    rng = np.random.default_rng(5)
    for kind in ("recolor", "move", "resize", "remove", "add"):
        for _ in range(20):
            e = world.sample_edit(rng, kind=kind)
            for form in ("scene", "slots"):
                text = reasoning(form, e)
                assert planned_scene(text) == e.target, (form, text)
                assert follows_plan(text, e.target.caption()) and not follows_plan(text, e.source.caption())
    assert planned_scene("before a red circle") is None and planned_scene("after small red circle top") is None
    assert planned_scene("before small red circle top after small red circle everywhere") is None
    assert not follows_plan("before x after y", "a small red circle at the top")
