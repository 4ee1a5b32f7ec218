"""The whole chain on a tiny random model: load a model directory, then draw, caption, say,
transcribe, edit and generate through the Python API and the CLI, with clear errors for bad input."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import anygen
from anygen.cli import main as cli_main
from anygen.document import Audio, Document, Image, Text, wav_bytes
from anygen.errors import AnygenError
from anygen.model.decoder import DecoderConfig, build_decoder, save_decoder
from anygen.sampling import SamplingSettings

_spec = importlib.util.spec_from_file_location("anygen_test_fake_codecs_pipe", Path(__file__).parent / "data" / "fake_codecs.py")
fake_codecs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_codecs)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "keep_aligned"])
def any_model_dir(request, tmp_path_factory):
    """The tiny model with the plain vocab, and with `<keep>` (image spans coded against the
    previous image) and image-aligned positions (anygen.model.positions)."""
    if not request.param:
        yield request.getfixturevalue("model_dir")
        return
    yield from _model_dir(tmp_path_factory, image_keep=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    yield from _model_dir(tmp_path_factory)


def _model_dir(tmp_path_factory, image_keep=False):
    mp = pytest.MonkeyPatch()
    import anygen.codecs.audio as audio_mod
    import anygen.codecs.image as image_mod

    mp.setattr(image_mod, "ImageCodec", fake_codecs.FakeImageCodec)
    mp.setattr(audio_mod, "AudioCodec", fake_codecs.FakeAudioCodec)
    root = tmp_path_factory.mktemp("model")
    tokenizer = fake_codecs.make_tokenizer(image_keep=image_keep)
    tokenizer.save(root / "tok")
    cfg = DecoderConfig(n_layers=2, hidden=32, n_heads=2, n_kv_heads=1, head_dim=16, intermediate=64, max_position=256,
                        image_position_stride=16 if image_keep else 0)
    model = build_decoder(cfg, tokenizer.vocab, seed=0)
    save_decoder(model, root / "model", config=cfg, vocab=tokenizer.vocab, tokenizer_dir=root / "tok")
    yield root / "model"
    mp.undo()


@pytest.fixture(scope="module")
def gen(model_dir):
    return anygen.load(model_dir)


def test_draw_returns_images_and_is_seeded(gen):
    images = gen.draw("a large red circle at the top left", n=2, seed=0, cfg_scale=3.0)
    assert len(images) == 2 and all(isinstance(im, PILImage.Image) for im in images)
    again = gen.draw("a large red circle at the top left", n=2, seed=0, cfg_scale=3.0)
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in again]


def test_best_of_returns_n_images(gen):
    assert len(gen.draw("a small blue square at the center", n=1, best_of=3, seed=1)) == 1


def test_caption_transcribe_say_edit(gen):
    image = gen.draw("a small blue square at the center")[0]
    assert isinstance(gen.caption(image), str)
    audio = gen.say("the notes C E G", max_frames=4)
    assert isinstance(audio, Audio) and 0 < len(audio.waveform) <= 4 * gen.tokenizer.audio.hop
    assert isinstance(gen.transcribe(audio), str)
    edited = gen.edit(image, "make the blue square red", text_scale=2.0, image_scale=1.5)
    assert edited.size == image.size
    # the image argument is positional-only, so `image=` is the per-modality sampling settings
    greedy = gen.edit(image, "make the blue square red", image=SamplingSettings(greedy=True), seed=1)
    assert np.array_equal(np.asarray(greedy), np.asarray(gen.edit(image, "make the blue square red",
                                                                     image=SamplingSettings(greedy=True), seed=2)))


def test_edit_mask_copies_source_codes(any_model_dir):
    gen = anygen.load(any_model_dir)
    image = gen.draw("a small blue square at the center", seed=3)[0]
    source = gen.tokenizer.image_codes(image).reshape(-1)
    editable = [True, False, False, True]
    edited = gen.tokenizer.image_codes(gen.edit(image, "make it red", editable=editable, seed=5)).reshape(-1)
    for i, flag in enumerate(editable):
        if not flag:
            assert edited[i] == source[i]
    if gen.vocab.image_keep:  # nothing editable: every code is a <keep>, and the image comes back exactly
        same = gen.edit(image, "make it red", editable=[False] * 4, seed=5)
        assert np.array_equal(np.asarray(same), np.asarray(gen.tokenizer.decode(
            gen.tokenizer.encode(Document([Image(image)]))).images[0]))


def test_edit_batch_equals_edits_one_by_one(any_model_dir):
    gen = anygen.load(any_model_dir)
    images = [gen.draw("a small blue square at the center", seed=s)[0] for s in (3, 4)]
    instructions = ["make it red", "remove the blue square now please"]  # different lengths: left padding
    greedy = SamplingSettings(greedy=True)
    batch = gen.edit_batch(images, instructions, image=greedy)
    alone = [gen.edit(im, ins, image=greedy) for im, ins in zip(images, instructions)]
    assert [np.asarray(a).tolist() for a in batch] == [np.asarray(b).tolist() for b in alone]
    with pytest.raises(AnygenError, match="2 images but 1 instructions"):
        gen.edit_batch(images, instructions[:1])


def test_edit_best_of_keeps_the_candidate_that_best_explains_the_instruction(any_model_dir, monkeypatch):
    """best_of samples several edits and keeps the one with the highest
    log p(instruction <eos> | <bos> span(source) span(candidate)) — checked here against a plain
    forward of each whole describe_edit sequence (with the model's own positions)."""
    from anygen.codecs.keep import encode_keeps
    from anygen.model.decoder import forward_logits
    from anygen.model.positions import ImagePositions

    gen = anygen.load(any_model_dir)
    v = gen.vocab
    image = gen.draw("a small blue square at the center", seed=3)[0]
    instruction = "make the blue square red"
    seen = {}
    rank = gen._rank_edits

    def spy(*args, **kw):
        seen.update(args=args, kw=kw, order=rank(*args, **kw))
        return seen["order"]

    monkeypatch.setattr(gen, "_rank_edits", spy)
    edited = gen.edit(image, instruction, best_of=6, seed=1)
    source, candidates, _ = seen["args"]
    assert len(candidates) == 6 and len({tuple(c.reshape(-1).tolist()) for c in candidates}) > 1  # sampled
    answer = gen.tokenizer.encode_text(instruction) + [v.eos]
    reference = []
    for c in candidates:
        ids = encode_keeps([v.bos] + gen.tokenizer.image_span(source) + gen.tokenizer.image_span(c) + answer, v)
        with torch.no_grad():
            logits = forward_logits(gen.model, {"input_ids": torch.tensor([ids])},
                                    positions=ImagePositions.of(gen.model, v))[0]
        logp = logits[:-1].float().log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        reference.append(float(logp[-len(answer):].sum()))
    assert not any(seen["kw"]["followed"])  # plain edits: describe_edit alone
    best = seen["order"][0]
    assert reference[best] == pytest.approx(max(reference), abs=1e-4)
    assert np.array_equal(np.asarray(edited), np.asarray(gen.tokenizer.image_from_codes(candidates[best])))
    with pytest.raises(AnygenError, match="best_of"):
        gen.edit(image, instruction, best_of=0)


def test_reasoned_best_of_keeps_a_picture_that_shows_its_plan(gen, monkeypatch):
    """Reasoned best_of: the model captions every candidate picture (image_to_text, one batch) and a
    picture whose caption is the scene its own text planned beats better-scored ones; describe_edit
    ranks the rest."""
    plan_a = "before small red circle top after small blue circle top"
    plan_b = "before small red circle top after large red circle top"
    texts = iter([plan_a, plan_b, plan_b, "before whatever", plan_a] + [plan_a, plan_b, plan_a, "before x", plan_a])
    monkeypatch.setattr(gen, "_reasoning_of", lambda result: next(texts))
    caption_b = "a large red circle at the top"
    captions = []

    def answers(prompts, max_new_tokens, seed, **settings):
        captions.append(len(prompts))
        assert all(p[:2] == [gen.vocab.bos, gen.vocab.boi] for p in prompts)  # image_to_text prompts
        return [caption_b if k == 2 else "a small green square at the left" for k in range(len(prompts))]

    monkeypatch.setattr(gen, "_text_answers", answers)
    scores = iter([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    monkeypatch.setattr(gen, "_edit_scores", lambda source, targets, instructions: next(scores))
    picked = []
    rank = gen._rank_edits
    monkeypatch.setattr(gen, "_rank_edits", lambda *a, **kw: picked.append(rank(*a, **kw)) or picked[-1])
    image = gen.draw("a small red circle at the top", seed=0)[0]
    gen.edit(image, "make it blue", reason=True, best_of=5, seed=0)
    assert captions == [5] and picked[-1][0] == 2  # the only picture that shows its plan (b), not the best score
    monkeypatch.setattr(gen, "_text_answers", lambda prompts, *a, **kw: ["no caption"] * len(prompts))
    gen.edit(image, "make it blue", reason=True, best_of=5, seed=0)
    assert picked[-1] == [4, 3, 2, 1, 0]  # no picture shows its plan: by score (no vote for plan a)


def test_reasoned_best_of_retries_only_the_edits_none_of_whose_pictures_shows_its_plan(gen, monkeypatch):
    """retries: a row none of whose best_of pictures shows its plan is sampled again (another seed)
    and ranked with all its candidates; a row that has one is not sampled again."""
    import anygen.pipeline as pipeline

    plan = "before small red circle top after large red circle top"
    monkeypatch.setattr(gen, "_reasoning_of", lambda result: plan)
    shows = iter([[False, True, False, False, False, False], [False, False, True]])  # per round, per picture
    captioned = []

    def answers(prompts, max_new_tokens, seed, **settings):
        captioned.append(len(prompts))
        return ["a large red circle at the top" if ok else "a small green square at the left" for ok in next(shows)]

    monkeypatch.setattr(gen, "_text_answers", answers)
    image = gen.draw("a small red circle at the top", seed=0)[0]
    seeds, run = [], pipeline.generate
    monkeypatch.setattr(pipeline, "generate", lambda model, vocab, prompts, cfg: seeds.append(cfg.seed) or
                        run(model, vocab, prompts, cfg))
    picked, rank = [], gen._rank_edits
    monkeypatch.setattr(gen, "_rank_edits", lambda *a, **kw: picked.append((kw["followed"], rank(*a, **kw)[0]))
                        or [picked[-1][1]])
    gen.edit_batch([image, image], ["make it large", "make the red circle large"], reason=True, best_of=3,
                   retries=2, seed=5)
    assert captioned == [6, 3]  # round 2: the second row alone, and no third round once it has a picture
    assert seeds[0] == 5 and len(set(seeds)) == 2  # the second round draws with another seed
    assert picked == [([False, True, False], 1), ([False] * 5 + [True], 5)]  # its pick: the second round's
    with pytest.raises(AnygenError, match="retries"):
        gen.edit(image, "make it large", best_of=3, retries=1)  # without reason there is no plan to show


def test_story_best_of_keeps_the_picture_that_best_explains_each_sentence(any_model_dir, monkeypatch):
    """Each later picture is the describe_edit pick among its samples, given the picture before it."""
    gen = anygen.load(any_model_dir)
    picks = []
    rank = gen._rank_edits

    def spy(source, candidates, sentence):
        order = rank(source, candidates, sentence)
        picks.append((source, candidates[order[0]], len(candidates)))
        return order

    monkeypatch.setattr(gen, "_rank_edits", spy)
    doc = gen.story("a small red circle", n_steps=3, seed=0, best_of=3)
    segments = list(doc)
    assert segments[0] == Text("a small red circle") and isinstance(segments[1], Image)  # the picture follows
    codes = [gen.tokenizer.image_codes(im) for im in doc.images]
    assert len(codes) == 3 and len(picks) == 2
    for (source, chosen, n), before, after in zip(picks, codes, codes[1:]):
        assert n == 3 and torch.equal(source, before) and torch.equal(chosen, after)
    with pytest.raises(AnygenError, match="best_of"):
        gen.story("a small red circle", best_of=0)


def test_reasoned_edit_writes_its_captions_then_draws(any_model_dir, monkeypatch):
    """reason=True: the row is forced to start with the lead word (not <boi>); its text comes back
    as the reasoning and the image is the one drawn after it. A row whose text runs out of budget
    (as the untrained test model's does) keeps its first REASONING_BUDGET text ids and gets its
    image drawn after them with <boi> forced."""
    import anygen.pipeline as pipeline_mod

    gen = anygen.load(any_model_dir)
    image = gen.draw("a small blue square at the center", seed=3)[0]
    seen = []
    real = pipeline_mod.generate

    def spy(model, vocab, prompts, cfg):
        results = real(model, vocab, prompts, cfg)
        seen.append((prompts, results))
        return results

    monkeypatch.setattr(pipeline_mod, "generate", spy)
    greedy = SamplingSettings(greedy=True)
    edited, reasoning = gen.edit_with_reasoning(image, "make it red", image=greedy, seed=1)
    [first], [result] = seen[0]
    lead = gen.tokenizer.encode_text("before")
    assert list(first.force) == lead and result.ids[:len(lead)] == lead
    assert first.ids == gen.tokenizer.encode(Document([Text("make it red"), Image(image)]), eos=False)
    text = [t for t in result.ids if t < gen.vocab.n_text and t != gen.vocab.eos]
    if gen._image_codes_of(result) is None:  # the fallback: the image is drawn after the cut text
        [(redo,), (result,)] = seen[1]
        text = text[:gen.REASONING_BUDGET]
        assert list(redo.ids) == list(first.ids) + text and list(redo.force) == [gen.vocab.boi]
    else:
        assert len(seen) == 1
        text = text[:result.ids.index(gen.vocab.boi)]
    assert reasoning == gen.tokenizer.text.decode(text).strip() and reasoning.startswith("before")
    assert np.array_equal(np.asarray(edited), np.asarray(gen.tokenizer.image_from_codes(gen._image_codes_of(result))))
    again = gen.edit(image, "make it red", reason=True, image=greedy, seed=1)
    assert np.array_equal(np.asarray(again), np.asarray(edited))
    assert gen.edit(image, "make it red", reason=True, text_scale=2.0, image_scale=1.5).size == image.size  # guided


def test_plan_in_words_replans_each_edit_and_redraws_where_the_plan_changes(gen, monkeypatch):
    """plan_in_words: the plan after the edit's own `before ...` is written again by plan_edits (one call,
    best-of copies asked once); a row whose plan changes gets that text and its picture drawn after
    it (<boi> forced); a row whose plan stays is not redrawn."""
    import anygen.pipeline as pipeline_mod

    first = "before small blue circle top after large blue circle top"
    real_reasoning, real_generate = gen._reasoning_of, pipeline_mod.generate
    calls, asked = [], []

    def generate(model, vocab, prompts, cfg):
        calls.append(prompts)
        return real_generate(model, vocab, prompts, cfg)

    monkeypatch.setattr(pipeline_mod, "generate", generate)
    image = gen.draw("a small blue circle at the top", seed=0)[0]
    greedy = SamplingSettings(greedy=True)
    for plan, redrawn in (("after small red circle top", True), ("after large blue circle top", False)):
        replanned = gen.tokenizer.encode_text(f"before small blue circle top {plan}")
        monkeypatch.setattr(gen, "_reasoning_of", lambda r: real_reasoning(r) if r.ids[:len(replanned)] == replanned
                            else first)
        monkeypatch.setattr(gen, "plan_edits", lambda ins, seen: asked.append((ins, seen)) or [plan] * len(ins))
        calls.clear()
        _, reasoning = gen.edit_with_reasoning(image, "make it red", best_of=3, text=greedy, image=greedy,
                                               plan_in_words=True)
        assert asked[-1] == (["make it red"], ["before small blue circle top"])
        redraws = [p for batch in calls for p in batch
                   if hasattr(p, "force") and list(p.ids[-len(replanned):]) == replanned]
        assert len(redraws) == (3 if redrawn else 0)
        assert all(list(p.force) == [gen.vocab.boi] for p in redraws)
        assert reasoning == (f"before small blue circle top {plan}" if redrawn else first)


def test_plan_edits_prompts_with_the_reasoned_text_layout(gen, monkeypatch):
    """plan_edits: each row's prompt is the `reasoned_text` task's (<bos> instruction seen), so a model
    trained on that task is asked exactly what it learned; the answers come back in order."""
    from anygen.data import tasks

    asked = []
    monkeypatch.setattr(type(gen), "_text_answers", lambda self, prompts, n, seed: asked.extend(prompts) or
                        [f"after {i}" for i in range(len(prompts))])
    seen = ["before a small red circle at the top", "before a large blue square at the center"]
    instructions = ["make the red circle green", "remove the blue square"]
    assert gen.plan_edits(instructions, seen) == ["after 0", "after 1"]
    for ins, s, prompt in zip(instructions, seen, asked):
        full = tasks.SequenceEncoder(gen.tokenizer).encode([tasks.reasoned_text(ins, s, " after x",
                                                                                tasks.TaskSpec())])[0]
        assert prompt == full.ids[full.loss == 0].tolist()
    with pytest.raises(AnygenError, match="2 instructions but 1"):
        gen.plan_edits(instructions, seen[:1])


def test_story_reason_draws_each_later_picture_as_a_reasoned_edit(any_model_dir, monkeypatch):
    """story(reason=True): picture k+1 is the reasoned edit of picture k with the sentence between them."""
    gen = anygen.load(any_model_dir)
    calls = []
    edit_codes = gen._edit_codes

    def spy(sources, instructions, **options):
        out = edit_codes(sources, instructions, **options)
        calls.append((sources[0], instructions[0], options["reason"], out[0][0]))
        return out

    monkeypatch.setattr(gen, "_edit_codes", spy)
    doc = gen.story("a small red circle", n_steps=3, seed=0, reason=True)
    segments = list(doc)
    codes = [gen.tokenizer.image_codes(im) for im in doc.images]
    assert segments[0] == Text("a small red circle") and isinstance(segments[1], Image)
    texts = [seg.text for seg in segments[2:] if isinstance(seg, Text)]
    assert len(codes) == 3 and len(calls) == 2
    for (source, sentence, reason, edited), before, after, text in zip(calls, codes, codes[1:], texts):
        assert reason and torch.equal(source, before) and torch.equal(edited, after)
        assert sentence == text.strip().strip(".").strip()
    seen = []
    monkeypatch.setattr(gen, "_edit_codes", lambda sources, instructions, **options: seen.append(options) or
                        edit_codes(sources, instructions, **options))
    assert len(gen.story("a small red circle", n_steps=2, seed=0, reason=True, plan_in_words=True).images) == 2
    assert [(o["plan_in_words"], o["text"].greedy) for o in seen] == [(True, True)]  # the best edit setting
    with pytest.raises(AnygenError, match="reason=True"):
        gen.story("a small red circle", plan_in_words=True)


def test_story_sentences_keeps_the_sentence_its_picture_explains_best(any_model_dir, monkeypatch):
    """sentences=3: each later step writes 3 sentences (the first the greedy one), draws a picture for
    each, and keeps the pair with the best per-token describe_edit score of the sentence (an empty
    sentence only when all are)."""
    gen = anygen.load(any_model_dir)
    greedy = gen.story("a small red circle", n_steps=2, seed=0, reason=True)
    picks = []
    edit_scores = gen._edit_scores

    def spy(source, targets, instructions, per_token=False):
        scores = edit_scores(source, targets, instructions, per_token=per_token)
        picks.append((source, targets, instructions, scores, per_token))
        return scores

    monkeypatch.setattr(gen, "_edit_scores", spy)
    doc = gen.story("a small red circle", n_steps=3, seed=0, reason=True, sentences=3)
    codes = [gen.tokenizer.image_codes(im) for im in doc.images]
    texts = [seg.text.strip().strip(".").strip() for seg in list(doc)[2:] if isinstance(seg, Text)]
    assert len(codes) == 3 and len(picks) == 2
    assert picks[0][2][0] == [seg.text for seg in list(greedy)[2:] if isinstance(seg, Text)][0].strip().strip(".")
    for (source, targets, sentences, scores, per_token), before, after, text in zip(picks, codes, codes[1:], texts):
        assert per_token and len(targets) == len(sentences) == 3 and torch.equal(source, before)
        best = max(range(3), key=lambda k: scores[k] if sentences[k] else -np.inf)  # a written sentence first
        assert torch.equal(targets[best], after) and sentences[best] == text
        totals = edit_scores(source, targets, sentences)
        lengths = [len(gen.tokenizer.encode_text(t)) + 1 for t in sentences]  # + <eos>
        assert scores == pytest.approx([t / n for t, n in zip(totals, lengths)])
    with pytest.raises(AnygenError, match="sentences"):
        gen.story("a small red circle", sentences=0)


def test_describe_edit_returns_text(gen):
    image = gen.draw("a small blue square at the center", seed=3)[0]
    assert isinstance(gen.describe_edit(image, gen.edit(image, "make it red")), str)


def test_generate_continues_a_document(gen):
    doc = gen.generate("a large red circle", max_new_tokens=40, seed=0)
    assert isinstance(doc, Document)


@pytest.mark.parametrize("call,message", [
    (lambda g: g.draw(""), "empty"),
    (lambda g: g.draw("   "), "empty"),
    (lambda g: g.draw(b"\xff\xfe"), "UTF-8"),
    (lambda g: g.generate("word " * 300, max_new_tokens=10), "context"),
    (lambda g: g.caption("/nonexistent.png"), "not found"),
])
def test_bad_input_errors(gen, call, message):
    with pytest.raises(AnygenError, match=message):
        call(gen)


def test_cli_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "cat.png"
    assert cli_main(["draw", "a small red circle at the top", "--model", str(model_dir), "--out", str(out)]) == 0
    assert PILImage.open(out).size[0] > 0
    assert cli_main(["caption", str(out), "--model", str(model_dir)]) == 0
    wav = tmp_path / "x.wav"
    wav.write_bytes(wav_bytes(np.sin(np.arange(4000) / 5).astype(np.float32) * 0.3, 8000))
    assert cli_main(["transcribe", str(wav), "--model", str(model_dir)]) == 0
    assert cli_main(["generate", "a red", "--model", str(model_dir), "--out", str(tmp_path / "g"),
                     "--max-new-tokens", "20"]) == 0
    assert (tmp_path / "g" / "index.html").exists()
    edited = tmp_path / "edited.png"
    assert cli_main(["edit", str(out), "make it blue", "--best-of", "2", "--model", str(model_dir),
                     "--out", str(edited)]) == 0
    capsys.readouterr()
    assert cli_main(["edit", str(out), "make it blue", "--reason", "--model", str(model_dir),
                     "--out", str(edited)]) == 0
    assert capsys.readouterr().out.startswith(anygen.load(model_dir).edit_with_reasoning(out, "make it blue")[1])
    assert cli_main(["edit", str(out), "make it blue", "--reason", "--plan-in-words", "--greedy-plan", "--best-of", "2",
                     "--retries", "1", "--model", str(model_dir), "--out", str(edited)]) == 0
    assert capsys.readouterr().out.startswith(anygen.load(model_dir).edit_with_reasoning(
        out, "make it blue", best_of=2, plan_in_words=True, text=SamplingSettings(greedy=True), retries=1)[1])
    assert cli_main(["describe-edit", str(out), str(edited), "--model", str(model_dir)]) == 0
    assert capsys.readouterr().out.strip() == anygen.load(model_dir).describe_edit(out, edited)
    assert cli_main(["eval", "shapes", "--only", "edit", "--n", "1", "--edit-best-of", "2",
                     "--model", str(model_dir)]) == 0
    assert "edit.remove.success" in capsys.readouterr().out
    assert cli_main(["eval", "shapes", "--only", "edit,story", "--n", "1", "--edit-reason", "--story-reason",
                     "--story-sentences", "2", "--story-plan-in-words", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "edit.remove.success" in out and "edit.remove.reasoning_exact" in out and "story.image_coherence" in out
    assert cli_main(["eval", "shapes", "--only", "edit", "--n", "1", "--edit-reason", "--edit-best-of", "2",
                     "--edit-greedy-plan", "--edit-plan-in-words", "--edit-retries", "1",
                     "--model", str(model_dir)]) == 0
    assert "edit.remove.reasoning_exact" in capsys.readouterr().out
    assert cli_main(["eval", "shapes", "--only", "plan", "--n", "1", "--reason-form", "slots",
                     "--model", str(model_dir)]) == 0
    assert "plan.remove.exact" in capsys.readouterr().out
    assert cli_main(["eval", "shapes", "--only", "plan", "--n", "1", "--edit-kinds", "move",
                     "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "plan.move.exact" in out and "plan.remove.exact" not in out


@pytest.mark.parametrize("argv,message", [
    (["caption", "{tmp}/missing.png"], "not found"),
    (["draw", ""], "empty"),
    (["edit", "{tmp}/missing.png", "make it red"], "not found"),
    (["describe-edit", "{tmp}/missing.png", "{tmp}/missing.png"], "not found"),
    (["eval", "shapes", "--only", "plan", "--reason-form", "poem"], "--reason-form: 'poem'"),
    (["edit", "{tmp}/missing.png", "make it red", "--plan-in-words"], "add --reason"),
    (["eval", "shapes", "--only", "edit", "--edit-greedy-plan"], "add --edit-reason"),
    (["edit", "{tmp}/missing.png", "make it red", "--reason", "--retries", "1"], "add --reason and --best-of"),
    (["eval", "shapes", "--only", "edit", "--edit-reason", "--edit-retries", "2"], "--edit-best-of"),
    (["eval", "shapes", "--only", "edit", "--edit-kinds", "move,rotate"], "--edit-kinds: unknown kind 'rotate'"),
])
def test_cli_errors_are_one_line(model_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--model", str(model_dir)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("anygen: error:") and message in err and "Traceback" not in err


def test_missing_model_dir_and_mismatched_tokenizer(tmp_path, model_dir):
    with pytest.raises(AnygenError, match="not found"):
        anygen.load(tmp_path / "nope")
    small = fake_codecs.make_tokenizer(audio=False)
    cfg = DecoderConfig(n_layers=1, hidden=16, n_heads=1, n_kv_heads=1, head_dim=16, intermediate=32)
    model = build_decoder(cfg, 50, seed=0)
    small.save(tmp_path / "tok")
    save_decoder(model, tmp_path / "m", config=cfg, tokenizer_dir=tmp_path / "tok")
    with pytest.raises(AnygenError, match="do not match"):
        anygen.load(tmp_path / "m")


def test_demo_and_eval_run_on_a_model(model_dir, tmp_path):
    assert cli_main(["demo", "--model", str(model_dir), "--out", str(tmp_path / "demo")]) == 0
    page = (tmp_path / "demo" / "index.html").read_text()
    assert page.count("<img") >= 6 + 4 + 2 * 5 and "<audio controls" in page  # grid, captions, an edit per kind
    from anygen.eval.suite import evaluate_shapes

    results = evaluate_shapes(anygen.load(model_dir), n=2, seed=0, suites=("t2i", "i2t", "edit", "a2t", "story"))
    assert "t2i.objects_3.all_correct" in results and "story.image_coherence" in results
    assert all(0.0 <= v <= 60.0 for v in results.values())

