"""Interleaved stories: the user's opening, then (picture, next sentence) turns.

The opening is the user's sentence: the first picture follows it at once (`<boi>` forced, as
the story layout puts a picture after each sentence), so the model never extends it. Plainly
the model writes the whole story in one pass (`<eos>` is not allowed before the story has its
pictures). Stepwise (`StoryOptions.stepwise`) it writes one sentence and one
picture at a time: the first picture is ranked by the opening as its caption, each later one
by its sentence as the edit of the picture before (`describe_edit`); with `reason` each later
picture is a reasoned edit of the one before, with the sentence as its instruction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from anygen.api.editing import SEED_STRIDE, Editor
from anygen.api.options import EditOptions, StoryOptions
from anygen.api.rerank import Verifier, best_of
from anygen.codecs.keep import encode_keeps
from anygen.document import Document, Text
from anygen.sampling.engine import Prompt
from anygen.sampling.settings import SamplingSettings

SENTENCE_BUDGET = 40  # text tokens of a story sentence (and a melody's text) before its picture


class StoryWriter:
    """Stories over a `Session`, with its `Editor` for reasoned steps."""

    def __init__(self, session, editor: Editor, verifier: Verifier | None = None):
        self.session, self.editor = session, editor
        self.verifier = verifier or Verifier(session)

    @property
    def step_budget(self) -> int:
        return self.session.image_budget + SENTENCE_BUDGET

    def write(self, opening: str, options: StoryOptions, seed: int | None,
              callback: Callable[[Document], None] | None = None, **settings) -> Document:
        """The story; `callback` receives its new segments in order as each is finished (stepwise:
        each step's sentence and picture), and together they are the story after the opening."""
        s = self.session
        ids = s.tokenizer.encode(Document([Text(opening)]), eos=False)
        s.check_length(ids, options.n_steps * self.step_budget)
        if options.reason:
            self.editor.plan()  # fails now, with its message, when the model has no plan format
        if options.stepwise:
            story_ids = self._stepwise(ids, options, seed, callback=callback, **settings)
            return Document([Text(opening)]) + s.tokenizer.decode(story_ids[len(ids):])
        cfg = s.settings(max_new_tokens=options.n_steps * self.step_budget, seed=seed, stop_at_eos=False, **settings)
        pictures = [0]

        def on_span(row, span):  # the spans after the last picture kept are cut: not sent
            if pictures[0] < options.n_steps:
                pictures[0] += span.kind == "image"
                callback(s.tokenizer.decode(list(span.ids)))

        [result] = s.sample([Prompt(ids, force=[s.vocab.boi])], cfg,  # the opening's picture next
                            callback=None if callback is None else on_span)
        image_ends = [span.end for span in result.spans if span.kind == "image"]
        cut = result.ids[:image_ends[options.n_steps - 1]] if len(image_ends) >= options.n_steps else result.ids
        return Document([Text(opening)]) + s.tokenizer.decode(cut)

    def _stepwise(self, ids: list[int], options: StoryOptions, seed: int | None, image: SamplingSettings | None = None,
                  callback: Callable[[Document], None] | None = None, **settings) -> list[int]:
        """The story's ids (`<keep>`-free), one sentence and picture at a time; with `sentences` > 1 each
        later step writes that many sentences (greedy, then sampled), draws a picture for each and keeps
        the pair whose picture best explains its sentence (`describe_edit`, per token)."""
        s, v = self.session, self.session.vocab
        image = image or (SamplingSettings(temperature=1.0) if options.best_of > 1 else s.config.image)
        previous, sentence = None, s.tokenizer.text.decode([t for t in ids if t < v.n_text]).strip()
        for step in range(options.n_steps):
            step_seed = None if seed is None else seed + SEED_STRIDE * step
            choices = []
            for new in ([[]] if step == 0 else self._sentences(ids, options.sentences, step_seed, **settings)):
                if step > 0:
                    tail = max((i + 1 for i, t in enumerate(new) if t >= v.n_text), default=0)
                    sentence = s.tokenizer.text.decode(new[tail:]).strip().strip(".").strip()  # before the picture
                picture = self._picture(ids + new, previous, sentence, options, step_seed, image, **settings)
                if picture is not None:
                    choices.append((new, sentence, picture))
            if not choices:
                break

            def score(_, found):  # a sentence its picture explains best, per token; empty sentences last
                likely = self.verifier.edit_scores(previous, [p for *_, p in found], [t for _, t, _ in found],
                                                   per_token=True)
                return [x if t else -math.inf for (_, t, _), x in zip(found, likely)]

            [(new, _, previous)] = best_of(lambda n: [choices], score, len(choices))
            step_ids = new + s.tokenizer.image_span(previous)
            ids = ids + step_ids
            if callback is not None:
                callback(s.tokenizer.decode(step_ids))
        return ids

    def _sentences(self, ids: list[int], n: int, seed: int | None, **settings) -> list[list[int]]:
        """`n` continuations up to the story's next `<boi>` (a melody's text and audio may come first):
        one with the text settings (greedy by default), then `n - 1` sampled at temperature 1."""
        s, v = self.session, self.session.vocab
        prompt = encode_keeps(ids, v)
        cfg = s.settings(max_new_tokens=self.step_budget, seed=seed, stop_at_eos=False, **settings)
        rows = s.sample([prompt], cfg)
        if n > 1:
            rows += s.sample([prompt] * (n - 1), replace(cfg, text=SamplingSettings(temperature=1.0)))
        return [r.ids[:r.ids.index(v.boi)] if v.boi in r.ids else r.ids for r in rows]  # else <boi> is forced

    def _picture(self, ids: list[int], previous: torch.Tensor | None, sentence: str, options: StoryOptions,
                 seed: int | None, image: SamplingSettings, **settings) -> torch.Tensor | None:
        """The codes (H, W) of the next picture after `ids`, or None when none was finished: the first
        ranked by `sentence` as its caption, later ones by it as the edit of `previous`."""
        s, v = self.session, self.session.vocab
        if options.reason and previous is not None and sentence:
            edit = EditOptions(best_of=options.best_of, reason=True, plan_in_words=options.plan_in_words,
                               greedy_plan=options.plan_in_words, refuse=False)  # the story's own sentence
            [(codes, _)] = self.editor.edit([previous], [sentence], edit, seed, image=image, **settings)
            return codes
        cfg = s.settings(max_new_tokens=s.image_budget, seed=seed, image=image, allow_audio=False, **settings)

        def sample(n: int) -> list[list[torch.Tensor]]:
            results = s.sample([Prompt(encode_keeps(ids, v), force=[v.boi])] * n, cfg)
            return [[c for c in map(s.image_codes_of, results) if c is not None]]

        def score(_, group: list[torch.Tensor]) -> list[float]:
            if previous is None:
                return self.verifier.caption_scores(group, s.tokenizer.encode_text(sentence))
            if not sentence:  # nothing to explain: the first picture
                return [float(i == 0) for i in range(len(group))]
            return self.verifier.edit_scores(previous, group, [sentence] * len(group))

        [picked] = best_of(sample, score, options.best_of)
        return picked
