"""User data sources: folder listing (recursive), class sub-folders with caption templates, CSV
sidecars, Hugging Face datasets / parquet, WebDataset shards, and a recipe with user data alone."""

import io
import json
import tarfile

import pytest
from PIL import Image

import fakes
from anygen.config import ConfigError, build
from anygen.errors import AnygenError
from anygen.worlds.user import (ImageFolder, UserData, load_dataset_images, load_image_folder, load_webdataset)


def png(path, colour=(200, 30, 30), size=(12, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def png_bytes(colour=(10, 200, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def captions(result):
    return sorted(s.text for d in result for s in d if hasattr(s, "text"))


@pytest.fixture
def digits(tmp_path):
    """A class layout: train/0, train/1 (two images each), train/7 empty; test/ beside it."""
    root = tmp_path / "digits"
    for label in ("0", "1"):
        for i in range(2):
            png(root / "train" / label / f"{i}.png", colour=(40 * i, 0, 0))
    (root / "train" / "7").mkdir()
    png(root / "test" / "0" / "x.png")
    return root


# ---- folders: recursive, class sub-folders, templates, CSV --------------------------------
def test_folders_are_flat_unless_recursive_and_say_so(digits):
    with pytest.raises(AnygenError, match="sub-folders: set recursive: true"):
        load_image_folder(digits / "train")
    assert len(load_image_folder(digits, recursive=True)) == 5  # train/* and test/*


def test_class_subfolders_caption_by_template_and_report_empty_classes(digits):
    png(digits / "train" / "stray.png")
    result = load_image_folder(digits / "train", labels="subfolders", caption_template="a handwritten digit {label}")
    assert captions(result) == ["a handwritten digit 0"] * 2 + ["a handwritten digit 1"] * 2
    reasons = dict(result.skipped)
    assert reasons[str(digits / "train" / "7")].startswith("class folder has no image files")
    assert "not inside a class sub-folder" in reasons[str(digits / "train" / "stray.png")]
    assert result.total == len(result) + len(result.skipped) == 6
    with pytest.raises(AnygenError, match="must contain {label}"):
        load_image_folder(digits / "train", labels="subfolders", caption_template="a digit")
    with pytest.raises(AnygenError, match="needs labels: subfolders"):
        load_image_folder(digits / "train", caption_template="a digit {label}")
    with pytest.raises(AnygenError, match="no sub-folders"):
        load_image_folder(digits / "train" / "0", labels="subfolders", caption_template="{label}")


def test_recipe_entries_are_paths_or_mappings(digits):
    user = build(UserData, {"image_folders": [str(digits / "test" / "0"), {
        "path": str(digits / "train"), "labels": "subfolders", "caption_template": "digit {label}"}]})
    assert all(isinstance(e, ImageFolder) for e in user.image_folders)
    assert user.image_folders[0].recursive is False
    with pytest.raises(ConfigError, match=r"image_folders\[0\]\.labels: invalid value 'classes'"):
        build(UserData, {"image_folders": [{"path": "x", "labels": "classes"}]})
    with pytest.raises(ConfigError, match=r"image_folders\[0\]\.caption_template: .*must contain \{label\}"):
        build(UserData, {"image_folders": [{"path": "x", "labels": "subfolders", "caption_template": "a digit"}]})
    with pytest.raises(ConfigError, match=r"image_folders\[0\]\.colour: unknown config key"):
        build(UserData, {"image_folders": [{"path": "x", "colour": 1}]})


def test_csv_captions_sidecar(tmp_path):
    d = tmp_path / "imgs"
    png(d / "a.png"), png(d / "b.png"), png(d / "c.png")
    (d / "captions.csv").write_text('file,caption\na.png,"a red, square box"\nb.png\nmissing.png,gone\n')
    result = load_image_folder(d)
    assert captions(result) == ["a red, square box"] and result.uncaptioned == 2
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in result.skipped}
    assert "expected 2 fields" in reasons["captions.csv:3"] and "not found" in reasons["missing.png"]
    (d / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(AnygenError, match="both captions.jsonl and captions.csv"):
        load_image_folder(d)
    (d / "bad.csv").write_text("name,caption\na.png,x\n")
    with pytest.raises(AnygenError, match="'file' column"):
        load_image_folder(d, captions="bad.csv")


# ---- Hugging Face datasets, parquet, WebDataset -------------------------------------------
def make_dataset(n_good=3, bad=True):
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa

    features = datasets.Features({"image": datasets.Image(), "digit": datasets.ClassLabel(names=["zero", "one", "two"]),
                                  "note": datasets.Value("string")})
    images = [{"bytes": png_bytes((60 * i, 0, 0)), "path": None} for i in range(n_good)]
    labels, notes = list(range(n_good)), [f"note {i}" for i in range(n_good)]
    if bad:
        images += [{"bytes": b"not an image", "path": None}, None]
        labels += [0, 1]
        notes += ["x", "y"]
    table = pa.table(features.encode_batch({"image": images, "digit": labels, "note": notes}),
                     schema=features.arrow_schema)
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=features),
                            fingerprint="test")


def test_dataset_folder_and_parquet_give_captioned_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = make_dataset()
    ds.save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"train": ds, "test": make_dataset(1, bad=False)}).save_to_disk(str(tmp_path / "dict"))
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    for path in (tmp_path / "plain", tmp_path / "rows.parquet"):
        result = load_dataset_images(path, text_column="digit", caption_template="a handwritten digit {label}")
        assert captions(result) == ["a handwritten digit one", "a handwritten digit two", "a handwritten digit zero"]
        assert result.total == 5 and [p.rsplit(":", 1)[1] for p, _ in result.skipped] == ["3", "4"]
        assert "row 3" in result.summary()
    auto = load_dataset_images(tmp_path / "dict")  # the train split; no caption/text column -> label
    assert len(auto) == 3 and captions(auto) == ["one", "two", "zero"]
    assert len(load_dataset_images(tmp_path / "dict", split="test", text_column="note")) == 1
    with pytest.raises(AnygenError, match="no split 'val'"):
        load_dataset_images(tmp_path / "dict", split="val")
    with pytest.raises(AnygenError, match="no column 'caption'"):
        load_dataset_images(tmp_path / "plain", text_column="caption")
    with pytest.raises(AnygenError, match="plain:3: image: cannot read image"):
        load_dataset_images(tmp_path / "plain", on_error="fail")
    with pytest.raises(AnygenError, match="dataset not found"):
        load_dataset_images(tmp_path / "nothing")


def test_webdataset_shards(tmp_path):
    pytest.importorskip("webdataset")

    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000.tar", "w") as tf:
        add(tf, "a.png", png_bytes()), add(tf, "a.txt", b"a green square")
        add(tf, "b.png", png_bytes()), add(tf, "b.json", json.dumps({"caption": "from json"}).encode())
        add(tf, "c.txt", b"no image here")
        add(tf, "d.png", b"broken"), add(tf, "d.txt", b"bad image")
        add(tf, "e.png", png_bytes())
    (shards / "001.tar").write_bytes(b"not a tar file" * 50)
    result = load_webdataset(shards)
    assert captions(result) == ["a green square", "from json"] and result.uncaptioned == 1
    reasons = " | ".join(r for _, r in result.skipped)
    assert "no image member" in reasons and "cannot read image" in reasons and "cannot read the tar shard" in reasons
    assert result.total == len(result) + len(result.skipped) == 6


# ---- the world and the recipe --------------------------------------------------------------
def test_user_world_reads_every_source_kind(digits, tmp_path):
    from anygen.worlds import get_world

    pytest.importorskip("datasets")
    make_dataset(bad=False).save_to_disk(str(tmp_path / "ds"))
    data = build(UserData, {"image_folders": [{"path": str(digits / "train"), "labels": "subfolders",
                                               "caption_template": "digit {label}"}],
                            "datasets": [{"path": str(tmp_path / "ds"), "text_column": "note"}]})
    world = get_world("user", data)
    assert set(world.tasks) >= {"text_to_image", "image_to_text"}
    assert sorted(set(world.texts())) == ["digit 0", "digit 1", "note 0", "note 1", "note 2"]
    assert len(world.images()) == 7


def user_recipe(tmp_path, digits, extra=""):
    recipe = tmp_path / "user.yaml"
    recipe.write_text(f"""
tokenizer: unused
out: {tmp_path / 'out'}
seq_len: 128
user:
  image_folders:
    - {{path: {digits / 'train'}, labels: subfolders, caption_template: "a handwritten digit {{label}}"}}
{extra}""")
    return recipe


def test_recipe_with_user_data_trains_on_it_alone(tmp_path, digits):
    from anygen.data.shards import TokenShards
    from anygen.training.pretokenize import pretokenize

    # the user data alone: 4 captioned images -> 4 text->image + 4 image->text; no ShapesWorld examples,
    # and no audio codec needed although the default mix weighs audio tasks
    out = pretokenize(user_recipe(tmp_path, digits), [], tokenizer=fakes.make_tokenizer(audio=False), progress=False)
    index = TokenShards(out / "train").index
    assert {t: s["documents"] for t, s in index["per_task"].items()} == {"image_to_text": 4, "text_to_image": 4}
    assert index["meta"]["worlds"] == ["user"] and set(index["meta"]["tasks"]) == {
        "document", "text_to_image", "image_to_text"}
    # a task weighed 0 is not written from the user data either
    out = pretokenize(user_recipe(tmp_path, digits), ["tasks.image_to_text.weight=0"],
                      tokenizer=fakes.make_tokenizer(audio=False), progress=False)
    assert set(TokenShards(out / "train").index["per_task"]) == {"text_to_image"}
    # asking for world examples too: the error names the codec and the tasks that need it
    with pytest.raises(AnygenError, match=r"no audio codec, and audio tasks have weight > 0 \(text_to_audio 1"
                                          r".*set tasks.text_to_audio.weight=0 and tasks.audio_to_text.weight=0"):
        pretokenize(user_recipe(tmp_path, digits), ["n_train=10"], tokenizer=fakes.make_tokenizer(audio=False),
                    progress=False)
    with pytest.raises(AnygenError, match="no image codec, and image tasks have weight > 0"):
        pretokenize(user_recipe(tmp_path, digits), [], tokenizer=fakes.make_tokenizer(image=False), progress=False)
    # mixing is explicit: n_train world examples beside the user data
    out = pretokenize(user_recipe(tmp_path, digits), ["n_train=10", "tasks.text_to_audio.weight=0",
                                                      "tasks.audio_to_text.weight=0", "tasks.story.weight=0"],
                      tokenizer=fakes.make_tokenizer(audio=False), progress=False)
    index = TokenShards(out / "train").index
    assert index["n_documents"] == 18 and index["meta"]["worlds"] == ["shapes", "user"]


def test_missing_optional_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    (tmp_path / "a.tar").write_bytes(b"x")
    (tmp_path / "ds").mkdir()
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(AnygenError, match="needs the `webdataset` package: pip install webdataset"):
        load_webdataset(tmp_path / "a.tar")
    with pytest.raises(AnygenError, match="needs the `datasets` package: pip install datasets"):
        load_dataset_images(tmp_path / "ds")
