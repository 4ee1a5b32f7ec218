"""Melodies in other timbres: the waveform split, the notes they play (read by the melody judge),
loudness and length, and the audio->text examples an augmented world trains on."""

import numpy as np
import pytest

from anygen.config import ConfigError
from anygen.tasks.layouts import TaskMix
from anygen.worlds.shapes.judges import judge_melody
from anygen.worlds.shapes.tasks import ShapesTasks
from anygen.worlds.shapes.timbres import (HELDOUT_WAVES, TRAIN_WAVES, WAVES, Timbre, render_timbre_melody,
                                          sample_timbre)
from anygen.worlds.shapes.world import NOTES, ShapesWorld, WorldConfig

SR = 16000


def test_the_waveform_split_is_fixed_and_disjoint():
    assert not set(TRAIN_WAVES) & set(HELDOUT_WAVES) and "reference" in TRAIN_WAVES
    rng = np.random.default_rng(0)
    assert {sample_timbre(rng, "train").wave for _ in range(200)} == set(TRAIN_WAVES)
    assert {sample_timbre(rng, "heldout").wave for _ in range(200)} == set(HELDOUT_WAVES)
    with pytest.raises(ValueError, match="split"):
        sample_timbre(rng, "test")


@pytest.mark.parametrize("wave", WAVES)
def test_every_waveform_plays_the_notes_detuned_and_quiet(wave):
    """The judge (which reads 0.25 s notes) hears the same notes in every waveform, 30 cents off and
    at a twentieth of full scale, with noise and reverb."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        notes = tuple(NOTES[i] for i in rng.integers(len(NOTES), size=4))
        timbre = Timbre(wave=wave, peak=0.05, detune_cents=float(rng.choice([-30, 30])), snr_db=20.0, reverb=0.3,
                        seed=int(rng.integers(1000)))
        assert judge_melody(render_timbre_melody(notes, timbre, SR), SR) == notes


def test_loudness_length_and_seed():
    timbre = Timbre(wave="square", peak=0.3, note_seconds=0.2, jitter=0.1, seed=4)
    wave = render_timbre_melody("CEG", timbre, SR)
    assert wave.dtype == np.float32 and len(wave) == 3 * round(0.2 * SR)
    assert np.abs(wave).max() == pytest.approx(0.3, rel=1e-5)
    assert np.array_equal(wave, render_timbre_melody("CEG", timbre, SR))
    other = render_timbre_melody("CEG", Timbre(wave="square", peak=0.3, note_seconds=0.2, jitter=0.1, seed=5), SR)
    assert not np.array_equal(wave, other)  # the onset jitter is drawn from the seed
    noisy = render_timbre_melody("CEG", Timbre(wave="square", peak=0.3, snr_db=15.0, reverb=0.3, seed=4), SR)
    assert np.abs(noisy).max() == pytest.approx(0.3, rel=1e-5)  # the peak holds with noise and reverb
    assert len(render_timbre_melody("", timbre, SR)) == 0
    with pytest.raises(ValueError, match="wave"):
        Timbre(wave="organ")
    with pytest.raises(ValueError, match="unknown note"):
        render_timbre_melody("CX", timbre, SR)


def test_an_augmented_world_plays_audio_to_text_in_training_timbres_only():
    def keys(**config):
        tasks = ShapesTasks(ShapesWorld(WorldConfig(**config)), TaskMix())
        rng = np.random.default_rng(0)
        return [[p.value.key for p in tasks.sample("audio_to_text", rng).pieces if p.kind == "audio"][0]
                for _ in range(100)]

    plain = keys()
    assert all(k[2] == WorldConfig().note_seconds for k in plain)  # the reference timbre
    mixed = keys(melody_timbres="augmented", augmented_share=0.8)
    timbres = [k[2] for k in mixed if isinstance(k[2], Timbre)]
    assert 60 <= len(timbres) <= 95 and {t.wave for t in timbres} <= set(TRAIN_WAVES)
    with pytest.raises(ConfigError, match="melody_timbres"):
        WorldConfig(melody_timbres="all")
    with pytest.raises(ConfigError, match="augmented_share"):
        WorldConfig(augmented_share=1.5)


def test_codec_batches_of_augmented_melodies_vary_in_loudness():
    from anygen.worlds.shapes.media import MelodyAudio

    def peaks(timbres):
        batch = MelodyAudio(32, clip_seconds=0.5, seed=3, melody_timbres=timbres).make_batch(np.random.default_rng(3), 32)
        return batch.abs().amax(dim=(1, 2)).numpy()

    reference, augmented = peaks("reference"), peaks("augmented")
    assert np.ptp(reference[reference > 0]) < 0.01  # one timbre at one loudness
    assert augmented.min() < 0.3 and augmented.max() > 0.7
