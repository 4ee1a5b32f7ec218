"""Saying when an input is outside what the model knows, and when a result is empty.

The *domain score* of an input is the decoder's own mean negative log-likelihood per token
(nats) of the conditioning input, teacher-forced over the prompt the task samples from
(`<bos> text` for draw, say, story and an edit's instruction; `<bos> span(image)` for caption;
`<bos> span(audio)` for transcribe; the whole prompt Document for generate). A model directory
may hold `domain.json` (written by `anygen calibrate` from its worlds' in-domain inputs): per
*kind* (the task whose inputs are compared, `KINDS`) the quantiles of those NLLs and the range
[low, high] outside which an input is flagged. The test is two-sided (a typicality test): an
input far *more* likely than in-domain ones is as foreign as one far less likely (a caption given
to a task whose inputs are instructions is likely text to the decoder, but not that task's
input); `flag_share` of in-domain inputs fall outside by construction, half in each tail.
Without it the score is computed but nothing is compared (`DomainScore.calibrated` is False),
so no input is flagged.

Independently of calibration an input image that is blank or audio that is silent, and an empty
result (a blank image, an empty text or Document, silent audio), are flagged.

Every result of `AnyGen` carries its `DomainScore`; `domain_of(result)` reads it:
str results (caption, transcribe, describe_edit) are `Answer`s (a `str` with `.domain`), PIL
images hold it in `image.info["anygen_domain"]`, `Audio` and `Document` results have a
`.domain` attribute. With `strict=True` a flagged input or result raises `AnygenError` instead.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

from anygen.document import Audio, Document, Image, Text
from anygen.errors import AnygenError
from anygen.io import atomic_write_bytes, read_json_file
from anygen.sampling.scoring import score_sequences

DOMAIN_FILE = "domain.json"  # in the model directory, beside anygen_decoder.json
FORMAT_VERSION = 1
# the calibration kinds: the task whose inputs an input is compared with ("document": generate's prompts)
KINDS = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "edit", "describe_edit", "story",
         "document")
INPUT_NAMES = {"image_to_text": "image", "audio_to_text": "audio", "describe_edit": "image pair",
               "edit": "instruction"}  # what the warning calls the input (default "prompt")
FLAG_SHARE = 0.005  # in-domain inputs flagged by design (half below the range, half above): rare false alarms
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)  # stored per kind
MIN_CALIBRATION = 20  # fewer in-domain inputs cannot place a 99.5% quantile at all
# A picture whose pixel values (0-255, all channels) vary by less than this shows nothing: a flat
# page plus codec noise stays well below 3 levels, one small shape on a plain page is over ten.
BLANK_IMAGE_STD = 3.0
SILENT_RMS = 1e-3  # -60 dBFS: quieter than any audible clip, louder than dither and codec noise on silence
IMAGE_INFO_KEY = "anygen_domain"  # where a PIL image result carries its DomainScore


@dataclass(frozen=True)
class DomainScore:
    """How far one input lies from what the model knows, and whether its result is empty.

    kind: the calibration kind (`KINDS`); nll: mean nats per input token under the decoder;
    rank: the share of in-domain calibration inputs with a lower NLL (None when uncalibrated);
    low, high: the in-domain range; an NLL outside it is flagged (None when uncalibrated);
    blank_input: the input image is blank or the input audio silent; empty_result: the result is empty.
    An input with nothing to score (NaN) is never outside.
    """

    kind: str
    nll: float
    rank: float | None = None
    low: float | None = None
    high: float | None = None
    blank_input: bool = False
    empty_result: bool = False

    @property
    def calibrated(self) -> bool:
        return self.high is not None

    @property
    def outside(self) -> bool:
        """The input looks outside what the model knows (outside the calibrated range, or blank)."""
        return self.blank_input or (self.calibrated and not self.low <= self.nll <= self.high
                                    and not math.isnan(self.nll))

    @property
    def flagged(self) -> bool:
        """A warning is due: the input is outside or the result is empty."""
        return self.outside or self.empty_result

    def message(self) -> str:
        """One line that says why the score is flagged ("" when it is not)."""
        what = INPUT_NAMES.get(self.kind, "prompt")
        if self.blank_input:
            reason = f"the {what} is {'silent' if what == 'audio' else 'blank'}"
        elif self.outside:
            reason = (f"the {what} looks outside what this model knows (score {self.nll:.2f} nats/token; in-domain "
                      f"inputs score {self.low:.2f} to {self.high:.2f})")
        else:
            reason = ""
        return "; ".join(r for r in (reason, "the result is empty" if self.empty_result else "") if r)

    def with_result(self, empty: bool) -> "DomainScore":
        return replace(self, empty_result=True) if empty else self


class Answer(str):
    """A text result with its `DomainScore` as `.domain`; otherwise the plain `str`."""

    domain: DomainScore

    def __new__(cls, text: str, domain: DomainScore):
        self = super().__new__(cls, text)
        self.domain = domain
        return self


def domain_of(result) -> DomainScore | None:
    """The `DomainScore` an `AnyGen` result carries (None for an object that carries none)."""
    if isinstance(result, PILImage.Image):
        return result.info.get(IMAGE_INFO_KEY)
    return getattr(result, "domain", None)


# ---- emptiness ----------------------------------------------------------------------------
def is_blank_image(image: PILImage.Image) -> bool:
    """Nearly uniform pixels (`BLANK_IMAGE_STD`)."""
    return float(np.asarray(image.convert("RGB"), dtype=np.float32).std()) < BLANK_IMAGE_STD


def is_silent(waveform) -> bool:
    """RMS below `SILENT_RMS` (or no samples)."""
    w = np.asarray(waveform).reshape(-1)
    w = w / np.iinfo(w.dtype).max if np.issubdtype(w.dtype, np.integer) else w.astype(np.float64)  # PCM
    return w.size == 0 or math.sqrt(float(np.mean(w * w))) < SILENT_RMS


def is_empty(result) -> bool:
    """An empty result: a blank image, a blank text, silent audio, a Document with none of these."""
    if isinstance(result, PILImage.Image):
        return is_blank_image(result)
    if isinstance(result, str):
        return not result.strip()
    if isinstance(result, Audio):
        return is_silent(result.waveform)
    if isinstance(result, (Text, Image)):
        return is_empty(result.text if isinstance(result, Text) else result.image)
    if isinstance(result, Document):
        return all(is_empty(seg) for seg in result)
    raise TypeError(f"is_empty: unknown result type {type(result).__name__}")


# ---- calibration --------------------------------------------------------------------------
@dataclass(frozen=True)
class KindCalibration:
    """The in-domain NLL distribution of one kind: values at `QUANTILES` and the range [low, high]."""

    n: int
    quantiles: tuple[float, ...]
    low: float
    high: float

    @classmethod
    def of(cls, nlls: Sequence[float], flag_share: float = FLAG_SHARE) -> "KindCalibration":
        x = np.asarray(nlls, dtype=np.float64)
        x = x[~np.isnan(x)]  # inputs with nothing to score
        if x.size < MIN_CALIBRATION or not np.isfinite(x).all():
            raise AnygenError(f"calibration needs at least {MIN_CALIBRATION} finite scores, got {x.size}")
        low, high = np.quantile(x, [flag_share / 2, 1 - flag_share / 2])
        return cls(int(x.size), tuple(float(q) for q in np.quantile(x, QUANTILES)), float(low), float(high))

    def rank(self, nll: float) -> float:
        """The share of in-domain inputs below `nll` (interpolated between the stored quantiles)."""
        return float(np.interp(nll, self.quantiles, QUANTILES))


@dataclass(frozen=True)
class Calibration:
    """A model's `domain.json`: per kind, its `KindCalibration`."""

    kinds: dict
    flag_share: float = FLAG_SHARE

    def score(self, kind: str, nll: float, blank_input: bool = False) -> DomainScore:
        k = self.kinds.get(kind)
        if k is None:
            return DomainScore(kind, nll, blank_input=blank_input)
        return DomainScore(kind, nll, k.rank(nll), k.low, k.high, blank_input)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "unit": "mean nats per input token",
                "flag_share": self.flag_share, "quantile_levels": list(QUANTILES),
                "kinds": {name: {"n": k.n, "low": k.low, "high": k.high, "quantiles": list(k.quantiles)}
                          for name, k in self.kinds.items()}}

    def save(self, directory: str | os.PathLike) -> Path:
        import json

        path = Path(directory) / DOMAIN_FILE
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Calibration | None":
        """The directory's `domain.json`, or None when it has none; a malformed file is an AnygenError."""
        path = Path(directory) / DOMAIN_FILE
        if not path.exists():
            return None
        data = read_json_file(path)
        try:
            if data["format_version"] != FORMAT_VERSION or list(data["quantile_levels"]) != list(QUANTILES):
                raise ValueError("another format version")
            kinds = {}
            for name, k in data["kinds"].items():
                qs, low, high = tuple(float(q) for q in k["quantiles"]), float(k["low"]), float(k["high"])
                if name not in KINDS or len(qs) != len(QUANTILES) or list(qs) != sorted(qs) or \
                        not all(map(math.isfinite, qs + (low, high))) or low > high:
                    raise ValueError(f"kind {name!r}")
                kinds[name] = KindCalibration(int(k["n"]), qs, low, high)
            return cls(kinds, float(data["flag_share"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AnygenError(f"{path}: not a valid domain calibration ({e}); run `anygen calibrate` "
                              f"to write it again") from None


# ---- scoring ------------------------------------------------------------------------------
class DomainCheck:
    """Domain scores of prompts under a `Session`'s decoder, against its `Calibration` (or None)."""

    def __init__(self, session, calibration: Calibration | None = None):
        self.session, self.calibration = session, calibration

    def prompt(self, kind: str, value) -> list[int]:
        """The ids whose tokens after `<bos>` are scored for an input `value` of `kind`: the task's prompt
        (text kinds: `<bos> text`; image_to_text: an image or codes; audio_to_text: audio or codes;
        describe_edit: (source, target); story and document: a Document), for an edit `<bos> instruction`
        (the prefix of the edit prompt). The API and `anygen calibrate` build them here alike."""
        s = self.session
        if kind in ("text_to_image", "text_to_audio"):
            return s.prompt(kind, text=value)
        if kind == "edit":
            return [s.vocab.bos] + s.tokenizer.encode_text(value)
        if kind == "image_to_text":
            return s.prompt(kind, image=value)
        if kind == "audio_to_text":
            return s.prompt(kind, audio=value)
        if kind == "describe_edit":
            return s.prompt(kind, image=value[0], target=value[1])
        if kind in ("story", "document"):
            return s.tokenizer.encode(value, eos=False)
        raise ValueError(f"unknown domain kind {kind!r} (kinds: {', '.join(KINDS)})")

    def nlls(self, prompts: Sequence[Sequence[int]]) -> list[float]:
        """Mean NLL per token of each prompt's ids after its first (`<bos>`), batched; NaN for a prompt
        with nothing after `<bos>`."""
        prompts = [list(p) for p in prompts]
        rows = [i for i, p in enumerate(prompts) if len(p) > 1]
        out = [math.nan] * len(prompts)
        if rows:
            sums = score_sequences(self.session.model, [prompts[i] for i in rows],
                                   [[False] + [True] * (len(prompts[i]) - 1) for i in rows], vocab=self.session.vocab)
            for i, total in zip(rows, sums):
                out[i] = -float(total) / (len(prompts[i]) - 1)
        return out

    def score(self, kind: str, prompts: Sequence[Sequence[int]], blank: Sequence[bool] | None = None,
              strict: bool = False) -> list[DomainScore]:
        """One `DomainScore` per prompt (`blank`: which inputs are blank media); with `strict` a flagged
        input raises `AnygenError` before any sampling."""
        if kind not in KINDS:
            raise ValueError(f"unknown domain kind {kind!r} (kinds: {', '.join(KINDS)})")
        blank = list(blank) if blank is not None else [False] * len(prompts)
        calibration = self.calibration or Calibration({})
        scores = [calibration.score(kind, nll, b) for nll, b in zip(self.nlls(prompts), blank)]
        if strict:
            raise_flagged(scores)
        return scores


def raise_flagged(scores: Sequence[DomainScore]) -> None:
    """AnygenError with the first flagged score's message (rows named when there are several)."""
    for i, s in enumerate(scores):
        if s.flagged:
            raise AnygenError(s.message() + (f" (row {i})" if len(scores) > 1 else ""))


def attach(result, score: DomainScore, strict: bool = False, empty: bool | None = None):
    """`result` carrying `score`, with `empty_result` set when the result is empty (`empty`, else
    `is_empty(result)`); str results become `Answer`s. With `strict` a flagged score raises AnygenError."""
    score = score.with_result(is_empty(result) if empty is None else empty)
    if strict:
        raise_flagged([score])
    if isinstance(result, PILImage.Image):
        result.info[IMAGE_INFO_KEY] = score
        return result
    if isinstance(result, str):
        return Answer(result, score)
    result.domain = score
    return result
