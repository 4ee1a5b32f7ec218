"""Untrusted media files (anygen.io): only plain raster formats are opened, errors never quote the file,
audio is scaled by its header's format and its length is checked before decoding."""

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy.io import wavfile

import anygen.io as aio
from anygen.errors import AnygenError

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 8 8
%%EndComments
newpath 0 0 moveto 8 8 lineto stroke
showpage
%%EOF
"""
SECRET = b"root:x:0:0:secret-line:/root:/bin/sh\n"


@pytest.mark.parametrize("name", ["evil.eps", "evil.png"])
def test_postscript_is_refused_without_running_ghostscript(tmp_path, monkeypatch, name):
    marker = tmp_path / "ghostscript-ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gs = bin_dir / "gs"  # any call to Ghostscript leaves the marker
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    path = tmp_path / name
    path.write_bytes(EPS)
    with pytest.raises(AnygenError, match=re.escape(f"{path}: cannot read image: not a PNG/JPEG/")):
        aio.read_image_file(path)
    assert not marker.exists(), "Ghostscript was run on an untrusted file"


def test_every_pil_open_has_a_format_allow_list():
    """Static check: each Image.open in the package names `formats=`, so no other PIL plugin is ever tried."""
    offenders = []
    for path in (Path(__file__).resolve().parents[1] / "anygen").rglob("*.py"):
        for line in path.read_text().splitlines():
            if re.search(r"Image\.open\(", line) and "formats=IMAGE_FORMATS" not in line:
                offenders.append(f"{path.name}: {line.strip()}")
    assert not offenders, offenders
    assert "EPS" not in aio.IMAGE_FORMATS and "PNG" in aio.IMAGE_FORMATS


@pytest.mark.parametrize("reader,message", [
    (aio.read_image_file, "not a PNG/JPEG/WEBP/GIF/BMP/TIFF"),
    (aio.read_audio_file, "expected a WAV file (no RIFF/WAVE header)"),
])
def test_errors_name_the_file_but_never_quote_it(tmp_path, reader, message):
    path = tmp_path / "passwd"
    path.write_bytes(SECRET)
    with pytest.raises(AnygenError) as e:
        reader(path)
    text = str(e.value)
    assert str(path) in text and message in text
    assert "root" not in text.replace(str(tmp_path), "") and "secret" not in text


def test_float_image_with_nan_is_refused(tmp_path):
    arr = np.full((6, 6), 0.5, np.float32)
    arr[2, 3] = np.nan
    path = tmp_path / "nan.tif"
    PILImage.fromarray(arr, mode="F").save(path)
    with pytest.raises(AnygenError, match=re.escape(f"{path}: image has NaN or Inf pixel values")):
        aio.read_image_file(path)
    with pytest.raises(AnygenError, match="NaN or Inf"):
        aio.to_rgb(PILImage.fromarray(arr, mode="F"))  # a PIL image passed to the API


def test_device_files_are_not_read(tmp_path):
    with pytest.raises(AnygenError, match="not a regular file"):
        aio.read_image_file("/dev/zero")
    with pytest.raises(AnygenError, match="not a regular file"):
        aio.read_audio_file("/dev/zero")


# ---- audio scaling -----------------------------------------------------------------------------
SR = 8000


def _tone(seconds=0.05, peak=1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return peak * np.sin(2 * np.pi * 400 * t)


def test_full_scale_8bit_wav_is_full_scale(tmp_path):
    path = tmp_path / "u8.wav"
    wavfile.write(path, SR, np.array([0, 128, 255, 128] * 50, np.uint8))
    wave, _ = aio.read_audio_file(path)
    assert wave.min() == -1.0 and wave[1] == 0.0 and wave.max() > 0.99


@pytest.mark.parametrize("dtype,full", [(np.int16, 32768), (np.int32, 2**31)])
def test_integer_wav_full_scale_maps_to_one(tmp_path, dtype, full):
    path = tmp_path / "i.wav"
    wavfile.write(path, SR, (_tone(peak=0.5) * full).astype(dtype))
    wave, _ = aio.read_audio_file(path)
    assert abs(float(np.abs(wave).max()) - 0.5) < 1e-3


def test_loud_float_wav_is_peak_normalised(tmp_path):
    path = tmp_path / "loud.wav"
    wavfile.write(path, SR, (_tone() * 500).astype(np.float32))
    wave, _ = aio.read_audio_file(path)
    assert abs(float(np.abs(wave).max()) - 1.0) < 1e-6
    np.testing.assert_allclose(wave, _tone(), atol=1e-5)
    quiet = tmp_path / "quiet.wav"
    wavfile.write(quiet, SR, (_tone() * 0.25).astype(np.float32))
    assert abs(float(np.abs(aio.read_audio_file(quiet)[0]).max()) - 0.25) < 1e-6  # within [-1, 1]: untouched


def test_channels_come_from_the_wav_header(tmp_path):
    """17 channels of 1 s: averaged over the channels (8000 samples), not over time (17 samples)."""
    path = tmp_path / "ch17.wav"
    wavfile.write(path, SR, np.repeat(_tone(1.0, 0.5)[:, None], 17, axis=1).astype(np.float32))
    wave, sr = aio.read_audio_file(path)
    assert sr == SR and wave.shape == (SR,)
    np.testing.assert_allclose(wave, _tone(1.0, 0.5), atol=1e-6)


def test_arrays_without_a_header_take_the_shorter_axis_as_channels():
    mono = _tone(0.01, 0.5).astype(np.float32)
    for data in (np.stack([mono] * 20, axis=1), np.stack([mono] * 20, axis=0)):
        np.testing.assert_allclose(aio.to_mono_float(data), mono, atol=1e-6)
    ints = (np.stack([mono, mono], axis=1) * 32768).astype(np.int16)
    assert abs(float(np.abs(aio.to_mono_float(ints)).max()) - 0.5) < 1e-3


def test_long_wav_is_refused_from_its_header_before_decoding(tmp_path):
    """A 1 GiB sparse WAV (a few KB on disk): refused by the header's length alone."""
    path = tmp_path / "huge.wav"
    n_bytes = 1 << 30
    header = (b"RIFF" + struct.pack("<I", 36 + n_bytes) + b"WAVE"
              + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
              + b"data" + struct.pack("<I", n_bytes))
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n_bytes)
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(AnygenError, match=r"huge.wav: audio is 33554 s long, over the 600 s limit"):
            aio.read_audio_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024, f"{peak} bytes allocated: the samples were decoded"


def test_many_channel_wav_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "wide.wav"
    wavfile.write(path, SR, np.zeros((SR, 40), np.int16))  # 1 s, 40 channels: 320000 samples
    monkeypatch.setattr(aio, "MAX_AUDIO_SAMPLES", 300_000)
    with pytest.raises(AnygenError, match="8000 frames of 40 channels, over the 300000-sample limit"):
        aio.read_audio_file(path)


def test_wav_header_reports_what_is_really_there(tmp_path):
    path = tmp_path / "claim.wav"
    wavfile.write(path, SR, np.zeros((100, 2), np.int16))
    data = bytearray(path.read_bytes())
    data[40:44] = struct.pack("<I", 0x7FFFFFF0)  # the data chunk claims 2 GB; the file holds 100 frames
    path.write_bytes(bytes(data))
    assert aio.wav_header(path) == (SR, 2, 100)
