"""AudioCodec: shapes, quantizer round trips, training, files, bad input, EnCodec import."""

import json

import numpy as np
import pytest
import torch

from anygen.codecs.audio import AudioCodec, AudioCodecConfig
from anygen.codecs.layout import codes_to_stream, stream_to_codes
from anygen.config import ConfigError, build
from anygen.errors import AnygenError
from anygen.io import resample

SR = 8000
TINY = dict(sample_rate=SR, n_q=3, codebook_size=16, latent_dim=8, num_filters=4, upsampling_ratios=[4, 2],
            stft_sizes=[64, 128], n_mels=16, kmeans_iters=2)


def tiny(**overrides) -> AudioCodec:
    torch.manual_seed(0)
    return AudioCodec.from_config(build(AudioCodecConfig, {**TINY, **overrides}))


def tone(seconds=0.05, freq=440.0, sr=SR) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def trained_one_step(**overrides) -> AudioCodec:
    """One training step: k-means has initialised the codebooks from real latents."""
    codec = tiny(**overrides)
    wave = torch.from_numpy(np.stack([tone(freq=f) for f in (300, 440, 520, 610)]))[:, None]
    loss, _ = codec.training_losses(wave)
    loss.backward()
    return codec.eval()


def test_shapes_and_properties():
    codec = tiny(kmeans_init=False).eval()
    assert (codec.sample_rate, codec.n_q, codec.codebook_size, codec.hop_length) == (SR, 3, 16, 8)
    codes = codec.encode(torch.randn(2, 1, 50))
    assert codes.shape == (2, 3, 7) and codes.dtype == torch.long  # F = ceil(50 / 8)
    assert codes.min() >= 0 and codes.max() < 16
    wave = codec.decode(codes)
    assert wave.shape == (2, 1, 7 * 8)
    with pytest.raises(AnygenError, match="shape"):
        codec.encode(torch.randn(2, 50))


def test_quantize_matches_residual_vq_forward():
    codec = trained_one_step()
    latents = codec.encoder(torch.randn(2, 1, 64))  # (B, D, F)
    with torch.no_grad():
        quantized, indices, _ = codec.quantizer(latents.transpose(1, 2))  # library, eval mode
        codes = codec.quantize(latents)
        assert torch.equal(codes, indices.transpose(1, 2))
        torch.testing.assert_close(codec.dequantize(codes), quantized.transpose(1, 2))


def test_rvq_round_trip_codes_embeddings_codes():
    """codes -> summed codewords -> greedy re-quantization gives the same codes.

    This holds whenever each level's residuals are small against the spacing of the level
    above (what RVQ training produces); the codebooks are scaled here so that it must.
    """
    codec = tiny(kmeans_init=False).eval()
    gen = torch.Generator().manual_seed(1)
    for level, layer in enumerate(codec.quantizer.layers):
        layer._codebook.embed.copy_(torch.randn(layer._codebook.embed.shape, generator=gen) * 0.05 ** level)
    codes = torch.randint(0, 16, (4, 3, 10), generator=gen)
    assert torch.equal(codec.quantize(codec.dequantize(codes)), codes)
    # and the codec's own codes survive decode-embeddings -> encode-embeddings
    own = codec.encode(torch.randn(2, 1, 80))
    assert torch.equal(codec.quantize(codec.dequantize(own)), own)
    # every codeword of every level maps to itself
    for level, cb in enumerate(codec.codebooks()):
        other = torch.zeros(3, 16, dtype=torch.long)
        other[level] = torch.arange(16)
        assert torch.equal(codec.quantize(codec.dequantize(other[None]))[0, level], torch.arange(16))


def test_a_few_steps_reduce_loss():
    codec = tiny()
    wave = torch.from_numpy(np.stack([tone(freq=f) for f in (300, 440)]))[:, None]
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, metrics = codec.training_losses(wave)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for key in ("loss", "l1", "stft", "mel", "commit", "si_snr", "usage", "perplexity", "usage_l0"):
        assert np.isfinite(metrics[key]), key
    assert 0 < metrics["usage"] <= 1 and metrics["perplexity"] >= 1


def test_save_load_equality(tmp_path):
    codec = trained_one_step()
    codec.save(tmp_path / "codec")
    meta = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["config"]["n_q"] == 3
    loaded = AudioCodec.load(tmp_path / "codec")
    assert loaded.config == codec.config
    before, after = codec.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    wave = torch.randn(2, 1, 64)
    codes = codec.encode(wave)
    assert torch.equal(loaded.encode(wave), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(AnygenError, match="not found"):
        AudioCodec.load(tmp_path / "nope")
    codec = tiny(kmeans_init=False)
    directory = codec.save(tmp_path / "codec")
    (directory / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AnygenError, match="model.safetensors"):
        AudioCodec.load(directory)
    codec.save(directory)
    config = directory / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["n_q"] = 4  # weights for 3 levels
    config.write_text(json.dumps(meta))
    with pytest.raises(AnygenError, match="model.safetensors"):
        AudioCodec.load(directory)
    meta["format_version"] = 99
    config.write_text(json.dumps(meta))
    with pytest.raises(AnygenError, match="config.json.*format_version"):
        AudioCodec.load(directory)
    config.write_text("{not json")
    with pytest.raises(AnygenError, match="config.json"):
        AudioCodec.load(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(AnygenError, match="model.safetensors"):
        AudioCodec.load(directory)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="quantizer"):
        build(AudioCodecConfig, {"quantizer": "fsq"})
    with pytest.raises(ConfigError, match="compress"):
        build(AudioCodecConfig, {"num_filters": 6, "compress": 4})
    with pytest.raises(ConfigError, match="n_mels"):
        build(AudioCodecConfig, {"stft_sizes": [64], "n_mels": 64})


def test_stereo_is_mixed_down():
    codec = trained_one_step()
    left, right = tone(freq=440), tone(freq=300)
    stereo = np.stack([left, right], axis=1)  # (T, C)
    mono = (left + right) / 2
    assert torch.equal(codec.encode_audio(stereo, SR), codec.encode_audio(mono, SR))
    pcm = (np.stack([left, left], axis=1) * 32767).astype(np.int16)  # integer PCM is scaled to [-1, 1]
    expected = codec.encode_audio(pcm[:, 0].astype(np.float32) / 32767, SR)
    assert torch.equal(codec.encode_audio(pcm, SR), expected)


@pytest.mark.parametrize("rate", [4000, 44100])
def test_other_sample_rates_are_resampled(rate):
    codec = trained_one_step()
    wave = tone(seconds=0.1, freq=440, sr=rate)
    codes = codec.encode_audio(wave, rate)
    assert codes.shape == (3, int(np.ceil(0.1 * SR / codec.hop_length)))
    assert torch.equal(codes, codec.encode_audio(resample(wave, rate, SR), SR))


def test_nan_inf_and_empty_are_refused():
    codec = tiny(kmeans_init=False)
    for bad in (np.nan, np.inf, -np.inf):
        wave = tone()
        wave[5] = bad
        with pytest.raises(AnygenError, match="NaN or Inf"):
            codec.encode_audio(wave, SR)
    with pytest.raises(AnygenError, match="empty"):
        codec.encode_audio(np.zeros(0, np.float32), SR)


def test_decode_audio_and_bad_codes():
    codec = trained_one_step()
    codes = codec.encode_audio(tone(), SR)
    out = codec.decode_audio(codes)
    assert out.dtype == np.float32 and out.shape == (codes.shape[1] * codec.hop_length,)
    with pytest.raises(AnygenError, match="0..15"):
        codec.decode_audio(torch.full((3, 4), 16))
    with pytest.raises(AnygenError, match="n_q=3"):
        codec.decode_audio(torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_layout_round_trip_with_codec_codes(layout):
    codec = trained_one_step()
    codes = codec.encode_audio(tone(seconds=0.07), SR)  # (3, 9)
    values, levels = codes_to_stream(codes, layout)
    assert torch.equal(stream_to_codes(values, levels, codec.n_q, layout), codes)
    assert torch.equal(levels[values >= 0].unique(), torch.arange(codec.n_q))


def test_options_without_lstm_and_with_encodec_quantizer():
    codec = tiny(num_lstm_layers=0, quantizer="encodec")
    assert all(cb.abs().sum() > 0 for cb in codec.codebooks())  # never the all-zero EnCodec init
    before = codec.codebooks().clone()
    loss, metrics = codec.training_losses(torch.randn(2, 1, 64) * 0.1)
    loss.backward()
    assert codec.encoder.layers[0].conv.bias.grad is not None  # straight-through reaches the encoder
    assert torch.equal(codec.codebooks(), before)  # EnCodec codebooks stay frozen


# ---- pretrained EnCodec checkpoints ----------------------------------------------------------
def tiny_encodec(tmp_path, **overrides):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    kwargs = dict(sampling_rate=SR, hidden_size=8, num_filters=4, upsampling_ratios=[4, 2], num_lstm_layers=1,
                  codebook_size=16, target_bandwidths=[4.0, 12.0])  # 1000 frames/s × 4 bits: 1 and 3 levels
    config = EncodecConfig(**{**kwargs, **overrides})
    model = EncodecModel(config).eval()
    for layer in model.quantizer.layers:  # a random EnCodec codebook is all zeros (docs/design.md, "Pitfalls")
        layer.codebook.embed.normal_()
    model.save_pretrained(tmp_path)
    return model


def test_pretrained_encodec_codes_equal_transformers(tmp_path):
    model = tiny_encodec(tmp_path / "encodec")
    codec = AudioCodec.from_pretrained_encodec(tmp_path / "encodec")
    assert codec.n_q == 3 and codec.sample_rate == SR and codec.config.quantizer == "encodec"
    wave = torch.randn(2, 1, 203)
    with torch.no_grad():
        ref = model.encode(wave, bandwidth=12.0)
        ref_wave = model.decode(ref.audio_codes, ref.audio_scales).audio_values
    codes = codec.encode(wave)
    assert torch.equal(codes, ref.audio_codes[0])
    torch.testing.assert_close(codec.decode(codes)[..., : ref_wave.shape[-1]], ref_wave)
    # fewer levels = a lower bandwidth
    coarse = AudioCodec.from_pretrained_encodec(tmp_path / "encodec", n_q=1)
    with torch.no_grad():
        assert torch.equal(coarse.encode(wave), model.encode(wave, bandwidth=4.0).audio_codes[0])
    # a converted checkpoint saves and loads as an ordinary anygen codec
    codec.save(tmp_path / "converted")
    assert torch.equal(AudioCodec.load(tmp_path / "converted").encode(wave), codes)


def test_pretrained_encodec_refusals(tmp_path):
    with pytest.raises(AnygenError, match="config.json"):
        AudioCodec.from_pretrained_encodec(tmp_path)
    tiny_encodec(tmp_path / "encodec")
    with pytest.raises(AnygenError, match="n_q"):
        AudioCodec.from_pretrained_encodec(tmp_path / "encodec", n_q=4)
    from transformers import EncodecConfig

    EncodecConfig(normalize=True, chunk_length_s=1.0, overlap=0.01).save_pretrained(tmp_path / "48k")
    with pytest.raises(AnygenError, match="normalize"):
        AudioCodec.from_pretrained_encodec(tmp_path / "48k")
