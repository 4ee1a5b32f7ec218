"""`anygen calibrate` and `anygen eval domain`: the in-domain NLL distribution of a model's inputs,
and how well the domain score separates inputs outside it.

Calibration samples `n` in-domain inputs of every kind (`anygen.api.domain.KINDS`) from the worlds
the model records, through the World protocol (`task_source(mix).sample(task, rng, "train")`, on
a stream training never uses), scores them exactly as the API scores its inputs
(`DomainCheck.prompt` / `score`) and writes `domain.json` into the model directory atomically.
A kind whose task the model was not trained on (or no world samples) is left uncalibrated.

The evaluation scores `n` fresh in-domain inputs per kind (another stream: never the calibration
inputs) and the out-of-domain inputs below (written against the bundled ShapesWorld model: other
objects, colours, counts, sentences, random words, other languages; photo-like, noisy, blank and
gradient images; noise, silence and tones for transcription), and reports per kind the share
flagged. It also draws every out-of-domain text and the first `n_draws` in-domain captions, to
count results flagged as empty.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image as PILImage, ImageDraw

from anygen.api.domain import (KINDS, MIN_CALIBRATION, Calibration, KindCalibration, domain_of, is_blank_image,
                               is_silent)
from anygen.document import Audio, Document, Image, Text
from anygen.errors import AnygenError
from anygen.tasks.layouts import TaskMix
from anygen.tasks.world import EVAL_STREAM
from anygen.worlds import WORLDS, get_world

CALIBRATION_STREAM, TEST_STREAM = 1, 2  # the calibration and the evaluation inputs never overlap in stream
IN_DOMAIN_SPLIT = "train"  # the split every world samples its training distribution from
MAX_DRAWS = 1000  # spec draws per wanted input: conditions dropped for guidance are skipped
TASK_OF = {"document": "story"}  # generate's prompts are calibrated on story prefixes; others on their task

OOD_TEXTS = (
    "a red circle", "two blue squares", "a cat", "a pink circle", "hello",
    "a dog running on the beach", "a photo of a red car", "three green triangles", "a big red circle",
    "a red star at the top left", "a brown square at the center", "a large black circle at the bottom",
    "a tiny blue square on the left", "a large red circle at the top left and a cat",
    "the quick brown fox jumps over the lazy dog", "what is the capital of france?",
    "please draw something nice", "make it prettier", "un grand cercle rouge en haut à gauche",
    "ein großer roter kreis oben links", "un círculo rojo grande arriba a la izquierda", "赤い大きな丸",
    "большой красный круг", "banana helicopter seventeen", "lorem ipsum dolor sit amet",
    "asdkjh qwe zxcv", "12345 67890", "circle red large the left top at a", "select * from users;",
    "the notes of a guitar solo",
)


# ---- in-domain inputs ---------------------------------------------------------------------
def _make(piece):
    return piece.value.make() if hasattr(piece.value, "make") else piece.value


def _document(pieces) -> Document:
    segments = []
    for p in pieces:
        value = _make(p)
        segments.append(Text(value) if p.kind == "text" else Image(value) if p.kind == "image" else Audio(*value))
    return Document(segments)


def input_of(kind: str, spec, rng: np.random.Generator):
    """The API input of `kind` that the example `spec` holds (None when its condition was dropped)."""
    if spec.dropped:
        return None
    pieces = [p for p in spec.pieces if p.kind != "ids"]
    first = {k: [p for p in pieces if p.kind == k] for k in ("text", "image", "audio")}
    if kind in ("text_to_image", "text_to_audio", "edit"):
        return first["text"][0].value
    if kind == "image_to_text":
        return _make(first["image"][0])
    if kind == "audio_to_text":
        return _make(first["audio"][0])
    if kind == "describe_edit":
        return tuple(_make(p) for p in first["image"][:2])
    if kind == "story":
        return Document([Text(first["text"][0].value)])
    return _document(pieces[:int(rng.integers(1, len(pieces)))])  # document: a story cut after a segment


def in_domain_inputs(meta: dict, kind: str, n: int, stream: int, seed: int) -> list:
    """`n` in-domain inputs of `kind` from the model's worlds (round robin), or [] when none samples it."""
    task = TASK_OF.get(kind, kind)
    if task not in meta.get("tasks", (task,)):
        return []
    sources = [get_world(name).task_source(TaskMix()) for name in meta.get("worlds", ()) if name in WORLDS]
    sources = [s for s in sources if task in s.tasks]
    if not sources:
        return []
    rng = np.random.default_rng([EVAL_STREAM, stream, seed, KINDS.index(kind)])
    inputs = []
    for i in range(n * MAX_DRAWS):
        if len(inputs) == n:
            break
        value = input_of(kind, sources[i % len(sources)].sample(task, rng, IN_DOMAIN_SPLIT), rng)
        if value is not None:
            inputs.append(value)
    return inputs


def nlls_of(gen, kind: str, inputs: list) -> list[float]:
    check = gen.domain_check
    return check.nlls([check.prompt(kind, x) for x in inputs])


def calibrate(directory: str | os.PathLike, n: int = 1000, seed: int = 0, log=print) -> Path:
    """Score `n` in-domain inputs of every kind and write the model's `domain.json` (atomically)."""
    from anygen.api import default_model_dir, load_model, model_meta

    if n < MIN_CALIBRATION:
        raise AnygenError(f"--n must be at least {MIN_CALIBRATION}, got {n}")
    directory = Path(directory) if directory is not None else default_model_dir()
    meta = model_meta(directory)
    gen = load_model(directory, calibrated=False)  # the file it replaces may be stale or broken
    kinds = {}
    for kind in KINDS:
        inputs = in_domain_inputs(meta, kind, n, CALIBRATION_STREAM, seed)
        if not inputs:
            log(f"{kind}: not calibrated (the model's worlds sample no {TASK_OF.get(kind, kind)} inputs)")
            continue
        kinds[kind] = KindCalibration.of(nlls_of(gen, kind, inputs))
        log(f"{kind}: {len(inputs)} inputs, median {kinds[kind].quantiles[5]:.3f}, "
            f"in-domain range {kinds[kind].low:.3f} to {kinds[kind].high:.3f} nats/token")
    if not kinds:
        raise AnygenError(f"{directory}: the model records no world that samples its tasks; nothing to calibrate")
    return Calibration(kinds).save(directory)


# ---- out-of-domain inputs -----------------------------------------------------------------
def ood_images(size: int = 64, seed: int = 0) -> dict[str, PILImage.Image]:
    """Pictures unlike flat scenes of coloured shapes."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)
    yy, xx = np.mgrid[:size, :size]
    field = np.cumsum(np.cumsum(rng.normal(0, 1, (size, size, 3)), 0), 1)  # a smooth random "photo"
    field = (field - field.min()) / np.ptp(field) * 255
    images = {
        "photo-like": PILImage.fromarray(field.astype(np.uint8)),
        "uniform noise": PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        "grey noise": PILImage.fromarray(np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype(np.uint8)),
        "blank white": PILImage.new("RGB", (size, size), "white"),
        "blank black": PILImage.new("RGB", (size, size), "black"),
        "gradient": PILImage.fromarray(np.tile(ramp.astype(np.uint8)[None, :, None], (size, 1, 3))),
        "radial gradient": PILImage.fromarray((np.hypot(yy - size / 2, xx - size / 2) * 255 / size).astype(np.uint8)),
        "checkerboard": PILImage.fromarray(((yy // 8 + xx // 8) % 2 * 255).astype(np.uint8)),
        "stripes": PILImage.fromarray(np.stack([xx // 4 % 2 * 255, 0 * xx, 255 - xx // 4 % 2 * 255], -1)
                                      .astype(np.uint8)),
    }
    landscape = PILImage.new("RGB", (size, size), (150, 200, 250))
    d = ImageDraw.Draw(landscape)
    d.rectangle([0, size * 5 // 8, size, size], fill=(60, 150, 60))
    d.ellipse([size * 5 // 8, size // 8, size * 7 // 8, size * 3 // 8], fill=(250, 220, 60))
    images["landscape"] = landscape
    return images


def ood_audio(sample_rate: int = 16000, seconds: float = 1.0, seed: int = 0) -> dict[str, tuple]:
    """Clips unlike short melodies of pure notes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    clips = {
        "white noise": rng.normal(0, 0.3, t.size),
        "quiet noise": rng.normal(0, 0.01, t.size),
        "silence": np.zeros(t.size),
        "1 kHz sine": 0.4 * np.sin(2 * np.pi * 1000 * t),
        "chirp": 0.4 * np.sin(2 * np.pi * (100 + 1500 * t) * t),
        "clicks": (np.arange(t.size) % (sample_rate // 8) == 0) * 0.9,
        "square wave": 0.3 * np.sign(np.sin(2 * np.pi * 220 * t)),
        "babble": rng.normal(0, 0.2, t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)),
    }
    return {name: (w.astype(np.float32), sample_rate) for name, w in clips.items()}


# ---- the measurement ----------------------------------------------------------------------
def ood_inputs(kind: str) -> dict:
    """name -> input of `kind` outside the bundled model's domain."""
    if kind in ("text_to_image", "text_to_audio", "edit"):
        return {t: t for t in OOD_TEXTS}
    if kind in ("story", "document"):
        return {t: Document([Text(t)]) for t in OOD_TEXTS}
    if kind == "image_to_text":
        return ood_images()
    if kind == "audio_to_text":
        return ood_audio()
    return {}


def evaluate_domain(directory: str | os.PathLike | None = None, n: int = 1000, seed: int = 0,
                    n_draws: int = 100) -> dict:
    """Per kind: out-of-domain inputs flagged (k of n, names of those missed) and in-domain inputs
    wrongly flagged (k of `n`); for draw, results flagged as empty."""
    from anygen.api import load_model, model_meta

    meta, gen = model_meta(directory), load_model(directory)
    if gen.domain_check.calibration is None:
        raise AnygenError("the model has no domain.json; run `anygen calibrate` first")
    check = gen.domain_check
    report = {"flag_share": check.calibration.flag_share, "kinds": {}}
    for kind in KINDS:
        if kind not in check.calibration.kinds:
            continue
        ood = ood_inputs(kind)
        blank = [is_blank_image(x) if kind == "image_to_text" else is_silent(x[0]) if kind == "audio_to_text"
                 else False for x in ood.values()]
        ood_scores = check.score(kind, [check.prompt(kind, x) for x in ood.values()], blank)
        inside = in_domain_inputs(meta, kind, n, TEST_STREAM, seed)
        in_scores = check.score(kind, [check.prompt(kind, x) for x in inside])
        report["kinds"][kind] = {
            "ood_flagged": sum(s.outside for s in ood_scores), "ood_n": len(ood_scores),
            "ood_missed": {name: round(s.nll, 3) for name, s in zip(ood, ood_scores) if not s.outside},
            "in_domain_flagged": sum(s.outside for s in in_scores), "in_domain_n": len(in_scores),
            "range": [round(check.calibration.kinds[kind].low, 3), round(check.calibration.kinds[kind].high, 3)],
        }
    if "text_to_image" in report["kinds"] and n_draws > 0:  # what (b) adds: blank pictures of prompts not flagged
        drawn = gen.draw_batch(list(OOD_TEXTS))
        captions = in_domain_inputs(meta, "text_to_image", n_draws, TEST_STREAM, seed)
        in_drawn = gen.draw_batch(captions) if captions else []
        report["draw"] = {
            "ood_flagged": sum(domain_of(im).flagged for im in drawn), "ood_n": len(drawn),
            "ood_empty": sum(domain_of(im).empty_result for im in drawn),
            "in_domain_flagged": sum(domain_of(im).flagged for im in in_drawn), "in_domain_n": len(in_drawn),
        }
    return report


def format_report(report: dict) -> str:
    lines = [f"{'input kind':<15} {'OOD flagged':>12} {'in-domain flagged':>18}  in-domain range (nats/token)"]
    for kind, r in report["kinds"].items():
        lines.append(f"{kind:<15} {r['ood_flagged']:>5}/{r['ood_n']:<6} {r['in_domain_flagged']:>9}/"
                     f"{r['in_domain_n']:<8}  {r['range'][0]:.3f} to {r['range'][1]:.3f}")
    if "draw" in report:
        d = report["draw"]
        lines.append(f"{'draw (+ empty)':<15} {d['ood_flagged']:>5}/{d['ood_n']:<6} {d['in_domain_flagged']:>9}/"
                     f"{d['in_domain_n']:<8}")
    return "\n".join(lines)
