"""User inputs of the Python API, checked once: text, images, audio and integers."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image as PILImage

from anygen.document import Audio
from anygen.errors import AnygenError
from anygen.io import check_duration, read_audio_file, read_image_file

MAX_PROMPT_CHARS = 20_000  # a longer prompt cannot fit any bundled model's context


def check_text(text, what: str = "prompt") -> str:
    """`text` as a non-empty, valid UTF-8 `str` of at most MAX_PROMPT_CHARS characters, without the
    whitespace at its ends (a prompt, instruction or opening is a whole text, and whole texts are
    learned without it)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise AnygenError(f"{what} is not valid UTF-8") from None
    if not isinstance(text, str):
        raise AnygenError(f"{what} must be text, got {type(text).__name__}")
    if not text.strip():
        raise AnygenError(f"{what} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable argv bytes arrive as lone surrogates
        raise AnygenError(f"{what} is not valid UTF-8") from None
    if len(text) > MAX_PROMPT_CHARS:
        raise AnygenError(f"{what} is {len(text)} characters, over the {MAX_PROMPT_CHARS}-character limit")
    return text.strip()


def check_texts(texts, what: str = "prompt") -> list[str]:
    """A non-empty list of `check_text` texts (a lone string is refused: it would be read letter by letter)."""
    if isinstance(texts, (str, bytes)):
        raise AnygenError(f"expected a list of {what}s, got a single string")
    texts = [check_text(t, what) for t in texts]
    if not texts:
        raise AnygenError(f"no {what}s given")
    return texts


def as_image(image) -> PILImage.Image:
    """A path or PIL image -> PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return read_image_file(image)
    if isinstance(image, PILImage.Image):
        return image
    raise AnygenError(f"expected an image path or PIL image, got {type(image).__name__}")


def as_audio(audio) -> tuple[np.ndarray, int]:
    """A path, `Audio` or (waveform, sample_rate) -> (float32 waveform, sample_rate), duration checked."""
    if isinstance(audio, (str, os.PathLike)):
        return read_audio_file(audio)
    if isinstance(audio, Audio):
        audio = (audio.waveform, audio.sample_rate)
    if isinstance(audio, tuple) and len(audio) == 2:
        waveform, sr = np.asarray(audio[0]), int(audio[1])  # the codec scales integer PCM
        check_duration(waveform, sr)  # before the codec spends time on it
        return waveform, sr
    raise AnygenError(f"expected an audio path, Audio or (waveform, sample_rate), got {type(audio).__name__}")


def check_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int in [low, high] (bool and float refused), else a one-line error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AnygenError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"in {low}..{high}"
        raise AnygenError(f"{name} must be {bounds}, got {value}")
    return value
