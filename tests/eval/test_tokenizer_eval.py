"""`anygen tokenizer eval`: metric functions on known inputs, and the evaluation of tiny codecs."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from anygen.codecs.image import ImageCodec, ImageCodecConfig
from anygen.errors import AnygenError
from anygen.eval.tokenizer_eval import (PSNR_CAP, evaluate_tokenizer, psnr, ssim,
                                        usage_and_perplexity)

torch.set_num_threads(1)


def test_psnr_identical_is_capped_and_known_offset_is_exact():
    x = torch.rand(3, 3, 8, 8)
    assert torch.all(psnr(x, x) == PSNR_CAP)
    y = (x + 0.1).clamp(max=2)  # MSE 0.01 -> 20 dB
    assert torch.allclose(psnr(y, x), torch.full((3,), 20.0), atol=1e-4)
    assert psnr(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)).item() == pytest.approx(0.0)


def _ssim_reference(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """Direct window-by-window SSIM (Wang et al. 2004), one channel, valid windows."""
    g = np.exp(-((np.arange(win) - (win - 1) / 2) ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            a, b = x[i:i + win, j:j + win], y[i:i + win, j:j + win]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2
            cov = (w * a * b).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_is_one_and_matches_a_direct_reference():
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 16, 16))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    assert ssim(tx, tx).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(ty, tx).item() == pytest.approx(_ssim_reference(y[0, 0], x[0, 0]), abs=1e-5)
    assert ssim(ty, tx).item() < 0.99
    # constant images a, b: SSIM = (2ab + c1) / (a² + b² + c1)
    a, b, c1 = 0.2, 0.6, 0.01 ** 2
    got = ssim(torch.full((1, 3, 12, 12), a), torch.full((1, 3, 12, 12), b)).item()
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)


def test_usage_and_perplexity_known_histograms():
    assert usage_and_perplexity(torch.tensor([0, 0, 1, 1]), 4) == pytest.approx((0.5, 2.0))
    assert usage_and_perplexity(torch.arange(8), 8) == pytest.approx((1.0, 8.0))
    assert usage_and_perplexity(torch.zeros(10, dtype=torch.long), 5) == pytest.approx((0.2, 1.0))


def heldout_scenes(n, seed):
    from anygen.worlds import get_world

    return get_world("shapes").eval_scenes(n, seed)


def test_heldout_scenes_are_deterministic_and_mixed():
    a, b = heldout_scenes(30, 7), heldout_scenes(30, 7)
    assert a == b and heldout_scenes(30, 8) != a
    assert {len(s.objects) for s in a} == {1, 2, 3}


@pytest.fixture(scope="module")
def tiny_codec_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("codec") / "tiny"
    cfg = ImageCodecConfig(image_size=16, channels=(8, 16), downsample=2, encoder_blocks=1, decoder_blocks=1,
                           fsq_levels=[5, 5, 3])
    ImageCodec(cfg).save(d)
    return d


def test_evaluate_image_codec_on_shapes(tiny_codec_dir):
    out = evaluate_tokenizer(tiny_codec_dir, "shapes", n=6, seed=3)
    for key in ("psnr", "ssim", "usage", "perplexity", "judge_accuracy", "judge_accuracy_originals", "items_per_s"):
        assert key in out and math.isfinite(out[key]), key
    assert out["n"] == 6 and out["codebook_size"] == 75 and out["codes_per_image"] == 16
    assert out["judge_accuracy_originals"] == 1.0  # the judge itself reads clean renders
    assert 0 <= out["judge_accuracy"] <= 1 and 0 < out["usage"] <= 1
    assert all(isinstance(v, float) for v in out.values())


def test_evaluate_image_folder_and_bad_inputs(tiny_codec_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (20 + i, 16), (255, 10 * i, 0)).save(folder / f"{i}.png")
    out = evaluate_tokenizer(tiny_codec_dir, str(folder), n=10, seed=0)
    assert out["n"] == 3 and "judge_accuracy" not in out
    (folder / "bad.png").write_bytes(b"not a png")
    with pytest.raises(AnygenError, match="bad.png"):
        evaluate_tokenizer(tiny_codec_dir, str(folder), n=10, seed=0)
    with pytest.raises(AnygenError, match="expected shapes, emoji or an image folder"):
        evaluate_tokenizer(tiny_codec_dir, "melodies-typo", n=2, seed=0)
    with pytest.raises(AnygenError, match="not found"):
        evaluate_tokenizer(tmp_path / "missing", "shapes", n=2, seed=0)
    with pytest.raises(AnygenError, match="n must be"):
        evaluate_tokenizer(tiny_codec_dir, "shapes", n=0, seed=0)


def test_evaluate_text_tokenizer(tmp_path):
    from anygen.codecs.text import train_text_tokenizer

    captions = [s.caption() for s in heldout_scenes(300, 11)]
    train_text_tokenizer(captions, 400, tmp_path / "text")
    out = evaluate_tokenizer(tmp_path / "text", "shapes", n=20, seed=1)
    assert out["round_trip_exact"] == 1.0 and out["chars_per_token"] > 2


def test_evaluate_audio_codec_on_melodies(tmp_path):
    audio = pytest.importorskip("anygen.codecs.audio")
    cfg = audio.AudioCodecConfig(n_q=2, codebook_size=16, latent_dim=8, num_filters=4, upsampling_ratios=[4, 4],
                                 num_lstm_layers=0, stft_sizes=[64], n_mels=8, kmeans_init=False)
    audio.AudioCodec.from_config(cfg).save(tmp_path / "audio")
    out = evaluate_tokenizer(tmp_path / "audio", "melodies", n=3, seed=0)
    assert out["note_accuracy_originals"] == 1.0 and 0 <= out["note_accuracy"] <= 1
    assert math.isfinite(out["si_snr"]) and {"usage_l0", "usage_l1", "items_per_s"} <= set(out)


def test_folder_evaluation_draws_a_seeded_sample_of_the_whole_folder(tiny_codec_dir, tmp_path):
    from anygen.data.media_sources import folder_files, IMAGE_EXTENSIONS

    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (16, 16), (25 * i, 0, 0)).save(folder / f"{i}.png")
    picked = [p.name for p in folder_files(folder, IMAGE_EXTENSIONS, "image", n=4, seed=0)]
    assert len(picked) == 4 and picked != [f"{i}.png" for i in range(4)]  # not the first n in sorted order
    assert picked == [p.name for p in folder_files(folder, IMAGE_EXTENSIONS, "image", n=4, seed=0)]
    assert picked != [p.name for p in folder_files(folder, IMAGE_EXTENSIONS, "image", n=4, seed=1)]
    assert evaluate_tokenizer(tiny_codec_dir, str(folder), n=4, seed=0)["n"] == 4
    nested = tmp_path / "nested"
    (nested / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(nested / "a" / "x.png")
    with pytest.raises(AnygenError, match="set recursive: true"):
        evaluate_tokenizer(tiny_codec_dir, str(nested), n=4, seed=0)
    assert evaluate_tokenizer(tiny_codec_dir, str(nested), n=4, seed=0, recursive=True)["n"] == 1
