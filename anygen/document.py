"""The interleaved multimodal Document: the one data structure that flows through anygen.

Training data, prompts and generated outputs are all Documents: an ordered list of
`Text`, `Image` and `Audio` segments. A Document saves to a directory
(`document.json` + PNG/WAV files beside it) and renders to a self-contained HTML
page and to Markdown (text escaped in both: no markup or links from the text).

Loading a directory is strict: media files must lie inside it (no absolute paths, `..`
or symlinks out of it), every field has its type checked, and documents over
`MAX_SEGMENTS` segments or `MAX_TEXT_CHARS` characters of text are refused.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image as PILImage

from anygen.errors import AnygenError, short_repr
from anygen.io import (atomic_write_bytes, check_output_path, file_inside, read_audio_file, read_image_file,
                       read_json_file)

FORMAT_VERSION = 1
MAX_SEGMENTS = 10_000  # far beyond any model context; bounds the work a document file can ask for
MAX_TEXT_CHARS = 2_000_000  # total text of a loaded document (2 MB of text)
# Markdown punctuation that could start links, images, code or emphasis: backslash-escaped in
# document.md (`<`, `>` and `&` become HTML entities, which every Markdown dialect leaves as text)
MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\](){}!#|~])")


@dataclass
class Text:
    text: str

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise TypeError(f"Text.text must be str, got {type(self.text).__name__}")


@dataclass
class Image:
    image: PILImage.Image

    def __post_init__(self):
        if not isinstance(self.image, PILImage.Image):
            raise TypeError(f"Image.image must be a PIL image, got {type(self.image).__name__}")


@dataclass
class Audio:
    waveform: np.ndarray  # (T,) float32 in [-1, 1], mono
    sample_rate: int

    def __post_init__(self):
        self.waveform = np.asarray(self.waveform, dtype=np.float32).reshape(-1)
        if self.sample_rate <= 0:
            raise ValueError(f"Audio.sample_rate must be positive, got {self.sample_rate}")

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate


Segment = Union[Text, Image, Audio]


@dataclass
class Document:
    segments: list[Segment] = field(default_factory=list)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def of(cls, *items) -> "Document":
        """Build from mixed items: str -> Text, PIL image -> Image, (waveform, sr) -> Audio."""
        segments: list[Segment] = []
        for item in items:
            if isinstance(item, (Text, Image, Audio)):
                segments.append(item)
            elif isinstance(item, str):
                segments.append(Text(item))
            elif isinstance(item, PILImage.Image):
                segments.append(Image(item))
            elif isinstance(item, tuple) and len(item) == 2:
                segments.append(Audio(item[0], item[1]))
            else:
                raise TypeError(f"cannot make a segment from {type(item).__name__}")
        return cls(segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def __add__(self, other: "Document") -> "Document":
        return Document(self.segments + other.segments)

    def with_text_joined(self) -> "Document":
        """Adjacent Text segments joined into one: the canonical form (Text("m"), Text("a")
        is the text "ma", which a subword tokenizer may spell with one token)."""
        segments: list[Segment] = []
        run: list[str] = []  # the current run of adjacent texts, joined once (linear time)
        for segment in self.segments:
            if isinstance(segment, Text):
                run.append(segment.text)
                continue
            if run:
                segments.append(Text("".join(run)))
                run = []
            segments.append(segment)
        if run:
            segments.append(Text("".join(run)))
        return Document(segments)

    def check_size(self, max_segments: int = MAX_SEGMENTS, max_text_chars: int = MAX_TEXT_CHARS,
                   what: str = "document") -> "Document":
        """Refuse more than `max_segments` segments or `max_text_chars` characters of text; returns self."""
        chars = sum(len(s.text) for s in self.segments if isinstance(s, Text))
        _check_size(len(self.segments), chars, max_segments, max_text_chars, what)
        return self

    @property
    def text(self) -> str:
        """All text segments joined: handy for captions and transcripts."""
        return "".join(s.text for s in self.segments if isinstance(s, Text))

    @property
    def images(self) -> list[PILImage.Image]:
        return [s.image for s in self.segments if isinstance(s, Image)]

    @property
    def audios(self) -> list[Audio]:
        return [s for s in self.segments if isinstance(s, Audio)]

    # ---- JSON + media directory ---------------------------------------------------
    def to_json(self, media_dir: Path | None = None) -> dict:
        """JSON-able dict; media are written to `media_dir` (names are relative to it)."""
        items = []
        for i, seg in enumerate(self.segments):
            if isinstance(seg, Text):
                items.append({"type": "text", "text": seg.text})
            elif isinstance(seg, Image):
                name = f"image_{i:03d}.png"
                if media_dir is not None:
                    atomic_write_bytes(media_dir / name, _png_bytes(seg.image))
                items.append({"type": "image", "file": name, "width": seg.image.width, "height": seg.image.height})
            else:
                name = f"audio_{i:03d}.wav"
                if media_dir is not None:
                    atomic_write_bytes(media_dir / name, _wav_bytes(seg.waveform, seg.sample_rate))
                items.append({"type": "audio", "file": name, "sample_rate": seg.sample_rate,
                              "seconds": round(seg.seconds, 4)})
        return {"format": "anygen.document", "version": FORMAT_VERSION, "segments": items}

    @classmethod
    def from_json(cls, data: dict, media_dir: Path) -> "Document":
        """The Document `to_json` describes; media files are read from inside `media_dir` only."""
        if not isinstance(data, dict) or "segments" not in data:
            raise AnygenError("not an anygen document: missing 'segments'")
        version = data.get("version", FORMAT_VERSION)
        if type(version) is not int or version != FORMAT_VERSION:  # not "1", 1.0 or true
            raise AnygenError(f"unsupported document version {short_repr(version)} "
                              f"(this anygen reads version {FORMAT_VERSION})")
        items = data["segments"]
        if not isinstance(items, list):
            raise AnygenError(f"'segments' must be a list, got {type(items).__name__}")
        chars = sum(len(i["text"]) for i in items if isinstance(i, dict) and isinstance(i.get("text"), str))
        _check_size(len(items), chars, MAX_SEGMENTS, MAX_TEXT_CHARS, "document")  # before any media is read
        segments: list[Segment] = []
        for k, item in enumerate(items):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                text = item.get("text")
                if not isinstance(text, str):
                    raise AnygenError(f"segment {k}: 'text' must be a string, got {type(text).__name__}")
                segments.append(Text(text))
            elif kind in ("image", "audio"):
                path = file_inside(media_dir, item.get("file"), f"segment {k}: 'file'")
                if kind == "image":
                    segments.append(Image(read_image_file(path)))
                else:
                    segments.append(Audio(*read_audio_file(path)))
            else:
                raise AnygenError(f"segment {k}: unknown type {short_repr(kind)} (expected text, image or audio)")
        return cls(segments)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `document.json`, media files, `index.html` and `document.md` into `directory`
        (created if missing; an existing file or a path under one is an AnygenError)."""
        directory = check_output_path(directory, "document directory", directory=True)
        directory.mkdir(parents=True, exist_ok=True)
        data = self.to_json(directory)
        atomic_write_bytes(directory / "document.json", json.dumps(data, indent=2).encode())
        atomic_write_bytes(directory / "index.html", self.to_html().encode())
        atomic_write_bytes(directory / "document.md", self.to_markdown().encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Document":
        directory = Path(directory)
        path = directory / "document.json" if directory.is_dir() else directory
        if not path.exists():
            raise AnygenError(f"{path}: no such document (expected a directory with document.json)")
        return cls.from_json(read_json_file(path), path.parent)

    # ---- rendering ----------------------------------------------------------------
    def to_html(self, title: str = "anygen document") -> str:
        """A self-contained page: images inline as PNG data URIs, audio as <audio controls>."""
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
                 "<style>body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;line-height:1.5}"
                 "img{image-rendering:pixelated;width:192px;border:1px solid #ddd;margin:.3em 0}"
                 "p{white-space:pre-wrap}</style></head><body>"]
        parts.append(self.html_body())
        parts.append("</body></html>")
        return "".join(parts)

    def html_body(self) -> str:
        out = []
        for seg in self.segments:
            if isinstance(seg, Text):
                out.append(f"<p>{html.escape(seg.text)}</p>")
            elif isinstance(seg, Image):
                b64 = base64.b64encode(_png_bytes(seg.image)).decode()
                out.append(f"<div><img alt='image' src='data:image/png;base64,{b64}'></div>")
            else:
                b64 = base64.b64encode(_wav_bytes(seg.waveform, seg.sample_rate)).decode()
                out.append(f"<div><audio controls src='data:audio/wav;base64,{b64}'></audio></div>")
        return "".join(out)

    def to_markdown(self) -> str:
        """Markdown referring to the media files `save` writes beside it.

        Text is escaped: it renders as the same characters and never as HTML, a link or an image.
        """
        lines = []
        for i, seg in enumerate(self.segments):
            if isinstance(seg, Text):
                lines.append(markdown_text(seg.text))
            elif isinstance(seg, Image):
                lines.append(f"![image](image_{i:03d}.png)")
            else:
                lines.append(f"[audio ({seg.seconds:.2f} s)](audio_{i:03d}.wav)")
        return "\n\n".join(lines) + "\n"


def _check_size(n_segments: int, chars: int, max_segments: int, max_text_chars: int, what: str) -> None:
    if n_segments > max_segments:
        raise AnygenError(f"{what} has {n_segments} segments, over the {max_segments}-segment limit")
    if chars > max_text_chars:
        raise AnygenError(f"{what} has {chars} characters of text, over the {max_text_chars}-character limit")


def markdown_text(text: str) -> str:
    """`text` as Markdown that renders as exactly these characters (HTML and link syntax escaped)."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", html.escape(text, quote=False))


def _png_bytes(image: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV bytes of a float waveform."""
    return _wav_bytes(waveform, sample_rate)
