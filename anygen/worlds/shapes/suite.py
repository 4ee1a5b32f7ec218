"""`anygen eval shapes`: what a model can do on fresh ShapesWorld samples, scored by the judges.

Every metric is computed from a *generator*: any object with the `AnyGen` task methods
(`draw_batch`, `caption_batch`, `edit`, `say`, `transcribe`, `story`). The judges
(`anygen.worlds.shapes.judges`) parse what it produced; nothing is scored by the model itself.
Results are a flat dict `{"t2i.objects_1.all_correct": 0.93, ...}`.

Metrics
- t2i.objects_K.{count,shape,color,size,position,all_correct}: GenEval-style. `count`: the
  judge finds K objects; per-attribute scores are over target objects: `position` = some
  object sits in the target's cell, `shape`/`color`/`size` = the object in that cell has
  the target's value; `all_correct` = the judged scene equals the prompt's scene.
- t2i.fd_pool8: Fréchet distance between Gaussian fits of generated images and the true
  renders of the same prompts, in a fixed feature space: each image average-pooled to
  8×8 RGB in [0, 1] (192 values; no learned network, so nothing to download and nothing
  that drifts). 0 = same distribution; it sees colour, layout and blur, not fine shape.
- `--phrasing heldout`: the t2i prompts and the edit suite's instructions are written in held-out
  phrasings (`anygen.worlds.shapes.phrasing`: frames, edit frames and some synonyms no training
  example has) instead of the canonical forms; the scenes, edits and judge are the same.
- t2i.seconds_per_image: wall time of the text→image calls over the number of images.
- i2t.exact: the generated caption parses to the exact scene.
- edit.KIND.success: the judged edited image equals the target scene; edit.KIND.preservation_db:
  PSNR between the edited image and the source render outside the cells the edit touches;
  edit.seconds_per_edit: wall time of the edit calls over the number of edits;
  edit.KIND.reasoning_exact (reasoned edits only): the text before the picture is exactly right
  (`anygen.worlds.shapes.plans.reasoning` of the edit, in any form).
- t2a.exact / a2t.exact: exact note sequence (audio judged / text parsed); a2t plays the reference
  timbre. a2t.timbres.train.exact / a2t.timbres.heldout.exact: the same melodies played in random
  timbres of the training or the held-out waveforms (`anygen.worlds.shapes.timbres`: loudness 0.05-1
  peak, note lengths, detuning, onset jitter, noise, reverb).
- plan.KIND.exact (`--only plan`, models trained with `reasoned_text`): given the instruction and
  the exact text a reasoned edit writes about its source (`before ...`, in `reason_form`), the
  plan the generator writes (`generator.plan_edits`) equals the edit's (`after ...`): the
  reasoned edit's decision in words, without the pictures.
  plan.wrong.MISTAKE (`slots` form): share of all plans that edit another single object than the
  instruction names, sharing its colour (same_colour), its shape (same_shape) or both
  (same_colour_shape), or are wrong otherwise (other) (`plan_mistake`).
- story.image_coherence: share of story images whose judged scene equals the scene the text
  so far describes (opening caption, then each sentence applied as an edit);
  story.text_validity: share of sentences after the opening that are valid edits;
  story.opening_kept: share of stories whose text before the first picture is the opening as given.
- refuse.* (`--only refuse`, `n` absent-object edits, `n // 2` no-op edits, `n // 2` valid edits of
  each kind, one at a time): refuse.absent.refused / refuse.noop.refused: share of the edits that
  name a colour-shape pair the scene does not hold / that would change nothing which the generator
  refuses (`EditRefused` from `generator.edit_batch(..., refuse=True)`); refuse.valid.refused: share of
  valid edits wrongly refused; refuse.valid.same_image: share of the valid edits let through whose
  picture equals the one drawn with `refuse=False`; refuse.seconds_per_edit.{checked,unchecked}: wall
  time of a valid edit with and without the check. The edit suite scores pictures: `anygen eval
  shapes` runs it with refuse off.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np

from anygen.worlds.shapes.world import (ALL_PAIRS, COLORS, EDIT_KINDS, POSITIONS, SAMPLE_RATE, SIZES, Scene,
                                        ShapesWorld, WorldConfig, apply_instruction, melody_text, parse_caption,
                                        parse_melody_text, refer, render_melody, render_scene)
from anygen.worlds.shapes.phrasing import phrase_caption, phrase_instruction
from anygen.worlds.shapes.timbres import TIMBRE_SPLITS, render_timbre_melody, sample_timbre
from anygen.worlds.shapes.plans import REASON_FORMS, reasoning, reasoning_parts
from anygen.document import Image, Text
from anygen.worlds.shapes.judges import judge_image, judge_melody
from anygen.worlds.metrics import frechet_distance

ATTRIBUTES = ("count", "shape", "color", "size", "position", "all_correct")
SUITES = ("t2i", "i2t", "edit", "t2a", "a2t", "story")  # the default run
EVAL_BATCH = 50  # t2i/edit rows per call: wide enough that the suite runs in minutes on one CPU thread
EXTRA_SUITES = ("plan", "refuse")  # on request: plan needs a model trained with reasoned_text
EVAL_PHRASINGS = ("canonical", "heldout")  # `anygen eval shapes --phrasing`
TIMBRE_STREAM = 0x71B2  # the a2t timbres' own random stream: the melodies stay those of a reference-only run
PHRASING_STREAM = 0x9A4A  # the held-out phrasings' own random stream: the sampled scenes stay those of a canonical run
NOOP_KINDS = ("recolor", "resize", "move", "add")  # edits that would change nothing: same colour/size/cell/object
ABSENT_KINDS = ("recolor", "resize", "move", "remove")  # edits of an object the scene does not hold


def score_scene(target: Scene, judged: Scene | None) -> dict[str, float]:
    """GenEval-style attribute scores of one generated image against its prompt's scene."""
    if judged is None:
        return {a: 0.0 for a in ATTRIBUTES}
    by_cell = {o.cell: o for o in judged.objects}
    n = len(target.objects)
    hits = defaultdict(float)
    for obj in target.objects:
        got = by_cell.get(obj.cell)
        if got is None:
            continue
        hits["position"] += 1
        hits["shape"] += got.shape == obj.shape
        hits["color"] += got.color == obj.color
        hits["size"] += got.size == obj.size
    scores = {a: hits[a] / n for a in ("shape", "color", "size", "position")}
    scores["count"] = float(len(judged.objects) == n)
    scores["all_correct"] = float(judged == target)
    return scores


def pooled_features(images, grid: int = 8) -> np.ndarray:
    """(N, grid*grid*3) features: each image (PIL) resized to 64x64, average-pooled to grid x grid, in [0, 1]."""
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.float64) / 255.0
        k = 64 // grid
        out.append(a.reshape(grid, k, grid, k, 3).mean(axis=(1, 3)).reshape(-1))
    return np.stack(out)


def _cells_touched(source: Scene, target: Scene) -> set[int]:
    changed = set(source.objects) ^ set(target.objects)
    return {o.cell for o in changed}


def preservation_psnr(edited, source_render, cells: set[int], image_size: int = 64) -> float:
    """PSNR (dB) between two images outside the given 3x3 cells (capped at 60 dB)."""
    a = np.asarray(edited.convert("RGB").resize((image_size, image_size)), dtype=np.float64)
    b = np.asarray(source_render.convert("RGB"), dtype=np.float64)
    keep = np.ones((image_size, image_size), dtype=bool)
    step = image_size / 3
    for cell in cells:
        r, c = divmod(cell, 3)
        keep[int(r * step):int((r + 1) * step), int(c * step):int((c + 1) * step)] = False
    if not keep.any():
        return 60.0
    mse = float(((a - b) ** 2)[keep].mean())
    return 60.0 if mse == 0 else min(60.0, 10 * math.log10(255.0 ** 2 / mse))


def _reasonings(edit) -> set[str]:
    """The exactly right reasoning texts of a ShapesWorld edit, one per form."""
    return {reasoning(form, edit) for form in REASON_FORMS}


def story_scores(document) -> tuple[list[bool], list[bool]]:
    """(per image: judged scene == described scene, per later sentence: valid edit) of a story Document."""
    scene: Scene | None = None
    images_ok, texts_ok = [], []
    pending = ""
    for seg in document:
        if isinstance(seg, Text):
            pending += seg.text
            continue
        if not isinstance(seg, Image):
            continue
        sentence = pending.strip().rstrip(".").strip()
        pending = ""
        if scene is None:
            scene = parse_caption(sentence)
        elif sentence:
            new = apply_instruction(scene, sentence)
            texts_ok.append(new is not None)
            scene = new
        images_ok.append(scene is not None and judge_image(seg.image) == scene)
    return images_ok, texts_ok


def opening_of(document) -> str:
    """The text of a story Document before its first picture, stripped."""
    text = ""
    for seg in document:
        if isinstance(seg, Image):
            break
        if isinstance(seg, Text):
            text += seg.text
    return text.strip()


def absent_edit(world, rng) -> tuple[Scene, str]:
    """A scene and an instruction that names a colour-shape pair the scene does not hold."""
    scene = world.sample_scene(rng)
    pairs = [p for p in ALL_PAIRS if p not in scene.pairs]
    pair = pairs[rng.integers(len(pairs))]
    kind = ABSENT_KINDS[rng.integers(len(ABSENT_KINDS))]
    free = [POSITIONS[c] for c in range(9) if c not in scene.cells]
    if kind == "recolor":
        return scene, f"make the {pair} {[c for c in COLORS if c not in pair.split()][rng.integers(len(COLORS) - 1)]}"
    if kind == "resize":
        size = SIZES[rng.integers(len(SIZES))]
        return scene, f"make the {size} {pair} {SIZES[1 - SIZES.index(size)]}"
    if kind == "move":
        return scene, f"move the {pair} to the {free[rng.integers(len(free))]}"
    return scene, f"remove the {pair}"


def noop_edit(world, rng) -> tuple[Scene, str]:
    """A scene and an instruction that would leave it as it is (`NOOP_KINDS`)."""
    scene = world.sample_scene(rng)
    obj = scene.objects[rng.integers(len(scene.objects))]
    kind = NOOP_KINDS[rng.integers(len(NOOP_KINDS))]
    if kind == "recolor":
        return scene, f"make the {refer(scene, obj)} {obj.color}"
    if kind == "resize":
        return scene, f"make the {refer(scene, obj, with_size=True)} {obj.size}"
    if kind == "move":
        return scene, f"move the {refer(scene, obj)} to the {obj.position}"
    return scene, f"add a {obj.size} {obj.pair} at the {obj.position}"


def _refused(generator, scene: Scene, instruction: str, seed: int):
    """(refused, picture or None, seconds) of one edit with refusal on."""
    from anygen.api.editing import EditRefused

    start = time.perf_counter()
    try:
        [image] = generator.edit_batch([render_scene(scene)], [instruction], seed=seed, refuse=True)
    except EditRefused:
        return True, None, time.perf_counter() - start
    return False, image, time.perf_counter() - start


PLAN_MISTAKES = ("same_colour", "same_shape", "same_colour_shape", "other")


def plan_mistake(edit, plan: str) -> str | None:
    """What a `slots`-form plan (``after <slots>``) of a ShapesWorld `Edit` gets wrong: None when it
    is right; `same_colour` / `same_shape` / `same_colour_shape` when it edits one other object that
    shares the named object's colour / shape / both instead of it; `other` for any other mistake."""
    _, after = edit.slots()
    got = plan.strip().removeprefix("after ")
    if got == after:
        return None
    source = edit.source.objects
    named = [o for o in source if o not in edit.target.objects]
    slots = got.split(", ")
    changed = [o for o, slot in zip(source, slots) if o.slot() != slot]
    if not named or len(slots) != len(source) or len(changed) != 1 or changed[0] == named[0]:
        return "other"
    shared = (changed[0].color == named[0].color, changed[0].shape == named[0].shape)
    return {(True, False): "same_colour", (False, True): "same_shape", (True, True): "same_colour_shape"}.get(
        shared, "other")


def _edits_by_kind(world, rng, n: int, kinds):
    """(kind, n sampled edits) for each of `kinds`, in EDIT_KINDS order. Every kind's edits are drawn,
    kept or not, so that a kind scores the same samples whichever others run with it."""
    for kind in EDIT_KINDS:
        edits = [world.sample_edit(rng, kind=kind) for _ in range(n)]
        if kind in kinds:
            yield kind, edits


def phrasings(seed: int, phrasing: str = "canonical"):
    """(caption of a scene, instruction of an edit) as the t2i and edit suites write them:
    canonical, or in a held-out phrasing (`anygen.worlds.shapes.phrasing`) drawn from a stream of its
    own, so the scenes and edits are the same samples whichever phrasing runs."""
    if phrasing not in EVAL_PHRASINGS:
        raise ValueError(f"phrasing: {phrasing!r} is not one of {', '.join(EVAL_PHRASINGS)}")
    if phrasing == "canonical":
        return (lambda scene: scene.caption()), (lambda edit: edit.instruction)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, PHRASING_STREAM])
    return (lambda scene: phrase_caption(scene, rng, "heldout").text,
            lambda edit: phrase_instruction(edit, rng, "heldout").text)


def evaluate_shapes(generator, n: int = 200, seed: int = 0, suites=SUITES, batch_size: int = EVAL_BATCH,
                    story_steps: int = 3, edit_reason: bool = False, reason_form: str = "scene",
                    edit_kinds=EDIT_KINDS, progress=None, phrasing: str = "canonical") -> dict[str, float]:
    """Run the ShapesWorld suite on `generator`; `n` samples per task (fresh scenes from `seed`).

    `edit_reason`: edits are reasoned (`generator.edit_batch_with_reasoning`) and
    `edit.KIND.reasoning_exact` is the share whose text is exactly right (in any of the forms
    `anygen.worlds.shapes.plans.reasoning` writes; a model is trained with one). `reason_form`: the form
    the `plan` suite writes its prompts in (the model's `tasks.reasoned_edit.form`). `edit_kinds`:
    the edit kinds the `edit` and `plan` suites run; the others' samples are still drawn, so a kind
    scores the same samples as in a run of all kinds. `phrasing`: ``canonical`` prompts, or
    ``heldout``: the t2i prompts and edit instructions in phrasings whose frames no training example
    has (`phrasings`); the judge scores the same scenes either way."""
    if not edit_kinds or not set(edit_kinds) <= set(EDIT_KINDS):
        raise ValueError(f"edit_kinds: {edit_kinds!r} is not a non-empty subset of {', '.join(EDIT_KINDS)}")
    caption_of, instruction_of = phrasings(seed, phrasing)
    world = ShapesWorld(WorldConfig(seed=seed))
    rng = np.random.default_rng(seed + 7_000_000)  # far from training seeds
    results: dict[str, float] = {}
    tick = progress or (lambda name: None)

    if "t2i" in suites:
        generated, real, seconds = [], [], 0.0
        for k in (1, 2, 3):
            scenes = [world.sample_scene(rng, n_objects=k) for _ in range(n)]
            totals = defaultdict(float)
            for lo in range(0, n, batch_size):
                chunk = scenes[lo:lo + batch_size]
                start = time.perf_counter()
                images = generator.draw_batch([caption_of(s) for s in chunk], seed=seed + lo)
                seconds += time.perf_counter() - start
                generated += images
                real += [render_scene(s) for s in chunk]
                for scene, image in zip(chunk, images):
                    for a, v in score_scene(scene, judge_image(image)).items():
                        totals[a] += v
                tick(f"t2i objects_{k}")
            results.update({f"t2i.objects_{k}.{a}": totals[a] / n for a in ATTRIBUTES})
        results["t2i.fd_pool8"] = frechet_distance(pooled_features(generated), pooled_features(real))
        results["t2i.seconds_per_image"] = seconds / len(generated)

    if "i2t" in suites:
        scenes = [world.sample_scene(rng) for _ in range(n)]
        correct = 0
        for lo in range(0, n, batch_size):
            chunk = scenes[lo:lo + batch_size]
            captions = generator.caption_batch([render_scene(s) for s in chunk], seed=seed + lo)
            correct += sum(parse_caption(c) == s for c, s in zip(captions, chunk))
            tick("i2t")
        results["i2t.exact"] = correct / n

    if "edit" in suites:
        seconds = 0.0
        for kind, edits in _edits_by_kind(world, rng, n, edit_kinds):
            ok, said, psnrs = 0, 0, []
            for lo in range(0, n, batch_size):
                chunk = edits[lo:lo + batch_size]
                sources = [render_scene(e.source) for e in chunk]
                instructions = [instruction_of(e) for e in chunk]
                start = time.perf_counter()
                if edit_reason:
                    edited, texts = zip(*generator.edit_batch_with_reasoning(sources, instructions, seed=seed + lo))
                else:
                    edited, texts = generator.edit_batch(sources, instructions, seed=seed + lo), ()
                seconds += time.perf_counter() - start
                said += sum(text in _reasonings(e) for e, text in zip(chunk, texts))
                for e, source, image in zip(chunk, sources, edited):
                    ok += judge_image(image) == e.target
                    psnrs.append(preservation_psnr(image, source, _cells_touched(e.source, e.target)))
            results[f"edit.{kind}.success"] = ok / n
            results[f"edit.{kind}.preservation_db"] = float(np.mean(psnrs))
            if edit_reason:
                results[f"edit.{kind}.reasoning_exact"] = said / n
            tick(f"edit {kind}")
        results["edit.seconds_per_edit"] = seconds / (n * len(edit_kinds))

    if "plan" in suites:
        mistakes = dict.fromkeys(PLAN_MISTAKES, 0)
        for kind, edits in _edits_by_kind(world, rng, n, edit_kinds):
            parts = [reasoning_parts(reason_form, e) for e in edits]
            ok = 0
            for lo in range(0, n, batch_size):
                chunk = parts[lo:lo + batch_size]
                plans = generator.plan_edits([e.instruction for e in edits[lo:lo + batch_size]],
                                             [seen for seen, _ in chunk], seed=seed + lo)
                ok += sum(got.strip() == plan.strip() for got, (_, plan) in zip(plans, chunk))
                if reason_form == "slots":
                    for e, got in zip(edits[lo:lo + batch_size], plans):
                        if (mistake := plan_mistake(e, got)) is not None:
                            mistakes[mistake] += 1
            results[f"plan.{kind}.exact"] = ok / n
            tick(f"plan {kind}")
        if reason_form == "slots":
            results.update({f"plan.wrong.{m}": count / (n * len(edit_kinds)) for m, count in mistakes.items()})

    if "refuse" in suites:
        for name, edits in (("absent", [absent_edit(world, rng) for _ in range(n)]),
                            ("noop", [noop_edit(world, rng) for _ in range(max(n // 2, 1))])):
            results[f"refuse.{name}.refused"] = float(np.mean(
                [_refused(generator, scene, ins, seed + i)[0] for i, (scene, ins) in enumerate(edits)]))
            tick(f"refuse {name}")
        refused, same, checked, unchecked = [], [], 0.0, 0.0
        valid = [e for _, edits in _edits_by_kind(world, rng, max(n // 2, 1), EDIT_KINDS) for e in edits]
        for i, e in enumerate(valid):
            no, image, seconds = _refused(generator, e.source, e.instruction, seed + i)
            start = time.perf_counter()
            [plain] = generator.edit_batch([render_scene(e.source)], [e.instruction], seed=seed + i, refuse=False)
            unchecked += time.perf_counter() - start
            checked += seconds
            refused.append(no)
            if not no:
                same.append(np.array_equal(np.asarray(image), np.asarray(plain)))
        results["refuse.valid.refused"] = float(np.mean(refused))
        results["refuse.valid.same_image"] = float(np.mean(same)) if same else 0.0
        results["refuse.seconds_per_edit.checked"] = checked / len(valid)
        results["refuse.seconds_per_edit.unchecked"] = unchecked / len(valid)
        tick("refuse valid")

    if "t2a" in suites or "a2t" in suites:
        melodies = [world.sample_melody(rng) for _ in range(n)]
        if "t2a" in suites:
            ok = 0
            for i, notes in enumerate(melodies):
                audio = generator.say(melody_text(notes), seed=seed + i)
                ok += judge_melody(audio.waveform, audio.sample_rate) == tuple(notes)
            results["t2a.exact"] = ok / n
            tick("t2a")
        if "a2t" in suites:
            def heard(render) -> float:
                return sum(parse_melody_text(generator.transcribe((render(i, notes), SAMPLE_RATE), seed=seed + i))
                           == tuple(notes) for i, notes in enumerate(melodies)) / n

            results["a2t.exact"] = heard(lambda i, notes: render_melody(notes))
            timbres = np.random.default_rng([seed, TIMBRE_STREAM])
            for split in TIMBRE_SPLITS:
                played = [sample_timbre(timbres, split) for _ in melodies]
                results[f"a2t.timbres.{split}.exact"] = heard(
                    lambda i, notes: render_timbre_melody(notes, played[i], SAMPLE_RATE))
            tick("a2t")

    if "story" in suites:
        images_ok, texts_ok, kept = [], [], 0
        for i in range(n):
            opening = world.sample_scene(rng).caption()
            document = generator.story(opening, n_steps=story_steps, seed=seed + i)
            a, b = story_scores(document)
            images_ok += a or [False]
            texts_ok += b
            kept += opening_of(document) == opening
        results["story.image_coherence"] = float(np.mean(images_ok))
        results["story.text_validity"] = float(np.mean(texts_ok)) if texts_ok else 0.0
        results["story.opening_kept"] = kept / n
        tick("story")
    return results


def format_table(results: dict[str, float]) -> str:
    """A Markdown table of the flat results."""
    lines = ["| metric | value |", "|---|---|"]
    for key, value in results.items():
        lines.append(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(lines)
