"""The speech-model recipe (`make speech-model` -> training/speech_model.sh): its configs validate and
agree, and its steps hand each artifact to the next one."""

import math
from pathlib import Path

from anygen.codecs.audio import AudioCodecConfig
from anygen.config import load_config
from anygen.training.decoder_trainer import load_train_config
from anygen.training.pretokenize import PretokenizeConfig, trained_on
from anygen.training.tokenizer_trainer import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "speech_model.sh"
LONGEST_SECONDS = 8.9  # the longest training sentence (three shapes) at the slowest training speed, 140 words/min


def test_recipes_validate_and_agree():
    train = load_train_config(ROOT / "training" / "speech.yaml")
    data = load_config(PretokenizeConfig, ROOT / "training" / "speech_data.yaml")
    audio = load_recipe(ROOT / "tokenizers" / "speech_audio.yaml")
    codec = AudioCodecConfig(**audio.codec) if isinstance(audio.codec, dict) else audio.codec
    assert audio.kind == "audio" and audio.data.source == "speech"
    frames = math.ceil(LONGEST_SECONDS * codec.sample_rate / codec.hop_length)
    assert train.data.seq_len == data.seq_len >= frames * codec.n_q + 40  # the codes and a sentence's text
    assert train.model.max_position >= data.seq_len
    assert train.train.time_budget_minutes > 0  # the run ends by wall time
    assert data.source == "speech"
    assert trained_on(data) == {"worlds": ["speech"], "tasks": ["text_to_audio", "audio_to_text"]}


def test_script_chains_codecs_shards_decoder_and_bundle(tmp_path, run_recipe):
    done, calls = run_recipe(SCRIPT, TRAIN_ARGS="train.steps=5", N_TRAIN="100")
    assert done.returncode == 0, done.stderr
    assert "done:" in done.stdout
    runs = str(tmp_path / "runs")
    codec, text, assemble, shards, train, bundle, recommend = calls
    assert codec[:3] == ["tokenizer", "train", "tokenizers/speech_audio.yaml"] and "--resume" in codec
    assert text[:3] == ["tokenizer", "train", "tokenizers/text.yaml"] and "data.source=speech" in text
    assert assemble[:2] == ["tokenizer", "assemble"]
    assert assemble[assemble.index("--audio") + 1] == f"{runs}/tokenizers/speech_audio"
    assert assemble[assemble.index("--text") + 1] == f"{runs}/tokenizers/speech_text"
    assert shards[:2] == ["pretokenize", "training/speech_data.yaml"] and "n_train=100" in shards
    assert f"tokenizer={runs}/speech_tokenizer" in shards and f"out={runs}/shards/speech" in shards
    assert train[:2] == ["train", "training/speech.yaml"] and "--resume" in train and "train.steps=5" in train
    assert bundle == ["bundle", f"{runs}/decoder/speech/model", "--out", f"{runs}/speech_model"]
    assert recommend == ["recommend", f"{runs}/speech_model", "audio_max_frames=240"]
