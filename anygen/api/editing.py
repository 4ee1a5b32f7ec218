"""Editing images by instruction: plain edits, best-of-N, and reasoned edits that plan in words.

A plain edit samples the target codes after `instruction span(source)` with InstructPix2Pix
dual guidance. With `best_of` the candidates are ranked by how likely the instruction is as
their description (`describe_edit`). A reasoned edit first writes a plan in the words of the
model's world (`anygen.tasks.world.PlanFormat`): what the source shows and what it will draw;
with `best_of` the model captions every candidate and a picture that shows its plan wins, with
`plan_in_words` the plan is written again from the instruction and what the source shows alone
(`reasoned_text`), and with `retries` rows none of whose pictures shows its plan are sampled again.
With `refuse` (the default) an edit the plan format turns down (`PlanFormat.refusal`: it names an
object the source does not hold, or would change nothing) raises `EditRefused`, judged by the
model's caption of the source: a plain edit asks before sampling, a reasoned one after (its plan
is weighed too), so the pictures of the edits let through are those drawn without the check.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from anygen.api.options import EditOptions
from anygen.api.rerank import Verifier, best_of
from anygen.errors import AnygenError
from anygen.sampling.engine import Prompt
from anygen.sampling.settings import GenerationConfig, SamplingSettings

SEED_STRIDE = 7919  # prime: each retry (and each story step) samples with a seed disjoint from the others'


class EditRefused(AnygenError):
    """An edit the world's plan format turns down: `row` (0-based) of the call, `reason` why."""

    def __init__(self, row: int, reason: str, rows: int = 1):
        self.row, self.reason = row, reason
        super().__init__(f"edit refused: {reason}" if rows == 1 else f"edit {row + 1} of {rows} refused: {reason}")


class Editor:
    """Edits over a `Session`; `plan_format` (or None) is the world's, for reasoned edits."""

    def __init__(self, session, plan_format=None, verifier: Verifier | None = None):
        self.session, self.plan_format = session, plan_format
        self.verifier = verifier or Verifier(session)

    def plan(self):
        if self.plan_format is None:
            raise AnygenError("reasoned edits need the plan format of the world the model was trained on, and "
                              "this model records none (a model trained with the reasoned_edit task on a world "
                              "with plans, or anygen.load(..., plan_format=...))")
        return self.plan_format

    def edit(self, sources: Sequence[torch.Tensor], instructions: Sequence[str], options: EditOptions,
             seed: int | None, **settings) -> list[tuple[torch.Tensor, str | None]]:
        """Source codes (H, W) -> (edited codes (H, W), plan text or None) per row."""
        s, o = self.session, options
        plan = self.plan() if o.reason else None
        if o.refuse and not plan:
            self._refuse(self.refusals(sources, instructions))
        if o.best_of > 1:  # the candidates differ; with reasoning, in what they say too (measured better)
            settings.setdefault("image", SamplingSettings(temperature=1.0))
            if o.reason:
                settings.setdefault("text", SamplingSettings(temperature=1.0))
        if o.greedy_plan:
            settings["text"] = SamplingSettings(greedy=True)
        budget = s.image_budget + (plan.budget if plan else 0)
        force = s.tokenizer.encode_text(plan.lead) if plan else [s.vocab.boi]
        prompts = []
        for codes, instruction in zip(sources, instructions):
            cond = s.prompt("reasoned_edit" if plan else "edit", image=codes, instruction=instruction)
            chain = ()
            if o.guided:
                chain = [s.null_prompt("edit", drop="instruction", image=codes), s.null_prompt("edit", drop="both")]
            s.check_length(cond, budget)
            source_ids = s.vocab.image_ids(codes.reshape(-1)).tolist() if o.editable is not None else None
            prompts.append(Prompt(cond, uncond=chain, force=force, source=source_ids,
                                  editable=list(o.editable) if o.editable is not None else None))
        scales = (o.guidance_scale, o.image_guidance_scale) if o.guided else (1.0,)

        def sample(n: int) -> list[list[tuple]]:
            """Per row: (codes, plan text or None, follows its plan) of every finished candidate."""
            candidates = [[] for _ in prompts]
            rows = list(range(len(prompts)))
            for attempt in range(o.retries + 1):
                batch = [prompts[k] for k in rows for _ in range(n)]
                cfg = s.settings(max_new_tokens=budget, allow_audio=False, guidance_scales=scales,
                                 seed=None if seed is None else seed + SEED_STRIDE * attempt, **settings)
                results = s.sample(batch, cfg)
                if plan:
                    results = self._draw_unfinished(batch, results, cfg)
                    if o.plan_in_words:
                        results = self._replan_in_words(batch, results, [instructions[k] for k in rows
                                                                         for _ in range(n)], cfg)
                drawn = [(s.image_codes_of(r), s.text_before_image(r) if plan else None) for r in results]
                followed = self._follows_plans(drawn) if plan and n > 1 else [False] * len(drawn)
                for i, (one, ok) in enumerate(zip(drawn, followed)):
                    candidates[rows[i // n]].append((*one, ok))
                rows = [k for k in rows if not any(ok for *_, ok in candidates[k])]
                if not rows:
                    break
            return [[c for c in row if c[0] is not None] for row in candidates]

        def score(row: int, candidates: list[tuple]) -> list[tuple[bool, float]]:
            """A picture that shows its plan first, then log p(instruction | source, picture)."""
            likely = self.verifier.edit_scores(sources[row], [c[0] for c in candidates],
                                               [instructions[row]] * len(candidates))
            return [(c[2], x) for c, x in zip(candidates, likely)]

        edited = best_of(sample, score, o.best_of)
        if any(e is None for e in edited):
            raise AnygenError("the model did not finish the edited image within its token budget")
        if o.refuse and plan:
            self._refuse(self.refusals(sources, instructions, [text for _, text, _ in edited]))
        return [e[:2] for e in edited]

    def refusals(self, sources: Sequence[torch.Tensor], instructions: Sequence[str],
                 texts: Sequence[str] | None = None) -> list[str | None]:
        """Per edit: why the world's plan format refuses it (`PlanFormat.refusal`), or None. What the
        source shows is the model's caption of the source codes (H, W), a reading the instruction
        cannot sway; with `texts` (reasoned edits' texts) the plan part of each is weighed too.
        All None without a plan format that refuses."""
        check = getattr(self.plan_format, "refusal", None)
        if check is None:
            return [None] * len(instructions)
        plans = [None] * len(instructions) if texts is None else [
            (self.plan_format.split(text) or (None, None))[1] for text in texts]
        return [check(instruction, seen, plan)
                for instruction, seen, plan in zip(instructions, self.session.captions(sources), plans)]

    @staticmethod
    def _refuse(reasons: Sequence[str | None]) -> None:
        for row, reason in enumerate(reasons):
            if reason is not None:
                raise EditRefused(row, reason, len(reasons))

    def plan_edits(self, instructions: Sequence[str], seen: Sequence[str], max_new_tokens: int = 64,
                   seed: int | None = 0) -> list[str]:
        """The plan the model writes after each instruction and `seen` (the `reasoned_text` task)."""
        s = self.session
        prompts = [[s.vocab.bos] + s.tokenizer.encode_text(ins) + s.tokenizer.encode_text(what)
                   for ins, what in zip(instructions, seen)]
        return s.text_answers(prompts, max_new_tokens, seed)

    # -- reasoned edits --
    def _follows_plans(self, candidates: Sequence[tuple[torch.Tensor | None, str]]) -> list[bool]:
        """Per (codes or None, plan text) candidate: does the model's own caption of the picture show
        what the text planned (`PlanFormat.follows`)? All captions in one batch."""
        rows = [i for i, (codes, _) in enumerate(candidates) if codes is not None]
        followed = [False] * len(candidates)
        for i, caption in zip(rows, self.session.captions([candidates[i][0] for i in rows])):
            followed[i] = self.plan_format.follows(candidates[i][1], caption)
        return followed

    def _draw_unfinished(self, prompts: list[Prompt], results: list, cfg: GenerationConfig) -> list:
        """Rows whose text ran on without an image: keep their first `budget` text ids and draw the
        image after them (<boi> forced), so that every reasoned edit ends with a picture."""
        s = self.session
        late = [i for i, r in enumerate(results) if s.image_codes_of(r) is None]
        return self._redraw(prompts, results, cfg, {
            i: [t for t in results[i].ids if t < s.vocab.n_text and t != s.vocab.eos][:self.plan_format.budget]
            for i in late})

    def _replan_in_words(self, prompts: list[Prompt], results: list, instructions: Sequence[str],
                         cfg: GenerationConfig) -> list:
        """Each row's plan written again by `plan_edits` from its instruction and what it says the source
        shows; rows whose text changes get that text and a picture redrawn after it."""
        s, plan = self.session, self.plan_format
        texts = [s.text_before_image(r) for r in results]
        seen = {i: parts[0] for i, parts in enumerate(map(plan.split, texts)) if parts is not None}
        keys = sorted({(instructions[i], before) for i, before in seen.items()})  # best-of copies plan once
        if not keys:  # no row wrote a text that parses
            return results
        plans = dict(zip(keys, self.plan_edits([k for k, _ in keys], [plan.seen_prompt(b) for _, b in keys])))
        redo = {}
        for i, before in seen.items():
            text = plan.join(before, plans[instructions[i], before])
            if text != texts[i]:
                redo[i] = s.tokenizer.encode_text(text)
        return self._redraw(prompts, results, cfg, redo)

    def _redraw(self, prompts: list[Prompt], results: list, cfg: GenerationConfig,
                texts: dict[int, list[int]]) -> list:
        """The rows in `texts` with that text as what they wrote and their image drawn again after it."""
        if not texts:
            return results
        s = self.session
        rows = list(texts)
        redo = [replace(prompts[i], ids=list(prompts[i].ids) + texts[i], force=[s.vocab.boi],
                        uncond=[list(row) + texts[i] for row in prompts[i].uncond])  # guidance rows see it too
                for i in rows]
        again = s.sample(redo, replace(cfg, max_new_tokens=s.image_budget))
        results = list(results)
        for i, r in zip(rows, again):
            results[i] = replace(r, ids=texts[i] + r.ids,
                                 spans=[replace(sp, start=sp.start + len(texts[i]), end=sp.end + len(texts[i]))
                                        for sp in r.spans])
        return results
