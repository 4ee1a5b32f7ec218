"""The user's own data as a world (`User`), and its loaders: image folders, audio folders,
JSONL documents, edit pairs.

`User(UserData(...))` is the world a recipe's `user:` section builds: its tasks are those
its data can teach (captioned images: text_to_image and image_to_text; transcribed audio:
text_to_audio and audio_to_text; edit pairs: edit and describe_edit; documents and
uncaptioned media: document), its text corpus is the data's text, and it has no plan
format. Unlike a synthetic world it is finite: `UserTasks.examples(split, rng)` lists every
example of a split once (`repeat` times in train), and `sample` draws one of them.

Every loader returns what it loaded *and* what it did not: each bad file or record
(missing, zero-byte, corrupt, unsupported format, non-UTF-8 line, bad JSON, bad fields)
is reported as `(path, reason)`. `on_error` chooses what happens to them:

- `"skip"` (default): leave them out, list them in `result.skipped` and log one warning
  line (`skipped 3 of 50 files in photos/: a.png (image file is empty (0 bytes)), ...`);
- `"fail"`: raise `AnygenError` naming the first bad file (and line) and the reason.

Nothing is dropped silently: `result.total == len(result) + len(result.skipped)`, and
files in a folder that are not media (README.txt, ...) are listed in `result.ignored`.
Media are read with `anygen.io` (images converted to RGB, decompression-bomb guard;
WAV only, mixed to mono, optionally resampled). A folder or JSONL file that does not
exist, or that has no records at all, is an error under either policy.

Sidecar and record formats (paths are relative to the folder or the JSONL file; a JSONL
record's media must lie inside the JSONL file's folder: no absolute paths, `..` or
symlinks out of it):

    captions.jsonl     {"file": "a.png", "caption": "a red apple"}
    transcripts.jsonl  {"file": "a.wav", "text": "hello there"}
    documents.jsonl    {"segments": [{"type": "text", "text": "..."},
                                     {"type": "image", "file": "img/a.png"},
                                     {"type": "audio", "file": "a.wav"}]}
    edits.jsonl        {"source": "a.png", "instruction": "make it blue", "target": "b.png"}
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import os
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from PIL import Image as PILImage

from anygen.config import ConfigError, check, choice
from anygen.document import Audio, Document, Image, Segment, Text
from anygen.errors import AnygenError, short_repr
from anygen.io import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, file_inside, fit_image, folder_files, read_audio_file,
                       read_image_bytes, read_image_file, subfolder_hint, to_rgb)
from anygen.tasks.layouts import (Spec, TaskMix, audio_to_text, captioned_sequence, describe_edit, document, edit,
                                  image_to_text, text_to_audio, text_to_image)

log = logging.getLogger(__name__)

OTHER_AUDIO_EXTENSIONS = (".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif")
ON_ERROR = ("skip", "fail")
SUMMARY_SHOWN = 5  # bad files named in the warning line
SEQUENCE_ITEMS = (2, 4)  # captioned images in one captioned sequence (fewest, most)
MAX_SEQUENCES = 10.0  # sequences per captioned image: more only repeats the same pairs
VAL_STREAM = 7919  # prime: the val/train assignment of items draws from its own seed stream
AUTO = "auto"  # a sidecar setting: the folder's default sidecar (.jsonl or .csv), if it has one
CAPTION_SIDECARS = ("captions.jsonl", "captions.csv")
TRANSCRIPT_SIDECARS = ("transcripts.jsonl", "transcripts.csv")
LABELS = ("none", "subfolders")  # where an image folder's class labels come from
# dataset columns tried, in order, when a recipe names none (an Image-typed column wins for images)
IMAGE_COLUMNS = ("image", "img", "picture", "photo", "png", "jpg")
TEXT_COLUMNS = ("caption", "text", "captions", "sentence", "prompt", "description", "label", "labels")
# WebDataset sample members tried, in order, when a recipe names none
WDS_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp")
WDS_TEXT_KEYS = ("txt", "caption", "text", "json", "cls")
JSON_TEXT_FIELDS = ("caption", "text")  # the caption inside a sample's .json member
ROW_BATCH = 256  # dataset rows converted to Python at a time


# ---- results --------------------------------------------------------------------------------
@dataclass
class _Report:
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path[:line], reason)
    ignored: list[str] = field(default_factory=list)  # files in a folder that are not media
    total: int = 0  # records or media files considered: loaded + skipped
    what: str = "files"
    where: str = ""
    unit: str = "line"  # what "WHERE:N" counts: a JSONL or CSV line, a dataset row

    def _short(self, path: str) -> str:
        """A skipped path relative to the folder, or "line N" of the JSONL file."""
        if path.startswith(self.where + ":"):
            return f"{self.unit} {path[len(self.where) + 1:]}"
        if path.startswith(self.where + os.sep):
            return path[len(self.where) + 1:]
        return path

    def summary(self) -> str:
        """One line: how many were skipped out of how many, naming the first few and why."""
        loaded = self.total - len(self.skipped)
        if not self.skipped:
            line = f"loaded {loaded} of {self.total} {self.what} in {self.where}"
        else:
            shown = ", ".join(f"{self._short(p)} ({r})" for p, r in self.skipped[:SUMMARY_SHOWN])
            more = f", and {len(self.skipped) - SUMMARY_SHOWN} more" if len(self.skipped) > SUMMARY_SHOWN else ""
            line = f"skipped {len(self.skipped)} of {self.total} {self.what} in {self.where}: {shown}{more}"
        if self.ignored:
            line += f" ({len(self.ignored)} other files ignored)"
        return line


@dataclass
class LoadResult(_Report):
    """Loaded Documents (with the file or line each came from) and the bad files left out."""

    documents: list[Document] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # parallel to documents
    uncaptioned: int = 0  # media loaded without a caption/transcript (no sidecar entry)

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)


@dataclass
class EditPair:
    instruction: str
    source: PILImage.Image
    target: PILImage.Image

    def document(self) -> Document:
        """Source image, instruction, target image."""
        return Document.of(self.source, self.instruction, self.target)


@dataclass
class EditPairsResult(_Report):
    pairs: list[EditPair] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # "file.jsonl:LINE" parallel to pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[EditPair]:
        return iter(self.pairs)


class _Collector:
    """Applies the on_error policy to each bad item and counts everything."""

    def __init__(self, report: _Report, on_error: str):
        if on_error not in ON_ERROR:
            raise AnygenError(f"on_error must be one of {', '.join(ON_ERROR)}; got {on_error!r}")
        self.report, self.on_error = report, on_error

    def bad(self, where: str, reason: str) -> None:
        if self.on_error == "fail":
            raise AnygenError(f"{where}: {reason}")
        self.report.skipped.append((where, reason))

    def finish(self) -> None:
        if self.report.skipped:
            log.warning(self.report.summary())


def _reason(err: Exception, path: Path) -> str:
    """The reader's message without the path prefix it repeats."""
    msg = str(err)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _read_image(path: Path, image_size: int | None) -> PILImage.Image:
    image = read_image_file(path)
    return fit_image(image, image_size) if image_size else to_rgb(image)


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise AnygenError(f"image_size must be a positive integer or None, got {image_size!r}")


# ---- JSONL ----------------------------------------------------------------------------------
def _jsonl_records(path: Path, collector: _Collector, count: bool = True) -> Iterator[tuple[str, dict]]:
    """Yield ("file:LINE", record) for each good line; bad lines go to the collector.

    Blank lines are not records. Lines are decoded one by one, so one non-UTF-8 line
    does not spoil the file.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AnygenError(f"{path}: cannot read ({e.strerror or e})") from None
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if count:
            collector.report.total += 1
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            collector.bad(where, f"line is not valid UTF-8 (byte {e.start})")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            collector.bad(where, f"bad JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(record, dict):
            collector.bad(where, f"expected a JSON object, got {type(record).__name__}")
            continue
        yield where, record


def _relative_file(base: Path, value, field_name: str) -> Path:
    """A media path from a JSONL record: relative, and inside the JSONL file's folder."""
    if not isinstance(value, str) or not value.strip():
        raise AnygenError(f"'{field_name}' must be a non-empty file path string, got {short_repr(value)}")
    return file_inside(base, value, f"'{field_name}'")


def check_caption_template(template: str, labelled: bool | None) -> None:
    """A caption template may name only `{label}`; with class labels (`labelled`) it must, without
    them it must not (None: either).

    Raises ValueError (a config check turns it into an error naming the field).
    """
    if not template:
        return
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"{template!r} is not a valid template ({e})") from None
    if names - {"label"}:
        raise ValueError(f"{template!r} has an unknown field {{{sorted(names - {'label'})[0]}}} "
                         "(the one field is {label})")
    if labelled is True and "label" not in names:
        raise ValueError(f"{template!r} must contain {{label}} (labels: subfolders names each image's class)")
    if labelled is False and "label" in names:
        raise ValueError(f"{template!r} uses {{label}}, which needs labels: subfolders")


def _sidecar_path(directory: Path, name: str | None, defaults: tuple[str, ...]) -> Path | None:
    """The sidecar a setting names: None/"" none; "auto" the one of `defaults` the folder has;
    a default name that is absent: none; any other name must exist."""
    if not name:
        return None
    if name == AUTO:
        present = [directory / d for d in defaults if (directory / d).exists()]
        if len(present) > 1:
            raise AnygenError(f"{directory}: both {' and '.join(p.name for p in present)}; "
                              "name the one to use (captions: FILE)")
        return present[0] if present else None
    path = Path(name) if Path(name).is_absolute() else directory / name
    if not path.exists():
        if name in defaults:
            return None
        raise AnygenError(f"{path}: sidecar file not found")
    return path


def _csv_records(path: Path, collector: _Collector) -> Iterator[tuple[str, dict]]:
    """Yield ("file:LINE", row) for each row of a CSV file with a header row; bad rows go to the collector."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise AnygenError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise AnygenError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise AnygenError(f"{path}: bad CSV header ({e})") from None
    if not header or "file" not in header:
        raise AnygenError(f"{path}: needs a header row naming a 'file' column and a caption/text column")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            collector.bad(f"{path}:{reader.line_num}", f"bad CSV ({e})")
            continue
        where = f"{path}:{reader.line_num}"
        if None in row or None in row.values():
            collector.bad(where, f"expected {len(header)} fields ({', '.join(header)})")
            continue
        yield where, row


def _sidecar(directory: Path, name: str | None, defaults: tuple[str, ...], text_keys: tuple[str, ...],
             collector: _Collector) -> tuple[Path | None, dict[str, tuple[str, str]]]:
    """The sidecar file (JSONL, or CSV by its suffix) and its mapping relative file -> (text, "sidecar:LINE")."""
    path = _sidecar_path(directory, name, defaults)
    if path is None:
        return None, {}
    out: dict[str, tuple[str, str]] = {}
    skipped_before = len(collector.report.skipped)
    records = (_csv_records(path, collector) if path.suffix.lower() == ".csv"
               else _jsonl_records(path, collector, count=False))
    for where, record in records:
        file = record.get("file")
        key = next((k for k in text_keys if k in record), None)
        if not isinstance(file, str) or not file.strip():
            collector.bad(where, "missing or empty 'file'")
            continue
        if key is None or not isinstance(record[key], str) or not record[key].strip():
            collector.bad(where, f"missing or empty '{text_keys[0]}' string for {file}")
            continue
        rel = Path(file).as_posix()
        if rel in out:
            collector.bad(where, f"second entry for {file} (first on line {out[rel][1].rsplit(':', 1)[1]})")
            continue
        out[rel] = (record[key], where)
    collector.report.total += len(collector.report.skipped) - skipped_before  # bad lines count as entries
    return path, out


def _labelled_files(directory: Path, extensions: tuple[str, ...], recursive: bool, labels: str,
                    collector: _Collector) -> tuple[list[tuple[Path, str | None]], list[Path]]:
    """((media file, class label or None) pairs, other files). With `labels="subfolders"` each
    sub-folder is a class named by the folder; an empty class folder and a media file outside
    the class folders are reported."""
    if labels == "none":
        media, other = folder_files(directory, extensions, recursive)
        return [(p, None) for p in media], other
    media, other = folder_files(directory, extensions, recursive=False)
    for path in media:
        collector.report.total += 1
        collector.bad(str(path), "not inside a class sub-folder (labels: subfolders)")
    classes = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise AnygenError(f"{directory}: labels: subfolders, but the folder has no sub-folders (one per class)")
    pairs = []
    for folder in classes:
        files, rest = folder_files(folder, extensions, recursive)
        other += rest
        if not files:
            collector.report.total += 1
            collector.bad(str(folder), f"class folder has no {collector.report.what}"
                                       f"{subfolder_hint(folder, recursive)}")
        pairs += [(p, folder.name) for p in files]
    return pairs, other


def _load_folder(directory, sidecar_name, defaults, text_keys, extensions, read, what, on_error, recursive,
                 unsupported: tuple[str, ...] = (), labels: str = "none", caption_template: str = "",
                 ) -> LoadResult:
    directory = Path(directory)
    if labels not in LABELS:
        raise AnygenError(f"labels must be one of {', '.join(LABELS)}; got {labels!r}")
    try:
        check_caption_template(caption_template, labels != "none")
    except ValueError as e:
        raise AnygenError(f"{directory}: caption_template {e}") from None
    result = LoadResult(what=what, where=str(directory))
    collector = _Collector(result, on_error)
    if not directory.is_dir():
        raise AnygenError(f"{directory}: no such folder")
    sidecar_path, texts = _sidecar(directory, sidecar_name, defaults, text_keys, collector)
    media, other = _labelled_files(directory, extensions + unsupported, recursive, labels, collector)
    result.ignored = [str(p) for p in other if p != sidecar_path]
    on_disk = {p.relative_to(directory).as_posix() for p, _ in media}
    for rel, (_, where) in texts.items():  # sidecar entries whose media file is not there
        if rel not in on_disk:
            result.total += 1
            missing = "not found" if not (directory / rel).exists() else f"not one of the {what} loaded here"
            collector.bad(str(directory / rel), f"listed in {Path(where).name} but {missing}")
    if not media and not texts and not result.skipped:
        raise AnygenError(f"{directory}: no {what} found (looked for {', '.join(extensions)})"
                          f"{subfolder_hint(directory, recursive)}")
    for path, label in media:
        result.total += 1
        rel = path.relative_to(directory).as_posix()
        if path.suffix.lower() in unsupported:
            collector.bad(str(path), f"unsupported format {path.suffix}: convert to WAV")
            continue
        try:
            segment = read(path)
        except AnygenError as e:
            collector.bad(str(path), _reason(e, path))
            continue
        text = texts[rel][0] if rel in texts else (caption_template.format(label=label) if caption_template
                                                  else None)
        if text is None:
            result.uncaptioned += 1
            result.documents.append(Document([segment]))
        else:
            result.documents.append(Document([segment, Text(text)]))
        result.sources.append(str(path))
    if result.ignored:
        log.info("%s: ignored %d files that are not %s: %s", directory, len(result.ignored), what,
                 ", ".join(Path(p).name for p in result.ignored[:SUMMARY_SHOWN]))
    collector.finish()
    return result


def load_image_folder(directory: str | os.PathLike, captions: str | None = AUTO, on_error: str = "skip",
                      image_size: int | None = None, recursive: bool = False, labels: str = "none",
                      caption_template: str = "") -> LoadResult:
    """Each image in `directory` -> Document [Image, Text(caption)] (or just [Image] without a caption).

    `recursive`: also the images in sub-folders (default: the folder's own files only).
    `labels="subfolders"`: each sub-folder is a class named by the folder (`train/3/a.png` has
    label "3"); `caption_template` (e.g. "a handwritten digit {label}") captions each image that
    the sidecar does not. `captions`: the sidecar, JSONL (`{"file": ..., "caption": ...}`) or CSV
    (columns file, caption), with paths relative to `directory`; "auto" (default) reads
    captions.jsonl or captions.csv when the folder has one; None disables it. `image_size`: fit
    each image to a square of this size (centre crop + resize); default: keep the size, as RGB.
    """
    _check_image_size(image_size)
    return _load_folder(directory, captions, CAPTION_SIDECARS, ("caption", "text"), IMAGE_EXTENSIONS,
                        lambda p: Image(_read_image(p, image_size)), "image files", on_error, recursive,
                        labels=labels, caption_template=caption_template)


def load_audio_folder(directory: str | os.PathLike, transcripts: str | None = AUTO,
                      on_error: str = "skip", sample_rate: int | None = 16000,
                      recursive: bool = False) -> LoadResult:
    """Each WAV in `directory` -> Document [Audio, Text(transcript)] (or just [Audio]).

    `transcripts`: sidecar JSONL (`{"file": ..., "text": ...}`) or CSV (columns file, text);
    "auto" reads transcripts.jsonl or transcripts.csv when present. Audio is mixed to mono
    and resampled to `sample_rate` (None keeps each file's rate). Other audio formats
    (mp3, flac, ...) are reported as unsupported rather than ignored. `recursive` as for images.
    """
    if sample_rate is not None and (not isinstance(sample_rate, int) or sample_rate <= 0):
        raise AnygenError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")

    def read(path: Path) -> Audio:
        waveform, sr = read_audio_file(path, sample_rate)
        return Audio(waveform, sr)

    return _load_folder(directory, transcripts, TRANSCRIPT_SIDECARS, ("text", "transcript", "caption"),
                        AUDIO_EXTENSIONS, read, "audio files", on_error, recursive,
                        unsupported=OTHER_AUDIO_EXTENSIONS)


def _jsonl_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise AnygenError(f"{path}: file not found")
    if not path.is_file():
        raise AnygenError(f"{path}: not a file (expected a JSONL file, one JSON object per line)")
    return path


def _segments(record: dict, base: Path, image_size: int | None, sample_rate: int | None) -> list[Segment]:
    items = record.get("segments")
    if not isinstance(items, list) or not items:
        raise AnygenError("expected a non-empty 'segments' list")
    out: list[Segment] = []
    for k, item in enumerate(items):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            if not isinstance(item.get("text"), str):
                raise AnygenError(f"segment {k}: text segment needs a 'text' string")
            out.append(Text(item["text"]))
        elif kind == "image":
            path = _relative_file(base, item.get("file"), f"segments[{k}].file")
            out.append(Image(_read_image(path, image_size)))
        elif kind == "audio":
            path = _relative_file(base, item.get("file"), f"segments[{k}].file")
            waveform, sr = read_audio_file(path, sample_rate)
            out.append(Audio(waveform, sr))
        else:
            raise AnygenError(f"segment {k}: unknown type {kind!r} (expected text, image or audio)")
    return out


def load_jsonl_documents(path: str | os.PathLike, on_error: str = "skip", image_size: int | None = None,
                         sample_rate: int | None = None) -> LoadResult:
    """One Document per line: `{"segments": [{"type": "text"|"image"|"audio", ...}]}`.

    Media paths are relative to the JSONL file. A record with any bad segment (missing or
    corrupt media, unknown type) is reported and skipped as a whole.
    """
    _check_image_size(image_size)
    path = _jsonl_path(path)
    result = LoadResult(what="records", where=str(path))
    collector = _Collector(result, on_error)
    for where, record in _jsonl_records(path, collector):
        try:
            segments = _segments(record, path.parent, image_size, sample_rate)
        except AnygenError as e:
            collector.bad(where, str(e))
            continue
        result.documents.append(Document(segments))
        result.sources.append(where)
    if result.total == 0:
        raise AnygenError(f"{path}: no records (expected one JSON object per line)")
    collector.finish()
    return result


def load_edit_pairs(path: str | os.PathLike, on_error: str = "skip",
                    image_size: int | None = None) -> EditPairsResult:
    """One edit per line: `{"source": "a.png", "instruction": "...", "target": "b.png"}`.

    Image paths are relative to the JSONL file.
    """
    _check_image_size(image_size)
    path = _jsonl_path(path)
    result = EditPairsResult(what="edit pairs", where=str(path))
    collector = _Collector(result, on_error)
    for where, record in _jsonl_records(path, collector):
        try:
            instruction = record.get("instruction")
            if not isinstance(instruction, str) or not instruction.strip():
                raise AnygenError("missing or empty 'instruction' string")
            source = _read_image(_relative_file(path.parent, record.get("source"), "source"), image_size)
            target = _read_image(_relative_file(path.parent, record.get("target"), "target"), image_size)
        except AnygenError as e:
            collector.bad(where, str(e))
            continue
        result.pairs.append(EditPair(instruction, source, target))
        result.sources.append(where)
    if result.total == 0:
        raise AnygenError(f"{path}: no records (expected one JSON object per line)")
    collector.finish()
    return result


# ---- datasets and WebDataset shards ----------------------------------------------------------
def _require(module: str, package: str, what: str):
    """Import an optional package, or say which one to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AnygenError(f"{what} needs the `{package}` package: pip install {package}") from None


def _caption(value, template: str) -> str | None:
    text = value.strip() if isinstance(value, str) else None
    if not text:
        return None
    return template.format(label=text) if template else text


def _open_dataset(path: Path, split: str):
    """A `datasets.Dataset` from a `save_to_disk` folder (a DatasetDict's `split`, default train or
    its only split), a parquet file or a folder of parquet files."""
    datasets = _require("datasets", "datasets", "reading a Hugging Face dataset or parquet files")
    if not path.exists():
        raise AnygenError(f"{path}: dataset not found")
    parquet = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if path.is_file() and path.suffix.lower() != ".parquet":
        raise AnygenError(f"{path}: expected a .parquet file or a dataset folder (saved with save_to_disk)")
    if parquet and not (path / "dataset_info.json").exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.concat_tables([pq.read_table(p) for p in parquet])
        except (pa.ArrowException, OSError) as e:
            raise AnygenError(f"{path}: cannot read parquet ({' '.join(str(e).split())[:200]})") from None
        # an explicit fingerprint: no hashing of the table, no cache files
        return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=f"anygen-{path.name}")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise AnygenError(f"{path}: not a dataset saved with save_to_disk, nor parquet files "
                          f"({' '.join(str(e).split())[:200]})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        chosen = split or ("train" if "train" in ds else names[0] if len(names) == 1 else "")
        if chosen not in ds:
            raise AnygenError(f"{path}: {'no split ' + repr(split) if split else 'several splits'} "
                              f"(splits: {', '.join(names)}); set split")
        return ds[chosen]
    if split:
        raise AnygenError(f"{path}: split={split!r}, but the folder holds one dataset, not a DatasetDict")
    return ds


def _dataset_columns(ds, path: Path, image_column: str, text_column: str) -> tuple[str, str | None]:
    import datasets

    features = ds.features
    for name, given in (("image_column", image_column), ("text_column", text_column)):
        if given and given not in features:
            raise AnygenError(f"{path}: no column {given!r} for {name} (columns: {', '.join(features)})")
    image = image_column or next((c for c, f in features.items() if isinstance(f, datasets.Image)),
                                 next((c for c in IMAGE_COLUMNS if c in features), ""))
    if not image:
        raise AnygenError(f"{path}: no image column found (columns: {', '.join(features)}); set image_column")
    if text_column:
        return image, text_column
    text = next((c for c in TEXT_COLUMNS if c in features and c != image), None)
    if text is None:  # else the one class-label column, else the one string column
        labels = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
        strings = [c for c, f in features.items() if isinstance(f, datasets.Value) and f.dtype in ("string",
                                                                                                   "large_string")]
        text = labels[0] if len(labels) == 1 else strings[0] if len(strings) == 1 else None
    return image, text


def _image_value(value) -> bytes:
    """The encoded image bytes of a dataset cell ({"bytes": ..., "path": ...} or raw bytes)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None:
        raise AnygenError("no image (empty cell)")
    if not isinstance(value, (bytes, bytearray)):
        raise AnygenError(f"the image cell holds {type(value).__name__}, not encoded image bytes")
    return bytes(value)


def load_dataset_images(path: str | os.PathLike, split: str = "", image_column: str = "", text_column: str = "",
                        caption_template: str = "", on_error: str = "skip",
                        image_size: int | None = None) -> LoadResult:
    """Each row of a Hugging Face dataset folder (`save_to_disk`) or parquet file(s) -> Document
    [Image, Text(caption)] (or [Image] where the row has no text).

    Columns: `image_column` (default: the column of type Image, else one named image, img, ...),
    `text_column` (default: the first of caption, text, ..., label present, else the one
    class-label column, else the one string column; none: uncaptioned); a class-label column
    gives its class name. `caption_template` (e.g. "a handwritten digit {label}") wraps
    the text, `{label}` standing for it. A row with no image or an undecodable one is reported.
    """
    _check_image_size(image_size)
    try:
        check_caption_template(caption_template, labelled=None)
    except ValueError as e:
        raise AnygenError(f"{path}: caption_template {e}") from None
    path = Path(path)
    ds = _open_dataset(path, split)
    image, text = _dataset_columns(ds, path, image_column, text_column)
    names = getattr(ds.features[text], "names", None) if text else None  # a ClassLabel's class names
    result = LoadResult(what="rows", where=str(path), unit="row")
    collector = _Collector(result, on_error)
    row = 0
    for batch in ds.data.to_batches(max_chunksize=ROW_BATCH):  # undecoded cells: decoding is ours
        images = batch.column(image).to_pylist()
        texts = batch.column(text).to_pylist() if text else [None] * len(images)
        for value, label in zip(images, texts):
            where, row = f"{path}:{row}", row + 1
            result.total += 1
            try:
                picture = read_image_bytes(_image_value(value), "image")
            except AnygenError as e:
                collector.bad(where, str(e))
                continue
            if names is not None and isinstance(label, int) and 0 <= label < len(names):
                label = names[label]
            elif isinstance(label, (int, float)) and not isinstance(label, bool):
                label = str(label)
            picture = fit_image(picture, image_size) if image_size else to_rgb(picture)
            caption = _caption(label, caption_template)
            if caption is None:
                result.uncaptioned += 1
            result.documents.append(Document([Image(picture)] + ([Text(caption)] if caption else [])))
            result.sources.append(where)
    if result.total == 0:
        raise AnygenError(f"{path}: the dataset has no rows")
    collector.finish()
    return result


def _wds_text(sample: dict, text_key: str) -> str | None:
    """The caption of a WebDataset sample: its `text_key` member, or the first of `WDS_TEXT_KEYS`."""
    key = text_key or next((k for k in WDS_TEXT_KEYS if k in sample), None)
    if key is None:
        return None
    if key not in sample:
        raise AnygenError(f"no .{key} member")
    try:
        raw = bytes(sample[key]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise AnygenError(f".{key} is not valid UTF-8 (byte {e.start})") from None
    if not key.endswith("json"):
        return raw
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AnygenError(f"bad JSON in .{key} ({e.msg})") from None
    value = next((record[f] for f in JSON_TEXT_FIELDS if isinstance(record, dict) and f in record), None)
    if not isinstance(value, str):
        raise AnygenError(f".{key} has no {' or '.join(JSON_TEXT_FIELDS)} string")
    return value


def load_webdataset(path: str | os.PathLike, image_key: str = "", text_key: str = "", caption_template: str = "",
                    on_error: str = "skip", image_size: int | None = None) -> LoadResult:
    """Each sample of WebDataset tar shards (a .tar file, or a folder of them) -> Document
    [Image, Text(caption)] (or [Image] without a caption).

    A sample is the members sharing a key: `{key}.png` (or `image_key`: jpg, webp, ...) and
    `{key}.txt`, or `{key}.json` with a caption/text field (or `text_key`). `caption_template`
    wraps the text as `{label}`. A sample without an image or with a bad one is reported, and so
    is a shard that cannot be read (the samples read before the damage are kept).
    """
    _check_image_size(image_size)
    wds = _require("webdataset", "webdataset", "reading WebDataset shards")
    path = Path(path)
    if not path.exists():
        raise AnygenError(f"{path}: not found")
    shards = [path] if path.is_file() else folder_files(path, (".tar",))[0]
    if not shards:
        raise AnygenError(f"{path}: no .tar shards in the folder")
    result = LoadResult(what="samples", where=str(path))
    collector = _Collector(result, on_error)
    for shard in shards:
        try:
            for sample in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
                where = f"{shard}: sample {sample['__key__']}"
                result.total += 1
                key = image_key or next((k for k in WDS_IMAGE_KEYS if k in sample), None)
                try:
                    if key is None or key not in sample:
                        raise AnygenError(f"no image member (.{image_key or ', .'.join(WDS_IMAGE_KEYS)})")
                    picture = read_image_bytes(sample[key], f".{key}")
                    caption = _caption(_wds_text(sample, text_key), caption_template)
                except AnygenError as e:
                    collector.bad(where, str(e))
                    continue
                picture = fit_image(picture, image_size) if image_size else to_rgb(picture)
                if caption is None:
                    result.uncaptioned += 1
                result.documents.append(Document([Image(picture)] + ([Text(caption)] if caption else [])))
                result.sources.append(where)
        except AnygenError:
            raise
        except Exception as e:  # tarfile and webdataset raise many types for a damaged shard
            result.total += 1
            collector.bad(str(shard), f"cannot read the tar shard ({type(e).__name__})")
    if result.total == 0:
        raise AnygenError(f"{path}: no samples in the shards")
    collector.finish()
    return result


# ---- the world ------------------------------------------------------------------------------
def _template_check(template: str, labelled: bool | None) -> None:
    try:
        check_caption_template(template, labelled)
    except ValueError as e:
        raise ConfigError(f"caption_template: {e}") from None


@dataclass
class ImageFolder:
    """One entry of `user.image_folders` (a plain path string is `{path: PATH}`)."""

    path: str = ""
    recursive: bool = False  # also the images in sub-folders (default: the folder's own files)
    labels: str = choice(*LABELS)  # subfolders: each sub-folder is a class named by its folder
    caption_template: str = ""  # caption of images the sidecar does not caption, e.g. "a digit {label}"
    captions: str = AUTO  # sidecar (.jsonl or .csv) in the folder; auto: captions.jsonl/.csv if there; "" none

    def __post_init__(self):
        check(bool(self.path), "path", "set the image folder")
        _template_check(self.caption_template, self.labels != "none")

    def load(self, on_error: str) -> LoadResult:
        return load_image_folder(self.path, self.captions or None, on_error, recursive=self.recursive,
                                 labels=self.labels, caption_template=self.caption_template)


@dataclass
class DatasetSource:
    """One entry of `user.datasets`: a Hugging Face dataset folder (`save_to_disk`) or parquet
    file(s), one captioned image per row (a plain path string is `{path: PATH}`)."""

    path: str = ""
    split: str = ""  # a DatasetDict's split (default: train, or its only split)
    image_column: str = ""  # default: the Image-typed column, else image/img/picture/photo
    text_column: str = ""  # default: caption/text/.../label, or the one class-label or string column
    caption_template: str = ""  # e.g. "a handwritten digit {label}": {label} is the text column's value

    def __post_init__(self):
        check(bool(self.path), "path", "set the dataset folder or parquet file")
        _template_check(self.caption_template, None)

    def load(self, on_error: str) -> LoadResult:
        return load_dataset_images(self.path, self.split, self.image_column, self.text_column,
                                   self.caption_template, on_error)


@dataclass
class WebDatasetSource:
    """One entry of `user.webdatasets`: WebDataset tar shards, `{key}.png` + `{key}.txt`/`.json`
    per sample (a plain path string is `{path: PATH}`: a .tar file or a folder of them)."""

    path: str = ""
    image_key: str = ""  # image member extension (default: png, jpg, jpeg, webp or bmp)
    text_key: str = ""  # caption member extension (default: txt, caption, text, json or cls)
    caption_template: str = ""  # e.g. "a photo of {label}": {label} is the caption member's text

    def __post_init__(self):
        check(bool(self.path), "path", "set the .tar shard or the folder of shards")
        _template_check(self.caption_template, None)

    def load(self, on_error: str) -> LoadResult:
        return load_webdataset(self.path, self.image_key, self.text_key, self.caption_template, on_error)


def _entries(values: list, cls: type) -> list:
    return [cls(path=v) if isinstance(v, str) else v for v in values]


@dataclass
class UserData:
    """The user's own data, added to the train split (and `val_fraction` of it to val), `repeat` times.

    documents: JSONL documents (task `document`, loss on every token); image_folders, datasets,
    webdatasets: captioned images (one text->image and one image->text example each;
    uncaptioned images become one-image documents); audio_folders: transcribed WAVs
    (text->audio, audio->text); edits: edit-pair JSONL files (task `edit`, and `describe_edit`
    when the mix has it). Image entries are a path or a mapping (`ImageFolder`,
    `DatasetSource`, `WebDatasetSource`); paths become mappings once built.
    """

    documents: list[str] = field(default_factory=list)
    image_folders: list[ImageFolder | str] = field(default_factory=list)
    datasets: list[DatasetSource | str] = field(default_factory=list)
    webdatasets: list[WebDatasetSource | str] = field(default_factory=list)
    audio_folders: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    recursive: bool = False  # audio folders: also the files in sub-folders
    repeat: int = 1
    val_fraction: float = 0.0
    sequences: float = 0.0  # captioned sequences (task document: 2-4 captioned images in one document) per captioned image
    on_error: str = choice("skip", "fail")

    def __post_init__(self):
        check(self.repeat >= 1, "repeat", f"must be >= 1, got {self.repeat}")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        check(0.0 <= self.sequences <= MAX_SEQUENCES, "sequences", f"must be in [0, {MAX_SEQUENCES}], got {self.sequences}")
        self.image_folders = _entries(self.image_folders, ImageFolder)
        self.datasets = _entries(self.datasets, DatasetSource)
        self.webdatasets = _entries(self.webdatasets, WebDatasetSource)

    @property
    def images(self) -> list:
        """Every image source (folders, datasets, WebDataset shards)."""
        return [*self.image_folders, *self.datasets, *self.webdatasets]

    def __bool__(self) -> bool:
        return bool(self.documents or self.images or self.audio_folders or self.edits)


class User:
    """The world of the user's data (`UserData`); loads it lazily, once."""

    name = "user"
    plan_format = None

    def __init__(self, config: UserData | None = None, seed: int = 0):
        self.config = config if config is not None else UserData()
        self.seed = seed

    @property
    def tasks(self) -> tuple[str, ...]:
        c = self.config
        tasks = ["document"] if c.documents or c.images or c.audio_folders else []
        tasks += ["text_to_image", "image_to_text"] if c.images else []
        tasks += ["text_to_audio", "audio_to_text"] if c.audio_folders else []
        tasks += ["edit", "describe_edit"] if c.edits else []
        return tuple(tasks)

    @cached_property
    def loaded(self) -> dict[str, list]:
        """Every loaded item by source kind: documents, image (documents), audio (documents), edits (pairs)."""
        c = self.config
        if not c:
            raise AnygenError("the user world has no data (set user.documents, user.image_folders, "
                              "user.datasets, user.webdatasets, user.audio_folders or user.edits)")
        items = {"documents": [], "image": [], "audio": [], "edits": []}
        for path in c.documents:
            items["documents"] += load_jsonl_documents(path, on_error=c.on_error).documents
        for source in c.images:
            items["image"] += source.load(c.on_error).documents
        for path in c.audio_folders:
            items["audio"] += load_audio_folder(path, on_error=c.on_error, recursive=c.recursive).documents
        for path in c.edits:
            items["edits"] += load_edit_pairs(path, on_error=c.on_error).pairs
        return items

    def tasks_for(self, mix: TaskMix) -> tuple[str, ...]:
        """The tasks this data teaches under `mix`: `tasks` less those the mix weighs 0
        (`document` has no weight and is always kept)."""
        weights = mix.weights()
        return tuple(t for t in self.tasks if weights.get(t, 1.0) > 0)

    def task_source(self, mix: TaskMix) -> "UserTasks":
        return UserTasks(self, mix)

    def texts(self) -> list[str]:
        """Every text of the data, once: captions, transcripts, document text, edit instructions."""
        items = self.loaded
        texts = [s.text for key in ("documents", "image", "audio") for d in items[key]
                 for s in d if isinstance(s, Text) and s.text.strip()]
        texts += [p.instruction for p in items["edits"]]
        if not texts:
            raise AnygenError("the user data holds no text")
        return texts

    def text_corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """`n` texts drawn (with replacement) from `texts()`."""
        texts = self.texts()
        return [texts[i] for i in rng.integers(0, len(texts), n)]

    def images(self) -> list[PILImage.Image]:
        """Every image of the data, once: image sources, documents' images, both sides of edit pairs."""
        items = self.loaded
        out = [s.image for key in ("documents", "image") for d in items[key] for s in d if isinstance(s, Image)]
        out += [im for p in items["edits"] for im in (p.source, p.target)]
        if not out:
            raise AnygenError("the user data holds no images")
        return out

    def preview(self, rng: np.random.Generator, kind: str = "") -> Document:
        """One loaded document (an edit pair as source, instruction, target)."""
        items = [d for key in ("documents", "image", "audio") for d in self.loaded[key]]
        items += [p.document() for p in self.loaded["edits"]]
        return items[int(rng.integers(len(items)))]


class UserTasks:
    """The user data's examples as `Spec`s of the tasks in `mix` (`anygen.tasks.world.TaskSource`)."""

    def __init__(self, world: User, mix: TaskMix):
        self.world, self.mix = world, mix
        self.tasks = world.tasks_for(mix)

    def _in_split(self, n: int, split: str) -> np.ndarray:
        """Which of `n` items fall in `split`: a fixed `val_fraction` of them are val, the rest train."""
        in_val = np.random.default_rng([self.world.seed, VAL_STREAM, n]).random(n) < self.world.config.val_fraction
        return np.flatnonzero(in_val if split == "val" else ~in_val)

    def examples(self, split: str, rng: np.random.Generator) -> list[Callable[[], Spec]]:
        """Zero-argument callables making every example of `split` once (`repeat` times in train);
        `rng` draws their condition drops."""
        return [make for _, make in self._makers(split, rng)]

    def sample(self, task: str, rng: np.random.Generator, split: str = "train") -> Spec:
        """One example of `task` from `split`, drawn uniformly."""
        makers = [make for t, make in self._makers(split, rng, repeat=False) if t == task]
        if not makers:
            raise AnygenError(f"the user data has no {split} examples of task {task!r}")
        return makers[int(rng.integers(len(makers)))]()

    def _makers(self, split: str, rng: np.random.Generator, repeat: bool = True) -> list[tuple[str, Callable]]:
        if split not in ("train", "val"):
            return []
        items, mix = self.world.loaded, self.mix
        k = self.world.config.repeat if split == "train" and repeat else 1
        makers: list[tuple[str, Callable[[], Spec]]] = []
        for i in self._in_split(len(items["documents"]), split):
            makers += [("document", lambda d=items["documents"][i]: document(d))] * k
        for kind in ("image", "audio"):
            for i in self._in_split(len(items[kind]), split):
                makers += _media_text_makers(items[kind][i], kind, mix, rng) * k
        captioned = [_caption_and_image(items["image"][i]) for i in self._in_split(len(items["image"]), split)]
        captioned = [pair for pair in captioned if pair is not None]
        n_sequences = round(self.world.config.sequences * len(captioned)) * k if len(captioned) >= 2 else 0
        for _ in range(n_sequences):  # items drawn now, from `rng`: the split's examples are fixed by the seed
            picked = rng.choice(len(captioned), int(rng.integers(SEQUENCE_ITEMS[0], SEQUENCE_ITEMS[1] + 1)))
            pairs = [captioned[j] for j in picked]
            makers.append(("document", lambda pairs=pairs: document(captioned_sequence(*zip(*pairs)))))
        for i in self._in_split(len(items["edits"]), split):
            p = items["edits"][i]
            makers += [("edit", lambda p=p: edit(p.source, p.instruction, p.target, mix.edit, rng))] * k
            makers += [("describe_edit", lambda p=p: describe_edit(p.source, p.target, p.instruction,
                                                                   mix.describe_edit, rng))] * k
        return [(task, make) for task, make in makers if task in self.tasks]


def _text_and_media(doc: Document, kind: str):
    """(the document's text, its first image or audio clip or None)."""
    text = " ".join(s.text for s in doc if isinstance(s, Text)).strip()
    media = [s for s in doc if isinstance(s, Image if kind == "image" else Audio)]
    return text, (media[0].image if kind == "image" else media[0]) if media else None


def _caption_and_image(doc: Document) -> tuple[str, PILImage.Image] | None:
    """(caption, image) of a captioned-image document, None when it has no caption."""
    text, image = _text_and_media(doc, "image")
    return (text, image) if text and image is not None else None


def _media_text_makers(doc: Document, kind: str, mix: TaskMix, rng) -> list[tuple[str, Callable[[], Spec]]]:
    """A captioned image (transcribed clip) -> its two conditional tasks; uncaptioned -> a document."""
    text, m = _text_and_media(doc, kind)
    if m is None:
        return []
    if not text:
        return [("document", lambda: document(doc))]
    if kind == "image":
        return [("text_to_image", lambda: text_to_image(text, m, mix.text_to_image, rng)),
                ("image_to_text", lambda: image_to_text(m, text, mix.image_to_text, rng))]
    return [("text_to_audio", lambda: text_to_audio(text, m, mix.text_to_audio, rng)),
            ("audio_to_text", lambda: audio_to_text(m, text, mix.audio_to_text, rng))]
