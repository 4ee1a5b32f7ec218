"""Sampling with the Transfusion head: text token by token, images by K denoising steps.

`sample_images` fills the slots after prompts that end in `<boi> <grid>`: the prompts run
once into a KV cache; each of the K steps feeds the 64 noised slots against that cache
(bidirectional among themselves) and crops the cache back, so a step costs a 64-token
forward whatever the prompt length. Classifier-free guidance batches the conditional
rows with null rows (`<bos> <null> <boi> <grid>`, the training form of a dropped caption)
in the same forward: v = v_null + g · (v_cond − v_null); g = 1 skips the null rows.
The steps are diffusers' `FlowMatchEulerDiscreteScheduler` (Euler on the flow ODE).

`generate` is the interleaved sampler for this head: tokens are sampled with the LM head
until `<boi>`; then the image is denoised in place, committed to the cache as a clean
image (sigma = 0, how training shows clean images), and `<eoi>` and text continue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anygen.config import check
from anygen.errors import AnygenError
from anygen.model.transfusion import TransfusionModel, patchify, unpatchify
from anygen.sampling.processors import row_generator, scale_by_temperature
from anygen.sampling.settings import MAX_GUIDANCE_SCALE, SamplingSettings, check_seed, integer, number
from anygen.vocab import Vocab

# Stable Diffusion 3 samples with shift 3 and Flux with up to about 6; beyond 100 nearly every step
# sits at full noise, so larger values are typos.
MAX_SHIFT = 100.0


@dataclass
class DiffusionSettings:
    """How images are denoised: `num_inference_steps` Euler steps, guidance scale, timestep shift."""

    num_inference_steps: int = 25
    guidance_scale: float = 3.0  # classifier-free guidance on the velocity; 1 = off (no null rows)
    shift: float = 1.0  # FlowMatchEulerDiscreteScheduler's shift (>1 spends more steps at high noise)

    def __post_init__(self):
        self.num_inference_steps = integer(self.num_inference_steps, "num_inference_steps")
        check(1 <= self.num_inference_steps <= 1000, "num_inference_steps",
              f"must be 1..1000, got {self.num_inference_steps}")
        self.guidance_scale = number(self.guidance_scale, "guidance_scale")
        check(0 <= self.guidance_scale <= MAX_GUIDANCE_SCALE, "guidance_scale",
              f"must be in [0, {MAX_GUIDANCE_SCALE:g}] (1 = unguided), got {self.guidance_scale:g}")
        self.shift = number(self.shift, "shift")
        check(0 < self.shift <= MAX_SHIFT, "shift", f"must be in (0, {MAX_SHIFT:g}], got {self.shift:g}")


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (R, P), attention mask (R, P), position ids (R, P) of left-padded prompts."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    n_pad = torch.tensor([width - len(r) for r in rows])
    cols = torch.arange(width)
    attn = (cols[None] >= n_pad[:, None]).long()
    return ids, attn, (cols[None] - n_pad[:, None]).clamp(min=0)


class _Context:
    """Rows of a left-padded prompt batch in a KV cache, extended by committed tokens and images."""

    def __init__(self, model: TransfusionModel, rows: list[list[int]], pad: int):
        from transformers import DynamicCache

        self.model, self.n_images = model, 0
        ids, self.attn, pos = _left_pad(rows, pad)
        self.blocks = torch.full(ids.shape, -1)  # image index on image slots, -1 elsewhere
        self.next_pos = pos[:, -1] + 1  # (R,) position id of the next column
        self.cache = DynamicCache(config=model.lm.config)
        self.last_hidden = self._forward(ids, None, 0.0, pos, self.attn, self.blocks)[:, -1]  # (R, H)

    def _forward(self, ids, patches, sigma, pos, attn, blocks) -> torch.Tensor:
        slots = torch.full(ids.shape, patches is not None)
        sigmas = torch.full((ids.shape[0],), float(sigma)) if patches is not None else None
        return self.model.hidden(self.model.embed(ids, slots, patches, sigmas), blocks, attn, pos, self.cache)

    def _extend(self, n: int, block: int):
        """Attention mask, block ids (R, past + n) and position ids (R, n) for n new columns."""
        R = self.attn.shape[0]
        return (torch.cat([self.attn, torch.ones(R, n, dtype=torch.long)], 1),
                torch.cat([self.blocks, torch.full((R, n), block)], 1),
                self.next_pos[:, None] + torch.arange(n)[None])

    def velocity(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Predicted velocity (R, L, D) of noised images x (R, L, D) after the cached rows; the cache is unchanged."""
        R, L, _ = x.shape
        attn, blocks, pos = self._extend(L, self.n_images)
        h = self._forward(torch.zeros(R, L, dtype=torch.long), x, sigma, pos, attn, blocks)
        self.cache.crop(-L)  # drop the slots again: the cache holds the prompt (and committed columns) only
        return self.model.patch_out(h)

    def commit(self, ids: torch.Tensor | None = None, image: torch.Tensor | None = None) -> None:
        """Append tokens (R, n) or a clean image's patches (R, L, D) to the cache."""
        n = ids.shape[1] if image is None else image.shape[1]
        attn, blocks, pos = self._extend(n, -1 if image is None else self.n_images)
        if image is not None:
            ids = torch.zeros(image.shape[0], n, dtype=torch.long)
        h = self._forward(ids, image, 0.0, pos, attn, blocks)
        self.attn, self.blocks, self.next_pos = attn, blocks, self.next_pos + n
        self.n_images += image is not None
        self.last_hidden = h[:, -1]


def _euler(velocity, noise: torch.Tensor, settings: DiffusionSettings) -> torch.Tensor:
    """x0 patches (n, L, D) from `noise` (n, L, D) by K Euler steps of `velocity(x, sigma) -> (n, L, D)`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=settings.shift)
    scheduler.set_timesteps(settings.num_inference_steps)
    x = noise
    for k, t in enumerate(scheduler.timesteps, start=1):
        v = velocity(x, float(t) / 1000).float()
        if not bool(torch.isfinite(v).all()):
            raise AnygenError(f"diffusion: the model's velocity is not finite (NaN or inf) at denoising step "
                              f"{k} of {settings.num_inference_steps}: its weights or inputs are broken")
        x = scheduler.step(v, t, x).prev_sample
    return x


def _noise(model: TransfusionModel, n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(n, model.head.n_slots, model.head.patch_dim, generator=generator)


def guide(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on velocities: scale 1 is the conditional prediction itself."""
    return v_null + scale * (v_cond - v_null)


def _null_prompt(vocab: Vocab, grid_token: int) -> list[int]:
    return [vocab.bos, vocab.null, vocab.boi, grid_token]  # a dropped caption, as in training


@torch.no_grad()
def sample_images(model: TransfusionModel, vocab: Vocab, prompts: list[list[int]],
                  settings: DiffusionSettings = DiffusionSettings(), seed: int | None = None) -> torch.Tensor:
    """Denoised images (N, C, S, S) in the head's space (pixels or codec latents) for prompts that end
    in `<boi> <grid>`; one batched forward per step.

    With a seed, image i starts from noise of its own generator, `processors.row_generator(seed, i)`:
    an image depends on the seed, its index and its prompt only, not on the other prompts of the
    batch (its null row belongs to it). seed None draws from torch's global generator."""
    n, guided, seed = len(prompts), settings.guidance_scale != 1.0, check_seed(seed)
    if seed is None:
        noise = _noise(model, n, None)
    else:
        noise = torch.cat([_noise(model, 1, row_generator(seed, i)) for i in range(n)])
    rows = [list(p) for p in prompts] + ([_null_prompt(vocab, prompts[0][-1])] * n if guided else [])
    ctx = _Context(model, rows, vocab.pad)

    def velocity(x, sigma):
        if not guided:
            return ctx.velocity(x, sigma)
        v = ctx.velocity(torch.cat([x, x]), sigma)
        return guide(v[:n], v[n:], settings.guidance_scale)

    return unpatchify(_euler(velocity, noise, settings), model.head.patch_size).clamp(-1, 1)


@torch.no_grad()
def generate(model: TransfusionModel, vocab: Vocab, prompt: list[int], *, max_new_tokens: int = 256,
             max_images: int = 4, temperature: float = 0.0, settings: DiffusionSettings = DiffusionSettings(),
             seed: int | None = None, min_images: int = 0,
             image_first: bool = False) -> tuple[list[int], list[torch.Tensor]]:
    """Interleaved sampling of one sequence: (new token ids, images).

    Each image appears in the ids as `<boi> <grid> <eoi>` (its slots are not ids); images
    are (C, S, S) in the head's space, clamped to [-1, 1], in order. Text is greedy at temperature 0 (or
    below `anygen.sampling.settings.GREEDY_BELOW_TEMPERATURE`). `<eos>` is forbidden until `min_images` images exist.
    One generator (from `seed`) serves the text draws and the images' noise in turn. `image_first`:
    the first new token is `<boi>` (a story's picture right after its opening).
    """
    text = SamplingSettings(temperature=temperature)  # refuses non-finite and out-of-range temperatures
    seed = check_seed(seed)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    grid_token = vocab.grid_id((model.head.grid,) * 2)
    ctx = _Context(model, [list(prompt)], vocab.pad)
    allowed = torch.zeros(model.lm.config.vocab_size, dtype=torch.bool)
    allowed[: vocab.n_text] = True
    allowed[[vocab.eos, vocab.boi]] = True
    out, images = [], []
    while len(out) < max_new_tokens:
        logits = model.lm.lm_head(ctx.last_hidden)[0].float()  # (V,)
        if not bool(torch.isfinite(logits).all()):
            raise AnygenError(f"diffusion: the model's logits are not finite (NaN or inf) at step {len(out) + 1}: "
                              f"its weights or inputs are broken")
        logits[~allowed] = float("-inf")
        if len(images) >= max_images:
            logits[vocab.boi] = float("-inf")
        if len(images) < min_images:
            logits[vocab.eos] = float("-inf")
        if image_first and not out and max_images > 0:
            token = vocab.boi
        elif not text.is_greedy:
            probs = torch.softmax(scale_by_temperature(logits, text.temperature), -1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        else:
            token = int(logits.argmax())
        out.append(token)
        if token == vocab.eos:
            break
        if token != vocab.boi:
            ctx.commit(torch.tensor([[token]]))
            continue
        out.append(grid_token)
        ctx.commit(torch.tensor([[vocab.boi, grid_token]]))
        null = _Context(model, [_null_prompt(vocab, grid_token)], vocab.pad) if settings.guidance_scale != 1.0 else None

        def velocity(x, sigma):  # the null row is its own short context
            v = ctx.velocity(x, sigma)
            return v if null is None else guide(v, null.velocity(x, sigma), settings.guidance_scale)

        x0 = _euler(velocity, _noise(model, 1, generator), settings)
        images.append(unpatchify(x0, model.head.patch_size).clamp(-1, 1)[0])
        ctx.commit(image=patchify(images[-1][None], model.head.patch_size))
        ctx.commit(torch.tensor([[vocab.eoi]]))
        out.append(vocab.eoi)
    return out, images
