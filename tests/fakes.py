"""Tiny deterministic stand-ins for the image and audio codecs, and a test MultimodalTokenizer.

They have the codecs' surface (see anygen/codecs/image.py, audio.py) and no weights:
- FakeImageCodec: the image is resized to `grid` and each cell's mean grey level is
  quantised to `codebook_size` levels; decoding paints the cells grey.
- FakeAudioCodec: `hop` samples per frame; level 0 codes the frame's RMS, the higher
  levels its zero-crossing rate; decoding plays a sine of that loudness.
Both count their calls, so tests can check caching and batching.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from anygen.codecs.text import train_text_tokenizer
from anygen.tokenizer import MultimodalTokenizer


class FakeImageCodec:
    def __init__(self, codebook_size: int = 16, grid=(2, 2)):
        self.codebook_size, self.grid = codebook_size, tuple(grid)
        self.calls = 0  # encode_images calls
        self.images_encoded = 0

    def encode_images(self, images: list) -> torch.Tensor:
        self.calls += 1
        self.images_encoded += len(images)
        h, w = self.grid
        out = []
        for im in images:
            grey = np.asarray(im.convert("L").resize((w, h), PILImage.Resampling.BOX), dtype=np.float32)
            out.append(np.clip(grey / 256.0 * self.codebook_size, 0, self.codebook_size - 1).astype(np.int64))
        return torch.from_numpy(np.stack(out)) if out else torch.zeros((0, h, w), dtype=torch.long)  # (B, H, W)

    def decode_images(self, codes: torch.Tensor) -> list:
        grey = ((codes.float() + 0.5) * 256.0 / self.codebook_size).clamp(0, 255).to(torch.uint8).numpy()
        return [PILImage.fromarray(g, mode="L").resize((8, 8), PILImage.Resampling.NEAREST).convert("RGB")
                for g in grey]

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "fake.json").write_text(json.dumps({"codebook_size": self.codebook_size, "grid": self.grid}))
        return directory

    @classmethod
    def load(cls, directory) -> "FakeImageCodec":
        d = json.loads((Path(directory) / "fake.json").read_text())
        return cls(d["codebook_size"], tuple(d["grid"]))

    def eval(self):
        return self

    # the latent API a codec-space diffusion head reads: one FSQ-like channel, code k <-> level k
    @property
    def config(self):
        from types import SimpleNamespace

        return SimpleNamespace(quantizer="fsq", fsq_levels=[self.codebook_size])

    def codes_to_embeddings(self, codes: torch.Tensor) -> torch.Tensor:  # (B, h, w) -> (B, 1, h, w) in [-1, 1]
        return (codes.float() / (self.codebook_size - 1) * 2 - 1)[:, None]

    def embeddings_to_codes(self, z: torch.Tensor) -> torch.Tensor:  # the nearest level
        return ((z[:, 0].clamp(-1, 1) + 1) / 2 * (self.codebook_size - 1)).round().long()

    def decoder(self, z: torch.Tensor) -> torch.Tensor:  # (B, 1, h, w) -> grey pixels (B, 3, 8, 8)
        return torch.nn.functional.interpolate(z.float(), size=(8, 8), mode="nearest").repeat(1, 3, 1, 1)

    latent_channels = 1

    def from_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(-1, 1)


class FakeAudioCodec:
    def __init__(self, codebook_size: int = 8, n_q: int = 2, sample_rate: int = 8000, hop: int = 1000):
        self.codebook_size, self.n_q, self.sample_rate, self.hop = codebook_size, n_q, sample_rate, hop
        self.calls = 0

    def encode_audio(self, wave: np.ndarray, sr: int) -> torch.Tensor:
        self.calls += 1
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        n_frames = max(1, -(-len(wave) // self.hop))
        wave = np.pad(wave, (0, n_frames * self.hop - len(wave))).reshape(n_frames, self.hop)
        rms = np.sqrt((wave ** 2).mean(axis=1))
        zcr = (np.diff(np.sign(wave), axis=1) != 0).mean(axis=1)
        k = self.codebook_size
        codes = [np.clip(rms * 2 * k, 0, k - 1)] + [np.clip(zcr * k * (lvl + 1), 0, k - 1) for lvl in range(self.n_q - 1)]
        return torch.from_numpy(np.stack(codes).astype(np.int64))  # (n_q, F)

    def decode_audio(self, codes: torch.Tensor) -> np.ndarray:
        amp = (codes[0].float().numpy() + 0.5) / (2 * self.codebook_size)
        t = np.arange(self.hop) / self.sample_rate
        return np.concatenate([a * np.sin(2 * np.pi * 440 * t) for a in amp]).astype(np.float32)

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "fake.json").write_text(json.dumps(
            {"codebook_size": self.codebook_size, "n_q": self.n_q, "sample_rate": self.sample_rate, "hop": self.hop}))
        return directory

    @classmethod
    def load(cls, directory) -> "FakeAudioCodec":
        return cls(**json.loads((Path(directory) / "fake.json").read_text()))

    def eval(self):
        return self


CORPUS = [
    "a large red circle at the top left and a small blue square at the center",
    "a small green triangle at the bottom right, a large yellow square at the top and a small purple circle at the left",
    "make the red circle blue", "move the blue square to the left", "remove the green triangle",
    "add a small orange triangle at the bottom", "then the red circle turns blue", "then the square disappears",
    "the notes C D E F G A B", "a large orange circle at the right", "make the small purple square large",
]


def make_tokenizer(image: bool = True, audio: bool = True, image_keep: bool = False) -> MultimodalTokenizer:
    """A MultimodalTokenizer with a small sentencepiece model and the fake codecs."""
    text = train_text_tokenizer(CORPUS * 4, vocab_size=320)
    return MultimodalTokenizer(text, FakeImageCodec() if image else None, FakeAudioCodec() if audio else None,
                               image_keep=image_keep)


def save_tokenizer(tokenizer: MultimodalTokenizer, directory) -> Path:
    """Save a fake-codec tokenizer so `MultimodalTokenizer.load` can open it (codec classes patched in by the test)."""
    return tokenizer.save(directory)


def use_fake_codecs(monkeypatch) -> None:
    """Make `MultimodalTokenizer.load` build these fake codecs from the directories they saved."""
    import anygen.codecs.audio as audio_mod
    import anygen.codecs.image as image_mod

    monkeypatch.setattr(image_mod, "ImageCodec", FakeImageCodec)
    monkeypatch.setattr(audio_mod, "AudioCodec", FakeAudioCodec)
