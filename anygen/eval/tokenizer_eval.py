"""`anygen tokenizer eval DIR --data ...`: measure a trained codec on held-out data.

Image codecs: PSNR and SSIM of reconstructions, codebook usage and perplexity over the
whole evaluation set, and where the data's world has a judge (shapes, digits, melodies, speech)
its score on the reconstructions (`World.judge_images` / `judge_audio`; the judge's score on the
originals is reported as a sanity baseline: exact notes for melodies, Whisper's word error rate
and its ratio to the originals' for speech). Audio codecs: SI-SNR, per-level usage and
perplexity. Text tokenizers:
characters per token and exact round trips. Every codec: encode+decode throughput
(items/s, median of three timed passes). Results are one flat dict of floats.

Held-out data: each world's `eval_images` / `eval_audio` of `seed`, on a stream that training
never uses (`anygen.tasks.world.EVAL_STREAM`); from a folder, `n` of its files drawn at random
with `seed` (its own files, or every file below it with `recursive`: the listing the loaders
and codec training use).

Metric conventions: pixels in [0, 1]; PSNR per image, capped at `PSNR_CAP` dB for identical
images, then averaged; SSIM is Wang et al. (2004) with an 11×11 Gaussian window (σ 1.5),
K1 0.01, K2 0.03, valid windows only, averaged over channels and images.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anygen.codecs.image import usage_and_perplexity
from anygen.errors import AnygenError
from anygen.threads import set_threads
from anygen.worlds import MEDIA_SOURCES, get_world, media_source

PSNR_CAP = 100.0


# ---- metrics -----------------------------------------------------------------------------
def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) tensors; identical images give `PSNR_CAP`."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)  # (B,)
    out = 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-300))
    return out.clamp(max=PSNR_CAP).where(mse > 0, torch.full_like(out, PSNR_CAP)).float()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) tensors (Gaussian window, valid region, channel mean)."""
    x, y = pred.double(), target.double()
    c = x.shape[1]
    size = min(window, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, sigma)
    gx = g.view(1, 1, 1, size).repeat(c, 1, 1, 1)
    gy = g.view(1, 1, size, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


def _timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---- dispatch ------------------------------------------------------------------------------
def artifact_kind(directory: Path) -> str:
    if not directory.is_dir():
        raise AnygenError(f"{directory}: tokenizer directory not found")
    config = directory / "config.json"
    if config.exists():
        try:
            return str(json.loads(config.read_text(encoding="utf-8")).get("kind", "image"))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise AnygenError(f"{config}: not valid JSON ({e})") from None
    if (directory / "text.model").exists() or (directory / "text.json").exists():
        return "text"
    raise AnygenError(f"{directory}: no config.json (codec) or text.model (text tokenizer) in the directory")


def evaluate_tokenizer(directory: str | os.PathLike, data: str = "", n: int = 500, seed: int = 1234,
                       batch_size: int = 64, threads: int = 0, recursive: bool | None = None) -> dict[str, float]:
    """Evaluate the codec or text tokenizer in `directory` on `data` (held out); a flat dict of floats.

    `data`: shapes | emoji | melodies | speech | a folder of images or WAV files ("" picks the
    training source recorded in the artifact's recipe.yaml, else shapes/melodies). `recursive`:
    a folder's files below sub-folders too (None: as the recipe's `data.recursive` when `data`
    comes from it, else False).
    """
    if threads:
        set_threads(threads, "threads")
    if n < 1:
        raise AnygenError(f"n must be >= 1, got {n}")
    directory = Path(directory)
    from anygen.codecs.pretrained import pretrained_kind

    if pretrained_kind(directory) is not None:  # a diffusers/transformers tokenizer folder: no recipe
        from anygen.codecs.image import load_image_codec

        return evaluate_image_codec(load_image_codec(directory), data or "shapes", n, seed, batch_size, bool(recursive))
    kind = artifact_kind(directory)
    if not data:
        data, recipe_recursive = _recipe_source(directory)
        recursive = recipe_recursive if recursive is None else recursive
    data = data or {"image": "shapes", "audio": "melodies", "text": "shapes"}[kind]
    if kind == "image":
        from anygen.codecs.image import ImageCodec

        return evaluate_image_codec(ImageCodec.load(directory), data, n, seed, batch_size, bool(recursive))
    if kind == "audio":
        from anygen.codecs.audio import AudioCodec

        return evaluate_audio_codec(AudioCodec.load(directory), data, n, seed, batch_size, bool(recursive))
    if kind == "text":
        return evaluate_text_tokenizer(directory, data, n, seed)
    raise AnygenError(f"{directory / 'config.json'}: unknown tokenizer kind {kind!r}")


def _recipe_source(directory: Path) -> tuple[str, bool]:
    """(the data a codec was trained on, as `--data` names it, and its recipe's `recursive`)."""
    recipe = directory / "recipe.yaml"
    if not recipe.exists():
        return "", False
    import yaml

    try:
        data = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("data", {})
        source = data.get("source", "")
    except (yaml.YAMLError, AttributeError):
        return "", False
    recursive = data.get("recursive") is True
    if source in ("image-folder", "audio-folder"):
        return data.get("path", ""), recursive
    return (source if source not in ("text", "user") else ""), False


# ---- images --------------------------------------------------------------------------------
def _eval_images(data: str, n: int, seed: int, recursive: bool = False):
    """(PIL images, the world with their ground truth or None, that truth) for an image `data` spec:
    a world's media source (`anygen.worlds.MEDIA_SOURCES`) or an image folder (`n` files drawn with `seed`)."""
    path = Path(data)
    if data not in MEDIA_SOURCES and path.is_dir():
        from anygen.data.media_sources import folder_images

        return folder_images(path, recursive, n, seed), None, None
    try:
        world = media_source(data, "image")
    except AnygenError:
        raise AnygenError(f"--data {data!r}: expected shapes, emoji or an image folder") from None
    images, truth = world.eval_images(n, seed)
    return images, world, truth


def evaluate_image_codec(codec, data: str, n: int = 500, seed: int = 1234, batch_size: int = 64,
                         recursive: bool = False) -> dict[str, float]:
    images, world, truth = _eval_images(data, n, seed, recursive)
    if not images:
        raise AnygenError(f"--data {data!r}: no images to evaluate")
    codec.eval()
    x = codec.images_to_tensor(images)  # (N,3,S,S) in [-1,1]
    chunks = range(0, len(x), batch_size)
    codes = torch.cat([codec.encode(x[i:i + batch_size]) for i in chunks])
    recon = torch.cat([codec.decode(codes[i:i + batch_size]) for i in chunks])
    # quantise to 8-bit like a saved PNG, so the judge and the metrics see what a user gets
    target01 = (x + 1) / 2
    recon01 = ((recon + 1) * 127.5).round() / 255.0
    usage, perplexity = usage_and_perplexity(codes, codec.codebook_size)
    out = {
        "n": float(len(images)),
        "psnr": float(psnr(recon01, target01).mean()),
        "ssim": float(ssim(recon01, target01).mean()),
        "usage": usage,
        "perplexity": perplexity,
        "codebook_size": float(codec.codebook_size),
        "codes_per_image": float(codec.grid[0] * codec.grid[1]),
    }
    if truth is not None:
        out.update(world.judge_images(images, codec.tensor_to_images(recon), truth))
    sample = x[:batch_size]
    seconds = _timed(lambda: codec.decode(codec.encode(sample)))
    out["items_per_s"] = float(len(sample) / seconds)
    return out


# ---- audio ---------------------------------------------------------------------------------
def _eval_waves(data: str, n: int, seed: int, sample_rate: int, recursive: bool = False):
    """(waveforms, the world with their ground truth or None, that truth) for an audio `data` spec."""
    path = Path(data)
    if data not in MEDIA_SOURCES and path.is_dir():
        from anygen.data.media_sources import folder_waves

        return folder_waves(path, sample_rate, recursive, n, seed), None, None
    try:
        world = media_source(data, "audio")
    except AnygenError:
        raise AnygenError(f"--data {data!r}: expected melodies, speech or a folder of WAV files") from None
    waves, truth = world.eval_audio(n, seed, sample_rate)
    return waves, world, truth


def evaluate_audio_codec(codec, data: str, n: int = 200, seed: int = 1234, batch_size: int = 16,
                         recursive: bool = False) -> dict[str, float]:
    from anygen.codecs.audio import si_snr

    waves, world, truth = _eval_waves(data, n, seed, codec.sample_rate, recursive)
    if not waves:
        raise AnygenError(f"--data {data!r}: no audio to evaluate")
    codec.eval()
    all_codes, recons, snrs = [], [], []
    for w in waves:
        c = codec.encode_audio(w, codec.sample_rate)  # (q, F)
        r = codec.decode_audio(c)[: len(w)]
        all_codes.append(c)
        recons.append(r)
        m = min(len(r), len(w))
        snrs.append(float(si_snr(torch.from_numpy(r[None, :m]), torch.from_numpy(np.asarray(w, np.float32)[None, :m]))[0]))
    out = {"n": float(len(waves)), "si_snr": float(np.mean(snrs)),
           "codebook_size": float(codec.codebook_size), "n_q": float(codec.n_q)}
    codes = torch.cat([c.reshape(c.shape[0], -1) for c in all_codes], dim=1)  # (q, total frames)
    levels = [usage_and_perplexity(codes[q], codec.codebook_size) for q in range(codes.shape[0])]
    out["usage"] = float(np.mean([u for u, _ in levels]))
    out["perplexity"] = float(np.mean([p for _, p in levels]))
    for q, (u, _) in enumerate(levels):
        out[f"usage_l{q}"] = u
    if truth is not None:
        out.update(world.judge_audio(waves, recons, truth, codec.sample_rate))
    sample = waves[: min(len(waves), batch_size)]
    seconds = _timed(lambda: [codec.decode_audio(codec.encode_audio(w, codec.sample_rate)) for w in sample])
    out["items_per_s"] = float(len(sample) / seconds)
    out["audio_seconds_per_s"] = float(sum(len(w) for w in sample) / codec.sample_rate / seconds)
    return out


# ---- text ----------------------------------------------------------------------------------
def evaluate_text_tokenizer(directory: Path, data: str, n: int = 500, seed: int = 1234) -> dict[str, float]:
    from anygen.codecs.text import load_text_tokenizer

    tok = load_text_tokenizer(directory)
    if data == "shapes":
        lines = [s.caption() for s in get_world("shapes").eval_scenes(n, seed)]
    elif Path(data).is_file():
        lines = [ln for ln in Path(data).read_text(encoding="utf-8").splitlines() if ln.strip()][:n]
    else:
        raise AnygenError(f"--data {data!r}: expected shapes or a text file (one line per example)")
    ids = [tok.encode(line) for line in lines]
    exact = np.mean([tok.decode(i) == line for i, line in zip(ids, lines)])
    n_tokens = sum(len(i) for i in ids)
    seconds = _timed(lambda: [tok.decode(tok.encode(line)) for line in lines])
    return {"n": float(len(lines)), "vocab_size": float(tok.vocab_size), "round_trip_exact": float(exact),
            "chars_per_token": float(sum(map(len, lines)) / max(1, n_tokens)),
            "tokens_per_line": float(n_tokens / max(1, len(lines))), "items_per_s": float(len(lines) / seconds)}


__all__ = ["evaluate_tokenizer", "evaluate_image_codec", "evaluate_audio_codec", "evaluate_text_tokenizer",
           "psnr", "ssim", "usage_and_perplexity", "PSNR_CAP"]
