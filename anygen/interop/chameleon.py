"""Chameleon and Anole (transformers `ChameleonForConditionalGeneration`) as an anygen model.

Chameleon's image span, as its processor writes it: `<racm3:break>` then the image's
`image_seq_length` codes (a square grid, no row ends) then `<eoss>`; code c is the token named
`IMGIMG` + c's digits written as letters (A=0 ... J=9) + `Z`. anygen's `<boi>` is `<racm3:break>`,
`<eoi>` is `<eoss>`, `<grid_HxW>` and `<null>` are fed as nothing.

transformers' ChameleonVQVAE has an encoder only, so images are read (caption, images inside a
`generate` prompt) but never drawn: `draw` is refused with the reason, and `<boi>` is never drawn
while writing text (a started image could not be decoded). Anole checkpoints converted to this
class load the same way and get the same refusal: their image decoder is not in transformers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from anygen.errors import AnygenError
from anygen.interop.base import Checkpoint, IdMap, InteropLM, ModelText
from anygen.weights import processor_setting
from anygen.tokenizer import MultimodalTokenizer
from anygen.vocab import SPECIAL_TOKENS, Vocab

MODEL_TYPE = "chameleon"
DEFAULT_IMAGE_SEQ_LENGTH = 1024  # ChameleonProcessor.image_seq_length: a 32 x 32 code grid
TASKS = ("image_to_text", "document")
NO_DECODER = "transformers' ChameleonVQVAE has no image decoder (it encodes images only)"
WHY_NOT = {"text_to_image": NO_DECODER, "edit": NO_DECODER, "text_to_audio": "it has no audio codec",
           "audio_to_text": "it has no audio codec"}
BOI, EOI, PLACEHOLDER = "<racm3:break>", "<eoss>", "<image>"
CODE_PREFIX, CODE_DIGITS = "IMGIMG", {chr(ord("A") + i): str(i) for i in range(10)}


def code_of(name: str) -> int | None:
    """A Chameleon image token's code (`IMGIMGBCZ` -> 12), None for other tokens."""
    if not name.startswith(CODE_PREFIX):
        return None
    return int("".join(CODE_DIGITS.get(c, c) for c in name[len(CODE_PREFIX):-1]))


class ChameleonCodec:
    """ChameleonVQVAE's encoder as an anygen image codec (decoding is refused, see the module docstring)."""

    def __init__(self, vqmodel, processor, grid: tuple[int, int]):
        self.vq, self.processor, self.grid = vqmodel, processor, tuple(grid)
        self.codebook_size = int(vqmodel.config.num_embeddings)
        self.image_size = int(processor.crop_size["height"])

    def eval(self):
        return self

    @torch.no_grad()
    def encode_images(self, images) -> torch.LongTensor:
        if not images:
            return torch.zeros((0, *self.grid), dtype=torch.long)
        x = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        codes = self.vq.encode(x.to(self.vq.device, self.vq.dtype), return_dict=True).image_tokens
        codes = codes.long().cpu().view(len(images), -1)
        if codes.shape[1] != self.grid[0] * self.grid[1]:
            raise AnygenError(f"{MODEL_TYPE}: the VQVAE gives {codes.shape[1]} codes per image, "
                              f"the processor's image_seq_length is {self.grid[0] * self.grid[1]}")
        return codes.view(len(images), *self.grid)

    def decode_images(self, codes: torch.Tensor) -> list:
        raise AnygenError(f"{MODEL_TYPE}: {NO_DECODER}")


def image_grid(directory: Path) -> tuple[int, int]:
    """The square code grid of `image_seq_length` (processor_config.json, else ChameleonProcessor's 1024)."""
    n = processor_setting(directory, "image_seq_length", DEFAULT_IMAGE_SEQ_LENGTH)
    side = math.isqrt(n)
    if side * side != n:
        raise AnygenError(f"{directory}/processor_config.json: image_seq_length must be a square number of codes, "
                          f"got {n}")
    return side, side


def load(directory: str | os.PathLike, device: str = "cpu"):
    """A Chameleon directory -> (InteropLM, MultimodalTokenizer, meta) for `anygen.api.AnyGen`."""
    from transformers import ChameleonForConditionalGeneration
    from transformers import ChameleonImageProcessorPil  # the PIL processor: no torchvision needed

    ck = Checkpoint.open(directory, MODEL_TYPE, ChameleonForConditionalGeneration, ChameleonImageProcessorPil, device,
                         lambda hf: hf.config, code_of, lambda hf: hf.model.vqmodel.config.num_embeddings)
    hf = ck.hf
    boi, eoi = ck.special(BOI), ck.special(EOI)
    codec = ChameleonCodec(hf.model.vqmodel, ck.processor, image_grid(ck.directory))
    n_model = int(hf.config.vocab_size)
    text_ids = ck.text_ids(n_model, {boi, eoi, ck.vocabulary.get(PLACEHOLDER, -1)})
    vocab = Vocab(n_text=len(text_ids), image_codebook_size=len(ck.codes), image_grids=(codec.grid,))
    specials = {name: () for name in SPECIAL_TOKENS}
    specials.update({"<pad>": (ck.pad,), "<bos>": (ck.bos,), "<eos>": (ck.eos,), "<boi>": (boi,), "<eoi>": (eoi,),
                     Vocab.grid_token(codec.grid): ()})  # Chameleon writes no grid: its images are one size
    scores = {"<pad>": ck.pad, "<eos>": ck.eos, "<eoi>": eoi}  # no "<boi>": an image it starts could not be decoded
    idmap = IdMap(vocab, tuple(text_ids), ck.codes, specials, scores, None, ck.pad)
    lm = InteropLM(hf, hf.model, hf.lm_head, idmap, int(hf.config.max_position_embeddings), MODEL_TYPE)
    meta = {"architecture": "ChameleonForConditionalGeneration", "model_type": MODEL_TYPE, "tasks": list(TASKS),
            "why_not": WHY_NOT}
    return lm, MultimodalTokenizer(ModelText(ck.tokenizer, text_ids, n_model), codec), meta
