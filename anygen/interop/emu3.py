"""Emu3 (transformers `Emu3ForConditionalGeneration`) as an anygen model.

Emu3's image span, as its processor writes it and `decode_image_tokens` reads it:

    <|image start|> "H*W" <|image token|> (code*W <|extra_200|>)*H <|extra_201|> <|image end|>

(`<|extra_200|>` ends each row, `<|extra_201|>` ends the frame.) anygen's span
`<boi> <grid_HxW> codes <eoi>` maps onto it: `<boi>` is `<|image start|>`, `<grid_HxW>` the text
"H*W" and `<|image token|>`, each code its `<|visual token NNNNNN|>`, the row ends are added after
every W codes, and `<eoi>` is `<|extra_201|> <|image end|>`. `<null>` (the unconditional prompt of
guidance) is an empty negative prompt: the unconditional row is `<bos>` then the image prefix.

The generation grid is the processor's: `image_area` (processor_config.json, else Emu3Processor's
default 518400 pixels) at ratio 1:1, in codes of the VQVAE's spatial factor; images to caption are
resized to that grid. The VQVAE is the image codec (`Emu3Codec`), encoding and decoding.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from anygen.errors import AnygenError
from anygen.interop.base import Checkpoint, IdMap, InteropLM, ModelText
from anygen.weights import processor_setting
from anygen.tokenizer import MultimodalTokenizer
from anygen.vocab import SPECIAL_TOKENS, Vocab

MODEL_TYPE = "emu3"
DEFAULT_IMAGE_AREA = 518400  # Emu3Processor.image_area: 720 x 720 pixels, a 90 x 90 code grid
TASKS = ("text_to_image", "image_to_text", "document")  # what Emu3 does through anygen
WHY_NOT = {"edit": "Emu3 has no image-editing mode (it draws from text and reads images)", "text_to_audio": "it has no audio codec",
           "audio_to_text": "it has no audio codec"}
# Emu3's structural tokens, by their names in the vocabulary map
BOI, EOI, WRAPPER, EOL, EOF, PLACEHOLDER = ("<|image start|>", "<|image end|>", "<|image token|>", "<|extra_200|>",
                                            "<|extra_201|>", "<image>")
VISUAL_PREFIX = "<|visual token"


class Emu3Codec:
    """Emu3's VQVAE as an anygen image codec: PIL images <-> codes (B, H, W) on one fixed grid."""

    def __init__(self, vqmodel, processor, grid: tuple[int, int]):
        self.vq, self.processor, self.grid = vqmodel, processor, tuple(grid)
        self.factor = int(vqmodel.vision_spatial_factor)
        self.codebook_size = int(vqmodel.config.codebook_size)
        self.pixels = (self.grid[0] * self.factor, self.grid[1] * self.factor)  # (height, width)
        self.image_size = max(self.pixels)

    def eval(self):
        return self

    def pixel_values(self, images) -> torch.Tensor:
        """PIL images -> (B, 3, H, W) as Emu3's image processor normalises them, at the grid's size."""
        h, w = self.pixels
        resized = [im.convert("RGB").resize((w, h), PILImage.Resampling.BICUBIC) for im in images]
        out = self.processor(images=resized, do_resize=False, return_tensors="pt")
        return out["pixel_values"]

    @torch.no_grad()
    def encode_images(self, images) -> torch.LongTensor:
        if not images:
            return torch.zeros((0, *self.grid), dtype=torch.long)
        x = self.pixel_values(images).to(self.vq.device, self.vq.dtype)
        sizes = torch.tensor([self.pixels] * len(images))
        tokens = self.vq.encode(x, sizes, return_dict=True).image_tokens
        return torch.stack([t.long().cpu() for t in tokens])

    @torch.no_grad()
    def decode_images(self, codes: torch.Tensor) -> list:
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise AnygenError(f"image codes must be (B, {self.grid[0]}, {self.grid[1]}), got {tuple(codes.shape)}")
        x = self.vq.decode(codes.long().to(self.vq.device)).float().cpu()  # (B, 3, H, W), normalised
        mean = torch.tensor(self.processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.processor.image_std).view(1, 3, 1, 1)
        pixels = ((x * std + mean) / self.processor.rescale_factor).clamp(0, 255).to(torch.uint8)
        return [PILImage.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).numpy())) for p in pixels]


def generation_grid(directory: Path, factor: int) -> tuple[int, int]:
    """The code grid Emu3Processor generates at ratio 1:1 (`image_area` from processor_config.json)."""
    area = processor_setting(directory, "image_area", DEFAULT_IMAGE_AREA, minimum=factor * factor)
    side = int(round(math.sqrt(area) / factor))
    return side, side


def visual_code(name: str) -> int | None:
    """The code of an Emu3 visual token (`<|visual token 000012|>` -> 12), None for other tokens."""
    return int(name[len(VISUAL_PREFIX):].strip(" |>")) if name.startswith(VISUAL_PREFIX) else None


def load(directory: str | os.PathLike, device: str = "cpu"):
    """An Emu3 directory -> (InteropLM, MultimodalTokenizer, meta) for `anygen.api.AnyGen`."""
    from transformers import Emu3ForConditionalGeneration, Emu3ImageProcessor

    ck = Checkpoint.open(directory, MODEL_TYPE, Emu3ForConditionalGeneration, Emu3ImageProcessor, device,
                         lambda hf: hf.config.text_config, visual_code, lambda hf: hf.model.vqmodel.config.codebook_size)
    hf, text_cfg = ck.hf, ck.hf.config.text_config
    ids = {name: ck.special(name) for name in (BOI, EOI, WRAPPER, EOL, EOF)}
    vq = hf.model.vqmodel
    codec = Emu3Codec(vq, ck.processor, generation_grid(ck.directory, vq.vision_spatial_factor))
    n_model = int(text_cfg.vocab_size)
    text_ids = ck.text_ids(n_model, set(ids.values()) | {ck.vocabulary.get(PLACEHOLDER, -1)})
    vocab = Vocab(n_text=len(text_ids), image_codebook_size=len(ck.codes), image_grids=(codec.grid,))
    text = ModelText(ck.tokenizer, text_ids, n_model)
    h, w = codec.grid
    grid_token = Vocab.grid_token(codec.grid)
    grid_ids = tuple(text.encode_model(f"{h}*{w}")) + (ids[WRAPPER],)
    specials = {name: () for name in SPECIAL_TOKENS}
    specials.update({"<pad>": (ck.pad,), "<bos>": (ck.bos,), "<eos>": (ck.eos,), "<boi>": (ids[BOI],),
                     "<eoi>": (ids[EOF], ids[EOI]), grid_token: grid_ids})
    scores = {"<pad>": ck.pad, "<eos>": ck.eos, "<boi>": ids[BOI], "<eoi>": ids[EOF], grid_token: grid_ids[0]}
    idmap = IdMap(vocab, tuple(text_ids), ck.codes, specials, scores, ids[EOL], ck.pad)
    lm = InteropLM(hf, hf.model.text_model, hf.lm_head, idmap, int(text_cfg.max_position_embeddings), MODEL_TYPE,
                   llama_body=text_cfg.hidden_act == "silu")
    meta = {"architecture": "Emu3ForConditionalGeneration", "model_type": MODEL_TYPE, "tasks": list(TASKS),
            "why_not": WHY_NOT}
    return lm, MultimodalTokenizer(text, codec), meta
