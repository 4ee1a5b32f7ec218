"""Melodies heard in many timbres: the same notes from other synthesisers, loudness, timing and rooms.

The reference renderer (`world.render_melody`) plays every note with one waveform at one loudness for
exactly `NOTE_SECONDS`. A model trained only on it learns that waveform rather than the notes. A
`Timbre` renders the same notes with another waveform (sine, triangle, square, sawtooth, two-operator
FM or the reference partials), a peak loudness, a note length, a detuning, onset jitter, background
noise and a little reverb. Waveforms are split once: `TRAIN_WAVES` may appear in training,
`HELDOUT_WAVES` only in evaluation (`sample_timbre(rng, "heldout")`), so an audio->text figure on the
held-out split measures melodies from a synthesiser the model never heard.

Only what the model hears is augmented; what it says (text->audio) stays the reference timbre, which
the melody judge reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anygen.worlds.shapes.world import FADE_SECONDS, NOTE_FREQS, PARTIALS

# Waveforms by split. Held out: the triangle (odd harmonics falling as 1/k^2, between the sine and
# the square) and FM at a ratio no training waveform has (3: still harmonic, so the pitch is the
# note's; an inharmonic ratio would move the heard pitch). Both are as easy to hear as the training
# ones, so the held-out gap measures generalisation, not a harder task.
TRAIN_WAVES = ("reference", "sine", "square", "sawtooth", "fm2")
HELDOUT_WAVES = ("triangle", "fm3")
WAVES = TRAIN_WAVES + HELDOUT_WAVES
SPLITS = ("train", "heldout")
PEAK_RANGE = (0.05, 1.0)  # peak amplitude, drawn log-uniformly (quiet recordings are common)
NOTE_SECONDS_RANGE = (0.15, 0.35)  # one length per melody
MAX_DETUNE_CENTS = 30.0  # the whole melody shifted by up to ±30 cents
MAX_JITTER = 0.15  # onset jitter, as a share of the note length, per note
NOISE_SNR_DB_RANGE = (15.0, 40.0)  # white noise, when present
NOISE_PROB = 0.5
REVERB_PROB = 0.3
REVERB_WET_RANGE = (0.1, 0.35)
REVERB_SECONDS = 0.25  # exponential decay time of the synthetic room's impulse response (to -60 dB)
FM_INDEX = 1.2  # modulation index of the FM waves: the carrier stays the loudest partial (at 1.5 fm3's octave wins)
# Band-limited square, sawtooth and triangle: harmonics up to this many (all below 8 kHz for B4).
HARMONICS = 15


@dataclass(frozen=True)
class Timbre:
    """How one melody is played: `wave` (one of WAVES), `peak` amplitude, `note_seconds` per note,
    `detune_cents`, `jitter` (onset jitter, a share of the note), `snr_db` (None: no noise),
    `reverb` (wet share, 0: dry) and `seed` (the jitter's and the noise's draws)."""

    wave: str = "reference"
    peak: float = 0.5
    note_seconds: float = 0.25
    detune_cents: float = 0.0
    jitter: float = 0.0
    snr_db: float | None = None
    reverb: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.wave not in WAVES:
            raise ValueError(f"wave: {self.wave!r} is not one of {', '.join(WAVES)}")
        if not 0 < self.peak <= 1:
            raise ValueError(f"peak: must be in (0, 1], got {self.peak}")
        if not 0.05 <= self.note_seconds <= 5:
            raise ValueError(f"note_seconds: must be in [0.05, 5], got {self.note_seconds}")
        if not 0 <= self.jitter < 0.5 or not 0 <= self.reverb < 1:
            raise ValueError(f"jitter must be in [0, 0.5) and reverb in [0, 1), got {self.jitter}, {self.reverb}")


def sample_timbre(rng: np.random.Generator, split: str = "train") -> Timbre:
    """A random timbre whose waveform belongs to `split` ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    waves = TRAIN_WAVES if split == "train" else HELDOUT_WAVES
    lo, hi = np.log(PEAK_RANGE[0]), np.log(PEAK_RANGE[1])
    return Timbre(wave=waves[int(rng.integers(len(waves)))],
                  peak=float(np.exp(rng.uniform(lo, hi))),
                  note_seconds=float(rng.uniform(*NOTE_SECONDS_RANGE)),
                  detune_cents=float(rng.uniform(-MAX_DETUNE_CENTS, MAX_DETUNE_CENTS)),
                  jitter=float(rng.uniform(0, MAX_JITTER)),
                  snr_db=float(rng.uniform(*NOISE_SNR_DB_RANGE)) if rng.random() < NOISE_PROB else None,
                  reverb=float(rng.uniform(*REVERB_WET_RANGE)) if rng.random() < REVERB_PROB else 0.0,
                  seed=int(rng.integers(2 ** 31)))


def _tone(wave: str, f: float, t: np.ndarray) -> np.ndarray:
    """One note's waveform at frequency `f`, peak about 1, band-limited."""
    phase = 2 * np.pi * f * t
    if wave == "reference":
        return sum(a * np.sin(k * phase) for k, a in PARTIALS) / sum(a for _, a in PARTIALS)
    if wave == "sine":
        return np.sin(phase)
    if wave.startswith("fm"):
        ratio = float(wave[2:])
        return np.sin(phase + FM_INDEX * np.sin(ratio * phase))
    ks = np.arange(1, HARMONICS + 1)
    if wave == "square":
        ks = ks[ks % 2 == 1]
        amps = 1.0 / ks
    elif wave == "sawtooth":
        amps = 1.0 / ks
    else:  # triangle
        ks = ks[ks % 2 == 1]
        amps = (-1.0) ** ((ks - 1) // 2) / ks ** 2
    out = sum(a * np.sin(k * phase) for k, a in zip(ks, amps))
    return out / np.abs(out).max()


def render_timbre_melody(notes, timbre: Timbre, sample_rate: int) -> np.ndarray:
    """Notes -> float32 mono waveform played in `timbre` (its peak is `timbre.peak` before noise)."""
    notes = tuple(notes)
    for n in notes:
        if n not in NOTE_FREQS:
            raise ValueError(f"unknown note {n!r}")
    rng = np.random.default_rng(timbre.seed)
    seg = int(round(sample_rate * timbre.note_seconds))
    out = np.zeros(seg * len(notes) + seg // 2, dtype=np.float64)
    fade = min(int(round(sample_rate * FADE_SECONDS)), seg // 4)
    detune = 2.0 ** (timbre.detune_cents / 1200)
    for i, n in enumerate(notes):
        shift = int(round(rng.uniform(-timbre.jitter, timbre.jitter) * seg))
        start = max(0, i * seg + shift)
        length = min(seg, len(out) - start)
        t = np.arange(length) / sample_rate
        env = np.ones(length)
        if fade > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
            env[:fade], env[-fade:] = ramp, ramp[::-1]
        out[start:start + length] += _tone(timbre.wave, NOTE_FREQS[n] * detune, t) * env
    out = out[:seg * len(notes)]
    if timbre.reverb > 0:
        n_ir = int(sample_rate * REVERB_SECONDS)
        ir = rng.standard_normal(n_ir) * np.exp(-6.9 * np.arange(n_ir) / n_ir)  # -60 dB at the end
        wet = np.convolve(out, ir)[:len(out)]
        wet *= np.abs(out).max() / max(np.abs(wet).max(), 1e-9)
        out = (1 - timbre.reverb) * out + timbre.reverb * wet
    peak = np.abs(out).max()
    out = out * (timbre.peak / peak) if peak > 0 else out
    if timbre.snr_db is not None and len(out):
        power = float(np.mean(out ** 2))
        out = out + rng.standard_normal(len(out)) * np.sqrt(power / 10 ** (timbre.snr_db / 10))
    return np.clip(out, -1.0, 1.0).astype(np.float32)
