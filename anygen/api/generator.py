"""`AnyGen`: the Python API, a thin facade with one method per task.

Each method checks its inputs and options once (`anygen.api.inputs`, `anygen.api.options`) and
hands them to the strategy that does the work: the `Session` (prompts, sampling, decoding),
`Editor` (plain, best-of and reasoned edits), `StoryWriter`, `DiffusionImages` (Transfusion
models). Keyword arguments that are not an option of the method are sampling settings
(`GenerationConfig` fields, e.g. `text=SamplingSettings(temperature=0.7)`).

Every result carries a `DomainScore` (`anygen.api.domain`; read it with `domain_of(result)`):
how far the input lies from the model's calibrated in-domain inputs, and whether the result is
empty. With `strict=True` a flagged input or an empty result raises `AnygenError` instead.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Callable, Sequence

from PIL import Image as PILImage

from anygen.api.capabilities import SAMPLED_IMAGE, Capabilities, edit_tasks, story_tasks
from anygen.api.core import Session
from anygen.api.diffusion import DiffusionImages
from anygen.api.domain import Calibration, DomainCheck, attach, is_blank_image, is_empty, is_silent
from anygen.api.editing import SEED_STRIDE, Editor
from anygen.api.inputs import MAX_PROMPT_CHARS, as_audio, as_image, check_int, check_text, check_texts
from anygen.api.options import DrawOptions, EditOptions, StoryOptions, check_scale, resolve
from anygen.api.rerank import Verifier, best_of
from anygen.api.story import StoryWriter
from anygen.document import Audio, Document, Image, Text
from anygen.errors import AnygenError
from anygen.sampling.engine import Prompt
from anygen.sampling.settings import GenerationConfig, check_seed

MAX_ROWS = 4096  # images, edits or captions of one call; larger work belongs in a loop over calls
GENERATE_TOKENS = 512  # generate's default budget where the context leaves room for it


class AnyGen:
    """A loaded model: decoder + MultimodalTokenizer, with one method per task.

    `diffusion` (a `TransfusionModel` around `model`) marks a Transfusion model: its images are
    denoised by the diffusion head, text still comes from the LM head, and images in a prompt
    (caption, edit, describe_edit, generate) enter as clean latents; its default sampler is
    `anygen.sampling.diffusion.TransfusionSampler`. Best-of ranks by code likelihoods and `editable`
    copies codes, so neither applies to it. `plan_format` is the plan format of the model's
    world (`anygen.tasks.world.PlanFormat`), needed by reasoned edits; `sampler` replaces the
    sampling loop and `verifier` (a `Verifier` class) the likelihood scores best-of ranks by (seams for tests);
    `meta` is what the model directory records (`anygen_decoder.json`): a task the model was not
    trained on (its `"tasks"`) is refused with a one-line error, and its `"recommended"` defaults
    apply where the caller sets none (`anygen.api.capabilities`). `domain` is its domain
    calibration (`domain.json`; None: results are scored but inputs never flagged).
    """

    def __init__(self, model, tokenizer, config: GenerationConfig | None = None, diffusion=None,
                 plan_format=None, sampler=None, verifier: type[Verifier] = Verifier, meta: dict | None = None,
                 domain: Calibration | None = None):
        self.meta = meta or {}
        if diffusion is not None and sampler is None:
            from anygen.sampling.diffusion import TransfusionSampler

            sampler = TransfusionSampler(diffusion, tokenizer.image)
        self.capabilities = Capabilities.of(self.meta)
        self.session = Session(model, tokenizer, config, sampler, self.capabilities)
        self.domain_check = DomainCheck(self.session, domain)
        self.model, self.tokenizer, self.vocab = model, tokenizer, tokenizer.vocab
        self.verifier = verifier(self.session)
        self.diffusion = DiffusionImages(self.session, diffusion) if diffusion is not None else None
        self.editor = Editor(self.session, plan_format, self.verifier)
        self.stories = StoryWriter(self.session, self.editor, self.verifier)

    @property
    def context(self) -> int:
        return self.session.context

    @property
    def plan_format(self):
        return self.editor.plan_format

    # ---- any document -----------------------------------------------------------------
    def generate(self, prompt: Document | str, max_new_tokens: int | None = None, seed: int | None = None,
                 callback: Callable[[Document], None] | None = None, strict: bool = False,
                 guidance_scale: float | None = None, **settings) -> Document:
        """Continue any Document with interleaved text, images and audio; returns the continuation.
        `max_new_tokens` (default: `GENERATE_TOKENS`, or the room the prompt leaves in the model's
        context when that is less) must fit in that room, else a one-line error names both.
        `callback` receives each finished segment as a Document while sampling runs.
        `guidance_scale` (default: the model's recommended one, else 1) guides each image the way
        `draw` does: against the unconditional image prompt, with the document so far as the
        condition (`guided_document`); 1 samples the whole continuation in one pass."""
        s = self.session
        if isinstance(prompt, str):
            prompt = Document([Text(check_text(prompt))])
        if not isinstance(prompt, Document):
            raise AnygenError(f"prompt must be text or a Document, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise AnygenError("prompt is empty")
        prompt.check_size(max_text_chars=MAX_PROMPT_CHARS, what="prompt")  # before any encoding work
        seed = check_seed(seed)
        if guidance_scale is None:
            guidance_scale = self.capabilities.recommended.guidance_scale
        if guidance_scale is not None:
            guidance_scale = check_scale(guidance_scale, "guidance_scale")
        if max_new_tokens is not None:
            max_new_tokens = check_int(max_new_tokens, "max_new_tokens", 1)
        ids = self.tokenizer.encode(prompt, eos=False)
        if max_new_tokens is None:
            max_new_tokens = max(1, min(GENERATE_TOKENS, s.context - len(ids)))  # none left: check_length says so
        s.check_length(ids, max_new_tokens)
        [score] = self.domain_check.score("document", [ids], strict=strict)
        if self.diffusion is not None:
            return attach(self.diffusion.generate(ids, max_new_tokens, seed, guidance_scale=guidance_scale,
                                                  **settings), score, strict)
        on_span = None if callback is None else (lambda row, span: callback(self.tokenizer.decode(list(span.ids))))
        if guidance_scale not in (None, 1.0):
            new = self.guided_document(ids, max_new_tokens, seed, guidance_scale, on_span, settings)
        else:
            [result] = s.sample([ids], s.settings(max_new_tokens=max_new_tokens, seed=seed, **settings),
                                callback=on_span)
            new = result.ids
        return attach(self.tokenizer.decode(new), score, strict)

    def guided_document(self, ids: list[int], max_new_tokens: int, seed: int | None, guidance_scale: float,
                        on_span=None, settings: dict | None = None) -> list[int]:
        """The new ids of a continuation of `ids` whose images are guided: text (and audio) is sampled
        up to the next `<boi>`, then the image is drawn against the unconditional image prompt with
        `guidance_scale` (the document so far is the condition, as a caption is for `draw`), and so on
        until `<eos>` or `max_new_tokens`. Each part samples with its own seed (`SEED_STRIDE` apart)."""
        s, settings = self.session, settings or {}
        uncond = s.null_prompt("text_to_image")
        new: list[int] = []
        for part in itertools.count():
            room = max_new_tokens - len(new)
            if room <= 0:
                break
            part_seed = None if seed is None else seed + SEED_STRIDE * part
            cfg = s.settings(max_new_tokens=room, seed=part_seed, stop_at_image=True, **settings)
            [words] = s.sample([ids + new], cfg, callback=on_span)  # up to and with the next <boi>
            if words.finish_reason != "image":
                return new + words.ids
            new += words.ids[:-1]  # the image is drawn with its <boi> forced
            if max_new_tokens - len(new) < s.image_budget:
                break  # no room left for a whole image: stop before it
            cfg = s.settings(max_new_tokens=s.image_budget, seed=part_seed, guidance_scales=(guidance_scale,),
                             allow_audio=False, **settings)
            row = s.guidance_row(ids + new, uncond)
            [image] = s.sample([Prompt(ids + new, uncond=[row], force=[self.vocab.boi])], cfg, callback=on_span)
            new += image.ids
        return new

    # ---- images -----------------------------------------------------------------------
    def draw(self, text: str, /, n: int = 1, seed: int | None = 0, options: DrawOptions | None = None,
             strict: bool = False, **settings) -> list[PILImage.Image]:
        """text -> n images, batched. Options (`DrawOptions`, or its fields as keywords):
        guidance_scale, num_inference_steps (diffusion head), best_of, greedy.

        n = 1 draws the most likely image (greedy codes); n > 1 samples n different images (the
        model's recommended image settings, else temperature 1 and top-k 64; each row has its own
        random stream, so a seed still reproduces them). `greedy=True` keeps every image greedy,
        `greedy=False` samples even one; explicit `image=SamplingSettings(...)` settings win over both
        defaults (temperature 0 is greedy)."""
        n = check_int(n, "n", 1, MAX_ROWS)
        options, settings = resolve(DrawOptions, options, settings)
        if options.greedy is None and n > 1:
            options = replace(options, greedy=False)
        return self.draw_batch([text] * n, seed=seed, options=options, strict=strict, **settings)

    def draw_batch(self, texts: Sequence[str], seed: int | None = 0, options: DrawOptions | None = None,
                   strict: bool = False, **settings) -> list[PILImage.Image]:
        """One image per text, all rows sampled together: greedy codes unless `greedy=False` or, with
        `greedy` unset, `best_of` > 1 (then sampled as `draw` with n > 1 samples; explicit
        `image=...` settings win). Guidance: `guidance_scale`, else the model's recommended one,
        else the image head's default."""
        options, settings = resolve(DrawOptions, options, settings)
        texts, seed = check_texts(texts), check_seed(seed)
        if len(texts) > MAX_ROWS:
            raise AnygenError(f"{len(texts)} prompts in one call, over the limit of {MAX_ROWS}")
        self.capabilities.require("text_to_image")
        if options.best_of > 1:
            self.capabilities.require("image_to_text", why="best_of ranks pictures by their caption")
        recommended = self.capabilities.recommended
        if options.guidance_scale is None and recommended.guidance_scale is not None:
            options = replace(options, guidance_scale=recommended.guidance_scale)
        scores = self.domain_check.score("text_to_image", [self.domain_check.prompt("text_to_image", t)
                                                           for t in texts], strict=strict)
        if self.diffusion is not None:
            images = self.diffusion.draw(texts, options, seed, **settings)
            return [attach(im, score, strict) for im, score in zip(images, scores)]
        if options.num_inference_steps is not None:
            raise AnygenError("num_inference_steps (denoising steps) applies to diffusion-head models only")
        s = self.session
        if "image" not in settings and options.greedy is True:
            settings["image"] = replace(s.config.image, greedy=True)
        elif "image" not in settings and (options.greedy is False or options.best_of > 1):
            settings["image"] = replace(recommended.image or SAMPLED_IMAGE,
                                        keep_threshold=s.config.image.keep_threshold)
        scale = 1.0 if options.guidance_scale is None else options.guidance_scale
        uncond = s.null_prompt("text_to_image")
        prompts = []
        for text in texts:
            cond = s.prompt("text_to_image", text=text)
            s.check_length(cond, s.image_budget)
            prompts.append(Prompt(cond, uncond=[s.guidance_row(cond, uncond)] if scale != 1.0 else (),
                                  force=[self.vocab.boi]))
        cfg = s.settings(max_new_tokens=s.image_budget, seed=seed, guidance_scales=(scale,), allow_audio=False,
                         **settings)

        def sample(k: int):
            codes = [s.image_codes_of(r) for r in s.sample([p for p in prompts for _ in range(k)], cfg)]
            return [[c for c in codes[i * k:(i + 1) * k] if c is not None] for i in range(len(prompts))]

        picked = best_of(sample, lambda row, group: self.verifier.caption_scores(
            group, self.tokenizer.encode_text(texts[row])), options.best_of)
        if any(codes is None for codes in picked):
            raise AnygenError("the model did not finish an image within its token budget")
        return [attach(self.tokenizer.image_from_codes(codes), score, strict)
                for codes, score in zip(picked, scores)]

    def caption(self, image, /, max_new_tokens: int = 64, seed: int | None = 0, strict: bool = False,
                **settings) -> str:
        """image -> text."""
        return self.caption_batch([image], max_new_tokens, seed, strict=strict, **settings)[0]

    def caption_batch(self, images: Sequence, max_new_tokens: int = 64, seed: int | None = 0,
                      strict: bool = False, **settings) -> list[str]:
        """One caption per image, batched; a blank image is flagged."""
        images = [as_image(im) for im in self._rows(images, "image")]
        prompts = [self.domain_check.prompt("image_to_text", im) for im in images]
        scores = self.domain_check.score("image_to_text", prompts, [is_blank_image(im) for im in images], strict)
        answers = self.session.text_answers(prompts, check_int(max_new_tokens, "max_new_tokens", 1),
                                            check_seed(seed), **settings)
        return [attach(answer, score, strict) for answer, score in zip(answers, scores)]

    # ---- audio ------------------------------------------------------------------------
    def say(self, text: str, /, guidance_scale: float = 1.0, seed: int | None = 0, max_frames: int | None = None,
            strict: bool = False, **settings) -> Audio:
        """text -> audio (e.g. "the notes C E G" -> a melody); `max_frames` bounds its length in codec
        frames (default: the model's recommended bound, else the sampler's)."""
        from anygen.codecs.layout import stream_length

        s, text = self.session, check_text(text)
        scale, seed = check_scale(guidance_scale, "guidance_scale"), check_seed(seed)
        if max_frames is None:
            frames = self.capabilities.recommended.audio_max_frames or s.config.audio_max_frames
        else:
            frames = check_int(max_frames, "max_frames", 1, 100_000)
        cond, uncond = s.prompt("text_to_audio", text=text), s.null_prompt("text_to_audio")
        budget = stream_length(frames, self.vocab.audio_levels, self.vocab.audio_layout) + 3
        s.check_length(cond, budget)
        [score] = self.domain_check.score("text_to_audio", [cond], strict=strict)
        cfg = s.settings(max_new_tokens=budget, seed=seed, guidance_scales=(scale,), allow_image=False,
                         audio_max_frames=frames, **settings)
        prompt = Prompt(cond, uncond=[uncond] if scale != 1.0 else (), force=[self.vocab.boa])
        [result] = s.sample([prompt], cfg)
        audios = self.tokenizer.decode(result.ids).audios
        if not audios:
            raise AnygenError("the model did not produce audio within its token budget")
        return attach(audios[0], score, strict)

    def transcribe(self, audio, /, max_new_tokens: int = 64, seed: int | None = 0, strict: bool = False,
                   **settings) -> str:
        """audio (path, Audio or (waveform, sr)) -> text; silent audio is flagged."""
        audio = as_audio(audio)
        ids = self.domain_check.prompt("audio_to_text", audio)
        [score] = self.domain_check.score("audio_to_text", [ids], [is_silent(audio[0])], strict)
        answer = self.session.text_answers([ids], check_int(max_new_tokens, "max_new_tokens", 1),
                                           check_seed(seed), **settings)[0]
        return attach(answer, score, strict)

    # ---- edits ------------------------------------------------------------------------
    def edit(self, image, instruction: str, /, seed: int | None = 0, options: EditOptions | None = None,
             strict: bool = False, **settings) -> PILImage.Image:
        """(image, instruction) -> edited image. Options: `EditOptions` (or its fields as keywords).
        The domain score is the instruction's."""
        return self.edit_batch([image], [instruction], seed=seed, options=options, strict=strict, **settings)[0]

    def edit_batch(self, images: Sequence, instructions: Sequence[str], seed: int | None = 0,
                   options: EditOptions | None = None, strict: bool = False, **settings) -> list[PILImage.Image]:
        """One edit per (image, instruction) pair, all rows (and their guidance rows) in one batch;
        `editable`, when given, applies to every image."""
        return [edited for edited, _ in self._edits(images, instructions, seed, options, settings, strict)]

    def edit_with_reasoning(self, image, instruction: str, /, seed: int | None = 0,
                            options: EditOptions | None = None, strict: bool = False,
                            **settings) -> tuple[PILImage.Image, str]:
        """`edit(..., reason=True)` that also returns the plan the model wrote (in its world's plan format)."""
        [(edited, plan)] = self.edit_batch_with_reasoning([image], [instruction], seed, options, strict, **settings)
        return edited, plan

    def edit_batch_with_reasoning(self, images: Sequence, instructions: Sequence[str], seed: int | None = 0,
                                  options: EditOptions | None = None, strict: bool = False,
                                  **settings) -> list[tuple[PILImage.Image, str]]:
        """`edit_batch(..., reason=True)` that also returns each row's plan text."""
        return self._edits(images, instructions, seed, options, {**settings, "reason": True}, strict)

    def _edits(self, images, instructions, seed, options, settings,
               strict: bool = False) -> list[tuple[PILImage.Image, str | None]]:
        options, settings = resolve(EditOptions, options, settings)
        for task, why in edit_tasks(options):
            self.capabilities.require(task, why=why)
        if self.diffusion is not None:
            self.diffusion.check_edit(options)
        images = self._rows(images, "image")
        instructions = check_texts(instructions, "instruction")
        if len(images) != len(instructions):
            raise AnygenError(f"{len(images)} images but {len(instructions)} instructions")
        scores = self.domain_check.score("edit", [self.domain_check.prompt("edit", ins) for ins in instructions],
                                         strict=strict)
        sources = [self.tokenizer.image_codes(as_image(image)) for image in images]  # (H, W) each
        if options.editable is not None and len(options.editable) != sources[0].numel():
            h, w = sources[0].shape
            raise AnygenError(f"editable has {len(options.editable)} flags; the code grid needs {h}x{w} = {h * w}")
        edited = self.editor.edit(sources, instructions, options, check_seed(seed), **settings)
        return [(attach(self.tokenizer.image_from_codes(codes), score, strict), plan)
                for (codes, plan), score in zip(edited, scores)]

    def plan_edits(self, instructions: Sequence[str], seen: Sequence[str], /, max_new_tokens: int = 64,
                   seed: int | None = 0) -> list[str]:
        """The text half of `edit(reason=True)` without the pictures (the `reasoned_text` task): given
        each instruction and what its source shows in words (`seen`, in the plan format's
        `seen_prompt` form), the plan the model writes next."""
        instructions, seen = check_texts(instructions, "instruction"), check_texts(seen, "seen")
        if len(instructions) != len(seen):
            raise AnygenError(f"{len(instructions)} instructions but {len(seen)} descriptions of the source")
        self.capabilities.require("reasoned_text")
        return self.editor.plan_edits(instructions, seen, check_int(max_new_tokens, "max_new_tokens", 1),
                                      check_seed(seed))

    def describe_edit(self, source, target, /, max_new_tokens: int = 64, seed: int | None = 0,
                      strict: bool = False, **settings) -> str:
        """(source image, edited image) -> the instruction that turns one into the other."""
        codes = [self.tokenizer.image_codes(as_image(im)) for im in (source, target)]
        ids = self.domain_check.prompt("describe_edit", codes)
        [score] = self.domain_check.score("describe_edit", [ids], strict=strict)
        answer = self.session.text_answers([ids], check_int(max_new_tokens, "max_new_tokens", 1), check_seed(seed),
                                           **settings)[0]
        return attach(answer, score, strict)

    # ---- stories ----------------------------------------------------------------------
    def story(self, opening: str, /, seed: int | None = 0, options: StoryOptions | None = None,
              callback: Callable[[Document], None] | None = None, strict: bool = False, **settings) -> Document:
        """An interleaved story: the opening sentence, then `n_steps` (picture, next sentence) turns.
        Options: `StoryOptions` (or its fields as keywords): n_steps, best_of, reason, plan_in_words, sentences.
        `callback` receives the new segments as Documents in order while the story is written
        (the diffusion head: all of them at the end); the opening plus them is the story.
        The result is empty when nothing follows the opening."""
        options, settings = resolve(StoryOptions, options, settings)
        opening, seed = check_text(opening, "opening"), check_seed(seed)
        for task, why in story_tasks(options):
            self.capabilities.require(task, why=why)
        [score] = self.domain_check.score("story", [self.domain_check.prompt("story", Document([Text(opening)]))],
                                          strict=strict)
        doc = self._story(opening, options, seed, settings, callback)
        return attach(doc, score, strict, empty=is_empty(Document(list(doc)[1:])))

    def _story(self, opening: str, options: StoryOptions, seed: int | None, settings: dict,
               callback: Callable[[Document], None] | None) -> Document:
        if self.diffusion is None:
            return self.stories.write(opening, options, seed, callback=callback, **settings)
        if options.stepwise:
            raise AnygenError("best_of, reason and sentences are not supported by the diffusion image head")
        ids = self.tokenizer.encode(Document([Text(opening)]), eos=False)
        budget = options.n_steps * self.stories.step_budget
        self.session.check_length(ids, budget)
        doc = self.diffusion.generate(ids, budget, seed, min_images=options.n_steps, max_images=options.n_steps,
                                      image_first=True, **settings)  # the opening ends as written
        cut = [i for i, seg in enumerate(doc) if isinstance(seg, Image)][-1:] or [len(doc) - 1]
        story = Document(list(doc)[:cut[0] + 1])
        if callback is not None and len(story):
            callback(story)
        return Document([Text(opening)]) + story

    # ---- helpers ----------------------------------------------------------------------
    @staticmethod
    def _rows(items, what: str) -> list:
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise AnygenError(f"expected a list of {what}s, got {type(items).__name__}")
        if not items:
            raise AnygenError(f"no {what}s given")
        if len(items) > MAX_ROWS:
            raise AnygenError(f"{len(items)} {what}s in one call, over the limit of {MAX_ROWS}")
        return list(items)
