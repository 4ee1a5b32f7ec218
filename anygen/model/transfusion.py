"""Transfusion: one transformer that predicts text tokens and denoises continuous images.

An image is a continuous (C, S, S) array cut into p×p patches, in one of two spaces:
`pixels` (64×64 RGB, p = 8: 64 slots of 192 values) or `codec` (the image codec's latent
grid, the values its decoder reads, taken as continuous numbers — for the FSQ [7,7,7]
codec an 8×8 grid of 3 values in [-1, 1], p = 1: 64 slots of 3 values — decoded to pixels
by the codec's decoder, as Transfusion uses a VAE's latents). Either way an image takes the same 64
positions the discrete head spends on codes. In a sequence the image sits
where its codes would, `<boi> <grid> [slots] <eoi>`; each slot holds a `<pad>` id whose
embedding is replaced by

    patch_in(x_sigma) + pos[slot] + time_embed(1000 · sigma)

Attention is causal across the sequence and bidirectional inside each image:
transformers' `create_causal_mask(block_sequence_ids=...)` (image index on slots, -1
elsewhere). Outputs: the LM head's logits (next-token loss on text and audio tokens) and
`patch_out(h)` on slots, a velocity: with x_sigma = sigma·noise + (1 − sigma)·x0 the
target is noise − x0, the convention of diffusers' `FlowMatchEulerDiscreteScheduler`,
which the sampler (`anygen.sampling.diffusion`) steps with. Loss = CE + λ · MSE.

Any task (the Transfusion paper's setting): a token sequence of any task (`latent_sequence`) has the
codes of each closed image span replaced by slots and kept aside as an image; an image the sequence
generates (its codes were training targets) is noised and denoised there, an image it is given (a
caption's, an edit's source, a story's earlier picture) enters clean, at noise level 0 — as the
sampler commits every finished image. In `codec` space the clean latent of a code grid is the codec's
code embeddings (`codes_to_head`), so the token model's shards train this model unchanged.

Saved as a decoder directory (the LM, loadable by transformers on its own) plus
`diffusion_head.safetensors` and a `diffusion_head` section in `anygen_decoder.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anygen import weights
from anygen.config import build, check, choice, to_dict
from anygen.errors import AnygenError
from anygen.vocab import Vocab

HEAD_FILE = "diffusion_head.safetensors"
IMAGE_HEADS = ("tokens", "diffusion")


@dataclass
class DiffusionHeadConfig:
    """The continuous image path: space, patching, diffusion loss weight and noise-level sampling."""

    space: str = choice("pixels", "codec")  # RGB pixels, or the tokenizer's image-codec latents
    image_size: int = 64  # side of the diffused array: 64 for pixels, the codec's grid (8) for codec
    channels: int = 3  # 3 for pixels; the codec's latent width (len(fsq_levels)) for codec
    patch_size: int = 8  # pixels: 64x64 -> 8x8 slots of 8*8*3 = 192 values; codec: 1
    loss_weight: float = 5.0  # λ: Transfusion's balance of the diffusion and token losses
    sigma_sampling: str = choice("logit_normal", "uniform")  # training noise levels (SD3's logit-normal)
    time_dim: int = 256  # sinusoidal features of the timestep before its MLP
    # a generated image shown clean (noise 0, no diffusion loss) this often, so that what follows it (a story's
    # next sentence and picture) also learns from clean images, as the sampler commits them; 0 = always noised
    clean_target_prob: float = 0.0

    def __post_init__(self):
        check(self.patch_size > 0 and self.image_size % self.patch_size == 0, "patch_size",
              f"must divide image_size ({self.image_size}), got {self.patch_size}")
        check(self.loss_weight >= 0, "loss_weight", f"must be >= 0, got {self.loss_weight}")
        check(self.time_dim >= 2 and self.time_dim % 2 == 0, "time_dim", f"must be even, got {self.time_dim}")
        check(self.channels >= 1, "channels", f"must be >= 1, got {self.channels}")
        check(0 <= self.clean_target_prob <= 1, "clean_target_prob",
              f"must be in [0, 1], got {self.clean_target_prob}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_slots(self) -> int:
        return self.grid ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size ** 2


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p * W/p, C*p*p), patches in row-major order."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (N, gh, gw, p, p, C)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int) -> torch.Tensor:
    """(N, L, C*p*p) -> (N, C, H, W); the inverse of `patchify` for a square grid."""
    n, length, dim = patches.shape
    g, c = math.isqrt(length), dim // (p * p)
    x = patches.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (N, C, gh, p, gw, p)
    return x.reshape(n, c, g * p, g * p)


def sample_sigmas(n: int, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training noise levels in (0, 1): uniform, or logit-normal (mass in the middle, as SD3)."""
    if how == "uniform":
        return torch.rand(n, generator=generator)
    return torch.sigmoid(torch.randn(n, generator=generator))


class TransfusionModel(nn.Module):
    """A causal LM (`Qwen3ForCausalLM`) plus the patch projections and timestep embedding."""

    def __init__(self, lm, head: DiffusionHeadConfig):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.lm, self.head = lm, head
        width = lm.config.hidden_size
        self.patch_in = nn.Linear(head.patch_dim, width)
        self.pos = nn.Parameter(torch.randn(head.n_slots, width) * 0.02)  # learned 2D position of each slot
        self.time_proj = Timesteps(head.time_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(head.time_dim, width)
        self.patch_out = nn.Linear(width, head.patch_dim)
        nn.init.zeros_(self.patch_out.weight)  # start by predicting zero velocity
        nn.init.zeros_(self.patch_out.bias)

    @property
    def config(self):  # the LM's config: context length, vocab size
        return self.lm.config

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm.")}

    def embed(self, input_ids: torch.Tensor, slots: torch.Tensor, patches: torch.Tensor | None,
              sigmas: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings (B, T, H) with image slots replaced by noised patch embeddings.

        slots (B, T) bool; patches (n_images, L, D) in slot order (row-major over the batch);
        sigmas (n_images,) noise level of each image (0 = clean).
        """
        emb = self.lm.get_input_embeddings()(input_ids)
        if patches is None or patches.numel() == 0:
            return emb
        n_img = patches.shape[0]
        t = self.time_proj(sigmas.float() * 1000).to(emb.dtype)  # (n_images, time_dim)
        img = self.patch_in(patches.to(emb.dtype)) + self.pos + self.time_embed(t)[:, None]  # (n_images, L, H)
        if int(slots.sum()) != img.shape[0] * img.shape[1]:
            raise AnygenError(f"{int(slots.sum())} image slots for {n_img} images of {img.shape[1]} patches")
        return emb.masked_scatter(slots[..., None], img.reshape(-1, img.shape[-1]))

    def hidden(self, embeds: torch.Tensor, block_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Final hidden states (B, T, H). `block_ids` (B, past + T): image index on slots, -1 elsewhere."""
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + embeds.shape[1], device=embeds.device)[None]
        mask = attention_mask_for(self.lm.config, embeds, block_ids, attention_mask, cache, position_ids)
        out = self.lm.model(inputs_embeds=embeds, attention_mask={"full_attention": mask},
                            position_ids=position_ids, cache=cache, use_cache=cache is not None)
        return out.last_hidden_state

    def forward(self, input_ids, slots, block_ids, patches=None, sigmas=None, attention_mask=None,
                position_ids=None, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T, V), velocity (n_images, L, D)) for a batch with noised images in its slots."""
        h = self.hidden(self.embed(input_ids, slots, patches, sigmas), block_ids, attention_mask, position_ids, cache)
        velocity = self.patch_out(h[slots]).reshape(-1, self.head.n_slots, self.head.patch_dim)
        return self.lm.lm_head(h), velocity


def attention_mask_for(config, embeds: torch.Tensor, block_ids: torch.Tensor,
                       padding: torch.Tensor | None = None, cache=None, position_ids: torch.Tensor | None = None):
    """Causal across the sequence, bidirectional inside each image block: transformers'
    `create_causal_mask(block_sequence_ids=...)`, (B, 1, T, past + T) for SDPA (True = attend)."""
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=padding, cache=cache,
                              position_ids=position_ids, block_sequence_ids=block_ids, allow_is_causal_skip=False)


def block_ids_from_slots(slots: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(B, T) bool slots -> (B, T) long: index of the image within its row on slots, -1 elsewhere."""
    index = (torch.cumsum(slots.long(), dim=1) - 1).div(n_slots, rounding_mode="floor")
    return torch.where(slots, index, torch.full_like(index, -1))


def next_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against labels (B, T) shifted by one; -100 = no loss."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def transfusion_loss(model: TransfusionModel, batch: dict, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """CE on token targets + λ · flow-matching MSE on the noised images' slots (noised here).

    batch: input_ids (B, T), labels (B, T; -100 = no loss), attention_mask (B, T), slots
    (B, T) bool, images (n_images, C, S, S) in the head's space, in slot order (row-major), and
    optionally noised (n_images,) bool: False = a given image, clean (sigma 0) and without
    diffusion loss (default: every image is noised). With `clean_target_prob` a noised image is
    shown clean that often. A batch without noised images has diffusion_mse 0.
    """
    head = model.head
    images = batch.get("images")
    if images is None or images.numel() == 0:
        x0 = torch.zeros(0, head.n_slots, head.patch_dim)
    else:
        x0 = patchify(images, head.patch_size)  # (n, L, D)
    noised = batch.get("noised")
    noised = torch.ones(x0.shape[0], dtype=torch.bool) if noised is None else noised.bool().clone()
    if head.clean_target_prob > 0 and x0.shape[0]:
        noised &= torch.rand(x0.shape[0], generator=generator) >= head.clean_target_prob
    sigma = sample_sigmas(x0.shape[0], head.sigma_sampling, generator).to(x0) * noised.to(x0)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = sigma[:, None, None] * noise + (1 - sigma[:, None, None]) * x0
    block = block_ids_from_slots(batch["slots"], head.n_slots)
    logits, velocity = model(batch["input_ids"], batch["slots"], block, x_t if x0.shape[0] else None, sigma,
                             attention_mask=batch.get("attention_mask"))
    ce = next_token_ce(logits, batch["labels"])
    if bool(noised.any()):
        mse = F.mse_loss(velocity[noised].float(), (noise - x0)[noised].float())
    else:
        mse = velocity.sum() * 0.0  # keeps the head in the graph
    loss = ce + head.loss_weight * mse
    return loss, {"loss": loss.item(), "ce": ce.item(), "diffusion_mse": mse.item(),
                  "noised_images": int(noised.sum())}


# ---- any task: token sequences with their images as latents ---------------------------------
@dataclass
class LatentSequence:
    """A token sequence with each closed image span's codes taken out.

    ids: the sequence with those codes replaced by `<pad>` (the slots); slots: True there;
    codes: (h, w) code grids in order (`<keep>` resolved against the previous image); targets: per
    image, whether its codes were training targets (loss mask 1: an image the sequence generates,
    noised in training) or given (clean); labels: next-token targets — the id where the loss mask
    is 1, -100 on slots, on the `<eoi>` closing a slot span (the sampler writes it) and elsewhere.
    """

    ids: list[int]
    slots: list[bool]
    codes: list[torch.Tensor]
    targets: list[bool]
    labels: list[int]


def latent_sequence(ids, vocab: Vocab, grid: tuple[int, int], loss=None, cut_open: bool = True) -> LatentSequence:
    """Split `ids` (a shard document or a prompt) into tokens and images of `grid` (the head's).

    `loss` (parallel 0/1, default all 0) marks training targets. `cut_open`: an image span cut
    short (truncated shard documents) is dropped with everything after it; a prompt ending in
    `<boi> <grid>` (the image still to draw) holds no codes and is kept as it is."""
    from anygen.codecs.keep import image_spans, resolve_keeps

    ids = resolve_keeps([int(t) for t in ids], vocab)
    loss = [0] * len(ids) if loss is None else [int(x) for x in loss]
    n = grid[0] * grid[1]
    keep = vocab.keep
    spans = [start for start, g in image_spans(ids, vocab, closed=True) if tuple(g) == tuple(grid)
             and (keep is None or keep not in ids[start:start + n])]
    if cut_open:
        end = spans[-1] + n + 1 if spans else 0
        for i in range(end, len(ids) - 2):
            if ids[i] == vocab.boi and vocab.grid_of(ids[i + 1]) is not None:
                if vocab.image_start <= ids[i + 2] < vocab.audio_start or ids[i + 2] == keep:
                    ids, loss = ids[:i], loss[:i]  # an image span cut short: nothing after it is whole
                    break
    out_ids, slots = list(ids), [False] * len(ids)
    labels = [t if m else -100 for t, m in zip(ids, loss)]
    codes, targets = [], []
    for start in spans:
        codes.append(vocab.image_codes(torch.tensor(ids[start:start + n])).reshape(grid))
        targets.append(any(loss[start:start + n]))
        out_ids[start:start + n] = [vocab.pad] * n
        slots[start:start + n] = [True] * n
        labels[start:start + n + 1] = [-100] * (n + 1)  # the slots and the <eoi> the sampler writes
    return LatentSequence(out_ids, slots, codes, targets, labels)


def codes_to_head(head: DiffusionHeadConfig, codes: torch.Tensor, codec) -> torch.Tensor:
    """Code grids (N, h, w) -> clean images (N, C, S, S) in the head's space: the codec's code
    embeddings (`codec` space), or its decoded pixels (`pixels` space)."""
    with torch.no_grad():
        if head.space == "codec":
            return codec.codes_to_embeddings(codes).float()
        return codec.decode(codes).float()


def head_to_codes(head: DiffusionHeadConfig, x: torch.Tensor, codec) -> torch.Tensor:
    """Denoised images (N, C, S, S) in the head's space -> the codec's code grids (N, h, w)."""
    with torch.no_grad():
        if head.space == "codec":
            return codec.embeddings_to_codes(x.float())
        return codec.encode(x.float().clamp(-1, 1))


# ---- save / load -----------------------------------------------------------------------------
def save_transfusion(model: TransfusionModel, directory, **kw) -> Path:
    """The LM as a decoder directory + the head's tensors; `anygen_decoder.json` says image_head: diffusion."""
    from safetensors.torch import save_file

    from anygen.model.decoder import save_decoder

    extra = dict(kw.pop("extra", None) or {}, image_head="diffusion", diffusion_head=to_dict(model.head))
    directory = Path(directory)
    state = {k: v.detach().contiguous() for k, v in model.head_state_dict().items()}
    save_decoder(model.lm, directory, extra=extra, **kw)
    tmp = directory / (HEAD_FILE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(directory / HEAD_FILE)
    return directory


def load_transfusion(directory, lm, meta: dict) -> TransfusionModel:
    """Wrap a loaded LM with the diffusion head saved beside it (every head tensor present, its shape, finite)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    head_cfg = build(DiffusionHeadConfig, meta.get("diffusion_head") or {})
    model = TransfusionModel(lm, head_cfg)
    path = directory / HEAD_FILE
    if not path.exists():
        raise AnygenError(f"{directory}: image_head is diffusion but {HEAD_FILE} is missing")
    expected = [([k], v) for k, v in model.head_state_dict().items()]
    weights.check_tensors(expected, weights.safetensors_specs([path]), str(path), strict=True)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise AnygenError(f"{path}: cannot read ({e})") from None
    weights.check_finite(state.items(), str(path))
    model.load_state_dict(state, strict=False)
    return model.to(next(lm.parameters()).dtype)


def to_head_space(head: DiffusionHeadConfig, pixels: torch.Tensor, codec=None) -> torch.Tensor:
    """Pixels (N, 3, H, W) in [-1, 1] -> the arrays the head diffuses (N, C, S, S)."""
    if head.space == "pixels":
        return pixels
    with torch.no_grad():
        return codec.codes_to_embeddings(codec.encode(pixels))  # the quantizer's grid values


def to_pixels(head: DiffusionHeadConfig, x: torch.Tensor, codec=None) -> torch.Tensor:
    """Denoised arrays (N, C, S, S) -> pixels (N, 3, H, W) in [-1, 1]."""
    if head.space == "pixels":
        return x.clamp(-1, 1)
    with torch.no_grad():
        return codec.decoder(x.float()).clamp(-1, 1)


def check_codec_fits(head: DiffusionHeadConfig, codec, where: str) -> None:
    """A `codec`-space head must match the codec's latent grid and width."""
    if head.space != "codec":
        return
    if codec is None:
        raise AnygenError(f"{where}: diffusion.space is codec but the tokenizer has no image codec")
    width = len(codec.config.fsq_levels) if codec.config.quantizer == "fsq" else None
    if codec.config.quantizer != "fsq":
        raise AnygenError(f"{where}: diffusion.space codec needs an FSQ image codec (got {codec.config.quantizer})")
    if head.image_size != codec.grid[0] or head.channels != width:
        raise AnygenError(f"{where}: diffusion.image_size/channels must be the codec's grid and latent width "
                          f"({codec.grid[0]} and {width}), got {head.image_size} and {head.channels}")


def image_head_of(meta: dict) -> str:
    head = meta.get("image_head", "tokens")
    if head not in IMAGE_HEADS:
        raise AnygenError(f"image_head {head!r} is not one of {IMAGE_HEADS}")
    return head
