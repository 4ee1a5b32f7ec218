"""ImageCodec: quantizer round trips, shapes, learning, save/load, bad input (tiny 16×16 configs)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anygen.codecs.image import FORMAT_VERSION, ImageCodec, ImageCodecConfig, weighted_reconstruction
from anygen.config import ConfigError, build
from anygen.errors import AnygenError
from anygen.io import fit_image

torch.set_num_threads(1)


def tiny(**kw) -> ImageCodecConfig:
    base = dict(image_size=16, channels=(8, 16), downsample=2, encoder_blocks=1, decoder_blocks=1,
                fsq_levels=[5, 5, 3], lfq_dim=6, vq_codebook_size=32, vq_dim=8)
    base.update(kw)
    return ImageCodecConfig(**base)


def blocks_batch(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    """White images with a coloured square each: (n,3,size,size) in [-1,1]."""
    rng = np.random.default_rng(seed)
    x = np.ones((n, 3, size, size), np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, size - 6, 2)
        x[i, :, y0:y0 + 6, x0:x0 + 6] = rng.uniform(-1, 0.5, (3, 1, 1))
    return torch.from_numpy(x)


QUANTIZERS = [dict(quantizer="fsq"), dict(quantizer="lfq"),
              dict(quantizer="vq", vq_kmeans_init=False, vq_cosine=False),
              dict(quantizer="vq", vq_kmeans_init=False, vq_cosine=True)]


@pytest.mark.parametrize("kw", QUANTIZERS, ids=["fsq", "lfq", "vq-l2", "vq-cosine"])
def test_quantizer_round_trip_codes_embeddings_codes(kw):
    torch.manual_seed(0)
    codec = ImageCodec(tiny(**kw))
    codes = torch.randint(0, codec.codebook_size, (3, *codec.grid))
    emb = codec.codes_to_embeddings(codes)  # (3, D, h, w)
    assert emb.shape == (3, codec.config.code_dim, *codec.grid)
    assert torch.equal(codec.embeddings_to_codes(emb), codes)


def test_vq_kmeans_codebook_is_initialised_by_training_then_round_trips():
    torch.manual_seed(0)
    codec = ImageCodec(tiny(quantizer="vq", vq_kmeans_init=True))
    codec.train()
    codec.training_losses(blocks_batch(8))  # k-means on the first batch replaces the zero codebook
    codebook = codec.quantizer.codebook
    assert codebook.abs().sum() > 0
    codes = torch.randint(0, codec.codebook_size, (2, *codec.grid))
    # k-means may leave duplicate centroids; the round trip holds up to identical embeddings
    again = codec.embeddings_to_codes(codec.codes_to_embeddings(codes))
    assert torch.allclose(codebook[again], codebook[codes])


def test_codebook_sizes_and_grids():
    assert ImageCodec(tiny()).codebook_size == 75
    assert ImageCodec(tiny(quantizer="lfq")).codebook_size == 64
    assert ImageCodec(tiny(quantizer="vq")).codebook_size == 32
    assert ImageCodec(ImageCodecConfig()).grid == (8, 8)
    assert ImageCodec(ImageCodecConfig(downsample=2, channels=(32, 64))).grid == (16, 16)


@pytest.mark.parametrize("q", ["fsq", "lfq", "vq"])
def test_encode_decode_shapes_and_ranges(q):
    codec = ImageCodec(tiny(quantizer=q, vq_kmeans_init=False)).eval()
    x = blocks_batch(3)
    codes = codec.encode(x)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    y = codec.decode(codes)
    assert y.shape == (3, 3, 16, 16) and float(y.min()) >= -1 and float(y.max()) <= 1


def test_encode_and_decode_reject_wrong_shapes_and_codes():
    codec = ImageCodec(tiny()).eval()
    with pytest.raises(AnygenError, match=r"\(B, 3, 16, 16\)"):
        codec.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(AnygenError, match="codes must be"):
        codec.decode(torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(AnygenError, match=r"\[0, 75\)"):
        codec.decode(torch.full((1, 4, 4), 75))


@pytest.mark.parametrize("q", ["fsq", "vq"])
def test_a_few_training_steps_reduce_the_loss(q):
    torch.manual_seed(0)
    codec = ImageCodec(tiny(quantizer=q)).train()
    x = blocks_batch(8)
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, metrics = codec.training_losses(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert {"loss", "rec", "psnr", "usage", "perplexity"} <= set(metrics)
    assert 0 < metrics["usage"] <= 1 and metrics["perplexity"] >= 1


def test_adversarial_loss_trains_discriminator_and_generator():
    torch.manual_seed(0)
    codec = ImageCodec(tiny(adversarial=True, disc_start=0, disc_channels=8, disc_layers=2)).train()
    loss, metrics = codec.training_losses(blocks_batch(4))
    loss.backward()
    assert {"g_adv", "d_loss", "adv_weight"} <= set(metrics)
    assert all(p.grad is not None for p in codec.discriminator.parameters())
    assert codec.decoder.last_weight.grad is not None and torch.isfinite(loss)


def test_object_weight_emphasises_non_white_pixels():
    target = torch.ones(1, 3, 4, 4)
    target[..., 0, 0] = -1.0  # one coloured pixel
    recon = target.clone()
    recon[..., 0, 0] = 0.0  # error only on the object pixel
    plain = weighted_reconstruction(recon, target, 1, 0, 1.0)
    weighted = weighted_reconstruction(recon, target, 1, 0, 5.0)
    assert torch.isclose(plain, torch.tensor(1 / 16))
    assert torch.isclose(weighted, torch.tensor(5 / 20))


@pytest.mark.parametrize("q", ["fsq", "vq"])
def test_save_load_round_trip_gives_equal_outputs(tmp_path, q):
    torch.manual_seed(0)
    codec = ImageCodec(tiny(quantizer=q)).train()
    codec.training_losses(blocks_batch(8))  # VQ: k-means init + EMA buffers are part of the state
    codec.eval()
    codec.save(tmp_path / "codec")
    meta = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["kind"] == "image"
    loaded = ImageCodec.load(tmp_path / "codec")
    x = blocks_batch(4, seed=1)
    assert loaded.config == codec.config
    assert torch.equal(loaded.encode(x), codec.encode(x))
    codes = codec.encode(x)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_load_errors_name_the_file(tmp_path):
    codec = ImageCodec(tiny())
    d = tmp_path / "codec"
    codec.save(d)
    with pytest.raises(AnygenError, match="not found"):
        ImageCodec.load(tmp_path / "nowhere")
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(AnygenError, match=r"config\.json.*format_version 99"):
        ImageCodec.load(d)
    meta["config"]["channels"] = [16, 32]  # weights no longer fit
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(AnygenError, match=r"model\.safetensors.*shape"):
        ImageCodec.load(d)
    meta["config"]["channels"] = [8, 16]
    meta["config"]["quantizer"] = "magic"
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(AnygenError, match=r"config\.json.*quantizer"):
        ImageCodec.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(AnygenError, match=r"config\.json: not valid JSON"):
        ImageCodec.load(d)
    codec.save(d)
    (d / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AnygenError, match=r"model\.safetensors: cannot read"):
        ImageCodec.load(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(AnygenError, match=r"model\.safetensors: missing file"):
        ImageCodec.load(d)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="codec.quantizer"):
        build(ImageCodecConfig, {"quantizer": "pq"}, prefix="codec.")
    with pytest.raises(ConfigError, match="channels"):
        ImageCodecConfig(channels=(32, 64), downsample=3)
    with pytest.raises(ConfigError, match="fsq_levels"):
        ImageCodecConfig(fsq_levels=[2, 5])
    with pytest.raises(ConfigError, match="downsample"):
        ImageCodecConfig(image_size=60)


def _rgb_image(size=(16, 16)) -> Image.Image:
    arr = np.full((size[1], size[0], 3), 255, np.uint8)
    arr[4:10, 4:10] = (220, 40, 40)
    return Image.fromarray(arr, "RGB")


def test_bad_image_modes_are_converted():
    codec = ImageCodec(tiny()).eval()
    rgb = _rgb_image()
    rgba = rgb.convert("RGBA")
    transparent = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent -> white
    gray = rgb.convert("L")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    deep = Image.fromarray(np.asarray(gray, np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    codes = codec.encode_images([rgb, rgba, transparent, gray, palette, deep])
    assert codes.shape == (6, 4, 4)
    assert torch.equal(codes[0], codes[1])  # opaque RGBA == RGB
    white = codec.encode_images([Image.new("RGB", (16, 16), "white")])
    assert torch.equal(codes[2], white[0])
    assert torch.equal(codes[3], codes[5])  # 16-bit gray scaled to the same 8-bit gray
    assert torch.equal(codes[4], codes[0])  # adaptive palette is exact for two colours


def test_other_sizes_follow_fit_image_policy():
    codec = ImageCodec(tiny()).eval()
    wide = _rgb_image((40, 24))
    assert torch.equal(codec.encode_images([wide]), codec.encode_images([fit_image(wide, 16)]))
    assert codec.encode_images([_rgb_image((5, 3))]).shape == (1, 4, 4)
    assert codec.encode_images([]).shape == (0, 4, 4)
    out = codec.decode_images(codec.encode_images([wide]))
    assert out[0].size == (16, 16) and out[0].mode == "RGB"


def test_corrupt_image_file_error_names_the_path(tmp_path):
    from anygen.data.media_sources import folder_images

    _rgb_image().save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(AnygenError, match="broken.png"):
        folder_images(tmp_path)


def test_background_black_emphasises_light_pixels_on_dark_and_none_weighs_all_alike():
    target = -torch.ones(1, 3, 4, 4)  # black background
    target[..., 0, 0] = 1.0  # one white stroke pixel
    recon = target.clone()
    recon[..., 0, 0] = 0.0  # error only on the stroke
    assert torch.isclose(weighted_reconstruction(recon, target, 1, 0, 5.0, "black"), torch.tensor(5 / 20))
    # with the default (white) background the black pixels are the objects and the stroke counts least
    assert torch.isclose(weighted_reconstruction(recon, target, 1, 0, 5.0), torch.tensor(1 / 76))
    assert torch.isclose(weighted_reconstruction(recon, target, 1, 0, 5.0, "none"), torch.tensor(1 / 16))
    assert ImageCodecConfig().background == "white"
    with pytest.raises(ConfigError, match="background: invalid value 'grey'"):
        build(ImageCodecConfig, {"background": "grey"})
    # the codec's training loss uses the setting
    white, black = ImageCodec(tiny()), ImageCodec(tiny(background="black"))
    black.load_state_dict(white.state_dict())
    x = -torch.ones(2, 3, 16, 16)
    x[..., 4:8, 4:8] = 1.0
    assert white.training_losses(x)[1]["rec"] != black.training_losses(x)[1]["rec"]
