"""MultimodalTokenizer: text tokenizer + image codec + audio codec + the global Vocab.

`encode(Document) -> ids` and `decode(ids) -> Document`; saved and loaded as one
directory:

    tokenizer/
      tokenizer.json     format version, vocab layout, which codecs are present
      text/              sentencepiece model (or a local HF tokenizer)
      image/             ImageCodec (config.json + model.safetensors), or a pretrained tokenizer's
                         own folder + anygen_codec.json (`anygen.codecs.pretrained`)
      audio/             AudioCodec (config.json + model.safetensors)

Decoding policy (any id sequence decodes, never raises): text ids become text;
special tokens outside their grammar are dropped; an image span is kept only when it
holds exactly H×W codes (a truncated or malformed span is dropped); an audio span keeps
its whole frames (and is dropped when it has none); codes outside spans are dropped.
`decode(..., report=True)` also returns how many spans were dropped.

With `image_keep` (a vocab option) images after the first are coded against the
previous image (`anygen.codecs.keep`): `encode` writes `<keep>`s, `decode` resolves them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from anygen.codecs.keep import encode_keeps, resolve_keeps
from anygen.codecs.layout import codes_to_stream, stream_to_codes
from anygen.codecs.text import load_text_tokenizer
from anygen.document import Audio, Document, Image, Segment, Text
from anygen.errors import AnygenError, short_repr
from anygen.io import atomic_directory, atomic_write_bytes, read_json_file
from anygen.vocab import Vocab

FORMAT_VERSION = 1


class MultimodalTokenizer:
    def __init__(self, text, image=None, audio=None, audio_layout: str = "flat", image_keep: bool = False):
        self.text, self.image, self.audio = text, image, audio
        self.vocab = Vocab(
            n_text=text.vocab_size,
            image_codebook_size=image.codebook_size if image is not None else 0,
            image_grids=(tuple(image.grid),) if image is not None else ((8, 8),),
            audio_codebook_size=audio.codebook_size if audio is not None else 0,
            audio_levels=audio.n_q if audio is not None else 0,
            audio_layout=audio_layout,
            image_keep=image_keep and image is not None,
        )

    # ---- encoding -------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. undecodable bytes in argv or JSON escapes
            raise AnygenError("text is not valid UTF-8 (it holds unpaired surrogate characters)") from None
        return self.text.encode(text)

    def image_codes(self, image) -> torch.Tensor:
        """PIL image -> codes (H, W)."""
        if self.image is None:
            raise AnygenError("this tokenizer has no image codec")
        with torch.no_grad():
            return self.image.encode_images([image])[0]

    def image_span(self, codes: torch.Tensor) -> list[int]:
        """codes (H, W) -> `<boi> <grid> ids <eoi>`."""
        v = self.vocab
        return [v.boi, v.grid_id(tuple(codes.shape))] + v.image_ids(codes.reshape(-1)).tolist() + [v.eoi]

    def image_from_codes(self, codes: torch.Tensor):
        """codes (H, W) -> PIL image (the codec's decoder)."""
        with torch.no_grad():
            return self.image.decode_images(codes.reshape(1, *codes.shape))[0]

    def audio_codes(self, waveform: np.ndarray, sample_rate: int) -> torch.Tensor:
        """waveform -> codes (n_q, F)."""
        if self.audio is None:
            raise AnygenError("this tokenizer has no audio codec")
        with torch.no_grad():
            return self.audio.encode_audio(waveform, sample_rate)

    def audio_span(self, codes: torch.Tensor) -> list[int]:
        """codes (n_q, F) -> `<boa> slots <eoa>` in the vocab's layout."""
        v = self.vocab
        values, levels = codes_to_stream(codes, v.audio_layout)
        ids = torch.where(values >= 0, v.audio_ids(values.clamp(min=0), levels), torch.full_like(values, v.apad))
        return [v.boa] + ids.tolist() + [v.eoa]

    def encode_segment(self, segment: Segment) -> list[int]:
        if isinstance(segment, Text):
            return self.encode_text(segment.text)
        if isinstance(segment, Image):
            return self.image_span(self.image_codes(segment.image))
        if isinstance(segment, Audio):
            return self.audio_span(self.audio_codes(segment.waveform, segment.sample_rate))
        raise TypeError(f"unknown segment type {type(segment).__name__}")

    def encode(self, document: Document, bos: bool = True, eos: bool = True) -> list[int]:
        ids = [self.vocab.bos] if bos else []
        for segment in document.with_text_joined():  # decode joins them too: round trips are exact
            ids += self.encode_segment(segment)
        return encode_keeps(ids + ([self.vocab.eos] if eos else []), self.vocab)

    # ---- decoding -------------------------------------------------------------------
    def decode(self, ids, report: bool = False):
        """ids -> Document (see the module docstring for the policy on malformed spans)."""
        ids = resolve_keeps(ids.tolist() if torch.is_tensor(ids) else ids, self.vocab)
        v = self.vocab
        segments: list[Segment] = []
        dropped = 0
        text_run: list[int] = []

        def flush_text():
            if text_run:
                text = self.text.decode(text_run)
                if segments and isinstance(segments[-1], Text):
                    segments[-1] = Text(segments[-1].text + text)
                elif text:
                    segments.append(Text(text))
                text_run.clear()

        i = 0
        while i < len(ids):
            tok = ids[i]
            if 0 <= tok < v.n_text:
                text_run.append(tok)
                i += 1
            elif tok == v.boi:
                flush_text()
                image, i = self._decode_image_span(ids, i + 1)
                if image is None:
                    dropped += 1
                else:
                    segments.append(Image(image))
            elif tok == v.boa:
                flush_text()
                audio, i = self._decode_audio_span(ids, i + 1)
                if audio is None:
                    dropped += 1
                else:
                    segments.append(audio)
            elif tok == v.eos:
                break
            else:
                i += 1  # stray special or code outside a span
        flush_text()
        document = Document(segments)
        return (document, dropped) if report else document

    def _decode_image_span(self, ids: list[int], i: int):
        """Parse after `<boi>`; returns (PIL or None, next index)."""
        v = self.vocab
        grid = v.grid_of(ids[i]) if i < len(ids) else None
        if grid is None or self.image is None:
            return None, i
        n = grid[0] * grid[1]
        body = ids[i + 1:i + 1 + n]
        end = i + 1 + n
        complete = len(body) == n and all(t in v.image_range for t in body)
        if not complete:
            # skip to the next non-code token so the rest of the sequence still decodes
            j = i + 1
            while j < len(ids) and ids[j] in v.image_range:
                j += 1
            return None, j + (1 if j < len(ids) and ids[j] == v.eoi else 0)
        if end < len(ids) and ids[end] == v.eoi:
            end += 1
        return self.image_from_codes(v.image_codes(torch.tensor(body)).reshape(grid)), end

    def _decode_audio_span(self, ids: list[int], i: int):
        """Parse after `<boa>`; returns (Audio or None, next index)."""
        v = self.vocab
        j = i
        audio_ids = range(v.audio_start, v.audio_stop)
        while j < len(ids) and (ids[j] in audio_ids or ids[j] == v.apad):
            j += 1
        body = torch.tensor(ids[i:j], dtype=torch.long)
        end = j + (1 if j < len(ids) and ids[j] == v.eoa else 0)
        if self.audio is None or len(body) == 0:
            return None, end
        is_pad = body == v.apad
        values, levels = v.audio_codes(torch.where(is_pad, torch.full_like(body, v.audio_start), body))
        expected_levels = torch.arange(len(body)) % v.audio_levels
        if not torch.equal(levels, expected_levels):  # a slot drew the wrong level: cut there
            bad = int((levels != expected_levels).nonzero()[0])
            values, levels, is_pad = values[:bad], levels[:bad], is_pad[:bad]
        values = torch.where(is_pad, torch.full_like(values, -1), values)
        codes = stream_to_codes(values, levels, v.audio_levels, v.audio_layout)
        if codes.numel() == 0 or codes.shape[1] == 0 or (codes < 0).any():
            return None, end
        with torch.no_grad():
            waveform = self.audio.decode_audio(codes)
        return Audio(waveform, self.audio.sample_rate), end

    @classmethod
    def assemble(cls, text_dir, image_dir=None, audio_dir=None, audio_layout: str = "flat",
                 image_keep: bool = False, image_size: int | None = None) -> "MultimodalTokenizer":
        """Combine separately trained parts (text tokenizer, image codec, audio codec directories).

        `image_dir` is an anygen image codec or a pretrained tokenizer folder (`anygen.codecs.pretrained`:
        diffusers VQModel/AutoencoderKL, transformers Emu3/Chameleon VQ-VAE), read at `image_size`
        pixels (pretrained folders only; None: the folder's own size)."""
        text = load_text_tokenizer(text_dir)
        image = audio = None
        if image_dir:
            from anygen.codecs.image import load_image_codec

            image = load_image_codec(image_dir, image_size).eval()
        if audio_dir:
            from anygen.codecs.audio import AudioCodec

            audio = AudioCodec.load(audio_dir).eval()
        return cls(text, image, audio, audio_layout=audio_layout, image_keep=image_keep)

    # ---- save / load ------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.text.save(tmp / "text")
            if self.image is not None:
                self.image.save(tmp / "image")
            if self.audio is not None:
                self.audio.save(tmp / "audio")
            meta = {"format": "anygen.tokenizer", "format_version": FORMAT_VERSION,
                    "vocab": self.vocab.to_dict(), "image": self.image is not None, "audio": self.audio is not None}
            atomic_write_bytes(tmp / "tokenizer.json", json.dumps(meta, indent=2).encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "MultimodalTokenizer":
        directory = Path(directory)
        meta_path = directory / "tokenizer.json"
        if not meta_path.exists():
            raise AnygenError(f"{directory}: not a tokenizer directory (missing tokenizer.json)")
        meta = read_json_file(meta_path)
        if not isinstance(meta, dict):
            raise AnygenError(f"{meta_path}: expected a JSON object")
        if type(meta.get("format_version")) is not int or meta["format_version"] != FORMAT_VERSION:
            raise AnygenError(f"{meta_path}: unsupported tokenizer format version {meta.get('format_version')!r} "
                              f"(this anygen reads {FORMAT_VERSION})")
        if not isinstance(meta.get("vocab"), dict):
            raise AnygenError(f"{meta_path}: missing the 'vocab' layout")
        for codec in ("image", "audio"):
            if not isinstance(meta.get(codec, False), bool):
                raise AnygenError(f"{meta_path}: '{codec}' must be true or false, got {short_repr(meta[codec])}")
        text = load_text_tokenizer(directory / "text")
        image = audio = None
        if meta.get("image"):
            from anygen.codecs.image import load_image_codec

            image = load_image_codec(directory / "image").eval()
        if meta.get("audio"):
            from anygen.codecs.audio import AudioCodec

            audio = AudioCodec.load(directory / "audio").eval()
        tokenizer = cls(text, image, audio, audio_layout=meta["vocab"].get("audio_layout", "flat"),
                        image_keep=bool(meta["vocab"].get("image_keep", False)))
        if tokenizer.vocab.to_dict() != meta["vocab"]:
            raise AnygenError(f"{meta_path}: the saved vocab does not match the codecs in {directory} "
                              f"(saved {meta['vocab']}, codecs give {tokenizer.vocab.to_dict()})")
        return tokenizer
