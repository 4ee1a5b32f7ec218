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
    assert speech.make_sentence(rng, "instructions").split()[0] in ("make", "move", "remove", "add")
    words = speech.make_sentence(rng, "everyday")
    assert any(words.startswith(s) for s in speech.SUBJECTS) and any(words.endswith(p) for p in speech.PLACES)
    with pytest.raises(AnygenError, match="kinds"):
        SpeechWorld(kinds=("poems",))


def test_heldout_rule_is_fixed_and_the_splits_never_meet():
    import itertools

    everyday = [" ".join(words) for words in itertools.product(speech.SUBJECTS, speech.VERBS, speech.OBJECTS,
                                                               speech.PLACES)]
    assert (len(everyday), sum(map(speech.is_heldout, everyday))) == (4096, 416)  # the rule, pinned
    assert speech.is_heldout("my friend lost the old book at the market")
    assert not speech.is_heldout("my friend lost the old book in the kitchen")
    rng = random.Random(0)
    train, heldout = SpeechWorld(), SpeechWorld(split="heldout")
    assert not any(speech.is_heldout(train.sentence(rng)) for _ in range(300))
    assert all(speech.is_heldout(heldout.sentence(rng)) for _ in range(30))
    assert heldout.voices == (speech.HELDOUT_VOICE,) and speech.HELDOUT_VOICE not in train.voices
    with pytest.raises(AnygenError, match="split"):
        SpeechWorld(split="test")


class FakeTranscriber:
    """Hears every waveform as the next of its canned transcripts."""

    def __init__(self, heard):
        self.heard, self.calls = list(heard), 0

    def __call__(self, waveforms, sample_rate):
        out = self.heard[self.calls * len(waveforms):(self.calls + 1) * len(waveforms)]
        self.calls += 1
        return out


def test_judge_audio_is_word_error_rate_on_reconstructions_and_originals():
    texts = ["a red circle at the top", "seven two nine"]
    heard = ["a red circle at the", "seven to nine",  # reconstructions: 1 deletion + 1 substitution
             "A red circle at the top.", "729"]  # originals: right after normalising
    world = speech.Speech(transcriber=FakeTranscriber(heard))
    waves = [np.zeros(1600, np.float32)] * 2
    out = world.judge_audio(waves, waves, texts, 16000)
    assert out["wer"] == pytest.approx(2 / 9) and out["wer_originals"] == 0.0
    assert out["wer_ratio"] == pytest.approx((2 / 9) / speech.WER_FLOOR)


@needs_espeak
def test_eval_audio_says_heldout_sentences_in_the_heldout_voice():
    waves, texts = speech.Speech().eval_audio(3, seed=0, sample_rate=16000)
    assert len(waves) == len(texts) == 3 and all(speech.is_heldout(t) for t in texts)
    assert not any(t.startswith("the notes") for t in texts)
    again, _ = speech.Speech().eval_audio(3, seed=0, sample_rate=16000)
    assert all(np.array_equal(a, b) for a, b in zip(waves, again))


@needs_espeak
def test_speech_tasks_say_in_one_voice_and_hear_the_training_voices():
    from anygen.tasks.layouts import TaskMix

    tasks = speech.Speech().task_source(TaskMix())
    assert tasks.tasks == ("text_to_audio", "audio_to_text")
    rng = np.random.default_rng(0)
    say = [tasks.sample("text_to_audio", rng) for _ in range(20)]
    hear = [tasks.sample("audio_to_text", rng) for _ in range(40)]
    audio = [piece.value for spec in say + hear for piece in spec.pieces if piece.kind == "audio"]
    keys = [media.key for media in audio]
    assert {k[3:] for k in keys[:20]} == {speech.SAY_VOICE}
    assert {k[3] for k in keys[20:]} == set(speech.TRAIN_VOICES)
    assert not any(speech.is_heldout(k[2]) for k in keys)
    wave, rate = audio[0].make()
    assert rate == 16000 and np.array_equal(wave, synthesize(keys[0][2], 16000, *speech.SAY_VOICE))
    for split in ("holdout", "heldout"):  # pretokenize's name and the world's
        spec = tasks.sample("audio_to_text", rng, split)
        [media] = [piece.value for piece in spec.pieces if piece.kind == "audio"]
        assert media.key[3] == speech.HELDOUT_VOICE and speech.is_heldout(media.key[2])
    with pytest.raises(AnygenError, match="no task 'edit'"):
        tasks.sample("edit", rng)
