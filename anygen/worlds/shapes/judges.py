"""Judges: read ShapesWorld scenes back from pixels and melodies back from waveforms.

They score generated media, so they must neither miss a real object nor invent one from
artifacts, and they answer None ("unparseable") rather than guess. `parse_image` and
`parse_melody` also say why an input was rejected.

Image judge (works at 64×64; other sizes are resized to 64×64 first):
1. foreground = pixels whose RGB distance from white exceeds `FG_DARKNESS`; 8-connected
   components; specks under `IGNORE_AREA` px are ignored, other blobs under `MIN_AREA`
   make the image unparseable.
2. colour: mean of the component's core pixels (darkness >= 85% of its maximum), nearest
   palette colour; unparseable when farther than `MAX_COLOR_DIST`, when the second-nearest
   palette colour is nearly as close (`AMBIGUITY`), or when the component's pixels do not
   lie on the white→colour line (`MAX_RESIDUAL`: two colours merged, noise, gradients).
3. soft alpha per pixel (projection onto the white→colour line) over the component grown
   by one pixel (its anti-aliased rim); its sum is the area, its mean position the centroid.
4. shape: each of circle, square, triangle is rendered with the blob's area and centroid
   (a triangle's centroid lies side/6 below its box centre), blurred by each of `BLURS`, and
   compared with the alpha map (squared error relative to the template's energy). The best
   wins unless its error exceeds `MAX_SHAPE_ERROR` (no shape: a diamond, an ellipse, two
   merged objects) or the runner-up is nearly as good (`SHAPE_AMBIGUITY`, e.g. a square
   rounded halfway to a circle).
5. size from the fitted box side (small 10 px, large 18 px, `SIZE_BANDS` with a reject band
   between); cell from the box centre, which must lie within `MAX_OFFSET` px of a cell centre.
6. a fainter blob (`FAINT_DARKNESS`, >= `FAINT_AREA` px) that no object explains, e.g. a
   washed-out object, makes the image unparseable rather than silently missing an object.
Zero objects, more than three, or two in one cell are unparseable.

Melody judge: the waveform is cut into `note_seconds` segments (the length must be close to a
whole number of them); per segment the Hann-windowed spectrum's peak in 240–520 Hz (parabolic
interpolation) gives the pitch, which must lie within `MAX_CENTS` of a note of the 4th octave
and carry most of the segment's energy in its harmonics; silent segments are unparseable.

Degradations (the "mild" conditions the targets are stated for):
- image: JPEG quality 75, then Gaussian blur σ = 0.6, then uniform integer noise in [-8, 8]
  per channel (clipped to 0..255);
- audio: gain change of ±2 dB (uniform) and additive white Gaussian noise at 20 dB SNR.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFilter
from scipy import ndimage

from anygen.worlds.shapes.world import (COLORS, NOTE_FREQS, NOTE_SECONDS, NOTES, SAMPLE_RATE, SHAPES, Obj, Scene, ShapesWorld,
                                WorldConfig, render_melody, render_scene, shape_coverage)
from anygen.io import IMAGE_FORMATS, to_rgb
from anygen.errors import AnygenError

JUDGE_SIZE = 64
COLOR_NAMES = tuple(COLORS)
PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], np.float64)  # (6, 3)

FG_DARKNESS = 70.0  # RGB distance from white above which a pixel is foreground
FAINT_DARKNESS = 40.0  # a blob this dark and >= FAINT_AREA px that no object explains -> unparseable
FAINT_AREA = 20
IGNORE_AREA = 4  # foreground specks smaller than this are ignored (px at 64x64)
MIN_AREA = 25  # a smaller blob is neither noise nor an object (a small triangle is ~50 px)
MAX_COLOR_DIST = 60.0  # RGB distance of a blob's core colour to its palette colour
AMBIGUITY = 0.7  # nearest / second-nearest palette distance above this -> unparseable
MAX_RESIDUAL = 0.12  # share of a blob's deviation from white not explained by its colour
SIZE_BANDS = {"small": (7.0, 13.0), "large": (15.0, 22.0)}  # fitted box side (px); between: unparseable
MAX_SHAPE_ERROR = 0.06  # relative squared error of the best template (renders: < 0.025 even degraded)
SHAPE_AMBIGUITY = 0.8  # best / runner-up template error above this -> unparseable
MAX_OFFSET = 4.5  # px between an object's box centre and its cell centre


@dataclass
class Blob:
    """Measurements of one connected component (for diagnostics and tests)."""
    color: str
    color_dist: float  # RGB distance of the core colour to the palette colour
    area: float  # soft area (sum of alpha), px
    cx: float  # centroid
    cy: float
    residual: float  # share of the deviation from white off the white->colour line
    shape: str  # best-fitting template
    side: float  # its bounding-box side, px
    error: float  # its relative squared error
    second_error: float  # the runner-up template's error


_YS, _XS = np.mgrid[0:JUDGE_SIZE, 0:JUDGE_SIZE] + 0.5  # pixel centres
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding-box area
BLURS = (0.0, 0.35, 0.7, 1.0)  # template blurs tried (σ, px): sharp renders to codec-soft ones


@functools.lru_cache(maxsize=256)
def _blur_matrices(n: int) -> np.ndarray:
    """(len(BLURS), n, n) matrices that Gaussian-blur a length-n signal (zero outside)."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    mats = []
    for sigma in BLURS:
        if sigma == 0:
            mats.append(np.eye(n))
        else:
            r = int(np.ceil(4 * sigma))
            k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
            k /= k.sum()
            mats.append(np.where(np.abs(d) <= r, k[np.clip(d + r, 0, 2 * r)], 0.0))
    return np.stack(mats)


def _fit_template(alpha: np.ndarray, shape: str, area: float, cx: float, cy: float) -> tuple[float, float]:
    """(relative squared error, side) of `shape` with the blob's area and centroid, best over BLURS."""
    side = float(np.sqrt(area / _FILL[shape]))
    tcy = cy - side / 6 if shape == "triangle" else cy  # a triangle's centroid is side/6 below its box centre
    pad = side / 2 + 4
    y0, y1 = max(int(tcy - pad), 0), min(int(tcy + pad) + 1, JUDGE_SIZE)
    x0, x1 = max(int(cx - pad), 0), min(int(cx + pad) + 1, JUDGE_SIZE)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return np.inf, side
    tmpl = shape_coverage(shape, cx - x0, tcy - y0, side, y1 - y0, x1 - x0, supersample=4)  # (h, w)
    by, bx = _blur_matrices(y1 - y0), _blur_matrices(x1 - x0)
    blurred = by @ tmpl @ bx.transpose(0, 2, 1)  # (len(BLURS), h, w)
    patch = alpha[y0:y1, x0:x1]
    outside = float((alpha ** 2).sum() - (patch ** 2).sum())
    errs = (((patch - blurred) ** 2).sum(axis=(1, 2)) + outside) / (blurred ** 2).sum(axis=(1, 2))
    return float(errs.min()), side


@dataclass
class ImageVerdict:
    scene: Scene | None
    reason: str  # "ok" or why the image is unparseable
    blobs: list[Blob]


def _prepare(image: PILImage.Image) -> np.ndarray:
    image = to_rgb(image)
    if image.size != (JUDGE_SIZE, JUDGE_SIZE):
        big = image.width >= JUDGE_SIZE and image.height >= JUDGE_SIZE
        image = image.resize((JUDGE_SIZE, JUDGE_SIZE),
                             PILImage.Resampling.BOX if big else PILImage.Resampling.BILINEAR)
    return np.asarray(image, np.float64)  # (64, 64, 3)


def _rgb(color_dev: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(np.rint(255 - color_dev), 0, 255))


def parse_image(image: PILImage.Image) -> ImageVerdict:
    """Scene in `image`, or None with the reason it is unparseable."""
    arr = _prepare(image)
    dev = 255.0 - arr  # (H, W, 3) deviation from white
    dark = np.linalg.norm(dev, axis=2)  # (H, W)
    labels, n = ndimage.label(dark > FG_DARKNESS, structure=np.ones((3, 3)))
    objs: list[Obj] = []
    blobs: list[Blob] = []
    covered = np.zeros(dark.shape, bool)
    for k in range(1, n + 1):
        comp = labels == k
        area_px = int(comp.sum())
        if area_px < IGNORE_AREA:
            covered |= comp
            continue
        if area_px < MIN_AREA:
            return ImageVerdict(None, f"blob of {area_px} px is too small to be an object", blobs)
        # colour from the core pixels
        cd = dark[comp]
        core = dev[comp][cd >= 0.85 * cd.max()]
        color_dev = core.mean(axis=0)  # (3,) deviation from white of the blob's colour
        dists = np.linalg.norm(PALETTE - (255.0 - color_dev), axis=1)
        order = np.argsort(dists)
        d1, d2 = dists[order[0]], dists[order[1]]
        name = COLOR_NAMES[order[0]]
        if d1 > MAX_COLOR_DIST:
            return ImageVerdict(None, f"blob colour {_rgb(color_dev)} is far from "
                                      f"every palette colour", blobs)
        if d1 > AMBIGUITY * d2:
            return ImageVerdict(None, f"blob colour {_rgb(color_dev)} is between "
                                      f"{name} and {COLOR_NAMES[order[1]]}", blobs)
        # soft alpha over the component grown by one pixel (its anti-aliased rim)
        region = ndimage.binary_dilation(comp, structure=np.ones((3, 3))) & ((labels == 0) | comp)
        covered |= region
        t = dev @ (color_dev / (color_dev @ color_dev))  # (H, W) position on the white->colour line
        residual = float(((dev[region] - t[region][:, None] * color_dev) ** 2).sum()
                         / max((dev[region] ** 2).sum(), 1e-9))
        alpha = np.clip(t, 0.0, 1.0) * region  # (H, W)
        area = float(alpha.sum())
        cx, cy = float((alpha * _XS).sum() / area), float((alpha * _YS).sum() / area)
        # shape: the best of three templates matched in area and centroid (and blur)
        fits = {shape: _fit_template(alpha, shape, area, cx, cy) for shape in SHAPES}
        ranked = sorted(SHAPES, key=lambda s: fits[s][0])
        shape, second = ranked[0], ranked[1]
        err, side = fits[shape]
        blob = Blob(name, float(d1), area, cx, cy, residual, shape, side, err, fits[second][0])
        blobs.append(blob)
        if residual > MAX_RESIDUAL:
            return ImageVerdict(None, f"{name} blob mixes colours (residual {residual:.2f})", blobs)
        if err > MAX_SHAPE_ERROR:
            return ImageVerdict(None, f"{name} blob matches no shape (best: {shape}, error {err:.2f})", blobs)
        if err > SHAPE_AMBIGUITY * fits[second][0]:
            return ImageVerdict(None, f"{name} blob is between a {shape} and a {second} "
                                      f"(errors {err:.3f}, {fits[second][0]:.3f})", blobs)
        size = next((s for s, (lo, hi) in SIZE_BANDS.items() if lo <= side <= hi), None)
        if size is None:
            return ImageVerdict(None, f"{name} {shape} of side {side:.1f} px is neither small nor large", blobs)
        # box centre: a triangle's centroid lies side/6 below its box centre
        cy = cy - side / 6 if shape == "triangle" else cy
        step = JUDGE_SIZE / 3
        col, row = int(np.clip(cx // step, 0, 2)), int(np.clip(cy // step, 0, 2))
        off = np.hypot(cx - (col + 0.5) * step, cy - (row + 0.5) * step)
        if off > MAX_OFFSET:
            return ImageVerdict(None, f"{name} {shape} at ({cx:.1f}, {cy:.1f}) is not centred in a cell", blobs)
        objs.append(Obj(shape, name, size, row * 3 + col))
    # faint blobs that no object explains
    flabels, fn = ndimage.label(dark > FAINT_DARKNESS, structure=np.ones((3, 3)))
    for k in range(1, fn + 1):
        comp = flabels == k
        if not (comp & covered).any() and comp.sum() >= FAINT_AREA:
            return ImageVerdict(None, f"faint blob of {int(comp.sum())} px", blobs)
    if not objs:
        return ImageVerdict(None, "no objects", blobs)
    if len(objs) > 3:
        return ImageVerdict(None, f"{len(objs)} objects (a scene has at most 3)", blobs)
    if len({o.cell for o in objs}) != len(objs):
        return ImageVerdict(None, "two objects in one cell", blobs)
    return ImageVerdict(Scene(tuple(objs)), "ok", blobs)


def judge_image(image: PILImage.Image) -> Scene | None:
    """The ShapesWorld scene an image shows, or None when it is unparseable."""
    return parse_image(image).scene


# ---- melodies -----------------------------------------------------------------------------
MAX_CENTS = 40.0  # pitch must be this close to a note of the 4th octave
MIN_RMS = 0.01  # quieter segments are silence
MIN_HARMONIC_SHARE = 0.6  # share of segment energy within ±3% of the first 4 harmonics
LENGTH_TOLERANCE = 0.2  # the length may differ from a whole number of notes by this share of one
_LOG_FREQS = np.log2(np.array([NOTE_FREQS[n] for n in NOTES]))


@dataclass
class MelodyVerdict:
    notes: tuple[str, ...] | None
    reason: str
    pitches: list[float]


def parse_melody(waveform: np.ndarray, sample_rate: int, note_seconds: float = NOTE_SECONDS) -> MelodyVerdict:
    """Notes of a melody waveform (one note per `note_seconds`), or None with the reason."""
    x = np.asarray(waveform, np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        return MelodyVerdict(None, "waveform has NaN/Inf", [])
    seg = sample_rate * note_seconds
    n = int(round(len(x) / seg))
    if n < 1:
        return MelodyVerdict(None, f"{len(x)} samples is shorter than one note", [])
    if abs(len(x) - n * seg) > LENGTH_TOLERANCE * seg:
        return MelodyVerdict(None, f"{len(x) / sample_rate:.3f} s is not a whole number of notes", [])
    margin = int(0.12 * seg)
    nfft = 1 << int(np.ceil(np.log2(max(8 * seg, sample_rate))))  # zero-padded: <= 1 Hz bins
    freqs = np.fft.rfftfreq(nfft, 1 / sample_rate)
    band = (freqs >= 240) & (freqs <= 520)
    notes, pitches = [], []
    for i in range(n):
        a, b = int(round(i * seg)) + margin, min(int(round((i + 1) * seg)) - margin, len(x))
        chunk = x[a:b]
        if len(chunk) < 32 or np.sqrt(np.mean(chunk ** 2)) < MIN_RMS:
            return MelodyVerdict(None, f"note {i + 1}: silence", pitches)
        chunk = chunk - chunk.mean()
        power = np.abs(np.fft.rfft(chunk * np.hanning(len(chunk)), nfft)) ** 2
        j = int(np.flatnonzero(band)[np.argmax(power[band])])
        y0, y1, y2 = np.log(power[j - 1:j + 2] + 1e-30)
        shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) if (y0 - 2 * y1 + y2) < 0 else 0.0
        f0 = (j + shift) * (freqs[1] - freqs[0])
        pitches.append(float(f0))
        harm = np.zeros_like(power, bool)
        for h in range(1, 5):
            harm |= np.abs(freqs - h * f0) <= 0.03 * h * f0
        share = power[harm].sum() / power.sum()
        if share < MIN_HARMONIC_SHARE:
            return MelodyVerdict(None, f"note {i + 1}: not a clear tone ({share:.0%} harmonic energy)", pitches)
        cents = 1200 * (np.log2(f0) - _LOG_FREQS)
        k = int(np.argmin(np.abs(cents)))
        if abs(cents[k]) > MAX_CENTS:
            return MelodyVerdict(None, f"note {i + 1}: {f0:.1f} Hz is between notes", pitches)
        notes.append(NOTES[k])
    return MelodyVerdict(tuple(notes), "ok", pitches)


def judge_melody(waveform: np.ndarray, sample_rate: int,
                 note_seconds: float = NOTE_SECONDS) -> tuple[str, ...] | None:
    """The notes a melody waveform plays, or None when it is unparseable."""
    return parse_melody(waveform, sample_rate, note_seconds).notes


# ---- degradations -------------------------------------------------------------------------
def degrade(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    """Mild image degradation: JPEG q75, Gaussian blur σ 0.6, uniform noise ±8."""
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="JPEG", quality=75)
    buf.seek(0)
    img = PILImage.open(buf, formats=IMAGE_FORMATS).convert("RGB").filter(ImageFilter.GaussianBlur(radius=0.6))
    arr = np.asarray(img, np.int16) + rng.integers(-8, 9, size=(img.height, img.width, 3))
    return PILImage.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def degrade_audio(waveform: np.ndarray, rng: np.random.Generator, snr_db: float = 20.0,
                  gain_db: float = 2.0) -> np.ndarray:
    """Mild audio degradation: gain ±`gain_db` dB, white Gaussian noise at `snr_db` dB SNR."""
    x = np.asarray(waveform, np.float64) * 10 ** (rng.uniform(-gain_db, gain_db) / 20)
    noise_power = np.mean(x ** 2) / 10 ** (snr_db / 10)
    return (x + rng.normal(0.0, np.sqrt(noise_power), size=x.shape)).astype(np.float32)


# ---- measurement --------------------------------------------------------------------------
def measure_judges(n: int = 2000, seed: int = 0, degraded: bool = False) -> dict[str, float]:
    """Exact-recovery rates of both judges on `n` fresh scenes and `n` fresh melodies."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AnygenError(f"n must be an integer >= 1, got {n!r}")
    world = ShapesWorld(WorldConfig(seed=seed))
    rng = np.random.default_rng([seed, 1])
    img_ok = img_none = mel_ok = mel_none = 0
    for _ in range(n):
        scene = world.sample_scene()
        image = render_scene(scene)
        if degraded:
            image = degrade(image, rng)
        got = judge_image(image)
        img_ok += got == scene
        img_none += got is None
        notes = world.sample_melody()
        wave = render_melody(notes)
        if degraded:
            wave = degrade_audio(wave, rng)
        heard = judge_melody(wave, SAMPLE_RATE)
        mel_ok += heard == notes
        mel_none += heard is None
    return {"image.exact": img_ok / n, "image.unparseable": img_none / n, "image.n": float(n),
            "melody.exact": mel_ok / n, "melody.unparseable": mel_none / n, "melody.n": float(n)}


if __name__ == "__main__":  # python -m anygen.worlds.shapes.judges
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for deg in (False, True):
        print(json.dumps({"degraded": deg, **measure_judges(n, seed=0, degraded=deg)}))
