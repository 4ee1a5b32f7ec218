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

import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from PIL import Image as PILImage

from anygen.config import check, choice
from anygen.document import Audio, Document, Image, Segment, Text
from anygen.errors import AnygenError, short_repr
from anygen.io import file_inside, fit_image, read_audio_file, read_image_file, to_rgb
from anygen.tasks.layouts import (Spec, TaskMix, audio_to_text, describe_edit, document, edit, image_to_text,
                                  text_to_audio, text_to_image)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
AUDIO_EXTENSIONS = (".wav", ".wave")
OTHER_AUDIO_EXTENSIONS = (".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif")
ON_ERROR = ("skip", "fail")
SUMMARY_SHOWN = 5  # bad files named in the warning line
VAL_STREAM = 7919  # prime: the val/train assignment of items draws from its own seed stream


# ---- results --------------------------------------------------------------------------------
@dataclass
class _Report:
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path[:line], reason)
    ignored: list[str] = field(default_factory=list)  # files in a folder that are not media
    total: int = 0  # records or media files considered: loaded + skipped
    what: str = "files"
    where: str = ""

    def _short(self, path: str) -> str:
        """A skipped path relative to the folder, or "line N" of the JSONL file."""
        if path.startswith(self.where + ":"):
            return f"line {path[len(self.where) + 1:]}"
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


def _sidecar(directory: Path, name: str | None, text_keys: tuple[str, ...], collector: _Collector,
             ) -> dict[str, tuple[str, str]]:
    """Read a sidecar JSONL mapping relative file -> (text, "sidecar:LINE"). Absent file: {}."""
    if name is None:
        return {}
    path = Path(name) if Path(name).is_absolute() else directory / name
    if not path.exists():
        if name not in ("captions.jsonl", "transcripts.jsonl"):  # a path the user asked for must exist
            raise AnygenError(f"{path}: sidecar file not found")
        return {}
    out: dict[str, tuple[str, str]] = {}
    skipped_before = len(collector.report.skipped)
    for where, record in _jsonl_records(path, collector, count=False):
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
    return out


def _folder_files(directory: Path, extensions: tuple[str, ...], recursive: bool) -> tuple[list[Path], list[Path]]:
    if not directory.is_dir():
        raise AnygenError(f"{directory}: no such folder")
    walk = directory.rglob("*") if recursive else directory.iterdir()
    media, other = [], []
    for path in sorted(walk):
        if not (path.is_file() or path.is_symlink()) or path.name.startswith("."):
            continue
        (media if path.suffix.lower() in extensions else other).append(path)
    return media, other


def _load_folder(directory, sidecar_name, text_keys, extensions, read, what, on_error, recursive,
                 unsupported: tuple[str, ...] = ()) -> LoadResult:
    directory = Path(directory)
    result = LoadResult(what=what, where=str(directory))
    collector = _Collector(result, on_error)
    media, other = _folder_files(directory, extensions + unsupported, recursive)
    sidecar_path = None
    if sidecar_name is not None:
        sidecar_path = Path(sidecar_name) if Path(sidecar_name).is_absolute() else directory / sidecar_name
    texts = _sidecar(directory, sidecar_name, text_keys, collector)
    result.ignored = [str(p) for p in other if p != sidecar_path]
    on_disk = {p.relative_to(directory).as_posix() for p in media}
    for rel, (_, where) in texts.items():  # sidecar entries whose media file is not there
        if rel not in on_disk:
            result.total += 1
            missing = "not found" if not (directory / rel).exists() else f"not one of the {what} loaded here"
            collector.bad(str(directory / rel), f"listed in {Path(where).name} but {missing}")
    if not media and not texts:
        raise AnygenError(f"{directory}: no {what} found (looked for {', '.join(extensions)})")
    for path in media:
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
        text = texts.get(rel)
        if text is None:
            result.uncaptioned += 1
            result.documents.append(Document([segment]))
        else:
            result.documents.append(Document([segment, Text(text[0])]))
        result.sources.append(str(path))
    if result.ignored:
        log.info("%s: ignored %d files that are not %s: %s", directory, len(result.ignored), what,
                 ", ".join(Path(p).name for p in result.ignored[:SUMMARY_SHOWN]))
    collector.finish()
    return result


def load_image_folder(directory: str | os.PathLike, captions: str | None = "captions.jsonl",
                      on_error: str = "skip", image_size: int | None = None,
                      recursive: bool = False) -> LoadResult:
    """Each image in `directory` -> Document [Image, Text(caption)] (or just [Image] without a caption).

    `captions`: a sidecar JSONL in the folder (`{"file": ..., "caption": ...}`); an absent
    default `captions.jsonl` means no captions; None disables it. `image_size`: fit each
    image to a square of this size (centre crop + resize); default: keep the size, as RGB.
    """
    _check_image_size(image_size)
    return _load_folder(directory, captions, ("caption", "text"), IMAGE_EXTENSIONS,
                        lambda p: Image(_read_image(p, image_size)), "image files", on_error, recursive)


def load_audio_folder(directory: str | os.PathLike, transcripts: str | None = "transcripts.jsonl",
                      on_error: str = "skip", sample_rate: int | None = 16000,
                      recursive: bool = False) -> LoadResult:
    """Each WAV in `directory` -> Document [Audio, Text(transcript)] (or just [Audio]).

    `transcripts`: sidecar JSONL (`{"file": ..., "text": ...}`). Audio is mixed to mono
    and resampled to `sample_rate` (None keeps each file's rate). Other audio formats
    (mp3, flac, ...) are reported as unsupported rather than ignored.
    """
    if sample_rate is not None and (not isinstance(sample_rate, int) or sample_rate <= 0):
        raise AnygenError(f"sample_rate must be a positive integer or None, got {sample_rate!r}")

    def read(path: Path) -> Audio:
        waveform, sr = read_audio_file(path, sample_rate)
        return Audio(waveform, sr)

    return _load_folder(directory, transcripts, ("text", "transcript", "caption"), AUDIO_EXTENSIONS,
                        read, "audio files", on_error, recursive, unsupported=OTHER_AUDIO_EXTENSIONS)


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


# ---- the world ------------------------------------------------------------------------------
@dataclass
class UserData:
    """The user's own data, added to the train split (and `val_fraction` of it to val), `repeat` times.

    documents: JSONL documents (task `document`, loss on every token); image_folders:
    captioned images (one text->image and one image->text example each; uncaptioned images
    become one-image documents); audio_folders: transcribed WAVs (text->audio, audio->text);
    edits: edit-pair JSONL files (task `edit`, and `describe_edit` when the mix has it).
    """

    documents: list[str] = field(default_factory=list)
    image_folders: list[str] = field(default_factory=list)
    audio_folders: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    repeat: int = 1
    val_fraction: float = 0.0
    on_error: str = choice("skip", "fail")

    def __post_init__(self):
        check(self.repeat >= 1, "repeat", f"must be >= 1, got {self.repeat}")
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")

    def __bool__(self) -> bool:
        return bool(self.documents or self.image_folders or self.audio_folders or self.edits)


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
        tasks = ["document"] if c.documents or c.image_folders or c.audio_folders else []
        tasks += ["text_to_image", "image_to_text"] if c.image_folders else []
        tasks += ["text_to_audio", "audio_to_text"] if c.audio_folders else []
        tasks += ["edit", "describe_edit"] if c.edits else []
        return tuple(tasks)

    @cached_property
    def loaded(self) -> dict[str, list]:
        """Every loaded item by source kind: documents, image (documents), audio (documents), edits (pairs)."""
        c = self.config
        if not c:
            raise AnygenError("the user world has no data (set user.documents, user.image_folders, "
                              "user.audio_folders or user.edits)")
        items = {"documents": [], "image": [], "audio": [], "edits": []}
        for path in c.documents:
            items["documents"] += load_jsonl_documents(path, on_error=c.on_error).documents
        for path in c.image_folders:
            items["image"] += load_image_folder(path, on_error=c.on_error).documents
        for path in c.audio_folders:
            items["audio"] += load_audio_folder(path, on_error=c.on_error).documents
        for path in c.edits:
            items["edits"] += load_edit_pairs(path, on_error=c.on_error).pairs
        return items

    def task_source(self, mix: TaskMix) -> "UserTasks":
        return UserTasks(self, mix)

    def text_corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """`n` texts drawn (with replacement) from the data's captions, transcripts, document text
        and instructions."""
        items = self.loaded
        texts = [s.text for key in ("documents", "image", "audio") for d in items[key]
                 for s in d if isinstance(s, Text) and s.text.strip()]
        texts += [p.instruction for p in items["edits"]]
        if not texts:
            raise AnygenError("the user data holds no text")
        return [texts[i] for i in rng.integers(0, len(texts), n)]

    def preview(self, rng: np.random.Generator, kind: str = "") -> Document:
        """One loaded document (an edit pair as source, instruction, target)."""
        items = [d for key in ("documents", "image", "audio") for d in self.loaded[key]]
        items += [p.document() for p in self.loaded["edits"]]
        return items[int(rng.integers(len(items)))]


class UserTasks:
    """The user data's examples as `Spec`s of the tasks in `mix` (`anygen.tasks.world.TaskSource`)."""

    def __init__(self, world: User, mix: TaskMix):
        self.world, self.mix = world, mix
        self.tasks = world.tasks

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
        for i in self._in_split(len(items["edits"]), split):
            p = items["edits"][i]
            makers += [("edit", lambda p=p: edit(p.source, p.instruction, p.target, mix.edit, rng))] * k
            if mix.describe_edit.weight > 0:
                makers += [("describe_edit", lambda p=p: describe_edit(p.source, p.target, p.instruction,
                                                                       mix.describe_edit, rng))] * k
        return makers


def _media_text_makers(doc: Document, kind: str, mix: TaskMix, rng) -> list[tuple[str, Callable[[], Spec]]]:
    """A captioned image (transcribed clip) -> its two conditional tasks; uncaptioned -> a document."""
    media = [s for s in doc if isinstance(s, Image if kind == "image" else Audio)]
    text = " ".join(s.text for s in doc if isinstance(s, Text)).strip()
    if not media:
        return []
    m = media[0].image if kind == "image" else media[0]
    if not text:
        return [("document", lambda: document(doc))]
    if kind == "image":
        return [("text_to_image", lambda: text_to_image(text, m, mix.text_to_image, rng)),
                ("image_to_text", lambda: image_to_text(m, text, mix.image_to_text, rng))]
    return [("text_to_audio", lambda: text_to_audio(text, m, mix.text_to_audio, rng)),
            ("audio_to_text", lambda: audio_to_text(m, text, mix.audio_to_text, rng))]
