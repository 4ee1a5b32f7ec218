"""Encoding `Spec`s into token sequences, with a code cache and batched codec calls."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from anygen.codecs.keep import encode_keeps
from anygen.errors import AnygenError
from anygen.tasks.layouts import Media, Spec, TokenSequence


class SequenceEncoder:
    """Turns Specs into TokenSequences; caches media spans by key and batches image-codec calls.

    `cache_size` bounds the number of cached spans per modality (oldest evicted first).
    """

    def __init__(self, tokenizer, batch_size: int = 64, cache_size: int = 200_000, text_cache_size: int = 100_000):
        self.tok = tokenizer
        self.vocab = tokenizer.vocab
        self.batch_size = max(1, int(batch_size))
        self.cache_size = cache_size
        self.text_cache_size = text_cache_size
        self._image: OrderedDict = OrderedDict()
        self._audio: OrderedDict = OrderedDict()
        self._text: dict[str, np.ndarray] = {}
        self.stats = {"image_hits": 0, "image_misses": 0, "audio_hits": 0, "audio_misses": 0, "image_batches": 0}

    def _remember(self, cache: OrderedDict, key, span: np.ndarray) -> None:
        cache[key] = span
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def _image_spans(self, media: list[Media]) -> dict:
        """key -> span for every image in `media`; missing ones are encoded in batches."""
        spans: dict = {}
        missing: dict = {}
        for m in media:
            if m.key in spans or m.key in missing:
                self.stats["image_hits"] += 1
            elif m.key in self._image:
                self._image.move_to_end(m.key)
                spans[m.key] = self._image[m.key]
                self.stats["image_hits"] += 1
            else:
                missing[m.key] = m
        if not missing:
            return spans
        if self.tok.image is None:
            raise AnygenError("the tokenizer has no image codec, but the task mix has image tasks")
        self.stats["image_misses"] += len(missing)
        items = list(missing.values())
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            with torch.no_grad():
                codes = self.tok.image.encode_images([m.make() for m in chunk])  # (B, H, W)
            self.stats["image_batches"] += 1
            for m, c in zip(chunk, codes):
                spans[m.key] = np.asarray(self.tok.image_span(c), dtype=np.int64)
                self._remember(self._image, m.key, spans[m.key])
        return spans

    def _audio_span(self, m: Media) -> np.ndarray:
        span = self._audio.get(m.key)
        if span is not None:
            self._audio.move_to_end(m.key)
            self.stats["audio_hits"] += 1
            return span
        self.stats["audio_misses"] += 1
        if self.tok.audio is None:
            raise AnygenError("the tokenizer has no audio codec, but the task mix has audio tasks")
        wave, sr = m.make()
        span = np.asarray(self.tok.audio_span(self.tok.audio_codes(wave, sr)), dtype=np.int64)
        if m.key is not None:
            self._remember(self._audio, m.key, span)
        return span

    def _text_ids(self, text: str) -> np.ndarray:
        ids = self._text.get(text)
        if ids is None:
            ids = np.asarray(self.tok.encode_text(text), dtype=np.int64)
            if len(self._text) < self.text_cache_size:
                self._text[text] = ids
        return ids

    def encode(self, specs: list[Spec]) -> list[TokenSequence]:
        images = self._image_spans([p.value for s in specs for p in s.pieces if p.kind == "image"])
        out = []
        for s in specs:
            ids_parts, loss_parts = [], []
            for p in s.pieces:
                if p.kind == "ids":
                    ids = np.asarray([self.vocab.special(p.value)], dtype=np.int64)
                elif p.kind == "text":
                    ids = self._text_ids(p.value)
                elif p.kind == "image":
                    ids = images[p.value.key]
                elif p.kind == "audio":
                    ids = self._audio_span(p.value)
                else:
                    raise ValueError(f"unknown piece kind {p.kind!r}")
                ids_parts.append(ids)
                loss_parts.append(np.full(len(ids), p.loss, dtype=np.uint8))
            ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
            if self.vocab.image_keep:
                ids = np.asarray(encode_keeps(ids, self.vocab), dtype=np.int64)
            loss = np.concatenate(loss_parts) if loss_parts else np.zeros(0, np.uint8)
            loss[(ids == self.vocab.bos) | (ids == self.vocab.null)] = 0
            out.append(TokenSequence(s.task, ids, loss))
        return out
