"""The Python API: `anygen.load(DIR)` -> `AnyGen` with generate, draw, caption, say, transcribe, edit.

A model directory holds the decoder (a transformers checkpoint plus `anygen.json`) and
its `tokenizer/` directory. Every task builds its prompt with `anygen.data.tasks`, so the
sampler sees exactly the sequences the model was trained on, and hands the ids to the
batched sampler (`anygen.sampling.engine.generate`); ids become a Document through the
tokenizer.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image as PILImage

from anygen.data import tasks
from anygen.document import Audio, Document, Image, Text
from anygen.errors import AnygenError
from anygen.io import check_duration, read_audio_file, read_image_file
from anygen.sampling.engine import Prompt, generate
from anygen.sampling.settings import GenerationConfig, SamplingSettings
from anygen.tokenizer import MultimodalTokenizer

DEFAULT_MODEL = Path(__file__).parent / "assets" / "default"
MAX_PROMPT_CHARS = 20_000


def default_model_dir() -> Path:
    return Path(os.environ.get("ANYGEN_MODEL", DEFAULT_MODEL))


def load(directory: str | os.PathLike | None = None, device: str = "cpu") -> "AnyGen":
    """Load a model directory (default: the bundled model, or $ANYGEN_MODEL)."""
    from anygen.model.decoder import load_decoder, read_decoder_meta
    from anygen.model.transfusion import check_codec_fits, image_head_of, load_transfusion

    directory = Path(directory) if directory is not None else default_model_dir()
    if not directory.is_dir():
        raise AnygenError(f"{directory}: model directory not found")
    tok_dir = directory / "tokenizer"
    if not tok_dir.is_dir():
        raise AnygenError(f"{directory}: missing tokenizer/ directory")
    tokenizer = MultimodalTokenizer.load(tok_dir)
    model = load_decoder(directory, device=device)
    n_rows = model.get_input_embeddings().weight.shape[0]
    saved = read_decoder_meta(directory).get("vocab")
    if saved and saved != tokenizer.vocab.to_dict():
        raise AnygenError(f"{directory}: the model was trained with a different vocabulary than tokenizer/ holds "
                          f"(model {saved}, tokenizer {tokenizer.vocab.to_dict()}): tokenizer and model do not match")
    if n_rows < tokenizer.vocab.size:
        raise AnygenError(f"{directory}: the model has {n_rows} token embeddings but its tokenizer needs "
                          f"{tokenizer.vocab.size}: tokenizer and model do not match")
    meta = read_decoder_meta(directory)
    diffusion = None
    if image_head_of(meta) == "diffusion":
        diffusion = load_transfusion(directory, model, meta).eval()
        check_codec_fits(diffusion.head, tokenizer.image, str(directory))
    return AnyGen(model.eval(), tokenizer, diffusion=diffusion)


def _check_text(text: str, what: str = "prompt") -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise AnygenError(f"{what} is not valid UTF-8") from None
    if not isinstance(text, str) or not text.strip():
        raise AnygenError(f"{what} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable argv bytes arrive as lone surrogates
        raise AnygenError(f"{what} is not valid UTF-8") from None
    if len(text) > MAX_PROMPT_CHARS:
        raise AnygenError(f"{what} is {len(text)} characters, over the {MAX_PROMPT_CHARS}-character limit")
    return text


def _as_image(image) -> PILImage.Image:
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(image)
    if isinstance(image, PILImage.Image):
        return image
    raise AnygenError(f"expected an image path or PIL image, got {type(image).__name__}")


def _as_audio(audio) -> tuple[np.ndarray, int]:
    if isinstance(audio, (str, os.PathLike)):
        return read_audio_file(audio)
    if isinstance(audio, Audio):
        audio = (audio.waveform, audio.sample_rate)
    if isinstance(audio, tuple) and len(audio) == 2:
        waveform, sr = np.asarray(audio[0]), int(audio[1])  # the codec scales integer PCM
        check_duration(waveform, sr)  # before the codec spends time on it
        return waveform, sr
    raise AnygenError(f"expected an audio path, Audio or (waveform, sample_rate), got {type(audio).__name__}")


class AnyGen:
    """A loaded model: decoder + MultimodalTokenizer, with one method per task.

    `diffusion` (a `TransfusionModel` around `model`) marks a Transfusion model: its images
    are denoised by the diffusion head (`anygen.sampling.diffusion`), text still comes from
    the LM head; tasks that read an image (caption, edit) need a tokens-head model.
    """

    def __init__(self, model, tokenizer: MultimodalTokenizer, config: GenerationConfig | None = None,
                 diffusion=None):
        self.model, self.tokenizer, self.vocab, self.diffusion = model, tokenizer, tokenizer.vocab, diffusion
        self.config = config or GenerationConfig(image=SamplingSettings(greedy=True, keep_threshold=0.5),
                                                 text=SamplingSettings(greedy=True),
                                                 audio=SamplingSettings(greedy=True))
        self.context = int(getattr(model.config, "max_position_embeddings", 4096))

    # ---- plumbing --------------------------------------------------------------------
    def _config(self, **overrides) -> GenerationConfig:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.config, **overrides)

    def _check_length(self, ids: Sequence[int], max_new_tokens: int) -> None:
        if len(ids) + max_new_tokens > self.context:
            raise AnygenError(f"the prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds "
                              f"the model's context of {self.context} tokens")

    def _image_budget(self) -> int:
        h, w = self.vocab.image_grids[0]
        return h * w + 4  # <boi> <grid> codes <eoi> <eos>

    # ---- tasks -----------------------------------------------------------------------
    def generate(self, prompt: Document | str, max_new_tokens: int = 512, seed: int | None = None,
                 callback: Callable[[Document], None] | None = None, **settings) -> Document:
        """Continue any Document with interleaved text, images and audio; returns the continuation."""
        if isinstance(prompt, str):
            prompt = Document([Text(_check_text(prompt))])
        if len(prompt) == 0:
            raise AnygenError("prompt is empty")
        prompt.check_size(max_text_chars=MAX_PROMPT_CHARS, what="prompt")  # before any encoding work
        ids = self.tokenizer.encode(prompt, eos=False)
        self._check_length(ids, max_new_tokens)
        if self.diffusion is not None:
            return self._generate_diffusion(ids, max_new_tokens, seed, **settings)
        cfg = self._config(max_new_tokens=max_new_tokens, seed=seed, **settings)
        segment_callback = None
        if callback is not None:
            def segment_callback(row, span):  # noqa: E306
                callback(self.tokenizer.decode(list(span.ids)))
        [result] = generate(self.model, self.vocab, [ids], cfg, callback=segment_callback)
        return self.tokenizer.decode(result.ids)

    def draw(self, text: str, /, n: int = 1, cfg_scale: float | None = None, seed: int | None = 0,
             best_of: int = 1, **settings) -> list[PILImage.Image]:
        """text -> n images (batched; classifier-free guidance when cfg_scale != 1).

        best_of > 1 samples that many candidates per image and keeps the one under which the
        model finds the prompt most likely as a caption (image -> text re-ranking).
        cfg_scale defaults to 1 for the tokens head and to `DiffusionSettings.guidance` for
        the diffusion head, which also takes `steps` (denoising steps).
        """
        if n < 1 or best_of < 1:
            raise AnygenError("n and best_of must be at least 1")
        return self.draw_batch([text] * n, cfg_scale=cfg_scale, seed=seed, best_of=best_of, **settings)

    def draw_batch(self, texts: Sequence[str], cfg_scale: float | None = None, seed: int | None = 0,
                   best_of: int = 1, **settings) -> list[PILImage.Image]:
        """One image per text, all rows sampled together in one batch."""
        texts = [_check_text(t) for t in texts]
        if not texts:
            raise AnygenError("no prompts given")
        if self.diffusion is not None:
            if best_of != 1:
                raise AnygenError("best_of is not supported by the diffusion image head")
            return self._draw_diffusion(texts, cfg_scale, seed, **settings)
        if settings.pop("steps", None) is not None:
            raise AnygenError("steps (denoising steps) applies to diffusion-head models only")
        cfg_scale = 1.0 if cfg_scale is None else cfg_scale
        uncond = tasks.null_condition_prompt(self.tokenizer, "text_to_image")
        guided = cfg_scale != 1.0
        prompts = []
        for text in texts:
            cond = tasks.task_prompt(self.tokenizer, "text_to_image", text=text)
            self._check_length(cond, self._image_budget())
            prompts += [Prompt(cond, uncond=[uncond] if guided else (), force=[self.vocab.boi])] * best_of
        cfg = self._config(max_new_tokens=self._image_budget(), seed=seed, cfg_scale=(cfg_scale,),
                           allow_audio=False, **settings)
        codes = [self._image_codes_of(r) for r in generate(self.model, self.vocab, prompts, cfg)]
        images = []
        for k, text in enumerate(texts):
            group = [c for c in codes[k * best_of:(k + 1) * best_of] if c is not None]
            if not group:
                raise AnygenError("the model did not finish an image within its token budget")
            caption = self.tokenizer.encode_text(text)
            best = group[0] if len(group) == 1 else group[self._rank_by_caption(group, caption)[0]]
            images.append(self.tokenizer.image_from_codes(best))
        return images

    # ---- the diffusion head ---------------------------------------------------------
    def _diffusion_settings(self, cfg_scale: float | None, steps: int | None):
        from anygen.config import ConfigError
        from anygen.sampling.diffusion import DiffusionSettings

        base = DiffusionSettings()
        try:
            return DiffusionSettings(steps=base.steps if steps is None else int(steps),
                                     guidance=base.guidance if cfg_scale is None else float(cfg_scale),
                                     shift=base.shift)
        except ConfigError as e:
            raise AnygenError(f"diffusion sampling: {e}") from None

    def _draw_diffusion(self, texts: list[str], cfg_scale: float | None, seed: int | None,
                        steps: int | None = None, **other) -> list[PILImage.Image]:
        from anygen.codecs.image import tensor_to_images
        from anygen.sampling.diffusion import sample_images

        if other:
            raise AnygenError(f"the diffusion image head takes cfg_scale and steps, not {', '.join(sorted(other))}")

        grid = self.vocab.grid_id((self.diffusion.head.grid,) * 2)
        prompts = [tasks.task_prompt(self.tokenizer, "text_to_image", text=t) + [self.vocab.boi, grid] for t in texts]
        n_slots = self.diffusion.head.n_slots
        for p in prompts:
            self._check_length(p, n_slots + 2)
        x = sample_images(self.diffusion, self.vocab, prompts, self._diffusion_settings(cfg_scale, steps), seed)
        return tensor_to_images(self._diffused_to_pixels(x))

    def _diffused_to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        from anygen.model.transfusion import to_pixels

        return to_pixels(self.diffusion.head, x, self.tokenizer.image)

    def _generate_diffusion(self, ids: list[int], max_new_tokens: int, seed: int | None, cfg_scale=None,
                            steps=None, temperature: float = 0.0, min_images: int = 0, max_images: int = 4,
                            text=None, image=None, audio=None, **other) -> Document:
        """Interleaved sampling with the diffusion head; `text` settings (the CLI's --temperature)
        set the text temperature, image/audio token settings do not apply to this head."""
        from anygen.codecs.image import tensor_to_images
        from anygen.sampling.diffusion import generate as diffusion_generate

        if other:
            raise AnygenError(f"the diffusion image head does not take {', '.join(sorted(other))}")
        if text is not None and not text.is_greedy:
            temperature = text.temperature

        new_ids, images = diffusion_generate(self.diffusion, self.vocab, ids, max_new_tokens=max_new_tokens,
                                             temperature=temperature, min_images=min_images,
                                             max_images=max_images, seed=seed,
                                             settings=self._diffusion_settings(cfg_scale, steps))
        pictures = iter(tensor_to_images(self._diffused_to_pixels(torch.stack(images))) if images else [])
        out, text = [], []
        for token in new_ids:
            if token == self.vocab.boi:
                if text:
                    out.append(Text(self.tokenizer.decode(text).text))
                    text = []
                out.append(Image(next(pictures)))
            elif token < self.vocab.n_text:
                text.append(token)
        if text:
            out.append(Text(self.tokenizer.decode(text).text))
        return Document(out)

    def _needs_token_images(self, task: str) -> None:
        if self.diffusion is not None:
            raise AnygenError(f"{task} reads an image as codes; this model's image head is diffusion "
                              f"(use a tokens-head model for {task})")

    def caption(self, image, /, max_new_tokens: int = 64, seed: int | None = 0, **settings) -> str:
        """image -> text."""
        return self.caption_batch([image], max_new_tokens, seed, **settings)[0]

    def caption_batch(self, images: Sequence, max_new_tokens: int = 64, seed: int | None = 0,
                      **settings) -> list[str]:
        """One caption per image, batched."""
        self._needs_token_images("caption")
        prompts = [tasks.task_prompt(self.tokenizer, "image_to_text", image=_as_image(im)) for im in images]
        return self._text_answers(prompts, max_new_tokens, seed, **settings)

    def story(self, opening: str, n_steps: int = 3, seed: int | None = 0, best_of: int = 1, reason: bool = False,
              sentences: int = 1, plan_in_words: bool = False, **settings) -> Document:
        """An interleaved story: the opening sentence, then `n_steps` (image, next sentence) turns.

        `<eos>` is not allowed until the story has `n_steps` images, so the model cannot stop
        after the first picture (a caption followed by an image is also a whole text->image example).
        best_of > 1 samples each picture that many times (temperature 1) and keeps the one that
        best explains its text: the first by the opening as its caption, each later one by the
        sentence before it as the edit of the previous picture (`describe_edit`).
        reason: each later picture is a reasoned edit of the one before it with the sentence as
        its instruction (`edit_with_reasoning`; the reasoning text is not part of the story).
        plan_in_words (with reason): those edits write their text greedily and re-plan it in words
        (`edit_batch(plan_in_words=True, text=SamplingSettings(greedy=True))`, the best edit setting).
        sentences > 1: each later step writes that many sentences (the first with the text settings,
        greedy by default, the others sampled at temperature 1), draws a picture for each, and keeps
        the (non-empty) sentence whose picture explains it best per token under `describe_edit`
        (meant to drop sentences that are no valid edit of the picture; measured gains are within
        noise, README).
        """
        opening = _check_text(opening, "opening")
        ids = self.tokenizer.encode(Document([Text(opening)]), eos=False)
        per_step = self._image_budget() + 40
        budget = n_steps * per_step
        self._check_length(ids, budget)
        if best_of < 1 or sentences < 1:
            raise AnygenError("best_of and sentences must be at least 1")
        if plan_in_words and not reason:
            raise AnygenError("plan_in_words re-plans the reasoned edits of story(reason=True): pass reason=True too")
        if self.diffusion is not None:
            if best_of != 1 or reason or sentences != 1:
                raise AnygenError("best_of, reason and sentences are not supported by the diffusion image head")
            doc = self._generate_diffusion(ids, budget, seed, min_images=n_steps, max_images=n_steps, **settings)
            cut = [i for i, seg in enumerate(doc) if isinstance(seg, Image)][-1:] or [len(doc) - 1]
            return Document([Text(opening)]) + Document(list(doc)[:cut[0] + 1])
        if best_of > 1 or reason or sentences > 1:
            story_ids = self._story_stepwise(ids, n_steps, seed, best_of, reason, sentences,
                                             plan_in_words=plan_in_words, **settings)
            return Document([Text(opening)]) + self.tokenizer.decode(story_ids[len(ids):])
        cfg = self._config(max_new_tokens=budget, seed=seed, stop_at_eos=False, **settings)
        [result] = generate(self.model, self.vocab, [ids], cfg)
        image_ends = [span.end for span in result.spans if span.kind == "image"]
        cut = result.ids[:image_ends[n_steps - 1]] if len(image_ends) >= n_steps else result.ids
        return Document([Text(opening)]) + self.tokenizer.decode(cut)

    def _story_stepwise(self, ids: list[int], n_steps: int, seed: int | None, best_of: int, reason: bool,
                        sentences: int = 1, image: SamplingSettings | None = None, plan_in_words: bool = False,
                        **settings) -> list[int]:
        """The story's ids (`<keep>`-free), one sentence and picture at a time: each picture chosen among
        `best_of` samples, later ones drawn as reasoned edits of the picture before when `reason`.
        With `sentences` > 1 each later step writes that many sentences (greedy, then sampled), draws a
        picture for each and keeps the pair whose picture best explains its sentence (`describe_edit`)."""
        v = self.vocab
        image = image or (SamplingSettings(temperature=1.0) if best_of > 1 else self.config.image)
        previous, sentence = None, self.tokenizer.text.decode([t for t in ids if t < v.n_text]).strip()
        for step in range(n_steps):
            step_seed = None if seed is None else seed + 7919 * step
            options = []
            for new in ([[]] if step == 0 else self._story_sentences(ids, sentences, step_seed, **settings)):
                if step > 0:
                    tail = max((i + 1 for i, t in enumerate(new) if t >= v.n_text), default=0)
                    sentence = self.tokenizer.text.decode(new[tail:]).strip().strip(".").strip()  # before the picture
                picture = self._story_picture(ids + new, previous, sentence, best_of, reason, step_seed, image,
                                              plan_in_words, **settings)
                if picture is not None:
                    options.append((new, sentence, picture))
            if not options:
                break
            best = 0
            if len(options) > 1:
                scores = self._edit_scores(previous, [p for _, _, p in options], [t for _, t, _ in options],
                                           per_token=True)
                best = max(range(len(options)), key=lambda k: scores[k] if options[k][1] else -math.inf)
            new, _, previous = options[best]
            ids = ids + new + self.tokenizer.image_span(previous)
        return ids

    def _story_sentences(self, ids: list[int], n: int, seed: int | None, **settings) -> list[list[int]]:
        """`n` continuations of the story up to its next `<boi>` (a melody's text and audio may come
        first): one with the text settings (greedy by default), then `n - 1` sampled at temperature 1."""
        from anygen.codecs.keep import encode_keeps

        v = self.vocab
        prompt = encode_keeps(ids, v)
        cfg = self._config(max_new_tokens=self._image_budget() + 40, seed=seed, stop_at_eos=False, **settings)
        rows = generate(self.model, v, [prompt], cfg)
        if n > 1:
            rows += generate(self.model, v, [prompt] * (n - 1), replace(cfg, text=SamplingSettings(temperature=1.0)))
        return [r.ids[:r.ids.index(v.boi)] if v.boi in r.ids else r.ids for r in rows]  # else <boi> is forced

    def _story_picture(self, ids: list[int], previous: torch.Tensor | None, sentence: str, best_of: int,
                       reason: bool, seed: int | None, image: SamplingSettings, plan_in_words: bool = False,
                       **settings) -> torch.Tensor | None:
        """The codes (H, W) of the story's next picture after `ids`, or None when none was finished: the
        first re-ranked by `sentence` as its caption, later ones by it as the edit of `previous`."""
        from anygen.codecs.keep import encode_keeps

        if reason and previous is not None and sentence:
            if plan_in_words:
                settings = {**settings, "text": SamplingSettings(greedy=True), "plan_in_words": True}
            [(codes, _)] = self._edit_codes([previous], [sentence], seed=seed, best_of=best_of, reason=True,
                                            image=image, **settings)
            return codes
        v = self.vocab
        cfg = self._config(max_new_tokens=self._image_budget(), seed=seed, image=image, allow_audio=False, **settings)
        group = [c for c in (self._image_codes_of(r) for r in generate(self.model, v, [
            Prompt(encode_keeps(ids, v), force=[v.boi])] * best_of, cfg)) if c is not None]
        if len(group) <= 1 or (previous is not None and not sentence):
            return group[0] if group else None
        if previous is None:
            order = self._rank_by_caption(group, self.tokenizer.encode_text(sentence))
        else:
            order = self._rank_edits(previous, group, sentence)
        return group[order[0]]

    def transcribe(self, audio, max_new_tokens: int = 64, seed: int | None = 0, **settings) -> str:
        """audio (path, Audio or (waveform, sr)) -> text."""
        ids = tasks.task_prompt(self.tokenizer, "audio_to_text", audio=_as_audio(audio))
        return self._text_answer(ids, max_new_tokens, seed, **settings)

    def _text_answer(self, ids, max_new_tokens, seed, **settings) -> str:
        return self._text_answers([ids], max_new_tokens, seed, **settings)[0]

    def _text_answers(self, prompts, max_new_tokens, seed, **settings) -> list[str]:
        for ids in prompts:
            self._check_length(ids, max_new_tokens)
        cfg = self._config(max_new_tokens=max_new_tokens, seed=seed, allow_image=False, allow_audio=False,
                           **settings)
        results = generate(self.model, self.vocab, prompts, cfg)
        return [self.tokenizer.decode(r.ids).text.strip() for r in results]

    def say(self, text: str, /, cfg_scale: float = 1.0, seed: int | None = 0, max_frames: int | None = None,
            **settings) -> Audio:
        """text -> audio (e.g. "the notes C E G" -> a melody)."""
        text = _check_text(text)
        cond = tasks.task_prompt(self.tokenizer, "text_to_audio", text=text)
        uncond = tasks.null_condition_prompt(self.tokenizer, "text_to_audio")
        frames = max_frames or self.config.audio_max_frames
        from anygen.codecs.layout import stream_length

        budget = stream_length(frames, self.vocab.audio_levels, self.vocab.audio_layout) + 3
        self._check_length(cond, budget)
        cfg = self._config(max_new_tokens=budget, seed=seed, cfg_scale=(cfg_scale,), allow_image=False,
                           audio_max_frames=frames, **settings)
        prompt = Prompt(cond, uncond=[uncond] if cfg_scale != 1.0 else (), force=[self.vocab.boa])
        [result] = generate(self.model, self.vocab, [prompt], cfg)
        audios = self.tokenizer.decode(result.ids).audios
        if not audios:
            raise AnygenError("the model did not produce audio within its token budget")
        return audios[0]

    def edit(self, image, instruction: str, /, text_scale: float = 1.0, image_scale: float = 1.0,
             editable: Sequence[bool] | None = None, seed: int | None = 0, best_of: int = 1, reason: bool = False,
             plan_in_words: bool = False, **settings) -> PILImage.Image:
        """(image, instruction) -> edited image, with InstructPix2Pix-style dual guidance.

        `editable` (H*W booleans, row-major over the code grid) limits which codes may
        change; the rest are copied from the source. `best_of` > 1 samples that many edits
        and keeps the one under which the instruction is most likely (`describe_edit`).
        `reason`: the model first writes what it sees and what it will draw (`edit_with_reasoning`);
        `plan_in_words`: with `reason`, what it will draw is planned again in words alone (`edit_batch`).
        """
        return self.edit_batch([image], [instruction], text_scale, image_scale, editable, seed, best_of, reason,
                               plan_in_words, **settings)[0]

    def edit_with_reasoning(self, image, instruction: str, /, **options) -> tuple[PILImage.Image, str]:
        """`edit(..., reason=True)` that also returns the model's reasoning text,
        `before <the image's objects> after <the same objects, edited in place>` for the bundled model
        (e.g. `before large red circle top left after large red circle bottom`)
        (the `reasoned_edit` task; `tasks.reasoned_edit.form` says which text a model learned)."""
        [(edited, reasoning)] = self.edit_batch_with_reasoning([image], [instruction], **options)
        return edited, reasoning

    def edit_batch_with_reasoning(self, images: Sequence, instructions: Sequence[str], /,
                                  **options) -> list[tuple[PILImage.Image, str]]:
        """`edit_batch(..., reason=True)` that also returns each row's reasoning text."""
        return self._edits(images, instructions, reason=True, **options)

    def plan_edits(self, instructions: Sequence[str], seen: Sequence[str], /, max_new_tokens: int = 64,
                   seed: int | None = 0) -> list[str]:
        """The text half of `edit(reason=True)` without the pictures (the `reasoned_text` task): given
        each instruction and what its source shows in words (`seen`, e.g. `before <source caption>`),
        the plan the model writes next (e.g. `after <target caption>`). Measures the decision reasoned
        edits get wrong most — which object the instruction names — apart from drawing
        (`anygen eval shapes --only plan`)."""
        if len(instructions) != len(seen):
            raise AnygenError(f"{len(instructions)} instructions but {len(seen)} descriptions of the source")
        prompts = [[self.vocab.bos] + self.tokenizer.encode_text(_check_text(ins, "instruction"))
                   + self.tokenizer.encode_text(_check_text(s, "seen")) for ins, s in zip(instructions, seen)]
        return self._text_answers(prompts, max_new_tokens, seed)

    def edit_batch(self, images: Sequence, instructions: Sequence[str], text_scale: float = 1.0,
                   image_scale: float = 1.0, editable: Sequence[bool] | None = None, seed: int | None = 0,
                   best_of: int = 1, reason: bool = False, plan_in_words: bool = False,
                   **settings) -> list[PILImage.Image]:
        """One edit per (image, instruction) pair, all rows (and their guidance rows) in one batch;
        `editable`, when given, applies to every image.

        best_of > 1: each edit is sampled `best_of` times (image codes at temperature 1 unless
        `image=` says otherwise) and the candidate that best explains the instruction is kept:
        the highest log p(instruction | source, candidate) under the model's `describe_edit`
        task, so the model must have been trained with it (`tasks.describe_edit.weight`).

        reason: each row first writes what it sees and what it will draw (`before <source objects>
        after <the objects edited>` for the bundled model) and then draws the edit (the `reasoned_edit`
        task; the model must have been trained with it).
        Guidance and `editable` apply to the image as without reasoning; with `best_of` the
        text is sampled too (temperature 1 unless `text=` says otherwise, e.g.
        `text=SamplingSettings(greedy=True)` to sample only the pictures), and the model checks its
        own work: it captions every candidate picture, and a picture that shows the scene its text
        planned (`tasks.follows_plan`) beats one that does not; the describe_edit verifier breaks the ties.

        plan_in_words (with reason): the plan (` after ...`) is written again from the instruction and
        the row's own `before ...` alone, with no pictures in context (`plan_edits`, the
        `reasoned_text` task, which the model must have been trained with); where it differs, the
        picture is redrawn after it. The bundled model plans right more often so (README).

        retries (with reason and best_of > 1): rows none of whose pictures shows its plan are sampled
        `best_of` times again (another seed), up to `retries` times, and ranked with all their
        candidates: the extra time goes only to the edits that need it.
        """
        return [edited for edited, _ in self._edits(images, instructions, text_scale=text_scale,
                                                     image_scale=image_scale, editable=editable, seed=seed,
                                                     best_of=best_of, reason=reason, plan_in_words=plan_in_words,
                                                     **settings)]

    def _edits(self, images: Sequence, instructions: Sequence[str],
               **options) -> list[tuple[PILImage.Image, str | None]]:
        """`edit_batch`'s (edited image, reasoning text or None) per row."""
        self._needs_token_images("edit")
        if len(images) != len(instructions):
            raise AnygenError(f"{len(images)} images but {len(instructions)} instructions")
        if not images:
            raise AnygenError("no images given")
        sources = [self.tokenizer.image_codes(_as_image(image)) for image in images]  # (H, W) each
        return [(self.tokenizer.image_from_codes(codes), reasoning)
                for codes, reasoning in self._edit_codes(sources, instructions, **options)]

    def _edit_codes(self, sources: Sequence[torch.Tensor], instructions: Sequence[str], text_scale: float = 1.0,
                    image_scale: float = 1.0, editable: Sequence[bool] | None = None, seed: int | None = 0,
                    best_of: int = 1, reason: bool = False, plan_in_words: bool = False, retries: int = 0,
                    **settings) -> list[tuple[torch.Tensor, str | None]]:
        """Source codes (H, W) -> (edited codes (H, W), reasoning text or None) per row."""
        if best_of < 1 or retries < 0:
            raise AnygenError("best_of must be at least 1 and retries at least 0")
        if plan_in_words and not reason:
            raise AnygenError("plan_in_words re-plans a reasoned edit: pass reason=True too")
        if retries and not (reason and best_of > 1):
            raise AnygenError("retries draw again where no picture shows its plan: pass reason=True and best_of > 1")
        if best_of > 1:  # the candidates differ; with reasoning, in what they say too (measured better)
            settings.setdefault("image", SamplingSettings(temperature=1.0))
            if reason:
                settings.setdefault("text", SamplingSettings(temperature=1.0))
        instructions = [_check_text(t, "instruction") for t in instructions]
        guided = text_scale != 1.0 or image_scale != 1.0
        task = "reasoned_edit" if reason else "edit"
        force = self.tokenizer.encode_text(tasks.REASON_LEAD) if reason else [self.vocab.boi]
        budget = self._image_budget() + (self.REASONING_BUDGET if reason else 0)
        prompts = []  # one per row
        for codes, instruction in zip(sources, instructions):
            cond = tasks.task_prompt(self.tokenizer, task, image=codes, instruction=instruction)
            chain = ()
            if guided:
                chain = [tasks.null_condition_prompt(self.tokenizer, "edit", drop="instruction", image=codes),
                         tasks.null_condition_prompt(self.tokenizer, "edit", drop="both")]
            self._check_length(cond, budget)
            source_ids = self.vocab.image_ids(codes.reshape(-1)).tolist()
            prompts.append(Prompt(cond, uncond=chain, force=force,
                                  source=source_ids if editable is not None else None,
                                  editable=list(editable) if editable is not None else None))
        candidates = [[] for _ in prompts]  # per row: (codes (H, W) or None, reasoning or None, followed)
        rows = list(range(len(prompts)))
        for attempt in range(retries + 1):  # each retry samples again the rows no picture of which shows its plan
            batch = [prompts[k] for k in rows for _ in range(best_of)]
            batch_instructions = [instructions[k] for k in rows for _ in range(best_of)]
            cfg = self._config(max_new_tokens=budget, seed=None if seed is None else seed + 7919 * attempt,
                               allow_audio=False, cfg_scale=(text_scale, image_scale) if guided else (1.0,), **settings)
            results = generate(self.model, self.vocab, batch, cfg)
            if reason:
                results = self._draw_unfinished(batch, results, cfg)
                if plan_in_words:
                    results = self._replan_in_words(batch, results, batch_instructions, cfg)
            drawn = [(self._image_codes_of(r), self._reasoning_of(r) if reason else None) for r in results]
            followed = self._follows_plans(drawn) if reason and best_of > 1 else [False] * len(drawn)
            for i, (one, ok) in enumerate(zip(drawn, followed)):
                candidates[rows[i // best_of]].append((*one, ok))
            rows = [k for k in rows if not any(ok for *_, ok in candidates[k])]
            if not rows:
                break
        edited = []
        for source, instruction, row in zip(sources, instructions, candidates):
            row = [c for c in row if c[0] is not None]
            if not row:
                raise AnygenError("the model did not finish the edited image within its token budget")
            best = 0 if len(row) == 1 else self._rank_edits(
                source, [codes for codes, _, _ in row], instruction, followed=[ok for *_, ok in row])[0]
            edited.append(row[best][:2])
        return edited

    def _follows_plans(self, candidates: Sequence[tuple[torch.Tensor | None, str]]) -> list[bool]:
        """Per (codes (H, W) or None, reasoning) candidate: does the model's own caption of the picture
        name the scene its reasoning planned (`tasks.follows_plan`)? All captions in one batch."""
        rows = [i for i, (codes, _) in enumerate(candidates) if codes is not None]
        captions = self._text_answers([tasks.task_prompt(self.tokenizer, "image_to_text", image=candidates[i][0])
                                       for i in rows], 64, 0, text=SamplingSettings(greedy=True)) if rows else []
        followed = [False] * len(candidates)
        for i, caption in zip(rows, captions):
            followed[i] = tasks.follows_plan(candidates[i][1], caption)
        return followed

    REASONING_BUDGET = 96  # tokens of `before ...` text ahead of a reasoned edit's image

    def _draw_unfinished(self, prompts: list[Prompt], results: list, cfg: GenerationConfig) -> list:
        """Rows whose text ran on without an image: keep their first REASONING_BUDGET text ids and draw
        the image after them (<boi> forced), so that every reasoned edit ends with a picture."""
        late = [i for i, r in enumerate(results) if self._image_codes_of(r) is None]
        return self._redraw(prompts, results, cfg, {
            i: [t for t in results[i].ids if t < self.vocab.n_text and t != self.vocab.eos][:self.REASONING_BUDGET]
            for i in late})

    def _replan_in_words(self, prompts: list[Prompt], results: list, instructions: Sequence[str],
                         cfg: GenerationConfig) -> list:
        """Reasoned edits re-planned in words: each row's plan (` after ...`) is written again by
        `plan_edits` from its instruction and its own `before ...` alone, with no pictures in context
        (the `reasoned_text` task, which the bundled model gets right more often); rows whose plan
        changes get that text and a picture redrawn after it."""
        texts = [self._reasoning_of(r) for r in results]
        seen = {i: parts[0] for i, parts in enumerate(map(tasks.parse_reasoning, texts)) if parts is not None}
        keys = sorted({(instructions[i], before) for i, before in seen.items()})  # best-of copies plan once
        if not keys:  # no row wrote a `before ... after ...` text to re-plan
            return results
        plans = dict(zip(keys, self.plan_edits([k for k, _ in keys], [f"{tasks.REASON_LEAD} {b}" for _, b in keys])))
        redo = {}
        for i, before in seen.items():
            text = f"{tasks.REASON_LEAD} {before} {plans[instructions[i], before]}"
            if text != texts[i]:
                redo[i] = self.tokenizer.encode_text(text)
        return self._redraw(prompts, results, cfg, redo)

    def _redraw(self, prompts: list[Prompt], results: list, cfg: GenerationConfig,
                texts: dict[int, list[int]]) -> list:
        """The rows in `texts` with that text as what they wrote and their image drawn again after it."""
        if not texts:
            return results
        rows = list(texts)
        redo = [replace(prompts[i], ids=list(prompts[i].ids) + texts[i], force=[self.vocab.boi],
                        uncond=[list(row) + texts[i] for row in prompts[i].uncond])  # guidance rows see it too
                for i in rows]
        again = generate(self.model, self.vocab, redo, replace(cfg, max_new_tokens=self._image_budget()))
        results = list(results)
        for i, r in zip(rows, again):
            results[i] = replace(r, ids=texts[i] + r.ids,
                                 spans=[replace(s, start=s.start + len(texts[i]), end=s.end + len(texts[i]))
                                        for s in r.spans])
        return results

    def _reasoning_of(self, result) -> str:
        """The text a reasoned edit wrote before its image (`<keep>`-free text ids only)."""
        end = next((s.start for s in result.spans if s.kind == "image"), len(result.ids))
        return self.tokenizer.text.decode([t for t in result.ids[:end] if t < self.vocab.n_text]).strip()

    def _image_codes_of(self, result) -> torch.Tensor | None:
        """The codes (H, W) of a result's first complete image span, or None."""
        span = next((s for s in result.spans if s.kind == "image" and s.complete), None)
        if span is None:
            return None
        h, w = self.vocab.grid_of(span.ids[1])
        return self.vocab.image_codes(torch.tensor(span.ids[2:2 + h * w])).reshape(h, w)

    def _rank_by_caption(self, candidates: Sequence[torch.Tensor], caption: Sequence[int]) -> list[int]:
        """Candidate image codes (H, W), best first, by log p(caption <eos> | image) (the image_to_text task)."""
        from anygen.sampling.scoring import rank_images_by_caption

        v = self.vocab
        order, _ = rank_images_by_caption(self.model, [self.tokenizer.image_span(c) for c in candidates], caption,
                                          before=[v.bos], after=[v.eos], pad_id=v.pad, vocab=v)
        return order

    def _rank_edits(self, source: torch.Tensor, candidates: Sequence[torch.Tensor], instruction: str,
                    followed: Sequence[bool] | None = None) -> list[int]:
        """Candidate indices, best first, by log p(instruction <eos> | source, candidate) (`describe_edit`);
        reasoned edits whose picture `followed` its plan (`_follows_plans`) before all others. (A vote
        for the plan more candidates wrote, between the two, lost 5.5 points on remove: README.)"""
        scores = self._edit_scores(source, candidates, [instruction] * len(candidates))
        followed = followed or [False] * len(candidates)
        return sorted(range(len(candidates)), key=lambda i: (-followed[i], -scores[i]))

    def _edit_scores(self, source: torch.Tensor, targets: Sequence[torch.Tensor], instructions: Sequence[str],
                     per_token: bool = False) -> list[float]:
        """log p(instruction <eos> | source, target) per (target, instruction) pair under `describe_edit`;
        `per_token` divides by the answer's length (to compare different instructions)."""
        from anygen.sampling.scoring import score_sequences

        seqs, masks, lengths = [], [], []
        for target, instruction in zip(targets, instructions):
            answer = self.tokenizer.encode_text(instruction) + [self.vocab.eos]
            prompt = tasks.task_prompt(self.tokenizer, "describe_edit", image=source, target=target)
            seqs.append(prompt + answer)
            masks.append([False] * len(prompt) + [True] * len(answer))
            lengths.append(len(answer) if per_token else 1)
        scores = score_sequences(self.model, seqs, masks, pad_id=self.vocab.pad, vocab=self.vocab)
        return [float(x) / n for x, n in zip(scores, lengths)]

    def describe_edit(self, source, target, /, max_new_tokens: int = 64, seed: int | None = 0,
                      **settings) -> str:
        """(source image, edited image) -> the instruction that turns one into the other."""
        self._needs_token_images("describe_edit")
        codes = [self.tokenizer.image_codes(_as_image(im)) for im in (source, target)]
        ids = tasks.task_prompt(self.tokenizer, "describe_edit", image=codes[0], target=codes[1])
        return self._text_answer(ids, max_new_tokens, seed, **settings)
