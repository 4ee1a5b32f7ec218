"""Tiny random pretrained image tokenizers, built and saved (safetensors) by the tests themselves:
diffusers `VQModel` and `AutoencoderKL`, transformers `Emu3VQVAE` and `ChameleonVQVAE`, each
reading 16-pixel images as 8 x 8 latents."""

from __future__ import annotations

import pytest
import torch

IMAGE_SIZE = 16  # pixels per side; every tiny tokenizer halves it once: an 8 x 8 grid
CODEBOOK = 64
DIFFUSERS_SHAPE = dict(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                       norm_num_groups=8, sample_size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def vqmodel_dir(tmp_path_factory):
    from diffusers import VQModel

    torch.manual_seed(0)
    model = VQModel(num_vq_embeddings=CODEBOOK, vq_embed_dim=4, **DIFFUSERS_SHAPE).eval()
    directory = tmp_path_factory.mktemp("vqmodel") / "vq"
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def autoencoder_kl_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    model = AutoencoderKL(**DIFFUSERS_SHAPE).eval()
    directory = tmp_path_factory.mktemp("autoencoder_kl") / "kl"
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def emu3_vqvae_dir(tmp_path_factory):
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    torch.manual_seed(2)
    model = Emu3VQVAE(Emu3VQVAEConfig(codebook_size=CODEBOOK, embed_dim=4, latent_channels=4, base_channels=32,
                                      channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[],
                                      hidden_size=32, temporal_downsample_factor=1)).eval()
    directory = tmp_path_factory.mktemp("emu3_vqvae") / "emu3-vq"
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def chameleon_vqvae_dir(tmp_path_factory):
    from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

    torch.manual_seed(3)
    model = ChameleonVQVAE(ChameleonVQVAEConfig(embed_dim=4, num_embeddings=CODEBOOK, latent_channels=4,
                                                resolution=IMAGE_SIZE, base_channels=32, channel_multiplier=[1, 1],
                                                num_res_blocks=1, attn_resolutions=[])).eval()
    with torch.no_grad():  # a random codebook of zeros would give every patch one code
        model.quantize.embedding.weight.normal_()
    directory = tmp_path_factory.mktemp("chameleon_vqvae") / "chameleon-vq"
    model.save_pretrained(str(directory))
    return directory
