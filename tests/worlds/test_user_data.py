"""User-data loaders: good files load, every bad file is reported with path + reason."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from anygen.worlds.user import load_audio_folder, load_edit_pairs, load_image_folder, load_jsonl_documents
from anygen.document import Audio, Image as ImageSeg, Text, wav_bytes
from anygen.errors import AnygenError


def png(path, colour=(200, 30, 30), size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def wav(path, sr=22050, seconds=0.2):
    t = np.arange(int(sr * seconds)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(0.3 * np.sin(2 * np.pi * 440 * t), sr))
    return path


def jsonl(path, lines):
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else json.dumps(l).encode() for l in lines) + b"\n")
    return path


def reasons(result):
    return {p.rsplit("/", 1)[-1]: r for p, r in result.skipped}


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    png(d / "a.png")
    png(d / "b.png", colour=(0, 0, 255, 128), mode="RGBA")
    png(d / "c.jpg", colour=128, mode="L")
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (d / "notes.txt").write_text("not an image")
    jsonl(d / "captions.jsonl", [
        {"file": "a.png", "caption": "a red box"},
        {"file": "b.png", "caption": "a blue box"},
        {"file": "gone.png", "caption": "listed but missing"},
        b"{not json",
        b"\xff\xfe bad bytes",
        {"file": "a.png", "caption": "duplicate"},
        {"file": "c.jpg"},
    ])
    return d


def test_image_folder_skip_reports_every_bad_file(image_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="anygen.worlds.user"):
        result = load_image_folder(image_dir)
    assert len(result) == 3 and result.total == len(result) + len(result.skipped)
    first = result.documents[0]
    assert isinstance(first.segments[0], ImageSeg) and first.segments[0].image.mode == "RGB"
    assert first.text == "a red box"
    assert result.documents[1].segments[0].image.getpixel((0, 0)) == (127, 127, 255)  # RGBA on white
    assert len(result.documents[2]) == 1 and result.uncaptioned == 1  # c.jpg: its caption line was bad
    why = reasons(result)
    assert "empty" in why["empty.png"]
    assert "cannot read image" in why["corrupt.png"]
    assert "not found" in why["gone.png"]
    assert "bad JSON" in why["captions.jsonl:4"]
    assert "UTF-8" in why["captions.jsonl:5"]
    assert "second entry" in why["captions.jsonl:6"]
    assert "caption" in why["captions.jsonl:7"]
    assert len(result.skipped) == 7 and result.total == 10
    assert result.ignored == [str(image_dir / "notes.txt")]
    warning = [r.getMessage() for r in caplog.records]
    assert len(warning) == 1 and warning[0].startswith("skipped 7 of 10 image files in ")
    assert "captions.jsonl:4 (bad JSON" in warning[0] and "and 2 more" in warning[0]
    assert "gone.png (listed in captions.jsonl:3 but not found)" in warning[0]
    assert str(image_dir) not in warning[0].split(": ", 1)[1]  # names shown relative to the folder


def test_image_folder_fail_names_the_file(image_dir):
    with pytest.raises(AnygenError, match=r"captions\.jsonl:4: bad JSON"):
        load_image_folder(image_dir, on_error="fail")
    jsonl(image_dir / "captions.jsonl", [{"file": "gone.png", "caption": "x"}])
    with pytest.raises(AnygenError, match=r"gone\.png: listed in captions\.jsonl:1 but not found"):
        load_image_folder(image_dir, on_error="fail")
    (image_dir / "captions.jsonl").unlink()
    with pytest.raises(AnygenError, match=r"corrupt\.png: cannot read image"):
        load_image_folder(image_dir, on_error="fail")


def test_image_folder_options_and_folder_errors(image_dir, tmp_path):
    result = load_image_folder(image_dir, captions=None, image_size=8)
    assert result.uncaptioned == 3 and all(d.images[0].size == (8, 8) for d in result)
    with pytest.raises(AnygenError, match="on_error"):
        load_image_folder(image_dir, on_error="ignore")
    with pytest.raises(AnygenError, match="no such folder"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "blank").mkdir()
    with pytest.raises(AnygenError, match="no image files found"):
        load_image_folder(tmp_path / "blank")
    with pytest.raises(AnygenError, match="sidecar file not found"):
        load_image_folder(image_dir, captions="labels.jsonl")
    png(image_dir / "sub" / "d.png")
    assert len(load_image_folder(image_dir, captions=None, recursive=True)) == 4


def test_audio_folder(tmp_path):
    d = tmp_path / "audio"
    wav(d / "a.wav", sr=22050)
    wav(d / "b.wav", sr=16000)
    (d / "zero.wav").write_bytes(b"")
    (d / "junk.wav").write_bytes(b"RIFF....WAVEjunk")
    (d / "song.mp3").write_bytes(b"ID3")
    jsonl(d / "transcripts.jsonl", [{"file": "a.wav", "text": "hello"}, {"file": "b.wav", "transcript": "hi"}])
    result = load_audio_folder(d)
    assert len(result) == 2 and [doc.text for doc in result] == ["hello", "hi"]
    audio = result.documents[0].segments[0]
    assert isinstance(audio, Audio) and audio.sample_rate == 16000 and abs(audio.seconds - 0.2) < 0.01
    why = reasons(result)
    assert set(why) == {"zero.wav", "junk.wav", "song.mp3"}
    assert "empty" in why["zero.wav"] and "WAV" in why["junk.wav"] and "convert to WAV" in why["song.mp3"]
    assert result.total == 5
    native = load_audio_folder(d, sample_rate=None)
    assert native.documents[0].segments[0].sample_rate == 22050
    with pytest.raises(AnygenError, match="junk.wav"):
        load_audio_folder(d, on_error="fail")


def test_jsonl_documents(tmp_path):
    png(tmp_path / "media" / "a.png")
    wav(tmp_path / "media" / "a.wav")
    (tmp_path / "media" / "empty.png").write_bytes(b"")
    path = jsonl(tmp_path / "docs.jsonl", [
        {"segments": [{"type": "text", "text": "look:"}, {"type": "image", "file": "media/a.png"},
                      {"type": "audio", "file": "media/a.wav"}]},
        {"segments": [{"type": "text", "text": "only text"}]},
        b"",
        {"segments": [{"type": "image", "file": "media/missing.png"}]},
        {"segments": [{"type": "image", "file": "media/empty.png"}]},
        {"segments": [{"type": "video", "file": "x.mp4"}]},
        {"segments": [{"type": "image"}]},
        {"segments": []},
        [1, 2],
        b'{"segments": [',
        b"\xc3\x28",
    ])
    result = load_jsonl_documents(path, sample_rate=16000)
    assert len(result) == 2 and result.sources == [f"{path}:1", f"{path}:2"]
    doc = result.documents[0]
    assert [type(s) for s in doc] == [Text, ImageSeg, Audio] and doc.audios[0].sample_rate == 16000
    why = reasons(result)
    assert "not found" in why["docs.jsonl:4"] and "missing.png" in why["docs.jsonl:4"]
    assert "empty" in why["docs.jsonl:5"]
    assert "unknown type 'video'" in why["docs.jsonl:6"]
    assert "file" in why["docs.jsonl:7"]
    assert "segments" in why["docs.jsonl:8"]
    assert "JSON object" in why["docs.jsonl:9"]
    assert "bad JSON" in why["docs.jsonl:10"]
    assert "UTF-8" in why["docs.jsonl:11"]
    assert result.total == 10 and len(result.skipped) == 8  # the blank line is not a record
    assert result.summary().startswith(f"skipped 8 of 10 records in {path}: line 4 (")
    with pytest.raises(AnygenError, match=r"docs\.jsonl:4: .*missing\.png"):
        load_jsonl_documents(path, on_error="fail")
    (tmp_path / "zero.jsonl").write_bytes(b"")
    with pytest.raises(AnygenError, match="no records"):
        load_jsonl_documents(tmp_path / "zero.jsonl")
    with pytest.raises(AnygenError, match="file not found"):
        load_jsonl_documents(tmp_path / "nope.jsonl")


def test_edit_pairs(tmp_path):
    png(tmp_path / "red.png", (220, 40, 40))
    png(tmp_path / "blue.png", (40, 90, 220))
    (tmp_path / "bad.png").write_bytes(b"GIF89a")
    path = jsonl(tmp_path / "edits.jsonl", [
        {"source": "red.png", "instruction": "make it blue", "target": "blue.png"},
        {"source": "red.png", "instruction": "", "target": "blue.png"},
        {"source": "red.png", "instruction": "make it green", "target": "green.png"},
        {"source": "bad.png", "instruction": "make it red", "target": "red.png"},
        {"instruction": "no source", "target": "red.png"},
    ])
    result = load_edit_pairs(path, image_size=16)
    assert len(result) == 1
    pair = result.pairs[0]
    assert pair.instruction == "make it blue" and pair.source.size == (16, 16)
    assert pair.target.getpixel((8, 8)) == (40, 90, 220)
    assert [type(s).__name__ for s in pair.document()] == ["Image", "Text", "Image"]
    why = reasons(result)
    assert "instruction" in why["edits.jsonl:2"] and "green.png" in why["edits.jsonl:3"]
    assert "cannot read image" in why["edits.jsonl:4"] and "source" in why["edits.jsonl:5"]
    with pytest.raises(AnygenError, match=r"edits\.jsonl:2"):
        load_edit_pairs(path, on_error="fail")


def test_media_conversions_and_bad_samples(tmp_path):
    from scipy.io import wavfile

    d = tmp_path / "mixed"
    png(d / "palette.png", colour=3, mode="P")
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(d / "deep.png")  # 16-bit grayscale
    good = (png(d / "whole.png", size=(64, 64))).read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    result = load_image_folder(d)
    assert len(result) == 3 and all(doc.images[0].mode == "RGB" for doc in result)
    assert reasons(result).keys() == {"truncated.png"}

    a = tmp_path / "wavs"
    a.mkdir()
    stereo = np.stack([np.linspace(-0.5, 0.5, 4800), np.zeros(4800)], axis=1).astype(np.float32)
    wavfile.write(a / "stereo48k.wav", 48000, stereo)
    wavfile.write(a / "nan.wav", 16000, np.array([0.0, np.nan, 0.1], dtype=np.float32))
    result = load_audio_folder(a)
    assert len(result) == 1
    audio = result.documents[0].audios[0]
    assert audio.sample_rate == 16000 and audio.waveform.ndim == 1 and len(audio.waveform) == 1600
    assert "NaN" in reasons(result)["nan.wav"]


def test_jsonl_media_must_stay_inside_the_folder(tmp_path):
    secret = png(tmp_path / "secret" / "private.png")
    data = tmp_path / "data"
    png(data / "ok.png")
    (data / "link.png").symlink_to(secret)
    jsonl(data / "docs.jsonl", [
        {"segments": [{"type": "image", "file": "ok.png"}]},
        {"segments": [{"type": "image", "file": "../secret/private.png"}]},
        {"segments": [{"type": "image", "file": str(secret)}]},
        {"segments": [{"type": "image", "file": "link.png"}]},
    ])
    result = load_jsonl_documents(data / "docs.jsonl")
    assert len(result) == 1 and [p.rsplit(":", 1)[1] for p, _ in result.skipped] == ["2", "3", "4"]
    assert all("segments[0].file" in r and ("inside" in r or "outside" in r) for _, r in result.skipped)
    jsonl(data / "edits.jsonl", [{"source": "ok.png", "instruction": "x", "target": "../secret/private.png"}])
    with pytest.raises(AnygenError, match="'target': '../secret/private.png' must be a relative path inside"):
        load_edit_pairs(data / "edits.jsonl", on_error="fail")


def test_user_data_is_a_registered_world(tmp_path):
    from anygen.tasks.layouts import TaskMix
    from anygen.worlds import get_world
    from anygen.worlds.user import UserData

    d = tmp_path / "imgs"
    for i in range(10):
        png(d / f"{i}.png", colour=(25 * i, 0, 0))
    jsonl(d / "captions.jsonl", [{"file": f"{i}.png", "caption": f"box number {i}"} for i in range(10)])
    png(tmp_path / "s.png"), png(tmp_path / "t.png", colour=(0, 0, 200))
    jsonl(tmp_path / "edits.jsonl", [{"source": "s.png", "instruction": "make it blue", "target": "t.png"}])

    world = get_world("user", UserData(image_folders=[str(d)], edits=[str(tmp_path / "edits.jsonl")],
                                       val_fraction=0.3, repeat=2), seed=0)
    assert world.plan_format is None
    assert set(world.tasks) == {"document", "text_to_image", "image_to_text", "edit", "describe_edit"}
    source = world.task_source(TaskMix())
    rng = np.random.default_rng(0)
    train = [make() for make in source.examples("train", rng)]
    val = [make() for make in source.examples("val", rng)]
    # every captioned image gives one text->image and one image->text example; train ones twice (repeat=2)
    n_val_images = sum(s.task == "text_to_image" for s in val)
    assert 0 < n_val_images < 10
    assert sum(s.task == "text_to_image" for s in train) == 2 * (10 - n_val_images)
    assert sum(s.task == "edit" for s in train + val) in (1, 2)
    assert source.sample("image_to_text", rng).task == "image_to_text"
    assert source.examples("holdout", rng) == []
    with pytest.raises(AnygenError, match="no val examples of task 'text_to_audio'"):
        source.sample("text_to_audio", rng, "val")
    corpus = world.text_corpus(50, rng)
    assert len(corpus) == 50 and set(corpus) <= {f"box number {i}" for i in range(10)} | {"make it blue"}
    with pytest.raises(AnygenError, match="has no data"):
        get_world("user").text_corpus(1, rng)


def test_captioned_images_make_interleaved_sequences(tmp_path):
    from anygen.document import Image as ImageSegment, Text
    from anygen.tasks.layouts import TaskMix
    from anygen.worlds.user import User, UserData

    d = tmp_path / "imgs"
    for i in range(6):
        png(d / f"{i}.png", colour=(40 * i, 0, 0))
    jsonl(d / "captions.jsonl", [{"file": f"{i}.png", "caption": f"box {i}"} for i in range(6)])
    source = User(UserData(image_folders=[str(d)], sequences=0.5)).task_source(TaskMix())
    docs = [make() for make in source.examples("train", np.random.default_rng(0))]
    sequences = [s for s in docs if s.task == "document"]
    assert len(sequences) == 3  # 0.5 per captioned image
    without = User(UserData(image_folders=[str(d)])).task_source(TaskMix()).examples("train", np.random.default_rng(0))
    assert len(without) == 12  # text_to_image and image_to_text of each image, no sequences by default
    from anygen.tasks.layouts import captioned_sequence, sequence_text

    doc = captioned_sequence(["box 1", "box 2"], [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))])
    segments = list(doc)
    assert [type(s) for s in segments] == [Text, Text, ImageSegment, Text, ImageSegment]
    assert segments[0].text == sequence_text(["box 1", "box 2"]) == "box 1, then box 2"
    assert segments[3].text == "then box 2"
