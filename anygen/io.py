"""Files in and out: atomic writes, and media reading that turns bad input into clear errors.

Policies (documented in the README's "Reliability" section):
- images: only the formats in `IMAGE_FORMATS` are opened (PIL never tries another
  plugin, so no Ghostscript for EPS); any PIL mode is converted to RGB (transparency
  composited on white, 16-bit scaled to 8-bit); float images with NaN/Inf are refused;
  images over `MAX_IMAGE_PIXELS` are refused (decompression bombs); `fit_image` resizes
  to a square by centre-cropping the long side, then resampling.
- audio: WAV (8/16/24/32-bit int or float) read with scipy after its header is checked
  (duration, sample rate, sample count) without decoding the samples; integer PCM is scaled so full
  scale is [-1, 1]; float audio whose peak exceeds 1 is peak-normalised; channels
  (from the header) are averaged to mono; other sample rates are resampled (polyphase);
  NaN/Inf is refused.
- files named inside a document or data file (`file_inside`) must stay inside its folder.
- output paths are checked before any work (`check_output_path`): not empty, a known file ending,
  not an existing folder where a file goes (or a file where a folder goes), not under a file,
  and in a folder this process may write.
- error messages name the file and the problem; they never quote the file's contents.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import warnings
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from anygen.errors import AnygenError, short_repr

MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused as possible decompression bombs
# the PIL plugins anygen opens: plain raster formats decoded in-process. PostScript/EPS (which
# PIL hands to Ghostscript) and every other plugin are never tried on untrusted files.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
MAX_AUDIO_SECONDS = 600.0
MAX_SAMPLE_RATE = 768_000  # the highest rate in common use; a larger header value is a broken file
MAX_AUDIO_SAMPLES = 1 << 27  # frames x channels a WAV may hold (600 s of 48 kHz in 4 channels; 1 GB as float64)
WAV_ENCODINGS = (1, 3, 0xFFFE)  # format tags of PCM, IEEE float and WAVE_FORMAT_EXTENSIBLE
MAX_WAV_CHUNKS = 1000  # header chunks skipped while looking for the audio data
MAX_JSON_BYTES = 64 * 1024 * 1024  # documents, configs and metadata are far smaller
# the endings an image may be saved under (PIL's registry picks the format from the ending):
# formats anygen also reads (`IMAGE_FORMATS`)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
# the file names a folder of media is listed by (one list for every folder reader: data loaders,
# codec training, codec evaluation)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
AUDIO_EXTENSIONS = (".wav", ".wave")


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
    if path.exists() and not path.is_dir():
        raise AnygenError(f"{path} is a file, not a directory: it is not replaced by one")
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


def save_image(image: PILImage.Image, path: str | os.PathLike) -> Path:
    """Write `image` atomically in the format its ending names (one of `IMAGE_SUFFIXES`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise AnygenError(f"{path}: unknown image file ending {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")
    buf = io.BytesIO()
    image.save(buf, format=PILImage.registered_extensions()[suffix])
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---- checking output paths ------------------------------------------------------------------
def writable_dir(directory: Path) -> bool:
    """Whether this process may create files in the existing `directory` (permissions and read-only
    filesystems, as the OS's access() sees them)."""
    return os.access(directory, os.W_OK | os.X_OK)


def check_output_path(path, what: str, suffixes: tuple[str, ...] | None = None,
                      directory: bool = False) -> Path:
    """`path` as the Path an output will be written to, checked before any work is done.

    A file output (`directory=False`) must end in one of `suffixes` (any ending when None) and not
    be an existing directory; a directory output must not be an existing file. Either must not lie
    under a file, and the deepest folder of it that exists must be writable (`writable_dir`);
    missing folders are fine (writing creates them). Anything else is an AnygenError naming `what`.
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip():
        raise AnygenError(f"{what}: expected a path, got {short_repr(path)}")
    if "\0" in text:
        raise AnygenError(f"{what}: the path contains a NUL character")
    path = Path(text)
    if directory and path.exists() and not path.is_dir():
        raise AnygenError(f"{what}: {path} is a file; expected a directory")
    if not directory:
        if path.is_dir():
            raise AnygenError(f"{what}: {path} is a directory; expected a file name")
        if suffixes is not None and path.suffix.lower() not in suffixes:
            ending = f"ending {path.suffix!r}" if path.suffix else "no file ending"
            raise AnygenError(f"{what}: {path} has {ending} (expected {', '.join(suffixes)})")
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AnygenError(f"{what}: cannot write {path}: {existing} is a file, not a directory")
    if not writable_dir(existing):
        raise AnygenError(f"{what}: cannot write {path}: {existing} is not writable "
                          "(read-only filesystem or no permission)")
    return path


# ---- reading files -----------------------------------------------------------------------
def file_inside(folder: str | os.PathLike, name, what: str) -> Path:
    """`folder / name` for a relative `name` that stays inside `folder`, symlinks resolved.

    Refuses (AnygenError naming `what`) a non-string or empty name, an absolute path, any
    `..` component, and a path whose resolved location leaves the folder (a symlink).
    """
    if not isinstance(name, str) or not name.strip():
        raise AnygenError(f"{what}: expected a file name, got {short_repr(name)}")
    rel = Path(name)
    if rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise AnygenError(f"{what}: {short_repr(name)} must be a relative path inside {folder} "
                          "(no absolute paths or '..')")
    try:
        root = Path(folder).resolve()
        path = (root / rel).resolve()
    except (OSError, ValueError) as e:  # a loop of symlinks, a NUL byte
        raise AnygenError(f"{what}: {short_repr(name)} is not a usable path ({type(e).__name__})") from None
    if not path.is_relative_to(root):
        raise AnygenError(f"{what}: {short_repr(name)} leads outside {folder} (through a symlink)")
    return path


def folder_files(directory: str | os.PathLike, extensions: tuple[str, ...], recursive: bool = False,
                 ) -> tuple[list[Path], list[Path]]:
    """(media files, other files) in `directory`, each list sorted: the folder's own files, or with
    `recursive` every file below it. Hidden files and folders (".name") are left out of both.

    Every folder reader lists files here, so one folder means the same files everywhere.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AnygenError(f"{directory}: no such folder")
    walk = directory.rglob("*") if recursive else directory.iterdir()
    media, other = [], []
    for path in sorted(walk):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue
        if not (path.is_file() or path.is_symlink()):
            continue
        (media if path.suffix.lower() in extensions else other).append(path)
    return media, other


def subfolder_hint(directory: str | os.PathLike, recursive: bool) -> str:
    """" (it has N sub-folders: set recursive: true to read them)" when a flat listing found nothing
    but the folder has sub-folders; else ""."""
    if recursive or not Path(directory).is_dir():
        return ""
    subs = [p for p in Path(directory).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return f" (it has {len(subs)} sub-folders: set recursive: true to read them)" if subs else ""


def _check_regular_file(path: Path, kind: str) -> None:
    """Refuse a missing path, a folder or a device/FIFO (which could block or never end), an empty file."""
    if not path.exists():
        raise AnygenError(f"{path}: {kind} file not found")
    if not path.is_file():
        raise AnygenError(f"{path}: cannot read {kind}: not a regular file")
    if path.stat().st_size == 0:
        raise AnygenError(f"{path}: {kind} file is empty (0 bytes)")


def read_json_file(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES):
    """Parse a JSON file; a missing, oversized, non-UTF-8, malformed or too deeply nested file is one AnygenError."""
    path = Path(path)
    if not path.is_file():
        raise AnygenError(f"{path}: " + ("not a regular file" if path.exists() else "file not found"))
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AnygenError(f"{path}: over the {max_bytes}-byte limit for a JSON file")
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise AnygenError(f"{path}: not valid JSON (not UTF-8 text at byte {e.start})") from None
    except RecursionError:
        raise AnygenError(f"{path}: not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as e:
        raise AnygenError(f"{path}: not valid JSON ({e})") from None
    except ValueError:  # an integer over Python's digit limit
        raise AnygenError(f"{path}: not valid JSON (a number with too many digits)") from None


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
        check_finite_pixels(image)
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


def check_finite_pixels(image: PILImage.Image, what: str = "image") -> None:
    """Refuse a float image (mode F) holding NaN or Inf."""
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise AnygenError(f"{what}: image has NaN or Inf pixel values")


def read_image_file(path: str | os.PathLike) -> PILImage.Image:
    """Open an image file fully (so errors surface here), guarded against decompression bombs.

    Only `IMAGE_FORMATS` are tried; anything else is "not a PNG/JPEG/... image".
    """
    path = Path(path)
    _check_regular_file(path, "image")
    return _open_image(path, str(path))


def read_image_bytes(data: bytes, what: str) -> PILImage.Image:
    """`read_image_file` for an encoded image held in memory (a dataset record); errors name `what`."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise AnygenError(f"{what}: image is empty (0 bytes)")
    return _open_image(io.BytesIO(bytes(data)), what)


def _open_image(source, what: str) -> PILImage.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(source, formats=IMAGE_FORMATS) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise AnygenError(f"{what}: image is {im.width}x{im.height}, over the "
                                      f"{MAX_IMAGE_PIXELS}-pixel limit")
                im.load()
                image = im.copy()
    except AnygenError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise AnygenError(f"{what}: image is too large (decompression-bomb guard, limit "
                          f"{MAX_IMAGE_PIXELS} pixels)") from None
    except PILImage.UnidentifiedImageError:
        raise AnygenError(f"{what}: cannot read image: not a {'/'.join(IMAGE_FORMATS)} image") from None
    except Exception as e:  # PIL raises many types for corrupt data; their messages may quote the data
        problem = "the file is truncated" if "truncated" in str(e).lower() else f"corrupt data ({type(e).__name__})"
        raise AnygenError(f"{what}: cannot read image: {problem}") from None
    check_finite_pixels(image, what)
    return image


# ---- audio ------------------------------------------------------------------------------
def to_mono_float(data: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Integer or float PCM, (T,) or 2-D -> float32 mono.

    Integer PCM is scaled so full scale is [-1, 1] (unsigned PCM is centred first: 8-bit WAV
    is unsigned); channels are averaged; float audio whose peak exceeds 1 is divided by its
    peak. `channel_axis` says which axis of 2-D data holds the channels (a WAV header says
    so); without it the shorter axis is taken as the channels, (T, C) or (C, T).
    """
    data = np.asarray(data)
    if data.dtype.kind in "iu":
        half = 2.0 ** (data.dtype.itemsize * 8 - 1)
        data = (data.astype(np.float64) - (half if data.dtype.kind == "u" else 0.0)) / half
    elif data.dtype.kind == "b":
        data = data.astype(np.float64)
    elif data.dtype.kind == "f":
        data = data.astype(np.float64)
        peak = float(np.max(np.abs(data))) if data.size else 0.0
        if np.isfinite(peak) and peak > 1.0:
            data = data / peak
    if data.ndim == 2:
        if channel_axis is None:
            channel_axis = 1 if data.shape[1] <= data.shape[0] else 0
        data = data.mean(axis=channel_axis)
    elif data.ndim != 1:
        raise AnygenError(f"audio must be 1-D or 2-D, got shape {data.shape}")
    return data.astype(np.float32)


def check_waveform(waveform: np.ndarray, what: str = "audio") -> np.ndarray:
    waveform = np.asarray(waveform, dtype=np.float32)
    if not np.all(np.isfinite(waveform)):
        raise AnygenError(f"{what}: waveform contains NaN or Inf samples")
    return waveform


def check_duration(waveform: np.ndarray, sample_rate: int, what: str = "audio") -> None:
    """Refuse audio longer than `MAX_AUDIO_SECONDS` ((T,), (T, C) or (C, T) samples)."""
    check_seconds(max(np.shape(waveform) or (0,)), sample_rate, what)


def check_seconds(frames: int, sample_rate: int, what: str = "audio") -> None:
    """Refuse `frames` samples at `sample_rate` when they last longer than `MAX_AUDIO_SECONDS`."""
    if sample_rate > 0 and frames / sample_rate > MAX_AUDIO_SECONDS:
        raise AnygenError(f"{what}: audio is {frames / sample_rate:.0f} s long, over the "
                          f"{MAX_AUDIO_SECONDS:.0f} s limit")


def resample(waveform: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling (scipy) between integer sample rates."""
    if sr_from == sr_to:
        return np.asarray(waveform, dtype=np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(int(sr_to), int(sr_from)).limit_denominator(1000)
    return resample_poly(waveform, ratio.numerator, ratio.denominator).astype(np.float32)


class _NotWav(Exception):
    """A WAV header problem, worded without quoting the file."""


def wav_header(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) from a WAV file's header; the samples are not read.

    `frames` counts the frames actually present (a data chunk may claim more than the file holds).
    Raises AnygenError for anything that is not a PCM or float RIFF/RIFX/RF64 WAVE file.
    """
    path = Path(path)
    try:
        return _wav_header(path)
    except _NotWav as e:
        raise AnygenError(f"{path}: cannot read audio, expected a WAV file ({e})") from None


def _wav_header(path: Path) -> tuple[int, int, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RIFX", b"RF64") or riff[8:12] != b"WAVE":
            raise _NotWav("no RIFF/WAVE header")
        endian = ">" if riff[:4] == b"RIFX" else "<"
        fmt = None
        for _ in range(MAX_WAV_CHUNKS):
            head = f.read(8)
            if len(head) < 8:
                raise _NotWav("the file ends before the audio data")
            kind, length = head[:4], struct.unpack(endian + "I", head[4:])[0]
            if kind == b"fmt ":
                body = f.read(16)
                if len(body) < 16 or length < 16:
                    raise _NotWav("truncated format chunk")
                fmt = struct.unpack(endian + "HHIIHH", body)
                f.seek(length - 16 + (length & 1), os.SEEK_CUR)
            elif kind == b"data":
                if fmt is None:
                    raise _NotWav("audio data before the format chunk")
                tag, channels, rate, _, block_align, _ = fmt
                if tag not in WAV_ENCODINGS:
                    raise _NotWav("unsupported encoding: only PCM and float WAV files are read")
                if channels == 0 or block_align == 0:
                    raise _NotWav("the header says 0 channels or 0-byte frames")
                return rate, channels, min(length, size - f.tell()) // block_align
            else:
                f.seek(length + (length & 1), os.SEEK_CUR)
    raise _NotWav(f"no audio data in the first {MAX_WAV_CHUNKS} chunks")


def read_audio_file(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a WAV file as float32 mono; resample to `sample_rate` when given.

    The header is checked first (sample rate, duration): a file over `MAX_AUDIO_SECONDS`
    is refused before any sample is decoded.
    """
    path = Path(path)
    _check_regular_file(path, "audio")
    sr, channels, frames = wav_header(path)
    if not 0 < sr <= MAX_SAMPLE_RATE:
        raise AnygenError(f"{path}: invalid sample rate {sr} Hz in the WAV header")
    if frames == 0:
        raise AnygenError(f"{path}: audio file has no samples")
    check_seconds(frames, sr, str(path))
    if frames * channels > MAX_AUDIO_SAMPLES:
        raise AnygenError(f"{path}: {frames} frames of {channels} channels, over the {MAX_AUDIO_SAMPLES}-sample limit")
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            sr, data = wavfile.read(path)
    except Exception as e:  # scipy's messages may quote the file's bytes
        raise AnygenError(f"{path}: cannot read audio, expected a WAV file (corrupt or unsupported data: "
                          f"{type(e).__name__})") from None
    if data.size == 0:
        raise AnygenError(f"{path}: audio file has no samples")
    # scipy returns (frames, channels) for a multichannel header, (frames,) for mono
    waveform = check_waveform(to_mono_float(data, channel_axis=1 if data.ndim == 2 else None), str(path))
    if sample_rate is not None and sr != sample_rate:
        waveform, sr = resample(waveform, sr, sample_rate), sample_rate
    return waveform, int(sr)
