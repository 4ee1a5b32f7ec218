"""Document: JSON + media round trips, rendering, and clear errors for bad media."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from anygen.document import Audio, Document, Image, Text
from anygen.errors import AnygenError


def _doc():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    wave = (0.5 * np.sin(np.linspace(0, 200, 1600))).astype(np.float32)
    return Document.of("a red <circle> & 'quotes'\n", PILImage.fromarray(pixels), (wave, 16000), "the end")


def test_round_trip_preserves_text_pixels_and_audio(tmp_path):
    doc = _doc()
    doc.save(tmp_path / "d")
    back = Document.load(tmp_path / "d")
    assert [type(s) for s in back] == [Text, Image, Audio, Text]
    assert back.segments[0].text == doc.segments[0].text
    assert np.array_equal(np.asarray(back.images[0]), np.asarray(doc.images[0]))
    a, b = doc.audios[0], back.audios[0]
    assert b.sample_rate == 16000 and len(b.waveform) == len(a.waveform)
    assert np.max(np.abs(b.waveform - a.waveform)) < 1e-4  # 16-bit PCM quantisation


def test_html_is_self_contained_and_escaped(tmp_path):
    doc = _doc()
    doc.save(tmp_path / "d")
    page = (tmp_path / "d" / "index.html").read_text()
    assert "data:image/png;base64," in page and "<audio controls" in page
    assert "&lt;circle&gt; &amp;" in page and "<circle>" not in page
    md = (tmp_path / "d" / "document.md").read_text()
    assert "![image](image_001.png)" in md and "audio_002.wav" in md


def test_missing_media_error_names_the_file(tmp_path):
    _doc().save(tmp_path / "d")
    (tmp_path / "d" / "image_001.png").unlink()
    with pytest.raises(AnygenError, match="image_001.png"):
        Document.load(tmp_path / "d")


def test_corrupt_media_error_names_the_file(tmp_path):
    _doc().save(tmp_path / "d")
    (tmp_path / "d" / "audio_002.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(AnygenError, match="audio_002.wav"):
        Document.load(tmp_path / "d")


def test_unknown_version_and_segment_type_fail_clearly(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "document.json").write_text(json.dumps({"version": 99, "segments": []}))
    with pytest.raises(AnygenError, match="version 99"):
        Document.load(d)
    (d / "document.json").write_text(json.dumps({"version": 1, "segments": [{"type": "video"}]}))
    with pytest.raises(AnygenError, match="video"):
        Document.load(d)


def test_of_rejects_unknown_items():
    with pytest.raises(TypeError):
        Document.of(3.5)


# ---- untrusted document.json -------------------------------------------------------------------
def _doc_dir(tmp_path, segments, **extra) -> Path:
    d = tmp_path / "doc"
    d.mkdir(exist_ok=True)
    (d / "document.json").write_text(json.dumps({"format": "anygen.document", "version": 1, **extra,
                                                 "segments": segments}))
    return d


def _secret_image(tmp_path) -> Path:
    secret = tmp_path / "secret"
    secret.mkdir()
    PILImage.new("RGB", (8, 8), (1, 2, 3)).save(secret / "private_photo.png")
    return secret / "private_photo.png"


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink", "symlinked folder"])
def test_media_must_stay_inside_the_document_folder(tmp_path, how):
    photo = _secret_image(tmp_path)
    d = tmp_path / "doc"
    d.mkdir()
    name = {"relative": "../secret/private_photo.png", "absolute": str(photo)}.get(how, "x/private_photo.png")
    if how == "symlink":
        (d / "x").mkdir()
        (d / "x" / "private_photo.png").symlink_to(photo)
    elif how == "symlinked folder":
        (d / "x").symlink_to(photo.parent)
    _doc_dir(tmp_path, [{"type": "image", "file": name}])
    with pytest.raises(AnygenError, match="segment 0: 'file': .*(inside|outside)"):
        Document.load(d)


def test_media_inside_the_folder_still_load(tmp_path):
    d = tmp_path / "doc"
    (d / "media").mkdir(parents=True)
    PILImage.new("RGB", (8, 8)).save(d / "media" / "a.png")
    (d / "b.png").symlink_to(d / "media" / "a.png")  # a symlink that stays inside is fine
    _doc_dir(tmp_path, [{"type": "image", "file": "media/a.png"}, {"type": "image", "file": "b.png"}])
    assert len(Document.load(d).images) == 2


@pytest.mark.parametrize("raw,message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"version": 1, "segments": [], "n": ' + "7" * 5000 + "}", "a number with too many digits"),
    ('{"segments": [{"type": "image", "file": 5}]}', "segment 0: 'file': expected a file name, got 5"),
    ('{"segments": [{"type": "image", "file": null}]}', "segment 0: 'file': expected a file name, got None"),
    ('{"segments": [{"type": "audio", "file": ["a.wav"]}]}', "segment 0: 'file': expected a file name"),
    ('{"segments": [{"type": "image"}]}', "segment 0: 'file': expected a file name, got None"),
    ('{"segments": 5}', "'segments' must be a list, got int"),
    ('{"segments": null}', "'segments' must be a list, got NoneType"),
    ('{"segments": [{"type": "text", "text": {"a": 1}}]}', "segment 0: 'text' must be a string, got dict"),
    ('{"segments": [{"type": "text", "text": null}]}', "segment 0: 'text' must be a string, got NoneType"),
    ('{"segments": [{"type": "text", "text": ["x"]}]}', "segment 0: 'text' must be a string, got list"),
    ('{"version": "1", "segments": []}', "unsupported document version '1' (this anygen reads version 1)"),
    ('{"version": true, "segments": []}', "unsupported document version True"),
    ('{"version": 1.0, "segments": []}', "unsupported document version 1.0"),
])
def test_malformed_documents_are_one_line_errors(tmp_path, raw, message):
    d = tmp_path / "doc"
    d.mkdir()
    (d / "document.json").write_text(raw)
    with pytest.raises(AnygenError) as e:
        Document.load(d)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_document_size_limits(tmp_path, monkeypatch):
    import anygen.document as document

    monkeypatch.setattr(document, "MAX_SEGMENTS", 10)
    d = _doc_dir(tmp_path, [{"type": "text", "text": "x"}] * 11)
    with pytest.raises(AnygenError, match="11 segments, over the 10-segment limit"):
        Document.load(d)
    monkeypatch.setattr(document, "MAX_TEXT_CHARS", 100)
    _doc_dir(tmp_path, [{"type": "text", "text": "y" * 60}] * 2)
    with pytest.raises(AnygenError, match="document has 120 characters of text, over the 100-character limit"):
        Document.load(d)
    with pytest.raises(AnygenError, match="prompt has 120 characters of text, over the 100-character limit"):
        Document([Text("y" * 60)] * 2).check_size(max_text_chars=100, what="prompt")


def test_joining_many_texts_takes_linear_time():
    import time

    doc = Document([Text("ab" * 150)] * 16_000 + [Image(PILImage.new("RGB", (2, 2)))] + [Text("c")] * 3)
    start = time.perf_counter()
    joined = doc.with_text_joined()
    assert time.perf_counter() - start < 2.0  # joining pairwise copies ~40 GB here
    assert [type(s) for s in joined] == [Text, Image, Text]
    assert joined.segments[0].text == "ab" * 150 * 16_000 and joined.segments[2].text == "ccc"


HOSTILE_TEXT = ("<script>alert(1)</script> <img src=x onerror=alert(2)> [click](javascript:alert(3)) "
                "![](http://evil.example/track.png) <javascript:alert(4)> &lt;b&gt; `code` *star* a\\b")


def test_markdown_escapes_html_links_and_remote_images(tmp_path):
    import html
    import re

    from markdown_it import MarkdownIt

    Document([Text(HOSTILE_TEXT), Image(PILImage.new("RGB", (2, 2)))]).save(tmp_path / "d")
    md = (tmp_path / "d" / "document.md").read_text()
    rendered = MarkdownIt("commonmark").render(md)  # raw HTML allowed, as many viewers do
    tags = set(re.findall(r"<[^>]*>", rendered))
    assert tags == {"<p>", "</p>", '<img src="image_001.png" alt="image" />'}, tags  # no markup from the text
    text = rendered.split("</p>")[0].removeprefix("<p>")
    assert html.unescape(text) == HOSTILE_TEXT  # shown as exactly the characters written
