"""Pretrained image tokenizers (diffusers and transformers autoencoders) as anygen image codecs.

A folder is recognised by its config.json, never by its name, and only its safetensors are read
(no code shipped with it is run: `auto_map` is refused, pickled weights are never opened):

    config.json                         codec                     codes              latents
    "_class_name": "VQModel"            diffusers VQModel          its quantizer's    the quantized
                                                                   codebook indices   embeddings
    "_class_name": "AutoencoderKL"      diffusers AutoencoderKL    none (continuous)  the posterior's
                                                                                      mode, scaled
    "model_type": "emu3_vqgan"          transformers Emu3VQVAE     encode + decode    -
    "model_type": "chameleon_vqgan"     ChameleonVQVAE             encode only        -
    "model_type": "janus_vqgan"         transformers JanusVQVAE    encode + decode    -
    "model_type": "emu3" / "chameleon" / "janus"
                                        the VQ-VAE inside a released model folder (its `vq_config`
                                        and the tensors under `vqmodel.`/`model.vqmodel.`)

Every codec has the interface of `anygen.codecs.image.ImageCodec` that the tokenizer, trainers
and samplers use: `image_size` (pixel side), `grid` (codes per side), `codebook_size` (0 for a
continuous autoencoder: it has no codes), `encode(x)` / `decode(codes)` on (B, 3, S, S) tensors
in [-1, 1] (the range all four libraries train in), `encode_images` / `decode_images` on PIL
images, and for the Transfusion head's `codec` space `latent_channels` (None: no latent space
the head can diffuse), `latents(x)` and `from_latents(z)`. Each call is the library's own:
`decode(encode(x))` equals the library's encode-then-decode, and `from_latents(latents(x))`
its autoencoding (up to float rounding of the scale).

`save(directory)` writes the library's own folder (`save_pretrained`, safetensors) plus
`anygen_codec.json` (the pixel size chosen when it was assembled), so a saved tokenizer opens
again with the same vocab; `open_pretrained_codec(directory, image_size)` opens either kind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from anygen import weights
from anygen.errors import AnygenError, short_repr
from anygen.io import read_json_file

MARKER_FILE = "anygen_codec.json"  # written next to a saved pretrained codec: its pixel size
MARKER_FORMAT = "anygen.pretrained_image_codec"
MARKER_VERSION = 1
# Emu3's processor draws and reads at 518400 pixels (720 x 720) unless processor_config.json says
# otherwise; a standalone Emu3VQVAE folder records no size, so it gets the same one
DEFAULT_EMU3_IMAGE_SIZE = 720
MAX_PRETRAINED_IMAGE_SIZE = 4096  # pixel side beyond any released tokenizer: a typo or a hostile file
DIFFUSERS_CLASSES = ("VQModel", "AutoencoderKL")
TRANSFORMERS_TYPES = ("emu3_vqgan", "chameleon_vqgan", "janus_vqgan", "emu3", "chameleon", "janus")
RELEASED_TYPES = {"emu3": "Emu3VQVAE", "chameleon": "ChameleonVQVAE", "janus": "JanusVQVAE"}  # model -> its VQ-VAE class
VQ_TYPES = {"emu3_vqgan": "Emu3VQVAE", "chameleon_vqgan": "ChameleonVQVAE", "janus_vqgan": "JanusVQVAE"}
# where a released model folder keeps its VQ-VAE's tensors (transformers' saved names, old and new)
VQ_PREFIXES = ("vqmodel.", "model.vqmodel.")


def pretrained_kind(directory: str | os.PathLike) -> str | None:
    """The pretrained codec kind of a folder (a `DIFFUSERS_CLASSES` or `TRANSFORMERS_TYPES` name,
    read from config.json), else None (e.g. an anygen ImageCodec directory)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    data = read_json_file(path)
    if not isinstance(data, dict):
        return None
    if data.get("_class_name") in DIFFUSERS_CLASSES:
        return str(data["_class_name"])
    if data.get("model_type") in TRANSFORMERS_TYPES and "format_version" not in data:
        return str(data["model_type"])
    return None


def _check_folder(directory: Path) -> None:
    """Safetensors only, no checkpoint code."""
    if not directory.is_dir():
        raise AnygenError(f"{directory}: image codec directory not found")
    unsafe = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in weights.UNSAFE_WEIGHT_SUFFIXES)
    if unsafe:
        raise AnygenError(f"{directory / unsafe[0]}: weights that are not safetensors are never loaded "
                          "(pickled weights can run code); keep only .safetensors files in the directory")
    if not any(p.suffix == ".safetensors" for p in directory.iterdir()):
        raise AnygenError(f"{directory}: no .safetensors weights")
    weights.refuse_remote_code(directory)


def _check_size(directory: Path, image_size: int, factor: int) -> int:
    if type(image_size) is not int or not factor <= image_size <= MAX_PRETRAINED_IMAGE_SIZE or image_size % factor:
        raise AnygenError(f"{directory}: image size must be a multiple of the tokenizer's downsampling factor "
                          f"{factor} in [{factor}, {MAX_PRETRAINED_IMAGE_SIZE}], got {short_repr(image_size)}")
    return image_size


class PretrainedImageCodec(nn.Module):
    """A library autoencoder behind anygen's image codec interface (see the module docstring).

    Subclasses set `kind`, `factor_of(module)` (pixels per code side) and `latent_channels`, and
    implement `_encode`, `_decode` (and `_latents`, `_from_latents` where `latent_channels` is not None)."""

    kind = ""
    latent_channels: int | None = None

    def __init__(self, module: nn.Module, image_size: int, factor: int, codebook_size: int):
        super().__init__()
        self.module = module.eval()
        self.factor, self.codebook_size = int(factor), int(codebook_size)
        self.image_size = int(image_size)
        side = self.image_size // self.factor
        self.grid = (side, side)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise AnygenError(f"image tensor must be (B, 3, {s}, {s}), got {tuple(x.shape)}")
        return x.to(self.device, self.dtype)

    def _codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not self.codebook_size:
            raise AnygenError(f"{self.kind} is a continuous autoencoder: it has no image codes "
                              "(use it as the Transfusion head's latent space, diffusion.space codec)")
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise AnygenError(f"image codes must be (B, {self.grid[0]}, {self.grid[1]}), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise AnygenError(f"image codes must be in [0, {self.codebook_size}), got "
                              f"[{int(codes.min())}, {int(codes.max())}]")
        return codes.long().to(self.device)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.LongTensor:
        """(B, 3, S, S) in [-1, 1] -> codes (B, h, w): the library's own quantizer indices."""
        x = self._pixels(x)
        if not self.codebook_size:
            self._codes(torch.zeros(0, *self.grid))  # the one-line error
        return self._encode(x).long().cpu().view(x.shape[0], *self.grid)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> (B, 3, S, S) in [-1, 1]: the library's own decoder."""
        return self._decode(self._codes(codes)).float().cpu().clamp(-1, 1)

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> the (B, latent_channels, h, w) arrays the Transfusion head diffuses."""
        if self.latent_channels is None:
            raise AnygenError(f"{self.kind} has no latent space anygen's diffusion head can use")
        return self._latents(self._pixels(x)).float().cpu()

    @torch.no_grad()
    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_channels, h, w) -> (B, 3, S, S) in [-1, 1]."""
        if self.latent_channels is None:
            raise AnygenError(f"{self.kind} has no latent space anygen's diffusion head can use")
        return self._from_latents(z.to(self.device, self.dtype)).float().cpu().clamp(-1, 1)

    def _decode(self, codes):
        raise AnygenError(f"{self.kind}: the library's model has no image decoder (it encodes images only)")

    def images_to_tensor(self, images) -> torch.Tensor:
        from anygen.codecs.image import images_to_tensor

        return images_to_tensor(images, self.image_size)

    @staticmethod
    def tensor_to_images(x: torch.Tensor) -> list:
        from anygen.codecs.image import tensor_to_images

        return tensor_to_images(x)

    def encode_images(self, images) -> torch.LongTensor:
        if not images:
            return torch.zeros((0, *self.grid), dtype=torch.long)
        return self.encode(self.images_to_tensor(images))

    def decode_images(self, codes: torch.Tensor) -> list:
        return self.tensor_to_images(self.decode(codes))

    def save(self, directory) -> Path:
        """The library's folder (safetensors) plus `MARKER_FILE` with the pixel size."""
        from anygen.io import atomic_directory

        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.module.save_pretrained(str(tmp), safe_serialization=True)
            marker = {"format": MARKER_FORMAT, "format_version": MARKER_VERSION, "kind": self.kind,
                      "image_size": self.image_size}
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        return directory


class DiffusersVQCodec(PretrainedImageCodec):
    """diffusers `VQModel`: codes are its `VectorQuantizer`'s codebook indices."""

    kind = "VQModel"

    @staticmethod
    def factor_of(module) -> int:
        return 2 ** (len(module.config.block_out_channels) - 1)

    def __init__(self, module, image_size: int):
        super().__init__(module, image_size, self.factor_of(module), module.config.num_vq_embeddings)
        self.latent_channels = int(module.config.vq_embed_dim or module.config.latent_channels)
        if module.quantize.remap is not None:
            raise AnygenError("VQModel: a quantizer with index remapping is not supported")

    def _encode(self, x):
        _, _, (_, _, indices) = self.module.quantize(self.module.encode(x).latents)
        return indices

    def _embeddings(self, codes):
        b, h, w = codes.shape
        return self.module.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, self.latent_channels))

    def _decode(self, codes):
        # force_not_quantize: the looked-up codebook rows are already quantized
        return self.module.decode(self._embeddings(codes), force_not_quantize=True).sample

    def _latents(self, x):
        return self._embeddings(self._encode(x).view(x.shape[0], *self.grid))

    def _from_latents(self, z):
        return self.module.decode(z, force_not_quantize=True).sample


class DiffusersKLCodec(PretrainedImageCodec):
    """diffusers `AutoencoderKL`: continuous; latents are the posterior's mode, shifted and scaled
    by the config's `shift_factor` and `scaling_factor` as diffusers pipelines do."""

    kind = "AutoencoderKL"

    factor_of = staticmethod(DiffusersVQCodec.factor_of)

    def __init__(self, module, image_size: int):
        super().__init__(module, image_size, self.factor_of(module), 0)
        self.latent_channels = int(module.config.latent_channels)
        self.scale = float(module.config.scaling_factor or 1.0)
        self.shift = float(getattr(module.config, "shift_factor", None) or 0.0)

    def _latents(self, x):
        return (self.module.encode(x).latent_dist.mode() - self.shift) * self.scale

    def _from_latents(self, z):
        return self.module.decode(z / self.scale + self.shift).sample


class Emu3VQCodec(PretrainedImageCodec):
    """transformers `Emu3VQVAE` (an image is one frame): encodes and decodes."""

    kind = "emu3_vqgan"

    @staticmethod
    def factor_of(module) -> int:
        return int(module.vision_spatial_factor)

    def __init__(self, module, image_size: int):
        super().__init__(module, image_size, self.factor_of(module), module.config.codebook_size)

    def _encode(self, x):
        sizes = torch.tensor([[self.image_size, self.image_size]] * x.shape[0])
        return torch.stack(self.module.encode(x, sizes, return_dict=True).image_tokens)

    def _decode(self, codes):
        return self.module.decode(codes)


class ChameleonVQCodec(PretrainedImageCodec):
    """transformers `ChameleonVQVAE`: encodes only (transformers has no decoder for it)."""

    kind = "chameleon_vqgan"

    @staticmethod
    def factor_of(module) -> int:
        return 2 ** (len(module.config.channel_multiplier) - 1)

    def __init__(self, module, image_size: int):
        super().__init__(module, image_size, self.factor_of(module), module.config.num_embeddings)

    def _encode(self, x):
        return self.module.encode(x, return_dict=True).image_tokens


class JanusVQCodec(ChameleonVQCodec):
    """transformers `JanusVQVAE`: encodes and decodes (Janus-Pro's processor normalises to [-1, 1])."""

    kind = "janus_vqgan"

    def _decode(self, codes):
        return self.module.decode(codes.reshape(len(codes), -1))


def _marker_size(directory: Path) -> int | None:
    path = directory / MARKER_FILE
    if not path.is_file():
        return None
    data = read_json_file(path)
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or data.get("format_version") != MARKER_VERSION:
        raise AnygenError(f"{path}: not an anygen pretrained-codec marker of format_version {MARKER_VERSION}")
    return data.get("image_size")


def _released_vq(directory: Path, model_type: str, dtype: torch.dtype):
    """The VQ-VAE inside a released Emu3/Chameleon/Janus folder: its vq_config and its `VQ_PREFIXES` tensors."""
    import transformers
    from safetensors import safe_open

    from transformers import AutoConfig

    cls = getattr(transformers, RELEASED_TYPES[model_type])
    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise AnygenError(f"{directory}/config.json: cannot read ({type(e).__name__}: {' '.join(str(e).split())})") from None
    module = cls(config.vq_config).to(dtype)
    state = {}
    for path in weights.safetensors_files(directory):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                for prefix in VQ_PREFIXES:
                    if key.startswith(prefix):
                        state[key[len(prefix):]] = f.get_tensor(key).to(dtype)
    expected = set(module.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise AnygenError(f"{directory}: the {model_type} VQ-VAE tensors do not match its vq_config "
                          f"({'missing ' + missing[0] if missing else 'unexpected ' + extra[0]})")
    module.load_state_dict(state)
    return module


def open_pretrained_codec(directory: str | os.PathLike, image_size: int | None = None,
                          dtype: torch.dtype = torch.float32) -> PretrainedImageCodec:
    """A pretrained tokenizer folder (see the module docstring) as an image codec at `image_size`
    pixels (None: the size a saved anygen codec recorded, else the folder's own: diffusers'
    `sample_size`, Chameleon's `resolution`, Emu3's processor `image_area`)."""
    directory = Path(directory)
    kind = pretrained_kind(directory)
    if kind is None:
        raise AnygenError(f"{directory}: not a pretrained image tokenizer folder (config.json names none of "
                          f"{', '.join(DIFFUSERS_CLASSES + TRANSFORMERS_TYPES)})")
    _check_folder(directory)
    config = read_json_file(directory / "config.json")
    size = image_size if image_size is not None else _marker_size(directory)
    if kind in DIFFUSERS_CLASSES:
        import diffusers

        cls = getattr(diffusers, kind)
        try:
            module = cls.from_pretrained(str(directory), local_files_only=True, use_safetensors=True, torch_dtype=dtype)
        except Exception as e:
            raise AnygenError(f"{directory}: cannot load the {kind} weights ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})") from None
        if size is None:
            sample = config.get("sample_size", 0)
            size = int(sample[0] if isinstance(sample, (list, tuple)) else sample)
        codec_cls = DiffusersVQCodec if kind == "VQModel" else DiffusersKLCodec
    else:
        if kind in RELEASED_TYPES:
            module = _released_vq(directory, kind, dtype)
        else:
            import transformers

            module = weights.open_pretrained(directory, getattr(transformers, VQ_TYPES[kind]), dtype)
        if kind.startswith("janus"):
            codec_cls = JanusVQCodec
            native = int(module.config.num_patches) * JanusVQCodec.factor_of(module)
            if size not in (None, native):  # its quantizer is shaped for num_patches x num_patches codes
                raise AnygenError(f"{directory}: a Janus VQ-VAE reads and draws {native}-pixel images only, "
                                  f"got image size {size}")
            size = native
        elif kind.startswith("emu3"):
            codec_cls = Emu3VQCodec
            if size is None:
                area = weights.processor_setting(directory, "image_area", DEFAULT_EMU3_IMAGE_SIZE ** 2)
                factor = module.vision_spatial_factor
                size = int(round(area ** 0.5 / factor)) * factor
        else:
            codec_cls = ChameleonVQCodec
            size = module.config.resolution if size is None else size
    weights.check_finite(module.named_parameters(), str(directory))
    return codec_cls(module, _check_size(directory, size, codec_cls.factor_of(module))).eval()
