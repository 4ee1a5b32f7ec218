"""ImageCodec: a convolutional autoencoder with a discrete bottleneck (FSQ, LFQ or VQ).

Images become a small grid of integer codes (64×64 -> 8×8 with `downsample=3`) that the
decoder model can generate like words; `decode` turns codes back into pixels.

Why this shape:
- The first downsampling step is a pixel-unshuffle (space-to-depth) and the last upsampling
  step a pixel-shuffle, so no convolution runs at full resolution: on a CPU that is most of
  the cost, and sub-pixel output still draws sharp anti-aliased edges.
- The decoder gets more residual blocks than the encoder: identifying the content of a patch
  is easy, drawing it exactly is the hard part.
- `object_weight` multiplies the reconstruction loss on pixels that are not background.
  ShapesWorld and emoji images are mostly white background; unweighted, the loss is dominated
  by the background and small shapes blur into blobs (docs/design.md, "Pitfalls"). `background`
  says what the background is: `white` (dark objects on white, the default), `black`
  (light-on-dark data such as MNIST digits) or `none` (every pixel weighs the same).
- Quantizers come from vector-quantize-pytorch. FSQ (default) needs no codebook losses and
  cannot collapse into dead codes the way VQ can; VQ gets EMA updates, k-means init,
  optional cosine similarity and dead-code restarts; LFQ gets its entropy loss.
- Optional PatchGAN discriminator with VQGAN's adaptive weight (off by default: on simple
  flat-colour images it buys little and doubles the cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image as PILImage

from anygen.config import build, check, choice
from anygen.errors import AnygenError
from anygen.codecs.artifact import FORMAT_VERSION, load_codec, save_codec  # noqa: F401 (FORMAT_VERSION re-exported)
from anygen.io import fit_image

# sizes beyond any codec worth training on one machine: a config over them is a mistake or a
# hostile file, refused before a module (and its memory) is built
MAX_CODEC_WIDTH = 4096  # channels of a stage, vq_dim, disc_channels
MAX_CODEC_BLOCKS = 64  # residual blocks per stage, discriminator layers
MAX_CODEC_IMAGE_SIZE = 1024
MAX_CODEBOOK_SIZE = 1 << 20
BACKGROUNDS = ("white", "black", "none")  # what `object_weight` treats as background (see the module doc)
BACKGROUND_MARGIN = 0.9  # in [-1, 1]: a pixel is background within 0.1 (~0.05 in [0, 1]) of its value


@dataclass
class ImageCodecConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128)  # width per resolution stage (one per downsampling step)
    downsample: int = 3  # stride-2 steps: 64 -> 8×8 codes (3) or 16×16 codes (2)
    encoder_blocks: int = 1  # residual blocks per encoder stage
    decoder_blocks: int = 2  # residual blocks per decoder stage
    quantizer: str = choice("fsq", "lfq", "vq")
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    lfq_dim: int = 10  # codebook size 2**lfq_dim
    lfq_entropy_weight: float = 0.1
    vq_codebook_size: int = 1024
    vq_dim: int = 32
    vq_decay: float = 0.8
    vq_kmeans_init: bool = True
    vq_cosine: bool = True
    vq_dead_code_threshold: float = 2.0  # EMA cluster size below which a code is restarted
    vq_commitment_weight: float = 0.25
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    object_weight: float = 5.0  # loss weight on pixels that are not `background` (1 = plain)
    background: str = choice(*BACKGROUNDS)  # white: dark objects on white; black: light on dark; none: unweighted
    adversarial: bool = False
    disc_channels: int = 64
    disc_layers: int = 3
    disc_start: int = 2000  # training step at which the adversarial loss switches on
    disc_weight: float = 0.1
    usage_decay: float = 0.99  # decay of the running code histogram behind the `usage` metric

    def __post_init__(self):
        check(4 <= self.image_size <= MAX_CODEC_IMAGE_SIZE, "image_size",
              f"must be 4..{MAX_CODEC_IMAGE_SIZE}, got {self.image_size}")
        check(1 <= self.downsample <= 6, "downsample", f"must be 1..6, got {self.downsample}")
        check(self.image_size % (2 ** self.downsample) == 0, "downsample",
              f"image_size {self.image_size} is not divisible by 2**{self.downsample}")
        check(len(self.channels) == self.downsample, "channels",
              f"needs one width per downsampling step ({self.downsample}), got {len(self.channels)}")
        check(all(0 < c <= MAX_CODEC_WIDTH and c % 8 == 0 for c in self.channels), "channels",
              f"widths must be multiples of 8 in 8..{MAX_CODEC_WIDTH}, got {list(self.channels)}")
        for name in ("encoder_blocks", "decoder_blocks"):
            check(0 <= getattr(self, name) <= MAX_CODEC_BLOCKS, name,
                  f"must be 0..{MAX_CODEC_BLOCKS}, got {getattr(self, name)}")
        check(len(self.fsq_levels) >= 1 and all(lv >= 3 for lv in self.fsq_levels), "fsq_levels",
              f"each level must be >= 3, got {self.fsq_levels}")
        check(math.prod(self.fsq_levels) <= MAX_CODEBOOK_SIZE, "fsq_levels",
              f"the codebook (product of the levels) must be <= {MAX_CODEBOOK_SIZE}, got {self.fsq_levels}")
        check(1 <= self.lfq_dim <= 20, "lfq_dim", f"must be 1..20, got {self.lfq_dim}")
        check(2 <= self.vq_codebook_size <= MAX_CODEBOOK_SIZE, "vq_codebook_size",
              f"must be 2..{MAX_CODEBOOK_SIZE}, got {self.vq_codebook_size}")
        check(1 <= self.vq_dim <= MAX_CODEC_WIDTH, "vq_dim", f"must be 1..{MAX_CODEC_WIDTH}, got {self.vq_dim}")
        check(0.0 < self.vq_decay < 1.0, "vq_decay", f"must be in (0, 1), got {self.vq_decay}")
        check(self.object_weight >= 1.0, "object_weight", f"must be >= 1, got {self.object_weight}")
        check(self.l1_weight >= 0 and self.l2_weight >= 0 and self.l1_weight + self.l2_weight > 0,
              "l1_weight", "l1_weight and l2_weight must be >= 0 and not both 0")
        check(1 <= self.disc_layers <= MAX_CODEC_BLOCKS, "disc_layers",
              f"must be 1..{MAX_CODEC_BLOCKS}, got {self.disc_layers}")
        check(1 <= self.disc_channels <= MAX_CODEC_WIDTH, "disc_channels",
              f"must be 1..{MAX_CODEC_WIDTH}, got {self.disc_channels}")

    @property
    def codebook_size(self) -> int:
        if self.quantizer == "fsq":
            return math.prod(self.fsq_levels)
        if self.quantizer == "lfq":
            return 2 ** self.lfq_dim
        return self.vq_codebook_size

    @property
    def code_dim(self) -> int:
        return {"fsq": len(self.fsq_levels), "lfq": self.lfq_dim, "vq": self.vq_dim}[self.quantizer]


# ---- building blocks -----------------------------------------------------------------------
def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c // 4), c)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = _norm(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """(B,3,H,W) -> (B,D,H/2^k,W/2^k)."""

    def __init__(self, cfg: ImageCodecConfig):
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Conv2d(12, ch[0], 3, padding=1)  # after pixel-unshuffle: (B,12,H/2,W/2)
        stages = []
        for i in range(cfg.downsample):
            blocks = [ResBlock(ch[i]) for _ in range(cfg.encoder_blocks)]
            if i + 1 < cfg.downsample:
                blocks.append(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.mid = ResBlock(ch[-1])
        self.out = nn.Sequential(_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.code_dim, 1))

    def forward(self, x):
        h = self.stem(F.pixel_unshuffle(x, 2))
        return self.out(self.mid(self.stages(h)))


class Decoder(nn.Module):
    """(B,D,h,w) -> (B,3,h·2^k,w·2^k)."""

    def __init__(self, cfg: ImageCodecConfig):
        super().__init__()
        ch = cfg.channels
        self.inp = nn.Conv2d(cfg.code_dim, ch[-1], 3, padding=1)
        self.mid = ResBlock(ch[-1])
        stages = []
        for i in reversed(range(cfg.downsample)):
            blocks = [ResBlock(ch[i]) for _ in range(cfg.decoder_blocks)]
            if i > 0:
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i], ch[i - 1], 3, padding=1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = _norm(ch[0])
        self.out = nn.Conv2d(ch[0], 12, 3, padding=1)  # then pixel-shuffle to (B,3,H,W)

    @property
    def last_weight(self) -> nn.Parameter:
        return self.out.weight

    def forward(self, z):
        h = self.stages(self.mid(self.inp(z)))
        return F.pixel_shuffle(self.out(F.silu(self.norm(h))), 2)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN): a grid of real/fake logits, one per overlapping patch."""

    def __init__(self, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, n_layers):
            c_next = min(channels * 2 ** i, channels * 8)
            layers += [nn.Conv2d(c, c_next, 4, stride=2, padding=1), _norm(c_next), nn.LeakyReLU(0.2)]
            c = c_next
        layers += [nn.Conv2d(c, c, 3, padding=1), _norm(c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _make_quantizer(cfg: ImageCodecConfig) -> nn.Module:
    from vector_quantize_pytorch import FSQ, LFQ, VectorQuantize

    if cfg.quantizer == "fsq":
        return FSQ(levels=list(cfg.fsq_levels), dim=len(cfg.fsq_levels))
    if cfg.quantizer == "lfq":
        return LFQ(dim=cfg.lfq_dim, codebook_size=2 ** cfg.lfq_dim, entropy_loss_weight=cfg.lfq_entropy_weight)
    return VectorQuantize(dim=cfg.vq_dim, codebook_size=cfg.vq_codebook_size, decay=cfg.vq_decay,
                          kmeans_init=cfg.vq_kmeans_init, use_cosine_sim=cfg.vq_cosine,
                          threshold_ema_dead_code=cfg.vq_dead_code_threshold,
                          commitment_weight=cfg.vq_commitment_weight, accept_image_fmap=True)


def weighted_reconstruction(recon: torch.Tensor, target: torch.Tensor, l1: float, l2: float,
                            object_weight: float, background: str = "white") -> torch.Tensor:
    """L1+L2 with `object_weight` on pixels whose target is not `background`: with white, pixels
    with any channel below ~0.95; with black, any channel above ~0.05; with none, no weighting."""
    err = recon - target  # (B,3,H,W)
    per_pixel = l1 * err.abs().mean(1) + l2 * err.pow(2).mean(1)  # (B,H,W)
    if object_weight == 1.0 or background == "none":
        return per_pixel.mean()
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    # white is 1.0 and black -1.0 in [-1, 1]
    is_object = ((target < BACKGROUND_MARGIN) if background == "white" else (target > -BACKGROUND_MARGIN)).any(1)
    is_object = is_object.float()  # (B,H,W)
    weight = 1.0 + (object_weight - 1.0) * is_object
    return (per_pixel * weight).sum() / weight.sum()


def images_to_tensor(images: list[PILImage.Image], size: int) -> torch.Tensor:
    """PIL images (any mode/size, converted and fitted by `anygen.io.fit_image`) -> (B,3,size,size) in [-1,1]."""
    import numpy as np

    arr = np.stack([np.asarray(fit_image(im, size), dtype=np.uint8) for im in images])  # (B,S,S,3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[PILImage.Image]:
    """(B,3,H,W) in [-1,1] -> 8-bit RGB PIL images."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [PILImage.fromarray(a, mode="RGB") for a in arr]


def usage_and_perplexity(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """Fraction of the codebook used, and perplexity (exp of the code entropy), over all `codes`."""
    counts = torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp_min(1)
    nz = p[p > 0]
    return float((counts > 0).double().mean()), float(torch.exp(-(nz * nz.log()).sum()))


class ImageCodec(nn.Module):
    """Images <-> (h, w) grids of codes in [0, codebook_size)."""

    def __init__(self, config: ImageCodecConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = _make_quantizer(config)
        self.decoder = Decoder(config)
        self.discriminator = (PatchDiscriminator(config.disc_channels, config.disc_layers)
                              if config.adversarial else None)
        self.codebook_size = config.codebook_size
        self.image_size = config.image_size
        side = config.image_size // 2 ** config.downsample
        self.grid = (side, side)
        # running code histogram for the usage metric; not saved
        self.register_buffer("code_counts", torch.zeros(self.codebook_size), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # counts training_losses calls

    @classmethod
    def from_config(cls, cfg: ImageCodecConfig | dict) -> "ImageCodec":
        if isinstance(cfg, dict):
            cfg = build(ImageCodecConfig, cfg)
        return cls(cfg)

    # ---- quantizer level ----------------------------------------------------------------
    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B,D,h,w) -> quantized (B,D,h,w), codes (B,h,w), aux loss (scalar)."""
        q = self.config.quantizer
        if q == "fsq":
            zq, codes = self.quantizer(z)
            return zq, codes, z.new_zeros(())
        if q == "lfq":
            zq, codes, aux = self.quantizer(z)
            return zq, codes, aux
        zq, codes, commit = self.quantizer(z)
        return zq, codes, commit.sum()

    def embeddings_to_codes(self, z: torch.Tensor) -> torch.LongTensor:
        """Quantizer embeddings (B,D,h,w) -> codes (B,h,w) without updating any codebook."""
        was = self.quantizer.training
        self.quantizer.eval()
        try:
            with torch.no_grad():
                _, codes, _ = self._quantize(z.float())
        finally:
            self.quantizer.train(was)
        return codes.long()

    def codes_to_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B,h,w) -> quantizer embeddings (B,D,h,w)."""
        codes = codes.long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise AnygenError(f"image codes must be in [0, {self.codebook_size}), got "
                              f"[{int(codes.min())}, {int(codes.max())}]")
        if self.config.quantizer in ("fsq", "lfq"):
            return self.quantizer.indices_to_codes(codes)  # (B,D,h,w)
        return self.quantizer.get_output_from_indices(codes)  # VQ with accept_image_fmap: (B,D,h,w)

    # ---- the Transfusion head's codec space ----------------------------------------------
    @property
    def latent_channels(self) -> int | None:
        """Width of the latents the diffusion head can diffuse: FSQ's grid values (None: LFQ and VQ
        codes are no continuous space)."""
        return len(self.config.fsq_levels) if self.config.quantizer == "fsq" else None

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> the quantizer's grid values (B,D,h,w)."""
        with torch.no_grad():
            return self.codes_to_embeddings(self.encode(x))

    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Grid values (B,D,h,w), denoised or not -> (B,3,H,W) in [-1,1]."""
        with torch.no_grad():
            return self.decoder(z.float()).clamp(-1, 1)

    # ---- tensors ------------------------------------------------------------------------
    def _check_pixels(self, x: torch.Tensor) -> None:
        s = self.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise AnygenError(f"image tensor must be (B, 3, {s}, {s}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.LongTensor:
        """(B,3,H,W) in [-1,1] -> codes (B,h,w)."""
        self._check_pixels(x)
        with torch.no_grad():
            return self.embeddings_to_codes(self.encoder(x.float()))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B,h,w) -> (B,3,H,W) in [-1,1]."""
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise AnygenError(f"image codes must be (B, {self.grid[0]}, {self.grid[1]}), got {tuple(codes.shape)}")
        with torch.no_grad():
            return self.decoder(self.codes_to_embeddings(codes)).clamp(-1, 1)

    # ---- PIL ----------------------------------------------------------------------------
    def images_to_tensor(self, images: list[PILImage.Image]) -> torch.Tensor:
        """PIL images (any mode, any size; see `anygen.io.fit_image`) -> (B,3,S,S) in [-1,1]."""
        return images_to_tensor(images, self.image_size)

    @staticmethod
    def tensor_to_images(x: torch.Tensor) -> list[PILImage.Image]:
        return tensor_to_images(x)

    def encode_images(self, images: list[PILImage.Image]) -> torch.LongTensor:
        if not images:
            return torch.zeros((0, *self.grid), dtype=torch.long)
        return self.encode(self.images_to_tensor(images))

    def decode_images(self, codes: torch.Tensor) -> list[PILImage.Image]:
        return self.tensor_to_images(self.decode(codes))

    # ---- training -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B,3,H,W) -> reconstruction (B,3,H,W), codes (B,h,w), quantizer aux loss."""
        zq, codes, aux = self._quantize(self.encoder(x))
        return self.decoder(zq), codes, aux

    def training_losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """One combined loss for one optimizer over all parameters, plus scalar metrics.

        With `adversarial`, the generator term is computed through a detached copy of the
        discriminator's weights and the discriminator term on detached reconstructions, so a
        single backward pass trains both in their own directions.
        """
        cfg = self.config
        self._check_pixels(x)
        recon, codes, aux = self(x)
        rec = weighted_reconstruction(recon, x, cfg.l1_weight, cfg.l2_weight, cfg.object_weight, cfg.background)
        loss = rec + aux
        metrics = {"rec": float(rec.detach())}
        if cfg.quantizer != "fsq":
            metrics["aux"] = float(aux.detach())
        if self.discriminator is not None and self.training and int(self.step) >= cfg.disc_start:
            from torch.func import functional_call

            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            g_adv = -functional_call(self.discriminator, frozen, (recon,)).mean()
            weight = self._adaptive_weight(rec, g_adv) * cfg.disc_weight
            d_real = self.discriminator(x)
            d_fake = self.discriminator(recon.detach())
            d_loss = 0.5 * (F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean())  # hinge
            loss = loss + weight * g_adv + d_loss
            metrics.update(g_adv=float(g_adv.detach()), d_loss=float(d_loss.detach()), adv_weight=float(weight))
        with torch.no_grad():
            mse = F.mse_loss(recon.clamp(-1, 1), x) / 4.0  # in [0,1] pixel units
            metrics["psnr"] = float(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
            counts = torch.bincount(codes.reshape(-1).long(), minlength=self.codebook_size).float()
            if self.training:
                self.code_counts.mul_(cfg.usage_decay).add_(counts)
                self.step += 1
            _, perplexity = usage_and_perplexity(codes, self.codebook_size)
            metrics["perplexity"] = perplexity
            metrics["usage"] = float((self.code_counts > 0.5).float().mean()) if self.training \
                else float((counts > 0).float().mean())
        metrics["loss"] = float(loss.detach())
        return loss, metrics

    def _adaptive_weight(self, rec: torch.Tensor, g_adv: torch.Tensor) -> torch.Tensor:
        """VQGAN: balance the adversarial gradient against the reconstruction gradient at the last layer."""
        last = self.decoder.last_weight
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_adv, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    # ---- persistence --------------------------------------------------------------------
    def save(self, directory) -> Path:
        """config.json + model.safetensors, written atomically (`anygen.codecs.artifact`)."""
        return save_codec(self, directory, "image")

    @classmethod
    def load(cls, directory, map_location: str = "cpu") -> "ImageCodec":
        """Load a directory written by `save`; every problem is an AnygenError naming the file."""
        return load_codec(directory, "image", ImageCodecConfig, cls, map_location)




def load_image_codec(directory, image_size: int | None = None):
    """An image codec directory: anygen's `ImageCodec`, or a pretrained tokenizer folder (diffusers
    VQModel/AutoencoderKL, transformers Emu3/Chameleon VQ-VAE; `anygen.codecs.pretrained`) at
    `image_size` pixels (None: the folder's own size). Both have the same codec interface."""
    from anygen.codecs.pretrained import open_pretrained_codec, pretrained_kind

    if pretrained_kind(directory) is not None:
        return open_pretrained_codec(directory, image_size)
    if image_size is not None:
        raise AnygenError(f"{directory}: an image size is chosen for pretrained tokenizer folders only "
                          "(an anygen image codec has its own)")
    return ImageCodec.load(directory)


__all__ = ["ImageCodec", "ImageCodecConfig", "FORMAT_VERSION", "weighted_reconstruction",
           "usage_and_perplexity", "load_image_codec", "images_to_tensor", "tensor_to_images"]
