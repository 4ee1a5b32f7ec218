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

Prompts may hold images (closed spans of image codes, as every task prompt writes them): given a
`codec`, each enters the context as its clean latent (`transfusion.latent_sequence`, noise level 0)
— a caption's image, an edit's source, a story's earlier pictures. `TransfusionSampler` is the
`Session`'s sampler for a Transfusion model (the signature of `anygen.sampling.engine.generate`),
so every task the API builds from prompts (caption, edit with image guidance, describe_edit,
reasoned edits) runs on this head: a drawn image is denoised with the prompt's guidance chain and
returned as the codec's codes of the denoised latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anygen.config import check
from anygen.errors import AnygenError
from anygen.model.transfusion import (TransfusionModel, block_ids_from_slots, codes_to_head, head_to_codes,
                                      latent_sequence, patchify, unpatchify)
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
    """Rows of a left-padded prompt batch in a KV cache, extended by committed tokens and images.

    `slots` (per row, parallel to its ids) marks image slots whose clean patches are `patches`
    (n_images, L, D), row-major; they enter at noise level 0."""

    def __init__(self, model: TransfusionModel, rows: list[list[int]], pad: int,
                 slots: list[list[bool]] | None = None, patches: torch.Tensor | None = None):
        from transformers import DynamicCache

        self.model = model
        ids, self.attn, pos = _left_pad(rows, pad)
        slot = torch.zeros(ids.shape, dtype=torch.bool)
        for r, row_slots in enumerate(slots or ()):
            if any(row_slots):
                slot[r, ids.shape[1] - len(row_slots):] = torch.tensor(row_slots)
        self.blocks = block_ids_from_slots(slot, model.head.n_slots)  # image index on image slots, -1 elsewhere
        self.n_images = int(self.blocks.max()) + 1  # new images take block ids after every row's own
        self.next_pos = pos[:, -1] + 1  # (R,) position id of the next column
        self.cache = DynamicCache(config=model.lm.config)
        self.last_hidden = self._forward(ids, slot, patches if bool(slot.any()) else None, 0.0, pos, self.attn,
                                         self.blocks)[:, -1]  # (R, H)

    def _forward(self, ids, slots, patches, sigma, pos, attn, blocks) -> torch.Tensor:
        sigmas = torch.full((patches.shape[0],), float(sigma)) if patches is not None else None
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
        h = self._forward(torch.zeros(R, L, dtype=torch.long), torch.ones(R, L, dtype=torch.bool), x, sigma, pos,
                          attn, blocks)
        self.cache.crop(-L)  # drop the slots again: the cache holds the prompt (and committed columns) only
        return self.model.patch_out(h)

    def commit(self, ids: torch.Tensor | None = None, image: torch.Tensor | None = None) -> None:
        """Append tokens (R, n) or a clean image's patches (R, L, D) to the cache."""
        n = ids.shape[1] if image is None else image.shape[1]
        attn, blocks, pos = self._extend(n, -1 if image is None else self.n_images)
        if image is not None:
            ids = torch.zeros(image.shape[0], n, dtype=torch.long)
        h = self._forward(ids, torch.full(ids.shape, image is not None), image, 0.0, pos, attn, blocks)
        self.attn, self.blocks, self.next_pos = attn, blocks, self.next_pos + n
        self.n_images += image is not None
        self.last_hidden = h[:, -1]


def context(model: TransfusionModel, vocab: Vocab, rows: list[list[int]], codec=None) -> _Context:
    """A `_Context` of prompt rows whose closed image spans (of the head's grid) enter as clean latents;
    without a codec the rows must hold no image codes (they would be read as tokens)."""
    grid = (model.head.grid,) * 2
    seqs = [latent_sequence(r, vocab, grid, cut_open=False) for r in rows]
    codes = [c for seq in seqs for c in seq.codes]
    if not codes:
        return _Context(model, [list(r) for r in rows], vocab.pad)
    if codec is None:
        raise AnygenError("the prompt holds an image, and reading it needs the tokenizer's image codec")
    patches = patchify(codes_to_head(model.head, torch.stack(codes), codec), model.head.patch_size)
    return _Context(model, [seq.ids for seq in seqs], vocab.pad, [seq.slots for seq in seqs], patches)


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


def chain_guide(vs: list[torch.Tensor], scales) -> torch.Tensor:
    """Chained guidance over [cond, less conditioned, ..., null] velocities, one scale per step down the
    chain, as the token sampler chains logits (`processors`): v_0 + Σ_k (s_k − 1)(v_{k−1} − v_k). With
    an edit's chain [instruction + image, image only, neither] and scales (guidance_scale,
    image_guidance_scale) this is InstructPix2Pix's dual guidance."""
    out = vs[0]
    for k, scale in enumerate(scales, start=1):
        if scale != 1.0:
            out = out + (scale - 1.0) * (vs[k - 1] - vs[k])
    return out


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
             image_first: bool = False, codec=None) -> tuple[list[int], list[torch.Tensor]]:
    """Interleaved sampling of one sequence: (new token ids, images).

    Each image appears in the ids as `<boi> <grid> <eoi>` (its slots are not ids); images
    are (C, S, S) in the head's space, clamped to [-1, 1], in order. Text is greedy at temperature 0 (or
    below `anygen.sampling.settings.GREEDY_BELOW_TEMPERATURE`). `<eos>` is forbidden until `min_images` images exist.
    One generator (from `seed`) serves the text draws and the images' noise in turn. `image_first`:
    the first new token is `<boi>` (a story's picture right after its opening). `codec`: the prompt's
    images enter as clean latents (`context`).
    """
    text = SamplingSettings(temperature=temperature)  # refuses non-finite and out-of-range temperatures
    seed = check_seed(seed)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    grid_token = vocab.grid_id((model.head.grid,) * 2)
    ctx = context(model, vocab, [list(prompt)], codec)
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


def _choose(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> int:
    """One token from logits (V,) whose illegal ids are -inf: greedy, or temperature and top-k."""
    if settings.is_greedy:
        return int(logits.argmax())
    logits = scale_by_temperature(logits, settings.temperature)
    if settings.top_k:
        kth = torch.topk(logits, min(settings.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


class TransfusionSampler:
    """The `Session`'s sampler for a Transfusion model: `(model, vocab, prompts, GenerationConfig,
    callback=None) -> list[SampleResult]`, as `anygen.sampling.engine.generate`.

    Each prompt (a `Prompt` or an id list) runs on its own: its images enter clean, text comes
    from the LM head under `cfg.text` (text ids, `<eos>`, and `<boi>` where `cfg.allow_image`), its
    `force` ids come first. At `<boi>` (unless `cfg.stop_at_image`: then the row ends, finish
    "image") the image is denoised in place under the prompt's guidance chain (`uncond` rows, each
    followed by what the row wrote so far; `cfg.guidance_scales`, `chain_guide`) with `settings`'
    steps, written as the codec's codes of the result (`<boi> <grid> codes <eoi>`) and committed as
    that clean latent. With `cfg.seed` row i draws from `row_generator(seed, i)`. Audio is never
    drawn, and a prompt's `editable` mask is refused (this head does not copy codes)."""

    def __init__(self, transfusion: TransfusionModel, codec, settings: DiffusionSettings = DiffusionSettings()):
        self.model, self.codec, self.settings = transfusion, codec, settings

    @torch.no_grad()
    def __call__(self, model, vocab: Vocab, prompts: list, cfg, callback=None) -> list:
        from anygen.sampling.engine import Prompt

        results = []
        scales = tuple(cfg.guidance_scales) if isinstance(cfg.guidance_scales, (tuple, list)) \
            else (float(cfg.guidance_scales),)
        for i, p in enumerate(prompts):
            p = p if isinstance(p, Prompt) else Prompt(list(p))
            if p.editable is not None:
                raise AnygenError("an editable mask copies codes, which the diffusion image head does not draw")
            if p.uncond and len(p.uncond) != len(scales):
                raise AnygenError(f"prompt {i}: {len(p.uncond)} guidance prompts but guidance_scales has "
                                  f"{len(scales)} scales (one per guidance prompt)")
            generator = row_generator(cfg.seed, i) if cfg.seed is not None else None
            results.append(self._row(vocab, p, cfg, scales, generator,
                                     None if callback is None else (lambda span, i=i: callback(i, span))))
        return results

    def _row(self, vocab: Vocab, p, cfg, scales, generator, report):
        from anygen.sampling.engine import SampleResult
        from anygen.sampling.state import Span

        model, head = self.model, self.model.head
        grid = (head.grid, head.grid)
        grid_token = vocab.grid_id(grid)
        ctx = context(model, vocab, [list(p.ids)], self.codec)
        allowed = torch.zeros(model.lm.config.vocab_size, dtype=torch.bool)
        allowed[: vocab.n_text] = True
        allowed[vocab.eos] = cfg.stop_at_eos
        allowed[vocab.boi] = cfg.allow_image and vocab.image_codebook_size > 0
        out, spans, finish, text_from = [], [], "length", 0

        def close_text(end: int) -> None:
            if end > text_from:
                spans.append(Span("text", text_from, end, tuple(out[text_from:end])))
                if report:
                    report(spans[-1])

        while len(out) < cfg.max_new_tokens:
            if len(out) < len(p.force):
                token = int(p.force[len(out)])
            else:
                logits = model.lm.lm_head(ctx.last_hidden)[0].float()
                if not bool(torch.isfinite(logits).all()):
                    raise AnygenError(f"diffusion: the model's logits are not finite (NaN or inf) at step "
                                      f"{len(out) + 1}: its weights or inputs are broken")
                logits[~allowed] = float("-inf")
                token = _choose(logits, cfg.text, generator)
            if token == vocab.boi and cfg.stop_at_image and len(out) >= len(p.force):
                close_text(len(out))
                out.append(token)
                finish = "image"
                break
            if token == vocab.boi:
                if len(out) + head.n_slots + 3 > cfg.max_new_tokens:
                    close_text(len(out))
                    break  # no room for a whole image
                close_text(len(out))
                start = len(out)
                out += [vocab.boi, grid_token]
                ctx.commit(torch.tensor([[vocab.boi, grid_token]]))
                codes = self._draw(vocab, ctx, [list(u) + out for u in p.uncond], scales, generator)
                ctx.commit(image=patchify(codes_to_head(head, codes, self.codec), head.patch_size))
                ctx.commit(torch.tensor([[vocab.eoi]]))
                out += vocab.image_ids(codes.reshape(-1)).tolist() + [vocab.eoi]
                spans.append(Span("image", start, len(out), tuple(out[start:]), True, grid))
                if report:
                    report(spans[-1])
                text_from = len(out)
                continue
            out.append(token)
            if token == vocab.eos:
                close_text(len(out) - 1)
                finish = "eos"
                break
            ctx.commit(torch.tensor([[token]]))
        else:
            close_text(len(out))
        return SampleResult(ids=out, spans=spans, finish_reason=finish)

    def _draw(self, vocab: Vocab, ctx: _Context, chain: list[list[int]], scales, generator) -> torch.Tensor:
        """The codes (1, h, w) of one image denoised after `ctx`, guided by the `chain` rows."""
        head = self.model.head
        guided = bool(chain) and any(s != 1.0 for s in scales)
        rows = [context(self.model, vocab, [row], self.codec) for row in chain] if guided else []

        def velocity(x, sigma):
            v = ctx.velocity(x, sigma)
            return chain_guide([v] + [r.velocity(x, sigma) for r in rows], scales) if guided else v

        x0 = _euler(velocity, _noise(self.model, 1, generator), self.settings)
        return head_to_codes(head, unpatchify(x0, head.patch_size).clamp(-1, 1), self.codec)
