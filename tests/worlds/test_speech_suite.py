"""`anygen eval speech`: the suite scores a generator's speech with the judge it is given."""

import shutil

import numpy as np
import pytest

import anygen.worlds.speech as speech
from anygen.document import Audio
from anygen.worlds.speech.suite import evaluate_speech, format_report, heldout_utterances

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")
RATE = 16000


class TextInAudio:
    """A judge that reads the sentence a `Parrot` hid in its audio's length; espeak-ng audio it
    hears as a fixed transcript."""

    def __init__(self, texts, heard_espeak):
        self.texts, self.heard_espeak = texts, heard_espeak

    def __call__(self, waveforms, sample_rate):
        return [self.texts[len(w) - 1] if len(w) <= len(self.texts) else self.heard_espeak for w in waveforms]


class Parrot:
    """Says sentence k as k+1 samples; hears everything as the same wrong sentence."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def say(self, text, guidance_scale=1.0, seed=0):
        self.calls.append(("say", text, guidance_scale))
        return Audio(np.zeros(self.texts.index(text) + 1, np.float32), RATE)

    def transcribe(self, audio, seed=0):
        wave, rate = audio
        assert rate == RATE and len(wave) > RATE // 4  # espeak-ng speech of a held-out sentence
        return "a red circle"


def test_suite_scores_what_the_judge_hears():
    texts = [u.text for u in heldout_utterances(4, seed=3)]
    assert all(speech.is_heldout(t) for t in texts)
    assert {u.voice for u in heldout_utterances(4, seed=3)} == {speech.HELDOUT_VOICE}
    parrot = Parrot(texts)
    out = evaluate_speech(parrot, TextInAudio(texts, heard_espeak=""), n=4, seed=3, guidance_scale=2.0)
    assert out["say.wer"] == 0.0  # the judge heard every sentence said
    assert out["say.wer_espeak"] == 1.0  # and nothing in espeak-ng's: all deletions
    assert [c[1] for c in parrot.calls] == texts and {c[2] for c in parrot.calls} == {2.0}
    words = sum(len(t.split()) for t in texts)
    hits = sum(t.split().count(w) > 0 for t in texts for w in ("a", "red", "circle"))
    assert out["transcribe.wer"] >= 1 - hits / words and out["transcribe.wer"] == out["transcribe.wer_train_voices"]
    assert out["transcribe.wer_whisper"] == 1.0
    report = format_report(out)
    assert "say: Whisper word error rate 0.0%" in report and "held-out voice" in report


def test_suite_runs_only_what_is_asked():
    texts = [u.text for u in heldout_utterances(2, seed=0)]
    out = evaluate_speech(Parrot(texts), TextInAudio(texts, ""), n=2, seed=0, suites=("say",))
    assert "say.wer" in out and not any(k.startswith("transcribe") for k in out)


def test_eval_speech_refuses_a_model_that_never_heard_speech(capsys):
    pytest.importorskip("faster_whisper", reason="pip install 'anygen[speech]'")
    from anygen.cli import main

    assert main(["eval", "speech", "--n", "1"]) != 0  # the bundled model: ShapesWorld melodies
    assert "not trained on speech (its worlds: shapes)" in capsys.readouterr().err
    assert main(["eval", "speech", "--only", "sing"]) != 0
    assert "unknown suite 'sing'" in capsys.readouterr().err
