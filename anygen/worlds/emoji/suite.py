"""`anygen eval emoji`: drawing, captioning and editing real emoji, judged on the 64×64 renders.

Every metric is computed from a *generator*: any object with the `AnyGen` methods `draw_batch`,
`caption_batch` and `edit_batch`, and from an `EmojiWorld` (its fixed split: the module
docstring of `anygen.worlds.emoji`). Pictures are judged by pixels against the font's true
renders (`NearestEmoji`: pixel L2 at 64×64 RGB in [0, 1]); nothing is scored by the model itself.
Results are a flat dict.

Metrics (N: `n` caps every count, for quick runs; None takes the sizes below)
- edit.heldout.*: for each held-out base with a default picture, each edit of that default (to each
  skin tone, and to each other gender the font draws) in its canonical phrasing.
  `success`: among the base's renders (default, tones, genders: `BaseEdits.renders`) the one
  nearest to the output is the target; `skin_tone.success` / `gender.success` by kind;
  `psnr_db`: mean PSNR of the output to the target; `baseline_psnr_db`: of the untouched source
  to the target (the do-nothing baseline); `psnr_gain_db`: their difference; `n`: edits.
- edit.seen.*: the same on `SEEN_BASES` training bases (edits trained on), drawn by `seed`.
- edit.seconds_per_edit: wall time of all edit calls over the number of edits (rows run
  `batch_size` at a time: 1 measures an edit as a user makes it).
- t2i.top1 / t2i.top5: for `T2I_NAMES` names of training emoji, the named emoji is the nearest
  (among the 5 nearest) of the whole set to the drawn picture; t2i.seconds_per_image.
- i2t.exact: the caption of each of `I2T_EMOJI` training emoji is exactly its name (Unicode NFKC,
  whitespace runs folded); i2t.heldout.{base,tone,both}: for every held-out variant, the caption
  names its base (the name without its skin tones) / its skin tones (none for the default yellow)
  / both.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image as PILImage

from anygen.errors import AnygenError
from anygen.tasks.world import EVAL_STREAM
from anygen.worlds.emoji import SKIN_TONES, BaseEdits, EmojiWorld

SUITES = ("edit", "seen", "t2i", "i2t")
JUDGE_SIZE = 64  # the renders the issue judges on: outputs of another size are resized to it
SEEN_BASES = 200  # training bases whose default is edited in edit.seen
T2I_NAMES = 300  # training names drawn in t2i
I2T_EMOJI = 300  # training emoji captioned in i2t.exact
TOP_K = 5  # t2i.top5
BANK_CHUNK = 256  # query rows per distance block: (256, 3771) float32 distances at a time
CAPTION_TOKENS = 48  # the longest emoji name is about 30 tokens of a 1k BPE
_TONE = re.compile(r",?\s*\b(" + "|".join(sorted(map(re.escape, SKIN_TONES.values()), key=len, reverse=True))
                   + r") skin tone\b")


# ---- judging ---------------------------------------------------------------------------------
def pixels(images: Sequence) -> np.ndarray:
    """(N, 64*64*3) float32 in [0, 1]: each image as RGB, resized to 64×64 when it is not."""
    out = np.empty((len(images), JUDGE_SIZE * JUDGE_SIZE * 3), np.float32)
    for i, im in enumerate(images):
        im = im.convert("RGB")
        if im.size != (JUDGE_SIZE, JUDGE_SIZE):
            im = im.resize((JUDGE_SIZE, JUDGE_SIZE), PILImage.Resampling.BILINEAR)
        out[i] = np.asarray(im, np.float32).reshape(-1) / 255.0
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two pixel rows in [0, 1] (identical rows: 100)."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 100.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)


class NearestEmoji:
    """Identifies pictures as the nearest of a bank of true renders (pixel L2 at 64×64)."""

    def __init__(self, images: Sequence):
        self.bank = pixels(images)
        self._norms = (self.bank.astype(np.float64) ** 2).sum(1)

    def distances(self, images: Sequence) -> np.ndarray:
        """(len(images), len(bank)) squared L2 distances."""
        q = pixels(images)
        out = np.empty((len(q), len(self.bank)), np.float64)
        for i in range(0, len(q), BANK_CHUNK):
            block = q[i:i + BANK_CHUNK]
            out[i:i + BANK_CHUNK] = ((block.astype(np.float64) ** 2).sum(1)[:, None] + self._norms[None]
                                     - 2.0 * (block @ self.bank.T))
        return np.maximum(out, 0.0)

    def rank(self, images: Sequence, k: int = 1) -> np.ndarray:
        """(len(images), k) bank indices, nearest first."""
        d = self.distances(images)
        k = min(k, d.shape[1])
        top = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else np.tile(np.arange(d.shape[1]), (len(d), 1))
        order = np.take_along_axis(d, top, 1).argsort(1, kind="stable")
        return np.take_along_axis(top, order, 1)


def judge_edit(case: BaseEdits, target_index: int, output) -> dict[str, float]:
    """One edit of `case.source` to `case.edits[target_index].target`: success (the nearest of the
    base's renders is the target), PSNR of the output and of the source to the target."""
    renders = case.renders
    bank = pixels([r.image for r in renders])
    out = pixels([output])[0]
    target = bank[1 + target_index]
    nearest = int(((bank - out) ** 2).sum(1).argmin())
    return {"success": float(nearest == 1 + target_index), "psnr_db": psnr(out, target),
            "baseline_psnr_db": psnr(bank[0], target)}


def split_name(text: str) -> tuple[str, tuple[str, ...]]:
    """(base name, skin tones in order) of an emoji name or a caption: 'thumbs up, dark skin tone' ->
    ('thumbs up', ('dark',))."""
    text = normalize(text)
    tones = tuple(m.group(1) for m in _TONE.finditer(text))
    return normalize(_TONE.sub("", text)).rstrip(","), tones


def normalize(text: str) -> str:
    """NFKC with whitespace runs folded and the ends stripped (what the text codec feeds the model)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


# ---- the suites ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSettings:
    """How the generator is called: `n` caps every suite's count (None: the sizes of the module
    docstring); `batch_size` rows per call; `guidance_scale` of drawings and edits (None: the model's
    recommended one); `image_guidance_scale` of edits (None: the API's default)."""

    n: int | None = None
    batch_size: int = 16
    seed: int = 0
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None

    def __post_init__(self):
        if self.n is not None and self.n < 1:
            raise AnygenError(f"--n must be at least 1, got {self.n}")
        if self.batch_size < 1:
            raise AnygenError(f"--batch-size must be at least 1, got {self.batch_size}")

    def cap(self, default: int | None) -> int | None:
        return self.n if default is None else default if self.n is None else min(default, self.n)

    def edit_options(self) -> dict:
        out = {"refuse": False}
        if self.guidance_scale is not None:
            out["guidance_scale"] = self.guidance_scale
        if self.image_guidance_scale is not None:
            out["image_guidance_scale"] = self.image_guidance_scale
        return out


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, EVAL_STREAM, salt])


def _choose(seq: list, n: int | None, rng: np.random.Generator) -> list:
    """`n` items of `seq` (all when n is None or larger), in the order of `seq`."""
    if n is None or n >= len(seq):
        return list(seq)
    return [seq[i] for i in sorted(rng.choice(len(seq), n, replace=False))]


def _batched(fn, rows: list, batch_size: int) -> list:
    return [out for i in range(0, len(rows), batch_size) for out in fn(rows[i:i + batch_size])]


def edit_cases(world: EmojiWorld, split: str, n: int | None, seed: int) -> list[BaseEdits]:
    """The bases whose default is edited: every held-out one ("heldout"), `n` training ones ("train")."""
    return _choose(world.base_edits(split), n, _rng(seed, 1 if split == "train" else 0))


def _edit_suite(generator, cases: list[BaseEdits], prefix: str, s: EvalSettings, note) -> tuple[dict, float, int]:
    rows = [(case, j) for case in cases for j in range(len(case.edits))]
    note(f"{prefix} ({len(rows)} edits)")
    start = time.perf_counter()
    outputs = _batched(lambda chunk: generator.edit_batch([c.source.image for c, _ in chunk],
                                                          [c.edits[j].instruction for c, j in chunk],
                                                          seed=s.seed, **s.edit_options()),
                       rows, s.batch_size)
    seconds = time.perf_counter() - start
    judged = [(case.edits[j].kind, judge_edit(case, j, out)) for (case, j), out in zip(rows, outputs)]
    results: dict[str, float] = {f"{prefix}.n": float(len(judged))}
    if not judged:
        return results, seconds, 0
    for key in ("success", "psnr_db", "baseline_psnr_db"):
        results[f"{prefix}.{key}"] = float(np.mean([j[key] for _, j in judged]))
    results[f"{prefix}.psnr_gain_db"] = results[f"{prefix}.psnr_db"] - results[f"{prefix}.baseline_psnr_db"]
    for kind in ("skin_tone", "gender"):
        mine = [j for k, j in judged if k == kind]
        if mine:
            results[f"{prefix}.{kind}.success"] = float(np.mean([j["success"] for j in mine]))
            results[f"{prefix}.{kind}.n"] = float(len(mine))
    return results, seconds, len(judged)


def evaluate_emoji(generator, world: EmojiWorld, settings: EvalSettings | None = None, suites=SUITES,
                   progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The metrics of the module docstring for the suites named."""
    s = settings or EvalSettings()
    if unknown := [x for x in suites if x not in SUITES]:
        raise AnygenError(f"unknown emoji suite {unknown[0]!r} (choose from {', '.join(SUITES)})")
    note = progress or (lambda name: None)
    results: dict[str, float] = {}
    edit_seconds, edits = 0.0, 0
    for suite, split, prefix, n in (("edit", "heldout", "edit.heldout", s.cap(None)),
                                    ("seen", "train", "edit.seen", s.cap(SEEN_BASES))):
        if suite in suites:
            part, seconds, count = _edit_suite(generator, edit_cases(world, split, n, s.seed), prefix, s, note)
            results.update(part)
            edit_seconds, edits = edit_seconds + seconds, edits + count
    if edits:
        results["edit.seconds_per_edit"] = edit_seconds / edits
    everything = world.items()
    if "t2i" in suites:
        names = [it.name for it in _choose(world.items("train"), s.cap(T2I_NAMES), _rng(s.seed, 2))]
        note(f"t2i ({len(names)} names)")
        draw = {"guidance_scale": s.guidance_scale} if s.guidance_scale is not None else {}
        start = time.perf_counter()
        drawn = _batched(lambda chunk: generator.draw_batch(chunk, seed=s.seed, **draw), names, s.batch_size)
        results["t2i.seconds_per_image"] = (time.perf_counter() - start) / max(1, len(names))
        index = {it.name: i for i, it in enumerate(everything)}
        top = NearestEmoji([it.image for it in everything]).rank(drawn, TOP_K)
        wanted = np.array([index[n] for n in names])[:, None]
        results["t2i.top1"] = float((top[:, 0] == wanted[:, 0]).mean())
        results[f"t2i.top{TOP_K}"] = float((top == wanted).any(1).mean())
        results["t2i.n"] = float(len(names))
    if "i2t" in suites:
        seen = _choose(world.items("train"), s.cap(I2T_EMOJI), _rng(s.seed, 3))
        held = _choose(world.items("heldout"), s.cap(None), _rng(s.seed, 4))
        note(f"i2t ({len(seen)} training emoji, {len(held)} held-out variants)")
        caption = lambda chunk: generator.caption_batch([it.image for it in chunk], CAPTION_TOKENS,  # noqa: E731
                                                        seed=s.seed)
        captions = _batched(caption, seen + held, s.batch_size)
        results["i2t.exact"] = float(np.mean([normalize(c) == normalize(it.name) for it, c in zip(seen, captions)]))
        results["i2t.n"] = float(len(seen))
        if held:
            parts = [(split_name(c), split_name(it.name)) for it, c in zip(held, captions[len(seen):])]
            results["i2t.heldout.base"] = float(np.mean([got[0] == want[0] for got, want in parts]))
            results["i2t.heldout.tone"] = float(np.mean([got[1] == want[1] for got, want in parts]))
            results["i2t.heldout.both"] = float(np.mean([got == want for got, want in parts]))
            results["i2t.heldout.n"] = float(len(held))
    return results


def format_report(results: dict[str, float]) -> str:
    """The results as a Markdown table (counts as integers)."""
    lines = ["| metric | value |", "|---|---|"]
    for key, value in results.items():
        lines.append(f"| {key} | {int(value)} |" if key.endswith(".n") else f"| {key} | {value:.3f} |")
    return "\n".join(lines)
