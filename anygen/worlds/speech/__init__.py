"""SpeechWorld: (text, 16 kHz waveform) pairs synthesized offline with the espeak-ng binary.

`synthesize` runs `espeak-ng --stdout` (text on stdin, never on the command line), parses
the WAV it streams (whose header carries placeholder sizes when written to a pipe) and
resamples to the requested rate. Output is deterministic for a given text, voice, speed
and pitch, and cached per process.

`SpeechWorld` has its own small sentence generator (scene captions and edit instructions in
ShapesWorld's vocabulary, digit strings, note names, everyday sentences from a fixed word list),
so it depends on nothing else in anygen.data.

The held-out split, never trained on: every sentence `is_heldout` (a hash of its text) and the
voice `HELDOUT_VOICE`. A `train` world skips held-out sentences; a `heldout` world says only them,
in the held-out voice.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from anygen.document import Document
from anygen.errors import AnygenError
from anygen.tasks.layouts import Media, Spec, TaskMix, audio_to_text, text_to_audio
from anygen.tasks.world import EVAL_STREAM
from anygen.io import check_waveform, resample, to_mono_float

DEBIAN_PACKAGE = "espeak-ng"
ESPEAK_BINARY = "espeak-ng"  # name or path; looked up on PATH
MAX_TEXT_CHARS = 2000
SPEED_RANGE = (80, 450)  # words per minute, espeak-ng's own limits
PITCH_RANGE = (0, 99)
TIMEOUT_S = 60.0
_VOICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\+[A-Za-z0-9_\-]+)?$")


def espeak_path() -> str:
    """The espeak-ng executable, or a clear error that names the package to install."""
    found = shutil.which(ESPEAK_BINARY)
    if found is None:
        raise AnygenError(f"{ESPEAK_BINARY} not found on PATH: install the Debian package "
                          f"{DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE})")
    return found


def parse_wav_stream(data: bytes) -> tuple[np.ndarray, int]:
    """PCM WAV bytes -> (float32 mono waveform, sample rate), tolerating streamed headers.

    A WAV written to a pipe cannot seek back to fill in its sizes, so the RIFF and data
    sizes may be placeholders (0 or 0x7FFFFFFF); the data chunk then runs to the end.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AnygenError("espeak-ng output is not a WAV stream")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt ":
            fmt = struct.unpack("<HHIIHH", data[body:body + 16])
        elif chunk == b"data":
            if fmt is None:
                raise AnygenError("WAV stream has a data chunk before its fmt chunk")
            tag, channels, rate, _, _, bits = fmt
            if tag != 1 or bits != 16:
                raise AnygenError(f"WAV stream is not 16-bit PCM (format {tag}, {bits} bits)")
            end = len(data) if size in (0, 0xFFFFFFFF, 0x7FFFFFFF) or body + size > len(data) else body + size
            frame = 2 * channels
            pcm = data[body:body + (end - body) // frame * frame]
            samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
            return to_mono_float(samples if channels > 1 else samples[:, 0]), int(rate)
        pos = body + size + (size & 1)
    raise AnygenError("WAV stream has no data chunk")


def _check_args(text: str, sample_rate: int, voice: str, speed: int, pitch: int) -> str:
    if not isinstance(text, str):
        raise AnygenError(f"text must be a string, got {type(text).__name__}")
    text = "".join(" " if (ord(c) < 32 or c == "\x7f") else c for c in text).strip()  # control chars
    if not text:
        raise AnygenError("text is empty: nothing to synthesize")
    if len(text) > MAX_TEXT_CHARS:
        raise AnygenError(f"text is {len(text)} characters, over the {MAX_TEXT_CHARS}-character limit")
    if not isinstance(sample_rate, (int, np.integer)) or not 4000 <= sample_rate <= 48000:
        raise AnygenError(f"sample_rate must be an integer in [4000, 48000], got {sample_rate!r}")
    if not isinstance(voice, str) or not _VOICE_RE.match(voice):
        raise AnygenError(f"voice must be an espeak-ng voice name like 'en', 'en-us' or 'en-us+f3', got {voice!r}")
    if not isinstance(speed, (int, np.integer)) or not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise AnygenError(f"speed must be an integer in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}] words per minute, "
                          f"got {speed!r}")
    if not isinstance(pitch, (int, np.integer)) or not PITCH_RANGE[0] <= pitch <= PITCH_RANGE[1]:
        raise AnygenError(f"pitch must be an integer in [{PITCH_RANGE[0]}, {PITCH_RANGE[1]}], got {pitch!r}")
    return text


@lru_cache(maxsize=4096)
def _synthesize_cached(text: str, sample_rate: int, voice: str, speed: int, pitch: int) -> np.ndarray:
    cmd = [espeak_path(), "--stdout", "-b", "1", "-v", voice, "-s", str(speed), "-p", str(pitch)]
    try:
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AnygenError(f"espeak-ng took over {TIMEOUT_S:.0f} s for {len(text)} characters") from None
    if proc.returncode != 0 or not proc.stdout:
        detail = proc.stderr.decode("utf-8", "replace").strip() or f"exit code {proc.returncode}, no audio"
        raise AnygenError(f"espeak-ng failed for voice {voice!r}: {detail}")
    waveform, rate = parse_wav_stream(proc.stdout)
    if waveform.size == 0:
        raise AnygenError(f"espeak-ng produced no audio for {text[:40]!r}")
    waveform = check_waveform(resample(waveform, rate, int(sample_rate)), "espeak-ng output")
    waveform.setflags(write=False)
    return waveform


def synthesize(text: str, sample_rate: int = 16000, voice: str = "en-us", speed: int = 160,
               pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng: float32 mono waveform at `sample_rate` (Hz).

    `voice` is an espeak-ng voice (`en`, `en-us`, `en-gb`) optionally with a variant
    (`en-us+f3`); `speed` is words per minute; `pitch` is 0–99.
    """
    text = _check_args(text, sample_rate, voice, speed, pitch)
    return _synthesize_cached(text, int(sample_rate), voice, int(speed), int(pitch)).copy()


# ---- sentences ---------------------------------------------------------------------------
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NOTES = ("C", "D", "E", "F", "G", "A", "B")
# everyday sentences: subject, verb, object, place (8**4 = 4,096 sentences)
SUBJECTS = ("my sister", "the teacher", "a small dog", "our neighbor", "the old man", "my friend", "the baker",
            "a young girl")
VERBS = ("found", "carried", "painted", "opened", "liked", "lost", "washed", "bought")
OBJECTS = ("a green door", "the old book", "two apples", "a warm coat", "the big box", "a paper boat",
           "the kitchen chair", "a blue cup")
PLACES = ("in the kitchen", "after lunch", "near the river", "at the station", "this morning", "in the garden",
          "before dinner", "at the market")
SENTENCE_KINDS = ("shapes", "instructions", "digits", "notes", "everyday")
EVAL_KINDS = ("shapes", "instructions", "digits", "everyday")  # what the held-out set says: note letters
# ("the notes A E B") are not words a speech recogniser reads reliably, so they do not judge intelligibility
TRAIN_VOICES = ("en-us", "en-us+f3", "en", "en+m3")
HELDOUT_VOICE = "en-us+f4"  # a voice variant no training sentence is spoken in
HELDOUT_ONE_IN = 10  # 1 sentence in 10 (by the hash of its text) is held out
SPLITS = ("train", "heldout")
MAX_DRAWS = 1000  # sentence draws before giving up on a split (a held-out one takes 10 on average)


def is_heldout(sentence: str) -> bool:
    """Whether `sentence` belongs to the held-out split: the first byte of its SHA-1 is 0 mod
    `HELDOUT_ONE_IN` (a fixed rule: the same sentences in every run)."""
    return hashlib.sha1(sentence.encode("utf-8")).digest()[0] % HELDOUT_ONE_IN == 0


def make_sentence(rng: random.Random, kind: str) -> str:
    """One sentence of `kind`: a ShapesWorld-style caption or edit instruction, a digit string,
    note names, or an everyday sentence."""
    if kind == "shapes":
        n = rng.randint(1, 3)
        cells = rng.sample(POSITIONS, n)
        parts = [f"a {rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)} at the {c}"
                 for c in cells]
        return " and ".join(parts)
    if kind == "instructions":
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        verb = rng.randrange(4)
        if verb == 0:
            return f"make the {colour} {shape} {rng.choice([c for c in COLOURS if c != colour])}"
        if verb == 1:
            return f"move the {colour} {shape} to the {rng.choice(POSITIONS)}"
        if verb == 2:
            return f"remove the {colour} {shape}"
        return f"add a {rng.choice(SIZES)} {colour} {shape} at the {rng.choice(POSITIONS)}"
    if kind == "digits":
        return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 7)))
    if kind == "notes":
        return "the notes " + " ".join(rng.choice(NOTES) for _ in range(rng.randint(1, 4)))
    if kind == "everyday":
        return " ".join(rng.choice(words) for words in (SUBJECTS, VERBS, OBJECTS, PLACES))
    raise AnygenError(f"sentence kind must be one of {', '.join(SENTENCE_KINDS)}; got {kind!r}")


def _as_random(rng) -> random.Random:
    """int seed, random.Random or numpy Generator (which gives a seed, advancing it) -> random.Random."""
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(2**63)))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return random.Random(int(rng))
    raise TypeError(f"rng must be an int seed, random.Random or numpy Generator, got {type(rng).__name__}")


@dataclass(frozen=True)
class Utterance:
    """A sentence and the voice that says it (espeak-ng voice, words per minute, pitch)."""

    text: str
    voice: str
    speed: int
    pitch: int

    def audio(self, sample_rate: int) -> tuple[np.ndarray, int]:
        """(waveform, sample_rate): espeak-ng saying it."""
        return synthesize(self.text, sample_rate, self.voice, self.speed, self.pitch), sample_rate

    def media(self, sample_rate: int) -> Media:
        """Its audio as a task's media, synthesized only when its codes are not cached."""
        return Media("audio", ("speech", sample_rate, self.text, self.voice, self.speed, self.pitch),
                     lambda: self.audio(sample_rate))


@dataclass(frozen=True, eq=False)
class SpeechItem:
    text: str
    waveform: np.ndarray  # (T,) float32 mono
    sample_rate: int
    voice: str
    speed: int
    pitch: int

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate

    def document(self) -> Document:
        """The speech, then its transcript."""
        return Document.of((self.waveform, self.sample_rate), self.text)


class SpeechWorld:
    """Spoken sentences with exact transcripts, varied in voice, speed and pitch; deterministic by seed.

    `split` "train" never says a held-out sentence; "heldout" says only held-out ones. `voices`
    defaults to `TRAIN_VOICES`, or `HELDOUT_VOICE` alone for the held-out split.
    """

    def __init__(self, seed: int = 0, sample_rate: int = 16000, kinds: tuple[str, ...] = SENTENCE_KINDS,
                 voices: tuple[str, ...] | None = None, speed_range: tuple[int, int] = (140, 190),
                 pitch_range: tuple[int, int] = (35, 65), split: str = "train"):
        if split not in SPLITS:
            raise AnygenError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if voices is None:
            voices = TRAIN_VOICES if split == "train" else (HELDOUT_VOICE,)
        for kind in kinds:
            if kind not in SENTENCE_KINDS:
                raise AnygenError(f"kinds: unknown sentence kind {kind!r} (choose from {', '.join(SENTENCE_KINDS)})")
        if not kinds or not voices:
            raise AnygenError("kinds and voices must not be empty")
        for name, lo_hi, limits in (("speed_range", speed_range, SPEED_RANGE),
                                    ("pitch_range", pitch_range, PITCH_RANGE)):
            if not (limits[0] <= lo_hi[0] <= lo_hi[1] <= limits[1]):
                raise AnygenError(f"{name} must be (low, high) within {limits}, got {lo_hi!r}")
        self.seed, self.sample_rate, self.kinds, self.voices = seed, sample_rate, tuple(kinds), tuple(voices)
        self.speed_range, self.pitch_range, self.split = speed_range, pitch_range, split

    def sentence(self, rng: random.Random | np.random.Generator | int) -> str:
        """A sentence of this world's split (drawn again until it is one)."""
        rng = _as_random(rng)
        want = self.split == "heldout"
        for _ in range(MAX_DRAWS):
            text = make_sentence(rng, rng.choice(self.kinds))
            if is_heldout(text) == want:
                return text
        raise AnygenError(f"no {self.split} sentence of kinds {', '.join(self.kinds)} in {MAX_DRAWS} draws")

    def draw(self, rng: random.Random | np.random.Generator | int) -> Utterance:
        """What one item says and how, without synthesizing it."""
        rng = _as_random(rng)
        text = self.sentence(rng)
        voice = rng.choice(self.voices)
        return Utterance(text, voice, rng.randint(*self.speed_range), rng.randint(*self.pitch_range))

    def sample(self, rng: random.Random | np.random.Generator | int) -> SpeechItem:
        """One (text, waveform) pair; the same rng state always gives the same pair."""
        u = self.draw(rng)
        wave = synthesize(u.text, self.sample_rate, voice=u.voice, speed=u.speed, pitch=u.pitch)
        return SpeechItem(u.text, wave, self.sample_rate, u.voice, u.speed, u.pitch)

    def sample_example(self, rng=None) -> tuple[str, np.ndarray, int]:
        """(text, waveform, sample_rate); without `rng`, the first item of this world's seed."""
        item = self.sample(self.seed if rng is None else rng)
        return item.text, item.waveform, item.sample_rate

    def items(self, n: int) -> list[SpeechItem]:
        """`n` pairs drawn from this world's seed (use another seed for a disjoint-stream set)."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise AnygenError(f"n must be a non-negative integer, got {n!r}")
        rng = random.Random(self.seed)
        return [self.sample(rng) for _ in range(n)]


SPEECH_TASKS = ("text_to_audio", "audio_to_text")
# text->speech examples speak in one voice, speed and pitch: `say` has one voice to learn (it cannot be asked
# for another); speech->text examples hear every training voice, speed and pitch
SAY_VOICE = ("en-us", 160, 50)  # (voice, words per minute, pitch)


class SpeechTasks:
    """Text->speech (`say`) and speech->text (`transcribe`) of the speech world's sentences. "train"
    and "val" draw training sentences (val from the caller's other stream); "holdout" (or
    "heldout") draws held-out sentences, heard in the held-out voice (`is_heldout`, `HELDOUT_VOICE`)."""

    tasks = SPEECH_TASKS

    def __init__(self, sample_rate: int, mix: TaskMix):
        self.mix, self.sample_rate = mix, sample_rate
        self.worlds = {split: SpeechWorld(sample_rate=sample_rate, split=split) for split in SPLITS}

    def sample(self, task: str, rng: np.random.Generator, split: str = "train") -> Spec:
        u = self.worlds["heldout" if split in ("holdout", "heldout") else "train"].draw(rng)
        if task == "text_to_audio":
            said = Utterance(u.text, *SAY_VOICE)
            return text_to_audio(u.text, said.media(self.sample_rate), self.mix.text_to_audio, rng)
        if task == "audio_to_text":
            return audio_to_text(u.media(self.sample_rate), u.text, self.mix.audio_to_text, rng)
        raise AnygenError(f"the speech world has no task {task!r} (tasks: {', '.join(SPEECH_TASKS)})")


WER_FLOOR = 0.01  # the ratio's denominator: originals Whisper reads perfectly do not divide by zero
SPEECH_TRAIN_SENTENCES = 2000  # sentences a codec trains on (espeak-ng: about 0.02 s each; ~95 min of speech)


class Speech:
    """The `speech` world (`anygen.tasks.world.World`): espeak-ng sentences for codec training, previews,
    the decoder's text->speech and speech->text tasks (`SpeechTasks`) and codec evaluation
    (`eval_audio`, `judge_audio`: Whisper's word error rate). `transcriber`: the speech recogniser
    that judges (default Whisper, loaded when first used)."""

    name = "speech"
    tasks = SPEECH_TASKS
    previews = ("speech",)
    plan_format = None

    def __init__(self, seed: int = 0, sample_rate: int = 16000, transcriber=None):
        self.seed = seed  # the voices and sentences of previews and corpora come from the caller's rng
        self.sample_rate = sample_rate  # of the tasks' audio (the speech codec's rate)
        self._transcriber = transcriber  # None: Whisper (anygen.worlds.asr), loaded when first judged

    def task_source(self, mix: TaskMix) -> SpeechTasks:
        return SpeechTasks(self.sample_rate, mix)

    def text_corpus(self, n: int, rng) -> list[str]:
        world = SpeechWorld(seed=int(rng.integers(2**31)))
        r = random.Random(world.seed)
        return [world.sentence(r) for _ in range(n)]

    def preview(self, rng, kind: str = "speech") -> Document:
        text, waveform, sample_rate = SpeechWorld(seed=int(rng.integers(2**31))).sample_example()
        return Document.of(text, (waveform, sample_rate))

    def audio_batches(self, data, batch_size: int, seed: int, sample_rate: int):
        from anygen.data.media_sources import WaveListSource

        waves = [item.waveform for item in SpeechWorld(seed=data.seed, sample_rate=sample_rate).items(
            SPEECH_TRAIN_SENTENCES)]
        return WaveListSource(waves, batch_size, sample_rate, data.clip_seconds, seed, data.prefetch, "speech",
                              data.crop_align)

    def eval_audio(self, n: int, seed: int, sample_rate: int) -> tuple[list, list[str]]:
        """(waveforms, transcripts) of `n` held-out sentences (`EVAL_KINDS`) in the held-out voice."""
        items = SpeechWorld(seed=seed + EVAL_STREAM, sample_rate=sample_rate, kinds=EVAL_KINDS,
                            split="heldout").items(n)
        return [it.waveform for it in items], [it.text for it in items]

    def judge_audio(self, originals: list, recons: list, texts: list[str], sample_rate: int) -> dict[str, float]:
        """Whisper's word error rate on the reconstructions and on the originals, and their ratio."""
        from anygen.worlds.asr import word_error_rate

        transcribe = self.transcriber()
        wer = word_error_rate(texts, transcribe(recons, sample_rate))
        base = word_error_rate(texts, transcribe(originals, sample_rate))
        return {"wer": wer, "wer_originals": base, "wer_ratio": wer / max(base, WER_FLOOR)}

    def transcriber(self):
        """The speech recogniser judging this world's audio (`anygen.worlds.asr.Transcriber`)."""
        if self._transcriber is None:
            from anygen.worlds.asr import WhisperTranscriber

            self._transcriber = WhisperTranscriber()
        return self._transcriber
