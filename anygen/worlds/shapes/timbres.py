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

from scipy.signal import fftconvolve

from anygen.worlds.shapes.world import FADE_SECONDS, NOTE_FREQS, NOTE_SECONDS, PARTIALS

# Waveforms by split. Held out: the triangle (odd harmonics falling as 1/k^2, between the sine and
# the square) and FM at a ratio no training waveform has (3: still harmonic, so the pitch is the
# note's; an inharmonic ratio would move the heard pitch). Both are as easy to hear as the training
# ones, so the held-out gap measures generalisation, not a harder task.
TRAIN_WAVES = ("reference", "sine", "square", "sawtooth", "fm2")
HELDOUT_WAVES = ("triangle", "fm3")
WAVES = TRAIN_WAVES + HELDOUT_WAVES
TIMBRE_SPLITS = ("train", "heldout")
REFERENCE_PEAK = 0.5  # the reference renderer's loudness
NOTE_SECONDS_LIMITS = (0.05, 5.0)  # as WorldConfig.note_seconds
PEAK_RANGE = (0.05, 1.0)  # peak amplitude, drawn log-uniformly (quiet recordings are common)
NOTE_SECONDS_RANGE = (0.15, 0.35)  # one length per melody
MAX_DETUNE_CENTS = 30.0  # the whole melody shifted by up to ±30 cents
MAX_JITTER = 0.15  # onset jitter, as a share of the note length, per note
NOISE_SNR_DB_RANGE = (15.0, 40.0)  # white noise, when present
NOISE_PROB = 0.5
REVERB_PROB = 0.3
REVERB_WET_RANGE = (0.1, 0.35)
REVERB_SECONDS = 0.25  # exponential decay time of the synthetic room's impulse response (to -60 dB)
DECAY_60DB = np.log(1000.0)  # amplitude e-folds over REVERB_SECONDS for a 60 dB fall
FM_INDEX = 1.2  # modulation index of the FM waves: the carrier stays the loudest partial (at 1.5 fm3's octave wins)
# Band-limited square, sawtooth and triangle: harmonics up to this many, and below the Nyquist frequency.
HARMONICS = 15


@dataclass(frozen=True)
class Timbre:
    """How one melody is played: `wave` (one of WAVES), `peak` amplitude, `note_seconds` per note,
    `detune_cents`, `jitter` (onset jitter, a share of the note), `snr_db` (None: no noise),
    `reverb` (wet share, 0: dry) and `seed` (the jitter's and the noise's draws)."""

    wave: str = "reference"
    peak: float = REFERENCE_PEAK
    note_seconds: float = NOTE_SECONDS
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
        lo, hi = NOTE_SECONDS_LIMITS
        if not lo <= self.note_seconds <= hi:
            raise ValueError(f"note_seconds: must be in [{lo}, {hi}], got {self.note_seconds}")
        if not 0 <= self.jitter < 0.5 or not 0 <= self.reverb < 1:
            raise ValueError(f"jitter must be in [0, 0.5) and reverb in [0, 1), got {self.jitter}, {self.reverb}")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")


def sample_timbre(rng: np.random.Generator, split: str = "train") -> Timbre:
    """A random timbre whose waveform belongs to `split` ("train" or "heldout")."""
    if split not in TIMBRE_SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(TIMBRE_SPLITS)}")
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


def _tone(wave: str, f: float, t: np.ndarray, sample_rate: int) -> np.ndarray:
    """One note's waveform at frequency `f`, peak about 1, band-limited below sample_rate / 2."""
    phase = 2 * np.pi * f * t
    if wave == "reference":
        return sum(a * np.sin(k * phase) for k, a in PARTIALS) / sum(a for _, a in PARTIALS)
    if wave == "sine":
        return np.sin(phase)
    if wave.startswith("fm"):
        ratio = float(wave[2:])
        return np.sin(phase + FM_INDEX * np.sin(ratio * phase))
    ks = np.arange(1, HARMONICS + 1)
    ks = ks[ks * f < sample_rate / 2]
    if wave == "square":
        ks = ks[ks % 2 == 1]
        amps = 1.0 / ks
    elif wave == "sawtooth":
        amps = 1.0 / ks
    else:  # triangle
        ks = ks[ks % 2 == 1]
        amps = (-1.0) ** ((ks - 1) // 2) / ks ** 2
    out = sum(a * np.sin(k * phase) for k, a in zip(ks, amps))
    return out / max(np.abs(out).max(), 1e-9)


def render_timbre_melody(notes, timbre: Timbre, sample_rate: int) -> np.ndarray:
    """Notes -> float32 mono waveform of len(notes) * round(sample_rate * note_seconds) samples played
    in `timbre`, its peak `timbre.peak` (noise included; clipped to [-1, 1] only then)."""
    notes = tuple(notes)
    for n in notes:
        if n not in NOTE_FREQS:
            raise ValueError(f"unknown note {n!r}")
    seg = int(round(sample_rate * timbre.note_seconds))
    total = seg * len(notes)
    if total == 0:
        return np.zeros(0, dtype=np.float32)
    rng = np.random.default_rng(timbre.seed)
    out = np.zeros(total, dtype=np.float64)
    fade = min(int(round(sample_rate * FADE_SECONDS)), seg // 2)
    detune = 2.0 ** (timbre.detune_cents / 1200)
    for i, n in enumerate(notes):
        shift = int(round(rng.uniform(-timbre.jitter, timbre.jitter) * seg))
        start = min(max(0, i * seg + shift), total - 1)
        length = min(seg, total - start)  # a late last note is cut, its fade-out at the cut
        t = np.arange(length) / sample_rate
        env = np.ones(length)
        f = min(fade, length // 2)
        if f > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(f) + 0.5) / f)
            env[:f], env[-f:] = ramp, ramp[::-1]
        out[start:start + length] += _tone(timbre.wave, NOTE_FREQS[n] * detune, t, sample_rate) * env
    if timbre.reverb > 0:
        n_ir = int(sample_rate * REVERB_SECONDS)
        ir = rng.standard_normal(n_ir) * np.exp(-DECAY_60DB * np.arange(n_ir) / n_ir)
        wet = fftconvolve(out, ir)[:total]
        wet *= np.abs(out).max() / max(np.abs(wet).max(), 1e-9)
        out = (1 - timbre.reverb) * out + timbre.reverb * wet
    if timbre.snr_db is not None:
        power = float(np.mean(out ** 2))
        out = out + rng.standard_normal(total) * np.sqrt(power / 10 ** (timbre.snr_db / 10))
    peak = np.abs(out).max()
    out = out * (timbre.peak / peak) if peak > 0 else out
    return np.clip(out, -1.0, 1.0).astype(np.float32)
