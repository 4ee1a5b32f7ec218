"""Batch sources for codec training: endless, seeded streams of image or audio tensors.

Batch `k` of a source is a pure function of `(seed, k)`, so a resumed training run sees
exactly the batches the uninterrupted run would have seen (`batches(start=k)`), and a
background thread can render ahead without touching any shared random state.

Images come as (B, 3, S, S) float tensors in [-1, 1]; audio as (B, 1, T) float in [-1, 1].
Generic sources live here (a list of images or waveforms, a folder of either); a world brings
its own (`anygen.worlds.MEDIA_SOURCES`), and `anygen.training.tokenizer_trainer.make_source`
picks the one a recipe names.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image as PILImage

from anygen.codecs.image import images_to_tensor  # the codec's pixel convention: [-1, 1], fit_image policy
from anygen.errors import AnygenError
from anygen.io import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, read_audio_file, read_image_file, subfolder_hint
from anygen.io import folder_files as list_folder


def batch_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for batch `index` of a source seeded with `seed`."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), int(stream)])


class BatchSource:
    """Base: `make_batch(rng, batch_size)`; iteration yields batch `start`, `start+1`, …"""

    def __init__(self, batch_size: int, seed: int, prefetch: int = 0):
        self.batch_size, self.seed, self.prefetch = batch_size, seed, prefetch

    def make_batch(self, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, index: int) -> torch.Tensor:
        return self.make_batch(batch_rng(self.seed, index), self.batch_size)

    def batches(self, start: int = 0) -> Iterator[torch.Tensor]:
        if self.prefetch <= 0:
            index = start
            while True:
                yield self.batch(index)
                index += 1
        yield from _prefetched(self.batch, start, self.prefetch)


def _prefetched(fn: Callable[[int], torch.Tensor], start: int, depth: int) -> Iterator[torch.Tensor]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        index = start
        while not stop.is_set():
            try:
                item = fn(index)
            except BaseException as e:  # surface in the consumer
                q.put(e)
                return
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            index += 1

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ---- images -------------------------------------------------------------------------------
class ImageListSource(BatchSource):
    """Random batches (without replacement within an epoch) from a fixed list of images."""

    def __init__(self, images: list[PILImage.Image], batch_size: int, image_size: int = 64,
                 seed: int = 0, prefetch: int = 0, what: str = "images", hflip: bool = False):
        super().__init__(batch_size, seed, prefetch)
        if not images:
            raise AnygenError(f"{what}: no images to train on")
        self.tensor = images_to_tensor(images, image_size)  # (N,3,S,S)
        self.n, self.hflip = len(images), hflip

    def batch(self, index: int) -> torch.Tensor:
        per_epoch = max(1, self.n // self.batch_size)
        epoch, pos = divmod(index, per_epoch)
        order = batch_rng(self.seed, epoch, stream=1).permutation(self.n)
        if self.n >= self.batch_size:
            idx = order[pos * self.batch_size:(pos + 1) * self.batch_size]
        else:
            idx = batch_rng(self.seed, index, stream=2).integers(0, self.n, self.batch_size)
        batch = self.tensor[torch.from_numpy(np.asarray(idx))]
        if self.hflip:
            flip = torch.from_numpy(batch_rng(self.seed, index, stream=3).random(len(batch)) < 0.5)
            batch[flip] = batch[flip].flip(-1)
        return batch


def folder_files(path: str | Path, extensions: tuple[str, ...], what: str, recursive: bool = False,
                 n: int | None = None, seed: int = 0) -> list[Path]:
    """The `what` files in folder `path` (`anygen.io.folder_files`: its own files, or every file
    below it with `recursive`); with `n`, a random sample of `n` of them drawn with `seed`, in
    listing order. No such files is an error."""
    try:
        files = list_folder(path, extensions, recursive)[0]
    except AnygenError:
        raise AnygenError(f"{path}: {what} folder not found") from None
    if not files:
        raise AnygenError(f"{path}: no {what} files ({', '.join(extensions)}) in the folder"
                          f"{subfolder_hint(path, recursive)}")
    if n is not None and n < len(files):
        files = [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), n, replace=False))]
    return files


def folder_images(path: str | Path, recursive: bool = False, n: int | None = None,
                  seed: int = 0) -> list[PILImage.Image]:
    """The images of `folder_files(path, ..., recursive, n, seed)`, read through anygen.io (a bad
    file is an error naming its path)."""
    return [read_image_file(p) for p in folder_files(path, IMAGE_EXTENSIONS, "image", recursive, n, seed)]


# ---- audio --------------------------------------------------------------------------------
def fixed_length(wave: np.ndarray, length: int, rng: np.random.Generator | None = None,
                 align: int = 1) -> np.ndarray:
    """Pad with silence or crop to `length`: randomly when `rng` is given (at a multiple of
    `align` samples), else from the start."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if len(wave) >= length:
        start = align * int(rng.integers(0, (len(wave) - length) // align + 1)) if rng is not None else 0
        return wave[start:start + length]
    return np.pad(wave, (0, length - len(wave)))


class WaveListSource(BatchSource):
    """Random crops of `clip_seconds` from a fixed list of waveforms."""

    def __init__(self, waves: list[np.ndarray], batch_size: int, sample_rate: int = 16000,
                 clip_seconds: float = 1.0, seed: int = 0, prefetch: int = 0, what: str = "audio",
                 crop_align: int = 1):
        super().__init__(batch_size, seed, prefetch)
        self.align = crop_align
        waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves if len(w)]
        if not waves:
            raise AnygenError(f"{what}: no audio to train on")
        self.waves, self.length = waves, int(round(clip_seconds * sample_rate))

    def make_batch(self, rng, batch_size):
        idx = rng.integers(0, len(self.waves), batch_size)
        clips = [fixed_length(self.waves[i], self.length, rng, self.align) for i in idx]
        return torch.from_numpy(np.stack(clips))[:, None, :]


def folder_waves(path: str | Path, sample_rate: int, recursive: bool = False, n: int | None = None,
                 seed: int = 0) -> list[np.ndarray]:
    """The WAV files of `folder_files(path, ..., recursive, n, seed)` as mono waveforms at `sample_rate`."""
    return [read_audio_file(p, sample_rate)[0]
            for p in folder_files(path, AUDIO_EXTENSIONS, "audio", recursive, n, seed)]
