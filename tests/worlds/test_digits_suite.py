"""`anygen eval digits` end to end on the tiny random model and a tiny digits set the test writes,
with the classifier replaced through its seam (any object with `predict` and `features`); the
classifier's own training, saving and loading on tiny data; the shipped classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from anygen.document import Document, Image, Text
from anygen.errors import AnygenError
from anygen.worlds.digits import parse_digit
from anygen.worlds.digits.classifier import (CLASSIFIER_DIR, FEATURES, ClassifierRecipe, load_classifier,
                                             train_classifier)
from anygen.worlds.digits.data import DIR_ENV_VAR, TEST_PER_DIGIT, VAL_PER_DIGIT, DigitsData, digits_file, write_digits
from anygen.worlds.digits.suite import (count_and_match, document_prompts, evaluate_digits, format_report,
                                        pairwise_distance)


class BrightnessClassifier:
    """A stand-in judge: the digit is the mean grey level of the image's centre (inside the padding) in
    tenths; features are grey statistics."""

    def predict(self, images) -> np.ndarray:
        return np.array([min(9, int(np.asarray(im.convert("L").resize((32, 32)))[2:30, 2:30].mean() / 25.6))
                         for im in images])

    def features(self, images) -> np.ndarray:
        return np.array([[a.mean(), a.std(), a[:16].mean(), a[:, :16].mean()]
                         for a in (np.asarray(im.convert("L").resize((32, 32)), dtype=np.float64) / 255
                                   for im in images)])


def grey(level: int) -> PILImage.Image:
    return PILImage.new("RGB", (32, 32), (level, level, level))


def tiny_data(per_digit: int = 6, test: int = 3, val: int = 1) -> DigitsData:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_digit)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    return DigitsData(images, labels, test_per_digit=test, val_per_digit=val)


def test_document_images_are_counted_and_judged_in_order():
    judge = BrightnessClassifier()
    three, four = grey(int(3.5 * 25.6)), grey(int(4.5 * 25.6))
    assert count_and_match(Document([Text("the digit 3"), Image(three), Text("then the digit 4"), Image(four)]),
                           [3, 4], judge) == (True, True)
    assert count_and_match(Document([Image(four), Image(three)]), [3, 4], judge) == (True, False)
    assert count_and_match(Document([Image(three)]), [3, 4], judge) == (False, False)
    assert count_and_match(Document([Image(three)] * 3), [3, 4], judge) == (False, False)
    assert count_and_match(Document([Text("no pictures")]), [3, 4], judge) == (False, False)


def test_document_prompts_list_two_to_four_digits_and_are_fixed_by_seed():
    prompts = document_prompts(50, seed=0)
    assert {len(p) for p in prompts} == {2, 3, 4} and all(0 <= d <= 9 for p in prompts for d in p)
    assert prompts == document_prompts(50, seed=0) != document_prompts(50, seed=1)


def test_pairwise_distance_is_zero_for_copies_and_grows_with_spread():
    assert pairwise_distance([grey(0)] * 4) == 0
    assert pairwise_distance([grey(0), grey(255)]) == pytest.approx(1.0)
    assert pairwise_distance([grey(0), grey(51), grey(102)]) < pairwise_distance([grey(0), grey(128), grey(255)])


def test_evaluate_digits_end_to_end_on_the_tiny_model(gen):
    calls = []
    results = evaluate_digits(gen, tiny_data(), BrightnessClassifier(), n_per_digit=2, n_documents=3, seed=0,
                              image_tokens=gen.session.image_budget, progress=calls.append)
    for key in ("t2i.accuracy", "t2i.fd", "t2i.fd_real", "t2i.diversity.generated", "t2i.diversity.real",
                "t2i.diversity.ratio", "i2t.accuracy", "i2t.unparsed", "doc.count", "doc.exact"):
        assert key in results, key
    assert all(f"t2i.accuracy.d{d}" in results and f"i2t.accuracy.d{d}" in results for d in range(10))
    for key in ("t2i.accuracy", "i2t.accuracy", "i2t.unparsed", "doc.count", "doc.exact"):
        assert 0 <= results[key] <= 1
    assert results["t2i.fd"] >= 0 and results["t2i.diversity.real"] > 0
    assert results["doc.exact"] <= results["doc.count"]
    assert "doc 3/3" in calls and "i2t" in calls
    table = format_report(results)
    assert "| t2i.fd |" in table and "| t2i.diversity.ratio |" in table and "| 9 |" in table
    assert "t2i.accuracy.d3" not in table and "diversity.d3" not in table
    only = evaluate_digits(gen, tiny_data(), BrightnessClassifier(), n_per_digit=1, n_documents=1, suites=("i2t",))
    assert set(only) == {"i2t.accuracy", "i2t.unparsed"} | {f"i2t.accuracy.d{d}" for d in range(10)}


class Scripted:
    """A generator whose captions and documents are given: the suite's parsing, not a model, is scored."""

    def __init__(self, images_by_digit: dict[int, PILImage.Image]):
        self.images = images_by_digit

    def draw(self, text, n=1, seed=0, **settings):
        return [self.images[parse_digit(text)]] * n

    def caption_batch(self, images, seed=0, **settings):
        return [f"a handwritten {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][d]}"
                for d in BrightnessClassifier().predict(images)]

    def generate(self, prompt, max_new_tokens=512, seed=None, **settings):
        digits = [parse_digit(part) for part in prompt.split(", ")]
        return Document([seg for d in digits for seg in (Text(f"the digit {d}"), Image(self.images[d]))])


def test_a_perfect_generator_scores_one():
    images = {d: grey(int((d + 0.5) * 25.6)) for d in range(10)}
    data = tiny_data()
    data.images[:] = np.repeat(np.array([np.asarray(images[d].convert("L"))[2:30, 2:30] for d in range(10)]),
                               6, axis=0)
    results = evaluate_digits(Scripted(images), data, BrightnessClassifier(), n_per_digit=3, n_documents=5)
    assert results["t2i.accuracy"] == results["i2t.accuracy"] == results["doc.count"] == results["doc.exact"] == 1
    assert results["t2i.diversity.generated"] == 0 and results["i2t.unparsed"] == 0


def test_eval_digits_command(model_dir, tmp_path, monkeypatch, capsys):
    from anygen.cli import main

    data = tiny_data(per_digit=TEST_PER_DIGIT + VAL_PER_DIGIT + 1, test=TEST_PER_DIGIT, val=VAL_PER_DIGIT)
    write_digits(digits_file(tmp_path / "mnist"), data.images, data.labels)
    monkeypatch.setenv(DIR_ENV_VAR, str(tmp_path / "mnist"))
    out = tmp_path / "results.json"
    assert main(["eval", "digits", "--model", str(model_dir), "--n-per-digit", "1", "--n-documents", "1",
                 "--only", "t2i,doc", "--top-k", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| doc.exact |" in printed and "| digit | t2i acc |" in printed
    assert set(json.loads(out.read_text())) >= {"t2i.accuracy", "t2i.fd", "doc.count"}
    assert main(["eval", "digits", "--only", "edit"]) == 2
    assert "unknown suite 'edit'" in capsys.readouterr().err
    assert main(["eval", "digits", "--top-k", "-1", "--model", str(model_dir)]) == 2


def test_classifier_trains_saves_and_loads(tmp_path):
    data = tiny_data(per_digit=8, test=2, val=1)
    classifier = train_classifier(data, ClassifierRecipe(epochs=1, batch_size=16))
    assert {"train_accuracy", "val_accuracy", "test_accuracy", "train_seconds"} <= set(classifier.meta)
    assert classifier.meta["n_train"] == 50
    classifier.save(tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    images = [grey(v) for v in (0, 100, 200)]
    np.testing.assert_array_equal(loaded.predict(images), classifier.predict(images))
    assert loaded.features(images).shape == (3, FEATURES)
    with pytest.raises(AnygenError, match="make digits-classifier"):
        load_classifier(tmp_path / "nothing")
    with pytest.raises(AnygenError, match="epochs"):
        ClassifierRecipe(epochs=0)


def test_the_shipped_classifier_is_small_and_was_trained_on_train_only():
    files = {p.name: p.stat().st_size for p in CLASSIFIER_DIR.iterdir()}
    assert set(files) == {"model.safetensors", "config.json"} and sum(files.values()) < 1 << 20
    classifier = load_classifier()
    assert classifier.meta["data"].endswith("train split") and classifier.meta["test_accuracy"] >= 0.97
    assert classifier.predict([grey(0)]).shape == (1,)
