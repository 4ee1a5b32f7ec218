"""Files in and out: atomic writes, and media reading that turns bad input into clear errors.

Policies (documented in the README's "Reliability" section):
- images: any PIL mode is converted to RGB (transparency composited on white, 16-bit
  scaled to 8-bit); images over `MAX_IMAGE_PIXELS` are refused (decompression bombs);
  `fit_image` resizes to a square by centre-cropping the long side, then resampling.
- audio: WAV (8/16/24/32-bit int or float) read with scipy; stereo is mixed down to mono;
  other sample rates are resampled (polyphase); NaN/Inf is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from anygen.errors import AnygenError

MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused as possible decompression bombs
MAX_AUDIO_SECONDS = 600.0


# ---- atomic writes ---------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary directory that replaces `path` as a whole once the block succeeds.

    A crash inside the block leaves the previous `path` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old.{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- images -----------------------------------------------------------------------------
def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Any PIL image -> 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return PILImage.fromarray(arr, mode="L").convert("RGB")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        arr = np.clip(arr if arr.max() > 1.0 else arr * 255.0, 0, 255).astype(np.uint8)
        return PILImage.fromarray(arr, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_image(image: PILImage.Image, size: int) -> PILImage.Image:
    """RGB, centre-cropped to a square, resized to `size`×`size` (bicubic down, nearest-free)."""
    image = to_rgb(image)
    w, h = image.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    if image.size != (size, size):
        image = image.resize((size, size), PILImage.Resampling.BICUBIC)
    return image


def read_image_file(path: str | os.PathLike) -> PILImage.Image:
    """Open an image file fully (so errors surface here), guarded against decompression bombs."""
    path = Path(path)
    if not path.exists():
        raise AnygenError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise AnygenError(f"{path}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise AnygenError(f"{path}: image is {im.width}x{im.height}, over the "
                                      f"{MAX_IMAGE_PIXELS}-pixel limit")
                im.load()
                return im.copy()
    except AnygenError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise AnygenError(f"{path}: image is too large (decompression-bomb guard, limit "
                          f"{MAX_IMAGE_PIXELS} pixels)") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise AnygenError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


# ---- audio ------------------------------------------------------------------------------
def to_mono_float(data: np.ndarray) -> np.ndarray:
    """Integer or float PCM, (T,) or (T, C) -> float32 mono in [-1, 1]."""
    data = np.asarray(data)
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        scale = max(abs(info.min), info.max)
        offset = 0.0 if data.dtype.kind == "i" else (info.max + 1) / 2
        data = (data.astype(np.float64) - offset) / scale
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1) if data.shape[1] <= 16 else data.mean(axis=0)
    elif data.ndim != 1:
        raise AnygenError(f"audio must be 1-D or 2-D, got shape {data.shape}")
    return data


def check_waveform(waveform: np.ndarray, what: str = "audio") -> np.ndarray:
    waveform = np.asarray(waveform, dtype=np.float32)
    if not np.all(np.isfinite(waveform)):
        raise AnygenError(f"{what}: waveform contains NaN or Inf samples")
    return waveform


def check_duration(waveform: np.ndarray, sample_rate: int, what: str = "audio") -> None:
    """Refuse audio longer than `MAX_AUDIO_SECONDS` ((T,), (T, C) or (C, T) samples)."""
    n = max(np.shape(waveform) or (0,))
    if sample_rate > 0 and n / sample_rate > MAX_AUDIO_SECONDS:
        raise AnygenError(f"{what}: audio is {n / sample_rate:.0f} s long, over the {MAX_AUDIO_SECONDS:.0f} s limit")


def resample(waveform: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling (scipy) between integer sample rates."""
    if sr_from == sr_to:
        return np.asarray(waveform, dtype=np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(int(sr_to), int(sr_from)).limit_denominator(1000)
    return resample_poly(waveform, ratio.numerator, ratio.denominator).astype(np.float32)


def read_audio_file(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a WAV file as float32 mono; resample to `sample_rate` when given."""
    path = Path(path)
    if not path.exists():
        raise AnygenError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AnygenError(f"{path}: audio file is empty (0 bytes)")
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            sr, data = wavfile.read(path)
    except Exception as e:
        raise AnygenError(f"{path}: cannot read audio, expected a WAV file ({type(e).__name__}: {e})") from None
    if data.size == 0:
        raise AnygenError(f"{path}: audio file has no samples")
    if sr <= 0:
        raise AnygenError(f"{path}: invalid sample rate {sr} Hz in the WAV header")
    waveform = check_waveform(to_mono_float(data), str(path))
    check_duration(waveform, sr, str(path))
    if sample_rate is not None and sr != sample_rate:
        waveform, sr = resample(waveform, sr, sample_rate), sample_rate
    return waveform, int(sr)
