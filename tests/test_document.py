"""Document: JSON + media round trips, rendering, and clear errors for bad media."""

import json

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
