"""`anygen eval speech`: what a model says and hears, judged by a real speech recogniser.

The generator is any object with the `AnyGen` methods `say` and `transcribe`; the judge is a
`anygen.worlds.asr.Transcriber` (Whisper tiny.en by default). Every sentence is from the speech
world's held-out split (`is_heldout`, kinds `EVAL_KINDS`), never trained on. Results are a flat dict.

Metrics
- say.wer: the judge's word error rate on `say(sentence)`; say.wer_reference: its rate on espeak-ng
  saying the same sentences in the voice text->speech trains on (`SAY_VOICE`): the judge's own floor.
- transcribe.wer: word error rate of `transcribe` on the sentences spoken in the held-out voice
  (`HELDOUT_VOICE`); transcribe.wer_train_voices: on the same sentences, speeds and pitches in the
  training voices; transcribe.wer_reference: the judge's own rate on the held-out voice (a reference
  listener).
- say.seconds / transcribe.seconds: wall time per sentence.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from anygen.tasks.world import EVAL_STREAM
from anygen.worlds.asr import word_error_rate
from anygen.worlds.speech import EVAL_KINDS, SAY_VOICE, TRAIN_VOICES, SpeechWorld, Utterance

SUITES = ("say", "transcribe")


def heldout_utterances(n: int, seed: int) -> list[Utterance]:
    """`n` held-out sentences (`EVAL_KINDS`) in the held-out voice."""
    world = SpeechWorld(seed=seed + EVAL_STREAM, kinds=EVAL_KINDS, split="heldout")
    rng = random.Random(world.seed)
    return [world.draw(rng) for _ in range(n)]


def evaluate_speech(generator, transcriber, n: int = 100, seed: int = 0, suites=SUITES, guidance_scale: float = 1.0,
                    sample_rate: int = 16000, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The metrics of `suites` (module docstring) on `n` held-out sentences drawn with `seed`."""
    progress = progress or (lambda name: None)
    out: dict[str, float] = {"n": float(n)}
    utterances = heldout_utterances(n, seed)
    texts = [u.text for u in utterances]
    if "say" in suites:
        start = time.perf_counter()
        said = [generator.say(text, guidance_scale=guidance_scale, seed=seed + k) for k, text in enumerate(texts)]
        out["say.seconds"] = (time.perf_counter() - start) / n
        out["say.wer"] = _wer(transcriber, texts, [(a.waveform, a.sample_rate) for a in said])
        espeak = [Utterance(t, *SAY_VOICE).audio(sample_rate) for t in texts]
        out["say.wer_reference"] = _wer(transcriber, texts, espeak)
        progress("say")
    if "transcribe" in suites:
        heldout = [u.audio(sample_rate) for u in utterances]
        start = time.perf_counter()
        heard = [str(generator.transcribe(audio, seed=seed)) for audio in heldout]
        out["transcribe.seconds"] = (time.perf_counter() - start) / n
        out["transcribe.wer"] = word_error_rate(texts, heard)
        out["transcribe.wer_reference"] = _wer(transcriber, texts, heldout)
        voices = random.Random(seed)
        trained = [Utterance(u.text, voices.choice(TRAIN_VOICES), u.speed, u.pitch).audio(sample_rate)
                   for u in utterances]
        out["transcribe.wer_train_voices"] = word_error_rate(
            texts, [str(generator.transcribe(audio, seed=seed)) for audio in trained])
        progress("transcribe")
    return out


def _wer(transcriber, texts: list[str], audios: list[tuple]) -> float:
    """The judge's word error rate on (waveform, sample_rate) pairs (grouped by rate)."""
    heard = [""] * len(audios)
    for rate in {sr for _, sr in audios}:
        rows = [k for k, (_, sr) in enumerate(audios) if sr == rate]
        for k, text in zip(rows, transcriber([audios[k][0] for k in rows], rate)):
            heard[k] = text
    return word_error_rate(texts, heard)


def format_report(results: dict[str, float]) -> str:
    """The results as a few readable lines."""
    lines = []
    if "say.wer" in results:
        lines.append(f"say: Whisper word error rate {results['say.wer']:.1%} (on espeak-ng's own reading "
                     f"{results['say.wer_reference']:.1%}), {results['say.seconds']:.2f} s per sentence")
    if "transcribe.wer" in results:
        lines.append(f"transcribe: word error rate {results['transcribe.wer']:.1%} in the held-out voice, "
                     f"{results['transcribe.wer_train_voices']:.1%} in the training voices (Whisper on the "
                     f"held-out voice: {results['transcribe.wer_reference']:.1%}), "
                     f"{results['transcribe.seconds']:.2f} s per sentence")
    return "\n".join(lines)
