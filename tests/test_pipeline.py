"""The whole chain on a tiny random model: load a model directory, then draw, caption, say,
transcribe, edit and generate through the Python API and the CLI, with clear errors for bad input."""

import json
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

from anygen.api import load_model
from anygen.api.editing import Editor
from anygen.api.options import StoryOptions
from anygen.api.rerank import Verifier
from anygen.api.story import StoryWriter
from anygen.worlds.shapes.plans import ShapesPlanFormat

import fakes


def test_draw_returns_images_and_is_seeded(gen):
    images = gen.draw("a large red circle at the top left", n=2, seed=0, guidance_scale=3.0)
    assert len(images) == 2 and all(isinstance(im, PILImage.Image) for im in images)
    again = gen.draw("a large red circle at the top left", n=2, seed=0, guidance_scale=3.0)
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in again]


def test_best_of_returns_n_images(gen):
    assert len(gen.draw("a small blue square at the center", n=1, best_of=3, seed=1)) == 1


def test_caption_transcribe_say_edit(gen):
    image = gen.draw("a small blue square at the center")[0]
    assert isinstance(gen.caption(image), str)
    audio = gen.say("the notes C E G", max_frames=4)
    assert isinstance(audio, Audio) and 0 < len(audio.waveform) <= 4 * gen.tokenizer.audio.hop
    assert isinstance(gen.transcribe(audio), str)
    edited = gen.edit(image, "make the blue square red", guidance_scale=2.0, image_guidance_scale=1.5)
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


class SpyVerifier(Verifier):
    """The real verifier, recording every score it gives: (kind, candidates, texts, scores)."""

    calls: list = []
    scripted: list = []  # scores to return instead, one list per call, while any are left

    def caption_scores(self, candidates, caption):
        scores = super().caption_scores(candidates, caption)
        SpyVerifier.calls.append(("caption", candidates, caption, scores))
        return scores

    def edit_scores(self, source, targets, instructions, per_token=False):
        scores = super().edit_scores(source, targets, instructions, per_token=per_token)
        if SpyVerifier.scripted:
            scores = SpyVerifier.scripted.pop(0)
        SpyVerifier.calls.append(("edit", source, list(targets), list(instructions), scores, per_token))
        return scores


@pytest.fixture
def spy_verifier():
    SpyVerifier.calls, SpyVerifier.scripted = [], []
    return SpyVerifier


class ScriptedPlan:
    """A plan format whose pictures follow their plan as scripted (one bool per picture, in order),
    that parses every text as (the text, an empty plan) and joins a new plan after it."""

    lead, budget = "before", 8

    def __init__(self, shows=()):
        self.shows, self.asked = list(shows), []

    def split(self, text):
        return text, ""

    def seen_prompt(self, seen):
        return seen

    def join(self, seen, plan):
        return f"{seen} {plan}".strip()

    def follows(self, text, caption):
        self.asked.append((text, caption))
        return self.shows.pop(0) if self.shows else False


class Recorder:
    """A sampler that runs the real one and records (prompts, config, results) of every call;
    `answers` maps the first ids of a text prompt to the text its row answers instead."""

    def __init__(self, answers=None):
        self.calls, self.answers = [], answers or {}

    def __call__(self, model, vocab, prompts, cfg, callback=None):
        from anygen.sampling.engine import SampleResult, generate

        results = generate(model, vocab, prompts, cfg, callback=callback)
        for i, p in enumerate(prompts):
            for head, ids in self.answers.items():
                if isinstance(p, list) and tuple(p[:len(head)]) == head:
                    results[i] = SampleResult(list(ids), [], "eos")
        self.calls.append((prompts, cfg, results))
        return results


def codes_of(gen, image):
    return gen.tokenizer.image_codes(image)


def test_edit_best_of_keeps_the_candidate_that_best_explains_the_instruction(any_model_dir, spy_verifier):
    """best_of samples several edits and keeps the one with the highest
    log p(instruction <eos> | <bos> span(source) span(candidate)) — checked here against a plain
    forward of each whole describe_edit sequence (with the model's own positions)."""
    from anygen.codecs.keep import encode_keeps
    from anygen.model.decoder import forward_logits
    from anygen.model.positions import ImagePositions

    gen = load_model(any_model_dir, verifier=spy_verifier)
    v = gen.vocab
    image = gen.draw("a small blue square at the center", seed=3)[0]
    instruction = "make the blue square red"
    edited = gen.edit(image, instruction, best_of=6, seed=1)
    [(_, source, candidates, _, _, _)] = [c for c in spy_verifier.calls if c[0] == "edit"]
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
    best = max(range(6), key=lambda i: reference[i])
    assert torch.equal(codes_of(gen, edited), candidates[best])
    with pytest.raises(AnygenError, match="best_of"):
        gen.edit(image, instruction, best_of=0)


def test_reasoned_best_of_keeps_a_picture_that_shows_its_plan(model_dir, spy_verifier):
    """Reasoned best_of: the model captions every candidate picture (image_to_text, one batch) and a
    picture that shows what its text planned beats better-scored ones; describe_edit ranks the rest."""
    plan = ScriptedPlan([False, False, True, False, False])
    recorder = Recorder()
    gen = load_model(model_dir, plan_format=plan, sampler=recorder, verifier=spy_verifier)
    image = gen.draw("a small red circle at the top", seed=0)[0]
    spy_verifier.scripted = [[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]]
    edited = gen.edit(image, "make it blue", reason=True, best_of=5, seed=0)
    captioning = [prompts for prompts, _, _ in recorder.calls
                  if isinstance(prompts[0], list) and prompts[0][:2] == [gen.vocab.bos, gen.vocab.boi]]
    assert len(plan.asked) == 5 and len(captioning) == 1 and len(captioning[0]) == 5  # one batch of captions
    candidates = spy_verifier.calls[-1][2]
    assert torch.equal(codes_of(gen, edited), candidates[2])  # the only picture that shows its plan, not the best score
    edited = gen.edit(image, "make it blue", reason=True, best_of=5, seed=0)  # no picture shows its plan: by score
    assert torch.equal(codes_of(gen, edited), spy_verifier.calls[-1][2][4])


def test_reasoned_best_of_retries_only_the_edits_none_of_whose_pictures_shows_its_plan(model_dir, spy_verifier):
    """retries: a row none of whose best_of pictures shows its plan is sampled again (another seed)
    and ranked with all its candidates; a row that has one is not sampled again."""
    plan = ScriptedPlan([False, True, False, False, False, False] + [False, False, True])  # per round, per picture
    recorder = Recorder()
    gen = load_model(model_dir, plan_format=plan, sampler=recorder, verifier=spy_verifier)
    image = gen.draw("a small red circle at the top", seed=0)[0]
    recorder.calls.clear()
    edited = gen.edit_batch([image, image], ["make it large", "make the red circle large"], reason=True, best_of=3,
                            retries=2, seed=5)
    edits = [cfg.seed for prompts, cfg, _ in recorder.calls if not isinstance(prompts[0], list)]
    assert len(plan.asked) == 9 and not plan.shows  # round 2: the second row alone; no third round
    assert edits[0] == 5 and len(set(edits)) == 2  # the second round draws with another seed
    first, second = [c for c in spy_verifier.calls if c[0] == "edit"]
    assert len(first[2]) == 3 and len(second[2]) == 6  # the second row ranks all six of its candidates
    assert torch.equal(codes_of(gen, edited[0]), first[2][1]) and torch.equal(codes_of(gen, edited[1]), second[2][5])
    with pytest.raises(AnygenError, match="retries"):
        gen.edit(image, "make it large", best_of=3, retries=1)  # without reason there is no plan to show


def test_story_best_of_keeps_the_picture_that_best_explains_each_sentence(any_model_dir, spy_verifier):
    """The first picture is the caption-likelihood pick of its samples; each later one the describe_edit
    pick among its samples, given the picture before it."""
    gen = load_model(any_model_dir, verifier=spy_verifier)
    doc = gen.story("a small red circle", n_steps=3, seed=0, best_of=3)
    segments = list(doc)
    assert segments[0] == Text("a small red circle") and isinstance(segments[1], Image)  # the picture follows
    codes = [codes_of(gen, im) for im in doc.images]
    caption, *edits = spy_verifier.calls
    assert caption[0] == "caption" and len(codes) == 3 and len(edits) == 2
    first = max(range(len(caption[1])), key=lambda i: caption[3][i])
    assert torch.equal(caption[1][first], codes[0])
    for (_, source, targets, _, scores, _), before, after in zip(edits, codes, codes[1:]):
        assert len(targets) == 3 and torch.equal(source, before)
        assert torch.equal(targets[max(range(3), key=lambda i: scores[i])], after)
    with pytest.raises(AnygenError, match="best_of"):
        gen.story("a small red circle", best_of=0)


@pytest.mark.parametrize("options", [{}, {"best_of": 2}], ids=["one pass", "stepwise"])
def test_story_streams_its_segments_as_they_are_written(any_model_dir, options):
    """The callback's Documents, in order, are the story after its opening: the same segments."""
    gen = load_model(any_model_dir)
    pieces = []
    doc = gen.story("a small red circle", n_steps=2, seed=0, callback=pieces.append, **options)
    assert pieces and all(isinstance(p, Document) for p in pieces)
    streamed = Document([Text("a small red circle")]) + sum(pieces, Document([]))
    assert streamed.with_text_joined() == doc.with_text_joined()
    assert len(streamed.images) == len(doc.images) >= 1


def test_reasoned_edit_writes_its_plan_then_draws(any_model_dir):
    """reason=True: the row is forced to start with the plan format's lead (not <boi>); its text comes
    back as the plan and the image is the one drawn after it. A row whose text runs out of budget (as
    the untrained test model's does) keeps its first `budget` text ids and gets its image drawn after
    them with <boi> forced."""
    recorder = Recorder()
    plan = ShapesPlanFormat()
    gen = load_model(any_model_dir, plan_format=plan, sampler=recorder)
    image = gen.draw("a small blue square at the center", seed=3)[0]
    recorder.calls.clear()
    greedy = SamplingSettings(greedy=True)
    edited, reasoning = gen.edit_with_reasoning(image, "make it red", image=greedy, seed=1)
    [first], _, [result] = recorder.calls[0]
    lead = gen.tokenizer.encode_text(plan.lead)
    assert list(first.force) == lead and result.ids[:len(lead)] == lead
    assert first.ids == gen.tokenizer.encode(Document([Text("make it red"), Image(image)]), eos=False)
    text = [t for t in result.ids if t < gen.vocab.n_text and t != gen.vocab.eos]
    if gen.session.image_codes_of(result) is None:  # the fallback: the image is drawn after the cut text
        [redo], _, [result] = recorder.calls[1]
        text = text[:plan.budget]
        assert list(redo.ids) == list(first.ids) + text and list(redo.force) == [gen.vocab.boi]
    else:
        assert len(recorder.calls) == 1
        text = text[:result.ids.index(gen.vocab.boi)]
    assert reasoning == gen.tokenizer.text.decode(text).strip() and reasoning.startswith(plan.lead)
    assert torch.equal(codes_of(gen, edited), gen.session.image_codes_of(result))
    again = gen.edit(image, "make it red", reason=True, image=greedy, seed=1)
    assert np.array_equal(np.asarray(again), np.asarray(edited))
    assert gen.edit(image, "make it red", reason=True, guidance_scale=2.0,
                    image_guidance_scale=1.5).size == image.size  # guided


def test_plan_in_words_replans_each_edit_and_redraws_where_the_plan_changes(model_dir):
    """plan_in_words: each row's plan is written again after its instruction and what it saw (one
    prompt per distinct pair: best-of copies ask once); a row whose text changes gets that text and
    its picture drawn after it (<boi> forced); a row whose text stays is not redrawn."""
    greedy = SamplingSettings(greedy=True)
    for plan_text, redrawn in (("after small red circle top", True), ("", False)):
        gen = load_model(model_dir, plan_format=ScriptedPlan())
        instruction = gen.tokenizer.encode_text("make it red")
        recorder = Recorder({(gen.vocab.bos, *instruction): gen.tokenizer.encode_text(plan_text) + [gen.vocab.eos]})
        gen = load_model(model_dir, plan_format=ScriptedPlan(), sampler=recorder)
        image = gen.draw("a small blue circle at the top", seed=0)[0]
        recorder.calls.clear()
        _, reasoning = gen.edit_with_reasoning(image, "make it red", best_of=3, text=greedy, image=greedy,
                                               plan_in_words=True)
        planned = [k for k, (prompts, _, _) in enumerate(recorder.calls)
                   if isinstance(prompts[0], list) and prompts[0][1:1 + len(instruction)] == instruction]
        [k] = planned
        [asked] = recorder.calls[k][0]  # three identical candidates: one plan
        seen = gen.tokenizer.text.decode(asked[1 + len(instruction):])
        redraws = [p for prompts, _, _ in recorder.calls[k + 1:] for p in prompts if not isinstance(p, list)]
        assert len(redraws) == (3 if redrawn else 0)  # after the plan: only its redraws (then captions)
        assert all(list(p.force) == [gen.vocab.boi] for p in redraws)
        assert reasoning == (f"{seen} {plan_text}" if redrawn else seen)


def test_plan_edits_prompts_with_the_reasoned_text_layout(model_dir):
    """plan_edits: each row's prompt is the `reasoned_text` task's (<bos> instruction seen), so a model
    trained on that task is asked exactly what it learned; the answers come back in order."""
    from anygen.tasks.encoder import SequenceEncoder
    from anygen.tasks.layouts import TaskSpec, reasoned_text

    probe = load_model(model_dir)
    seen = ["before a small red circle at the top", "before a large blue square at the center"]
    instructions = ["make the red circle green", "remove the blue square"]
    recorder = Recorder({(probe.vocab.bos, *probe.tokenizer.encode_text(ins)): probe.tokenizer.encode_text(
        f"after {i}") + [probe.vocab.eos] for i, ins in enumerate(instructions)})
    gen = load_model(model_dir, sampler=recorder)
    assert gen.plan_edits(instructions, seen) == ["after 0", "after 1"]
    [(asked, _, _)] = recorder.calls
    for ins, s, prompt in zip(instructions, seen, asked):
        full = SequenceEncoder(gen.tokenizer).encode([reasoned_text(ins, s, " after x", TaskSpec())])[0]
        assert prompt == full.ids[full.loss == 0].tolist()
    with pytest.raises(AnygenError, match="2 instructions but 1"):
        gen.plan_edits(instructions, seen[:1])


class SpyEditor(Editor):
    """The real editor, recording (sources, instructions, options, settings, result) of every edit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def edit(self, sources, instructions, options, seed, **settings):
        out = super().edit(sources, instructions, options, seed, **settings)
        self.calls.append((sources[0], instructions[0], options, settings, out[0][0]))
        return out


def test_story_reason_draws_each_later_picture_as_a_reasoned_edit(any_model_dir):
    """story(reason=True): picture k+1 is the reasoned edit of picture k with the sentence between them."""
    gen = load_model(any_model_dir, plan_format=ShapesPlanFormat())
    editor = SpyEditor(gen.session, gen.plan_format)
    writer = StoryWriter(gen.session, editor)
    doc = writer.write("a small red circle", StoryOptions(n_steps=3, reason=True), seed=0)
    segments = list(doc)
    codes = [codes_of(gen, im) for im in doc.images]
    assert segments[0] == Text("a small red circle") and isinstance(segments[1], Image)
    texts = [seg.text for seg in segments[2:] if isinstance(seg, Text)]
    assert len(codes) == 3 and len(editor.calls) == 2
    for (source, sentence, options, _, edited), before, after, text in zip(editor.calls, codes, codes[1:], texts):
        assert options.reason and torch.equal(source, before) and torch.equal(edited, after)
        assert sentence == text.strip().strip(".").strip()
    editor.calls.clear()
    assert len(writer.write("a small red circle", StoryOptions(n_steps=2, reason=True, plan_in_words=True),
                            seed=0).images) == 2
    assert [(c[2].plan_in_words, c[2].greedy_plan) for c in editor.calls] == [(True, True)]  # the best edit setting
    with pytest.raises(AnygenError, match="needs reason"):
        gen.story("a small red circle", plan_in_words=True)


def test_story_sentences_keeps_the_sentence_its_picture_explains_best(any_model_dir, spy_verifier):
    """sentences=3: each later step writes 3 sentences (the first the greedy one), draws a picture for
    each, and keeps the pair with the best per-token describe_edit score of the sentence (an empty
    sentence only when all are)."""
    gen = load_model(any_model_dir, plan_format=ShapesPlanFormat(), verifier=spy_verifier)
    greedy = gen.story("a small red circle", n_steps=2, seed=0, reason=True)
    spy_verifier.calls.clear()
    doc = gen.story("a small red circle", n_steps=3, seed=0, reason=True, sentences=3)
    codes = [codes_of(gen, im) for im in doc.images]
    texts = [seg.text.strip().strip(".").strip() for seg in list(doc)[2:] if isinstance(seg, Text)]
    picks = [c for c in spy_verifier.calls if c[0] == "edit" and c[5]]  # the per-token sentence scores
    assert len(codes) == 3 and len(picks) == 2
    assert picks[0][3][0] == [seg.text for seg in list(greedy)[2:] if isinstance(seg, Text)][0].strip().strip(".")
    for (_, source, targets, sentences, scores, _), before, after, text in zip(picks, codes, codes[1:], texts):
        assert len(targets) == len(sentences) == 3 and torch.equal(source, before)
        best = max(range(3), key=lambda k: scores[k] if sentences[k] else -np.inf)  # a written sentence first
        assert torch.equal(targets[best], after) and sentences[best] == text
        totals = Verifier(gen.session).edit_scores(source, targets, sentences)
        lengths = [len(gen.tokenizer.encode_text(t)) + 1 for t in sentences]  # + <eos>
        assert scores == pytest.approx([t / n for t, n in zip(totals, lengths)])
    with pytest.raises(AnygenError, match="sentences"):
        gen.story("a small red circle", sentences=0)


def test_reasoned_edits_need_a_plan_format(model_dir):
    """A model whose worlds bring no plan format cannot reason: a clear error, before any sampling."""
    recorder = Recorder()
    gen = load_model(model_dir, sampler=recorder)
    image = PILImage.new("RGB", (8, 8), "white")
    with pytest.raises(AnygenError, match="plan format"):
        gen.edit(image, "make it red", reason=True)
    with pytest.raises(AnygenError, match="plan format"):
        gen.story("a small red circle", reason=True)
    assert recorder.calls == []


def test_describe_edit_returns_text(gen):
    image = gen.draw("a small blue square at the center", seed=3)[0]
    assert isinstance(gen.describe_edit(image, gen.edit(image, "make it red")), str)


def test_generate_continues_a_document(gen):
    doc = gen.generate("a large red circle", max_new_tokens=40, seed=0)
    assert isinstance(doc, Document)


def test_generate_with_guidance_draws_each_image_against_the_unconditional_prompt(model_dir):
    """Text is sampled up to each <boi> (unguided); each image is then drawn with the document so far
    as its condition and the unconditional image prompt as its guidance row."""
    from anygen.sampling.engine import Prompt, generate as engine_generate

    calls = []

    def sampler(model, vocab, prompts, cfg, callback=None):
        [p] = prompts
        p = p if isinstance(p, Prompt) else Prompt(list(p))
        text_part = cfg.stop_at_image
        calls.append(("text" if text_part else "image", p, cfg))
        if text_part and sum(kind == "text" for kind, _, _ in calls) <= 2:  # the first two texts open an image
            p = Prompt(p.ids, p.uncond, [vocab.boi])
        return engine_generate(model, vocab, [p], cfg, callback=callback)

    gen = load_model(model_dir, sampler=sampler)
    pieces = []
    doc = gen.generate("a large red circle", max_new_tokens=3 * gen.session.image_budget, seed=0,
                       guidance_scale=3.0, callback=pieces.append)
    kinds = [kind for kind, _, _ in calls]
    assert kinds[:4] == ["text", "image", "text", "image"] and kinds.count("image") == 2
    null = gen.session.null_prompt("text_to_image")
    before = calls[0][1].ids
    for kind, p, cfg in calls:
        if kind == "image":
            assert p.uncond == [null] and cfg.guidance_scales == (3.0,) and p.force == [gen.vocab.boi]
            assert p.ids[:len(before)] == before  # the whole document so far is the condition
        else:
            assert not p.uncond
    assert len(doc.images) == 2
    assert sum(pieces, Document([])).with_text_joined() == doc.with_text_joined()
    calls.clear()
    gen.generate("a large red circle", max_new_tokens=20, seed=0, guidance_scale=1.0)
    assert len(calls) == 1 and not calls[0][2].stop_at_image  # unguided: one pass


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
        out, "make it blue", best_of=2, plan_in_words=True, greedy_plan=True, retries=1)[1])
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


def test_eval_shapes_parallel_sjd_draws_and_edits_the_greedy_images(model_dir, tmp_path):
    """Greedy SJD codes equal one code per forward, for drawn and edited images alike, so the
    judged figures match (times aside)."""
    figures = {}
    for parallel in ("none", "sjd"):
        out = tmp_path / f"{parallel}.json"
        assert cli_main(["eval", "shapes", "--only", "t2i,edit", "--n", "2", "--edit-kinds", "recolor,move",
                         "--parallel", parallel, "--json", str(out), "--model", str(model_dir)]) == 0
        figures[parallel] = {k: v for k, v in json.loads(out.read_text()).items() if "seconds" not in k}
    assert "edit.move.success" in figures["sjd"] and figures["sjd"] == figures["none"]


@pytest.mark.parametrize("argv,message", [
    (["caption", "{tmp}/missing.png"], "not found"),
    (["draw", ""], "empty"),
    (["edit", "{tmp}/missing.png", "make it red"], "not found"),
    (["describe-edit", "{tmp}/missing.png", "{tmp}/missing.png"], "not found"),
    (["eval", "shapes", "--only", "plan", "--reason-form", "poem"], "--reason-form: 'poem'"),
    (["edit", "{tmp}/missing.png", "make it red", "--plan-in-words"], "they need reason"),
    (["eval", "shapes", "--only", "edit", "--edit-greedy-plan"], "they need reason"),
    (["edit", "{tmp}/missing.png", "make it red", "--reason", "--retries", "1"], "need reason and best_of > 1"),
    (["eval", "shapes", "--only", "edit", "--edit-reason", "--edit-retries", "2"], "need reason and best_of > 1"),
    (["draw", "a red circle", "--guidance-scale", "inf"], "guidance_scale must be a number"),
    (["eval", "shapes", "--only", "story", "--story-plan-in-words"], "it needs reason"),
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
    small = fakes.make_tokenizer(audio=False)
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
    from anygen.worlds.shapes.suite import evaluate_shapes

    results = evaluate_shapes(anygen.load(model_dir), n=2, seed=0, suites=("t2i", "i2t", "edit", "a2t", "story"))
    assert "t2i.objects_3.all_correct" in results and "story.image_coherence" in results
    assert all(0.0 <= v <= 60.0 for v in results.values())



def test_bundled_models_load_by_name(tmp_path):
    from anygen.api import bundled_models, model_dir

    assert "default" in bundled_models()
    assert model_dir("default") == bundled_models()["default"]
    assert model_dir(tmp_path) == tmp_path  # a directory wins
    with pytest.raises(AnygenError, match="bundled models: .*default"):
        model_dir("no-such-model")
