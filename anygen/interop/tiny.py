"""Tiny random released-model directories (transformers classes, random weights) for tests and benches.

`write_tiny_emu3(directory, ...)` (and `write_tiny_chameleon`, `write_tiny_janus`) writes what a
downloaded checkpoint holds, at toy size; for Emu3:
config.json with its vocabulary map, model.safetensors, a character-level Hugging Face tokenizer
holding Emu3's special and visual tokens, preprocessor_config.json and processor_config.json
(`image_area`: the generation grid). Nothing is downloaded; the weights are random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 *.,?!"  # the toy tokenizer's text: one id per character
UNK = "<unk>"
EMU3_SPECIALS = ("<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<|image start|>", "<|image end|>",
                 "<|image token|>", "<|extra_200|>", "<|extra_201|>", "<image>")


def _char_tokenizer(vocabulary: dict[str, int], specials, bos: str, eos: str, pad: str):
    """A character-level fast tokenizer over `vocabulary` (name -> id); `specials` are added tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(vocabulary), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=UNK)


def write_tiny_emu3(directory: str | os.PathLike, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                    kv_heads: int = 2, codebook: int = 64, grid: int = 4, context: int = 512, seed: int = 0,
                    intermediate: int | None = None, vocab_size: int | None = None) -> Path:
    """A random Emu3 directory: `layers` x `hidden` text model (MLP width `intermediate`, default
    2 * hidden), a VQVAE with `codebook` codes and spatial factor 2, generating `grid` x `grid`
    codes. `vocab_size` (default: just the characters, specials and codes) pads the text vocabulary
    with filler words (never typed) up to a released model's size. Returns the directory."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    directory = Path(directory)
    names = [UNK] + list(CHARS) + list(EMU3_SPECIALS)
    filler = max(0, (vocab_size or 0) - len(names) - codebook)
    names += [f"<filler{k}>" for k in range(filler)] + [f"<|visual token {k:06d}|>" for k in range(codebook)]
    vocabulary = {name: i for i, name in enumerate(names)}
    config = Emu3Config(
        text_config=dict(vocab_size=len(names), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=context, bos_token_id=vocabulary["<|extra_203|>"],
                         eos_token_id=vocabulary["<|extra_204|>"], pad_token_id=vocabulary["<|endoftext|>"]),
        vq_config=dict(codebook_size=codebook, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1, attn_resolutions=[], hidden_size=32, temporal_downsample_factor=1),
        vocabulary_map=vocabulary)
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    specials = list(EMU3_SPECIALS) + names[len(names) - codebook:]
    text_vocab = {n: i for n, i in vocabulary.items() if n not in specials}
    tok = _char_tokenizer(text_vocab, specials, "<|extra_203|>", "<|extra_204|>", "<|endoftext|>")
    tok.save_pretrained(directory)
    factor = model.model.vqmodel.vision_spatial_factor
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Emu3ImageProcessor", "spatial_factor": factor, "min_pixels": 4 * factor * factor,
        "max_pixels": 4096 * factor * factor, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    (directory / "processor_config.json").write_text(json.dumps({"image_area": (grid * factor) ** 2}))
    return directory


CHAMELEON_SPECIALS = ("<pad>", "<s>", "</s>", "<racm3:break>", "<eoss>", "<image>")


def chameleon_code_name(code: int) -> str:
    """Chameleon's name of image code `code` (12 -> IMGIMGBCZ)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def write_tiny_chameleon(directory: str | os.PathLike, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                         kv_heads: int = 2, codebook: int = 64, resolution: int = 8, context: int = 512,
                         seed: int = 0) -> Path:
    """A random Chameleon directory: `layers` x `hidden` text model and a VQVAE encoder with `codebook`
    codes reading `resolution`-pixel images as (resolution / 2)^2 codes. Returns the directory."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    directory = Path(directory)
    names = [UNK] + list(CHARS) + list(CHAMELEON_SPECIALS) + [chameleon_code_name(k) for k in range(codebook)]
    vocabulary = {name: i for i, name in enumerate(names)}
    config = ChameleonConfig(
        vocab_size=len(names), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=context,
        bos_token_id=vocabulary["<s>"], eos_token_id=vocabulary["</s>"], pad_token_id=vocabulary["<pad>"],
        vq_config=dict(embed_dim=4, num_embeddings=codebook, latent_channels=4, resolution=resolution,
                       base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[]),
        vocabulary_map=vocabulary, image_token_id=vocabulary["<image>"])
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(config).eval()
    with torch.no_grad():  # a random codebook of zeros would give every image one code
        model.model.vqmodel.quantize.embedding.weight.normal_()
    model.save_pretrained(directory)
    specials = list(CHAMELEON_SPECIALS) + names[len(names) - codebook:]
    text_vocab = {n: i for n, i in vocabulary.items() if n not in specials}
    _char_tokenizer(text_vocab, specials, "<s>", "</s>", "<pad>").save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ChameleonImageProcessor", "size": {"shortest_edge": resolution},
        "crop_size": {"height": resolution, "width": resolution}}))
    side = resolution // 2
    (directory / "processor_config.json").write_text(json.dumps({"image_seq_length": side * side}))
    return directory


JANUS_SPECIALS = ("<|end▁of▁sentence|>", "<|begin▁of▁sentence|>", "<｜▁pad▁｜>", "<begin_of_image>", "<end_of_image>",
                  "<image_placeholder>")


def write_tiny_janus(directory: str | os.PathLike, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                     kv_heads: int = 2, codebook: int = 64, grid: int = 4, context: int = 512, seed: int = 0,
                     intermediate: int | None = None) -> Path:
    """A random Janus(-Pro) directory: a `layers` x `hidden` Llama (MLP width `intermediate`, default
    2 * hidden), a one-layer SigLIP reading
    `8 * grid`-pixel images as `grid` x `grid` patches, and a VQ-VAE (spatial factor 8) with
    `codebook` codes, its generation embeddings, aligner and head. Returns the directory."""
    from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration

    directory = Path(directory)
    names = [UNK] + list(CHARS) + list(JANUS_SPECIALS)
    vocabulary = {name: i for i, name in enumerate(names)}
    eos, bos, pad, boi, eoi, placeholder = (vocabulary[n] for n in JANUS_SPECIALS)
    size = 8 * grid
    config = JanusConfig(
        text_config=dict(model_type="llama", vocab_size=len(names), hidden_size=hidden,
                         intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=context, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=size, patch_size=8,
                           projection_dim=hidden, depth=2, num_image_tokens=grid * grid, mlp_ratio=2.0),
        vq_config=dict(embed_dim=8, num_embeddings=codebook, latent_channels=32, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
                       image_token_embed_dim=hidden, num_hidden_layers=2),
        image_token_id=placeholder)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    with torch.no_grad():  # initialised near zero, the codebook and the generation path would give one code
        model.model.vqmodel.quantize.embedding.weight.normal_()
        for module in (model.model.generation_embeddings, model.model.generation_aligner, model.model.generation_head):
            for p in module.parameters():
                p.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                                               generation_kwargs={"boi_token_id": boi})
    model.save_pretrained(directory)
    text_vocab = {n: i for n, i in vocabulary.items() if n not in JANUS_SPECIALS}
    tok = _char_tokenizer(text_vocab, JANUS_SPECIALS, JANUS_SPECIALS[1], JANUS_SPECIALS[0], JANUS_SPECIALS[2])
    tok.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "JanusImageProcessor", "size": {"height": size, "width": size},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    return directory
