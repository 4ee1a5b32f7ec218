"""Pretrained image tokenizers as anygen image codecs: on tiny random configs the tests save
themselves, anygen's encode/decode is the library's own (diffusers VQModel and AutoencoderKL,
transformers Emu3VQVAE and ChameleonVQVAE), `anygen tokenizer assemble --image DIR` takes the
folder, the assembled tokenizer saves and loads, and the text-to-image trainer trains on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anygen.codecs.image import load_image_codec
from anygen.codecs.pretrained import open_pretrained_codec
from anygen.errors import AnygenError

IMAGE_SIZE, CODEBOOK = 16, 64  # as tests/interop/conftest.py builds the tokenizers
GRID = (IMAGE_SIZE // 2, IMAGE_SIZE // 2)


def pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def pictures(n: int = 2) -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(n)]


def test_vqmodel_codes_and_decode_are_diffusers_own(vqmodel_dir):
    from diffusers import VQModel

    ref = VQModel.from_pretrained(str(vqmodel_dir)).eval()
    codec = load_image_codec(vqmodel_dir)
    assert (codec.image_size, codec.grid, codec.codebook_size, codec.latent_channels) == (IMAGE_SIZE, GRID, CODEBOOK, 4)
    x = pixels()
    codes = codec.encode(x)
    with torch.no_grad():
        _, _, (_, _, indices) = ref.quantize(ref.encode(x).latents)
        expected = ref(x).sample.clamp(-1, 1)  # diffusers' encode -> quantize -> decode
    assert codes.shape == (2, *GRID) and torch.equal(codes, indices.view(2, *GRID))
    assert torch.allclose(codec.decode(codes), expected, atol=1e-5)
    assert len(codec.decode_images(codec.encode_images(pictures()))) == 2


def test_autoencoder_kl_latents_and_decode_are_diffusers_own(autoencoder_kl_dir):
    from diffusers import AutoencoderKL

    ref = AutoencoderKL.from_pretrained(str(autoencoder_kl_dir)).eval()
    codec = load_image_codec(autoencoder_kl_dir)
    assert (codec.grid, codec.codebook_size, codec.latent_channels) == (GRID, 0, 4)
    x = pixels()
    with torch.no_grad():
        mode = ref.encode(x).latent_dist.mode()
        expected = ref.decode(mode).sample.clamp(-1, 1)
    z = codec.latents(x)
    assert torch.allclose(z, mode * ref.config.scaling_factor)  # what diffusers pipelines diffuse
    assert torch.allclose(codec.from_latents(z), expected, atol=1e-5)
    with pytest.raises(AnygenError, match="continuous autoencoder: it has no image codes"):
        codec.encode_images(pictures(1))


def test_emu3_vqvae_codes_and_decode_are_transformers_own(emu3_vqvae_dir):
    from transformers import Emu3VQVAE

    ref = Emu3VQVAE.from_pretrained(str(emu3_vqvae_dir)).eval()
    codec = load_image_codec(emu3_vqvae_dir, image_size=IMAGE_SIZE)  # a bare Emu3VQVAE records no size
    x = pixels()
    with torch.no_grad():
        expected = torch.stack(ref.encode(x, torch.tensor([[IMAGE_SIZE] * 2] * 2)).image_tokens)
        decoded = ref.decode(expected).clamp(-1, 1)
    codes = codec.encode(x)
    assert torch.equal(codes, expected) and torch.allclose(codec.decode(codes), decoded, atol=1e-6)


def test_chameleon_vqvae_encodes_as_transformers_and_refuses_to_decode(chameleon_vqvae_dir):
    from transformers import ChameleonVQVAE

    ref = ChameleonVQVAE.from_pretrained(str(chameleon_vqvae_dir)).eval()
    codec = load_image_codec(chameleon_vqvae_dir)
    x = pixels()
    with torch.no_grad():
        expected = ref.encode(x).image_tokens.view(2, *GRID)
    assert codec.grid == GRID and torch.equal(codec.encode(x), expected)
    assert len(set(expected.view(-1).tolist())) > 1
    with pytest.raises(AnygenError, match="no image decoder"):
        codec.decode(expected)


def test_released_model_folders_give_their_vq_vae(tmp_path):
    """A whole Emu3 / Chameleon / Janus folder is read for its VQ-VAE alone, with the same codes as the model's."""
    from transformers import (ChameleonForConditionalGeneration, Emu3ForConditionalGeneration,
                              JanusForConditionalGeneration)

    from anygen.interop.tiny import write_tiny_chameleon, write_tiny_emu3, write_tiny_janus

    emu3 = write_tiny_emu3(tmp_path / "emu3", grid=4)
    chameleon = write_tiny_chameleon(tmp_path / "chameleon", resolution=8)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    vq = Emu3ForConditionalGeneration.from_pretrained(str(emu3)).model.vqmodel.eval()
    codec = load_image_codec(emu3)
    assert codec.image_size == 8  # the processor's image_area
    with torch.no_grad():
        assert torch.equal(codec.encode(x), torch.stack(vq.encode(x, torch.tensor([[8, 8]] * 2)).image_tokens))
    vq = ChameleonForConditionalGeneration.from_pretrained(str(chameleon)).model.vqmodel.eval()
    with torch.no_grad():
        assert torch.equal(load_image_codec(chameleon).encode(x), vq.encode(x).image_tokens.view(2, 4, 4))
    janus = write_tiny_janus(tmp_path / "janus", grid=2)  # 16-pixel images, 2 x 2 codes
    vq = JanusForConditionalGeneration.from_pretrained(str(janus)).model.vqmodel.eval()
    codec = load_image_codec(janus)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        codes = vq.encode(x).image_tokens.view(2, 2, 2)
        assert torch.equal(codec.encode(x), codes)
        assert torch.allclose(codec.decode(codes), vq.decode(codes.view(2, -1)).clamp(-1, 1), atol=1e-6)


def test_only_safetensors_and_no_checkpoint_code(vqmodel_dir, tmp_path):
    import shutil

    d = tmp_path / "vq"
    shutil.copytree(vqmodel_dir, d)
    (d / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(AnygenError, match="never loaded"):
        open_pretrained_codec(d)
    (d / "diffusion_pytorch_model.bin").unlink()
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(AnygenError, match="auto_map"):
        open_pretrained_codec(d)
    with pytest.raises(AnygenError, match="multiple of the tokenizer's downsampling factor 2"):
        open_pretrained_codec(vqmodel_dir, image_size=15)


def _text_dir(tmp_path):
    """A small sentencepiece tokenizer over the shapes world's captions (what the trainer draws)."""
    from anygen.codecs.text import train_text_tokenizer
    from anygen.worlds.shapes.world import ShapesWorld, WorldConfig

    world, rng = ShapesWorld(WorldConfig(seed=0)), np.random.default_rng(0)
    text = train_text_tokenizer([world.sample_scene(rng).caption() for _ in range(300)], vocab_size=320)
    text.save(tmp_path / "text")
    return tmp_path / "text"


def test_assemble_saves_and_loads_a_pretrained_tokenizer(vqmodel_dir, emu3_vqvae_dir, tmp_path, capsys):
    from anygen.cli import main
    from anygen.document import Document, Text
    from anygen.document import Image as ImageSegment
    from anygen.tokenizer import MultimodalTokenizer

    text = _text_dir(tmp_path)
    main(["tokenizer", "assemble", "--text", str(text), "--image", str(vqmodel_dir), "--out", str(tmp_path / "tok")])
    assert f"image {CODEBOOK}" in capsys.readouterr().out
    tok = MultimodalTokenizer.load(tmp_path / "tok")
    assert tok.vocab.image_codebook_size == CODEBOOK and tok.vocab.image_grids == (GRID,)
    [picture] = pictures(1)
    ids = tok.encode(Document([Text("a red circle"), ImageSegment(picture)]))
    codes = load_image_codec(vqmodel_dir).encode_images([picture])[0]
    assert ids[-2 - GRID[0] * GRID[1]:-2] == tok.vocab.image_ids(codes.reshape(-1)).tolist()
    decoded = tok.decode(ids)
    assert [type(s).__name__ for s in decoded.segments] == ["Text", "Image"]
    # a size chosen at assembly is kept by the saved tokenizer
    main(["tokenizer", "assemble", "--text", str(text), "--image", str(emu3_vqvae_dir), "--image-size", "32",
          "--out", str(tmp_path / "tok2")])
    assert MultimodalTokenizer.load(tmp_path / "tok2").image.grid == (16, 16)


@pytest.mark.parametrize("which,head", [("vq", ["image_head=tokens"]),
                                        ("kl", ["image_head=diffusion", "diffusion.space=codec",
                                                f"diffusion.image_size={GRID[0]}", "diffusion.channels=4",
                                                "diffusion.patch_size=1"])], ids=["vqmodel-tokens", "kl-latents"])
def test_text_to_image_trainer_trains_on_a_pretrained_tokenizer(which, head, vqmodel_dir, autoencoder_kl_dir,
                                                               tmp_path):
    import anygen
    from anygen.tokenizer import MultimodalTokenizer
    from anygen.training.t2i_trainer import train_t2i

    codec_dir = vqmodel_dir if which == "vq" else autoencoder_kl_dir
    MultimodalTokenizer.assemble(_text_dir(tmp_path), image_dir=codec_dir).save(tmp_path / "tok")
    tiny = ["model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.n_kv_heads=2", "model.head_dim=16",
            "model.intermediate=64", "data.batch_size=2", "train.log_every=1", "train.save_every=2",
            "diffusion.time_dim=16", "train.steps=2", f"data.tokenizer={tmp_path / 'tok'}",
            f"train.out_dir={tmp_path / 'run'}"]
    out = train_t2i("training/t2i_tokens.yaml", tiny + head, progress=False)
    kw = {"num_inference_steps": 2} if which == "kl" else {}
    [image] = anygen.load(out).draw("a large red circle", seed=0, **kw)
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_tokenizer_eval_reads_a_pretrained_folder(vqmodel_dir):
    from anygen.eval.tokenizer_eval import evaluate_tokenizer

    out = evaluate_tokenizer(vqmodel_dir, n=4, batch_size=4)
    assert out["codebook_size"] == CODEBOOK and out["codes_per_image"] == GRID[0] * GRID[1] and "psnr" in out
