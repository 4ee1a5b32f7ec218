"""`anygen eval digits`: what a model does with handwritten digits, judged by the digit classifier.

Every metric is computed from a *generator*: any object with the `AnyGen` methods `draw`,
`caption_batch` and `generate`, and from the fixed test split of the digits (`data`). The
classifier (`anygen.worlds.digits.classifier`, trained on the train split only) reads what
the generator drew; nothing is scored by the model itself. Results are a flat dict.

Metrics
- t2i.accuracy (and t2i.accuracy.dD per digit D): `n_per_digit` images sampled for the prompt
  "the digit D" are classified as D.
- t2i.fd: Fréchet distance between the classifier's penultimate features of all generated
  images and of the test digits; t2i.fd_real: the same for as many train digits (the floor a
  perfect generator reaches at this sample size).
- t2i.diversity.{generated,real,ratio} (and per digit, .dD.*): mean pairwise pixel distance
  (root mean square over the 32x32 grey pixels in [0, 1]) among one prompt's images, among the
  test digits of that class, and their ratio (1: as varied as real handwriting; near 0: the
  same digit over and over). The overall values are means over digits.
- i2t.accuracy (and per digit): the caption of each test digit names exactly its digit (a
  numeral or its English word, `parse_digit`); i2t.unparsed: captions naming no single digit.
- doc.count / doc.exact: for `n_documents` prompts listing 2-4 digits ("the digit 3, then the
  digit 4"), the generated continuation holds as many images as listed / and each is
  classified as its digit, in order.
"""

from __future__ import annotations

import re
import time
from typing import Callable

import numpy as np
import torch

from anygen.document import Image
from anygen.tasks.world import EVAL_STREAM
from anygen.worlds.digits import DRAW_PROMPT, MAX_ITEMS, MIN_ITEMS, list_text, parse_digit
from anygen.worlds.digits.classifier import images_to_input
from anygen.worlds.digits.data import DIGITS, DigitsData, to_image
from anygen.worlds.metrics import frechet_distance

SUITES = ("t2i", "i2t", "doc")
PER_DIGIT_KEY = re.compile(r"\.d[0-9](\.|$)")  # "t2i.accuracy.d3", "t2i.diversity.d3.ratio": the per-digit table
CAPTION_BATCH = 100  # test digits captioned per call
ITEM_TEXT_TOKENS = 16  # new tokens allowed for each item's phrase in a document, besides its image


def pairwise_distance(images) -> float:
    """Mean over distinct pairs of the root-mean-square grey-pixel difference (32x32, [0, 1])."""
    x = images_to_input(images).flatten(1).double()
    n = len(x)
    if n < 2:
        return float("nan")
    return float(torch.cdist(x, x).sum() / np.sqrt(x.shape[1]) / (n * (n - 1)))


def count_and_match(document, digits, classifier) -> tuple[bool, bool]:
    """(the document holds exactly len(digits) images, and they are classified as `digits` in order)."""
    images = [seg.image for seg in document if isinstance(seg, Image)]
    if len(images) != len(digits):
        return False, False
    return True, bool((classifier.predict(images) == np.asarray(digits)).all())


def document_prompts(n: int, seed: int) -> list[list[int]]:
    """`n` lists of 2-4 digits from the evaluation stream of `seed`."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, EVAL_STREAM])
    return [[int(d) for d in rng.integers(0, 10, int(rng.integers(MIN_ITEMS, MAX_ITEMS + 1)))] for _ in range(n)]


def evaluate_digits(generator, data: DigitsData, classifier, n_per_digit: int = 50, n_documents: int = 100,
                    seed: int = 0, suites=SUITES, image_tokens: int = 0, settings: dict | None = None,
                    guidance_scale: float | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """The metrics of the module docstring for the suites named; `settings` are the sampling
    settings of the drawn images (`image=SamplingSettings(...)`), `guidance_scale` the classifier-free
    guidance of the drawings and the documents' images (None: the model's recommended one) and
    `image_tokens` the new tokens
    one image takes (the documents' budget)."""
    settings = settings or {}
    results: dict[str, float] = {}
    test_images, test_labels = data.split("test")
    real = [[to_image(g) for g in test_images[test_labels == d]] for d in DIGITS]
    note = progress or (lambda name: None)
    if "t2i" in suites:
        start, generated = time.perf_counter(), []
        for d in DIGITS:
            note(f"t2i {d}")
            generated.append(generator.draw(DRAW_PROMPT.format(numeral=d), n=n_per_digit, seed=seed + d,
                                          guidance_scale=guidance_scale, **settings))
        results["t2i.seconds_per_image"] = (time.perf_counter() - start) / (10 * n_per_digit)
        right = [classifier.predict(images) == d for d, images in zip(DIGITS, generated)]
        results["t2i.accuracy"] = float(np.mean(np.concatenate(right)))
        results.update({f"t2i.accuracy.d{d}": float(r.mean()) for d, r in zip(DIGITS, right)})
        note("t2i fd")
        test_features = classifier.features([im for group in real for im in group])
        results["t2i.fd"] = frechet_distance(classifier.features([im for g in generated for im in g]), test_features)
        train_images, train_labels = data.split("train")
        same_size = [to_image(g) for d in DIGITS for g in train_images[train_labels == d][:n_per_digit]]
        results["t2i.fd_real"] = frechet_distance(classifier.features(same_size), test_features)
        diversity = {"generated": [pairwise_distance(g) for g in generated],
                     "real": [pairwise_distance(r) for r in real]}
        diversity["ratio"] = [_ratio(g, r) for g, r in zip(diversity["generated"], diversity["real"])]
        for key, values in diversity.items():
            results[f"t2i.diversity.{key}"] = float(np.mean(values))
        results["t2i.diversity.ratio"] = _ratio(results["t2i.diversity.generated"], results["t2i.diversity.real"])
        for d in DIGITS:
            results.update({f"t2i.diversity.d{d}.{key}": float(values[d]) for key, values in diversity.items()})
    if "i2t" in suites:
        note("i2t")
        flat = [im for group in real for im in group]
        labels = np.concatenate([[d] * len(group) for d, group in zip(DIGITS, real)])
        captions = [c for i in range(0, len(flat), CAPTION_BATCH)
                    for c in generator.caption_batch(flat[i:i + CAPTION_BATCH], seed=seed)]
        parsed = np.array([-1 if (p := parse_digit(c)) is None else p for c in captions])
        results["i2t.accuracy"] = float((parsed == labels).mean())
        results["i2t.unparsed"] = float((parsed < 0).mean())
        results.update({f"i2t.accuracy.d{d}": float((parsed[labels == d] == d).mean()) for d in DIGITS})
    if "doc" in suites:
        counts, exact = [], []
        for j, digits in enumerate(document_prompts(n_documents, seed)):
            note(f"doc {j + 1}/{n_documents}")
            out = generator.generate(list_text(digits), max_new_tokens=len(digits) * (image_tokens + ITEM_TEXT_TOKENS),
                                     seed=seed + j, guidance_scale=guidance_scale, **settings)
            count, match = count_and_match(out, digits, classifier)
            counts.append(count)
            exact.append(match)
        results["doc.count"] = float(np.mean(counts))
        results["doc.exact"] = float(np.mean(exact))
    return results


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def format_report(results: dict[str, float]) -> str:
    """The overall metrics as a Markdown table, then one row per digit."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results.items() if not PER_DIGIT_KEY.search(k)]
    per_digit = [("t2i.accuracy.d{}", "t2i acc"), ("t2i.diversity.d{}.generated", "div gen"),
                 ("t2i.diversity.d{}.real", "div real"), ("t2i.diversity.d{}.ratio", "div ratio"),
                 ("i2t.accuracy.d{}", "i2t acc")]
    columns = [(key, name) for key, name in per_digit if key.format(0) in results]
    if columns:
        lines += ["", "| digit | " + " | ".join(name for _, name in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for d in DIGITS:
            lines.append(f"| {d} | " + " | ".join(f"{results[key.format(d)]:.3f}" for key, _ in columns) + " |")
    return "\n".join(lines)
