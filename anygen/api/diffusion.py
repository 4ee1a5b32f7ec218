"""The Transfusion (diffusion image head) paths of the API: text -> image and interleaved documents.

The other tasks (caption, edit, describe_edit, reasoned edits) run through the `Session` with
`anygen.sampling.diffusion.TransfusionSampler` as its sampler; `check_edit` says which edit options
this head cannot honour."""

from __future__ import annotations

import torch

from anygen.api.options import DrawOptions
from anygen.config import ConfigError
from anygen.document import Document, Image, Text
from anygen.errors import AnygenError


class DiffusionImages:
    """Images denoised by a `TransfusionModel`'s head inside the same transformer; text from the LM head."""

    def __init__(self, session, transfusion):
        self.session, self.transfusion = session, transfusion

    def settings(self, guidance_scale: float | None, num_inference_steps: int | None):
        from anygen.sampling.diffusion import DiffusionSettings

        base = DiffusionSettings()
        try:
            return DiffusionSettings(
                num_inference_steps=base.num_inference_steps if num_inference_steps is None else num_inference_steps,
                guidance_scale=base.guidance_scale if guidance_scale is None else guidance_scale, shift=base.shift)
        except ConfigError as e:
            raise AnygenError(f"diffusion sampling: {e}") from None

    def check_edit(self, options) -> None:
        """Edit options this head cannot honour are one-line errors: best-of ranks candidates by the
        likelihood of their codes and `editable` copies codes, neither of which it draws."""
        if options.best_of != 1:
            raise AnygenError("best_of is not supported by the diffusion image head (it ranks by code likelihoods)")
        if options.editable is not None:
            raise AnygenError("editable is not supported by the diffusion image head (it copies codes)")

    def to_images(self, x: torch.Tensor) -> list:
        from anygen.codecs.image import tensor_to_images
        from anygen.model.transfusion import to_pixels

        return tensor_to_images(to_pixels(self.transfusion.head, x, self.session.tokenizer.image))

    def draw(self, texts: list[str], options: DrawOptions, seed: int | None, **other) -> list:
        from anygen.sampling.diffusion import sample_images

        if other:
            raise AnygenError(f"the diffusion image head takes guidance_scale and num_inference_steps, "
                              f"not {', '.join(sorted(other))}")
        if options.best_of != 1:
            raise AnygenError("best_of is not supported by the diffusion image head")
        s, head = self.session, self.transfusion.head
        grid = s.vocab.grid_id((head.grid,) * 2)
        prompts = [s.prompt("text_to_image", text=t) + [s.vocab.boi, grid] for t in texts]
        for p in prompts:
            s.check_length(p, head.n_slots + 2)
        settings = self.settings(options.guidance_scale, options.num_inference_steps)
        return self.to_images(sample_images(self.transfusion, s.vocab, prompts, settings, seed))

    def generate(self, ids: list[int], max_new_tokens: int, seed: int | None, guidance_scale=None,
                 num_inference_steps=None, temperature: float = 0.0, min_images: int = 0, max_images: int = 4,
                 text=None, image=None, audio=None, image_first: bool = False, **other) -> Document:
        """Interleaved sampling; `text` settings (the CLI's --temperature) set the text temperature,
        image/audio token settings do not apply to this head."""
        from anygen.sampling.diffusion import generate as diffusion_generate

        if other:
            raise AnygenError(f"the diffusion image head does not take {', '.join(sorted(other))}")
        if text is not None and not text.is_greedy:
            temperature = text.temperature
        s = self.session
        new_ids, images = diffusion_generate(self.transfusion, s.vocab, ids, max_new_tokens=max_new_tokens,
                                             temperature=temperature, min_images=min_images,
                                             max_images=max_images, seed=seed, image_first=image_first,
                                             settings=self.settings(guidance_scale, num_inference_steps),
                                             codec=s.tokenizer.image)  # the prompt's images enter clean
        pictures = iter(self.to_images(torch.stack(images)) if images else [])
        out, words = [], []
        for token in new_ids:
            if token == s.vocab.boi:
                if words:
                    out.append(Text(s.tokenizer.decode(words).text))
                    words = []
                out.append(Image(next(pictures)))
            elif token < s.vocab.n_text:
                words.append(token)
        if words:
            out.append(Text(s.tokenizer.decode(words).text))
        return Document(out)
