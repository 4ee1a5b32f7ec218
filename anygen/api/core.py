"""The core every strategy builds on: a model, its tokenizer and the sampler, as one `Session`.

A Session builds task prompts (`anygen.tasks.layouts`, the layouts the model was trained on),
checks them against the context, samples (`anygen.sampling.engine.generate`, or any function
of the same signature passed as `sampler`: the seam tests use) and reads results back as
codes or text. It knows nothing of worlds.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Callable, Sequence

import torch

from anygen.api.capabilities import Capabilities
from anygen.errors import AnygenError
from anygen.sampling.engine import generate
from anygen.sampling.settings import GenerationConfig, SamplingSettings
from anygen.tasks import layouts

IMAGE_FRAMING = 4  # ids around an image's codes when sampled: <boi> <grid> ... <eoi> <eos>
DEFAULT_CONTEXT = 4096  # a decoder config without max_position_embeddings

SETTINGS = frozenset(f.name for f in fields(GenerationConfig))  # what `Session.settings` may override
Sampler = Callable  # (model, vocab, prompts, GenerationConfig, callback=None) -> list[SampleResult]


def greedy_config() -> GenerationConfig:
    """The API's default: greedy everywhere, `<keep>` only where it is likely (images)."""
    return GenerationConfig(image=SamplingSettings(greedy=True, keep_threshold=0.5),
                            text=SamplingSettings(greedy=True), audio=SamplingSettings(greedy=True))


class Session:
    """A loaded decoder and tokenizer with the sampling primitives of every task.

    `capabilities` (the tasks the model learned): building a prompt for any other task is an error."""

    def __init__(self, model, tokenizer, config: GenerationConfig | None = None, sampler: Sampler | None = None,
                 capabilities: Capabilities | None = None):
        self.model, self.tokenizer, self.vocab = model, tokenizer, tokenizer.vocab
        self.capabilities = capabilities or Capabilities()
        self.config = config or greedy_config()
        self.sampler = sampler or generate
        self.context = int(getattr(model.config, "max_position_embeddings", DEFAULT_CONTEXT))

    # -- settings and limits --
    def settings(self, **overrides) -> GenerationConfig:
        """The default config with `overrides` (None values skipped); unknown names are one-line errors."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if unknown := sorted(set(overrides) - SETTINGS):
            raise AnygenError(f"unknown option {unknown[0]!r} (sampling settings: {', '.join(sorted(SETTINGS))})")
        return replace(self.config, **overrides)

    def check_length(self, ids: Sequence[int], max_new_tokens: int) -> None:
        if len(ids) + max_new_tokens > self.context:
            raise AnygenError(f"the prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds "
                              f"the model's context of {self.context} tokens")

    @property
    def image_budget(self) -> int:
        """New tokens that hold one image of the vocab's first grid."""
        h, w = self.vocab.image_grids[0]
        return h * w + IMAGE_FRAMING

    # -- prompts --
    def prompt(self, task: str, **inputs) -> list[int]:
        """The ids before `task`'s output (`anygen.tasks.layouts.task_prompt`); the model must know `task`."""
        self.capabilities.require(task)
        return layouts.task_prompt(self.tokenizer, task, **inputs)

    def null_prompt(self, task: str, **inputs) -> list[int]:
        """`task`'s unconditional prompt (`anygen.tasks.layouts.null_condition_prompt`); the model must know `task`."""
        self.capabilities.require(task)
        return layouts.null_condition_prompt(self.tokenizer, task, **inputs)

    # -- sampling and reading results --
    def sample(self, prompts: list, cfg: GenerationConfig, callback=None) -> list:
        """One `SampleResult` per prompt (`anygen.sampling.engine.Prompt` or id list), batched."""
        if callback is None:
            return self.sampler(self.model, self.vocab, prompts, cfg)
        return self.sampler(self.model, self.vocab, prompts, cfg, callback=callback)

    def text_answers(self, prompts: list[list[int]], max_new_tokens: int, seed: int | None,
                     **settings) -> list[str]:
        """The text each prompt's continuation says (no images or audio allowed), stripped."""
        for ids in prompts:
            self.check_length(ids, max_new_tokens)
        cfg = self.settings(max_new_tokens=max_new_tokens, seed=seed, allow_image=False, allow_audio=False,
                            **settings)
        return [self.tokenizer.decode(r.ids).text.strip() for r in self.sample(prompts, cfg)]

    def captions(self, codes: Sequence[torch.Tensor]) -> list[str]:
        """The model's greedy caption of each image (codes (H, W)), in one batch."""
        prompts = [self.prompt("image_to_text", image=c) for c in codes]
        return self.text_answers(prompts, 64, 0, text=SamplingSettings(greedy=True)) if prompts else []

    def image_codes_of(self, result) -> torch.Tensor | None:
        """The codes (H, W) of a result's first complete image span, or None."""
        span = next((s for s in result.spans if s.kind == "image" and s.complete), None)
        if span is None:
            return None
        h, w = self.vocab.grid_of(span.ids[1])
        return self.vocab.image_codes(torch.tensor(span.ids[2:2 + h * w])).reshape(h, w)

    def text_before_image(self, result) -> str:
        """The text a result wrote before its first image (`<keep>`-free text ids only)."""
        end = next((s.start for s in result.spans if s.kind == "image"), len(result.ids))
        return self.tokenizer.text.decode([t for t in result.ids[:end] if t < self.vocab.n_text]).strip()
