"""Speech via espeak-ng: sane 16 kHz waveforms, deterministic worlds, clear errors."""

import random
import shutil

import numpy as np
import pytest

import anygen.worlds.speech as speech
from anygen.worlds.speech import SpeechWorld, parse_wav_stream, synthesize
from anygen.document import wav_bytes
from anygen.errors import AnygenError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng missing: install the Debian package espeak-ng")


def test_missing_binary_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(speech, "ESPEAK_BINARY", "espeak-ng-not-installed")
    speech._synthesize_cached.cache_clear()
    with pytest.raises(AnygenError, match="Debian package espeak-ng"):
        synthesize("hello")
    speech._synthesize_cached.cache_clear()


def test_parse_streamed_wav_header():
    wave = np.sin(np.linspace(0, 100, 2205)).astype(np.float32) * 0.5
    data = bytearray(wav_bytes(wave, 22050))
    data[4:8] = data[40:44] = (0x7FFFFFFF).to_bytes(4, "little")  # what espeak-ng writes to a pipe
    out, sr = parse_wav_stream(bytes(data))
    assert sr == 22050 and len(out) == 2205 and np.abs(out - wave).max() < 1e-3
    with pytest.raises(AnygenError, match="not a WAV"):
        parse_wav_stream(b"hello")


@pytest.mark.parametrize("kwargs, match", [
    (dict(text=""), "empty"), (dict(text=" \n\t"), "empty"), (dict(text="x" * 5000), "limit"),
    (dict(text="hi", voice="-x"), "voice"), (dict(text="hi", speed=10), "speed"),
    (dict(text="hi", pitch=100), "pitch"), (dict(text="hi", sample_rate=100), "sample_rate"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(AnygenError, match=match):
        synthesize(**kwargs)


@needs_espeak
def test_synthesize_waveform_is_sane():
    wave = synthesize("a small red circle at the center")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 1.0 < len(wave) / 16000 < 5.0
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0
    assert np.sqrt(np.mean(wave ** 2)) > 0.01  # speech, not silence
    assert np.array_equal(wave, synthesize("a small red circle at the center"))
    wave8k = synthesize("a small red circle at the center", sample_rate=8000)
    assert abs(len(wave8k) * 2 - len(wave)) <= 2
    assert len(synthesize("a small red circle at the center", speed=300)) < len(wave)
    wave[:] = 0  # callers get a copy, never the cached array
    assert np.abs(synthesize("a small red circle at the center")).max() > 0


@needs_espeak
def test_unknown_voice_is_a_clear_error():
    with pytest.raises(AnygenError, match="voice 'zz'"):
        synthesize("hello", voice="zz")


@needs_espeak
def test_speech_world_is_deterministic_by_seed():
    a = SpeechWorld(seed=1).items(4)
    b = SpeechWorld(seed=1).items(4)
    c = SpeechWorld(seed=2).items(4)
    assert [x.text for x in a] == [x.text for x in b]
    assert all(np.array_equal(x.waveform, y.waveform) for x, y in zip(a, b))
    assert [x.text for x in a] != [x.text for x in c]
    for item in a:
        assert item.sample_rate == 16000 and 0.3 < item.seconds < 15
        assert np.sqrt(np.mean(item.waveform ** 2)) > 0.01
        doc = item.document()
        assert doc.text == item.text and doc.audios[0].sample_rate == 16000
    assert SpeechWorld().sample(random.Random(5)).text == SpeechWorld().sample(random.Random(5)).text
    gen = [SpeechWorld().sentence(np.random.default_rng(3)) for _ in range(2)]
    assert gen[0] == gen[1]
    text, wave, sr = SpeechWorld(seed=1).sample_example()
    assert text == a[0].text and sr == 16000 and np.array_equal(wave, a[0].waveform)


def test_sentences_cover_each_kind():
    rng = random.Random(0)
    assert " at the " in speech.make_sentence(rng, "shapes")
    assert set(speech.make_sentence(rng, "digits").split()) <= set(speech.DIGITS)
    assert speech.make_sentence(rng, "notes").startswith("the notes ")
    with pytest.raises(AnygenError, match="kinds"):
        SpeechWorld(kinds=("poems",))
