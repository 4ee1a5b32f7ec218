"""The melody-timbres recipe (`make melody-timbres` -> training/melody_timbres.sh): it fine-tunes the
default model on shards whose audio->text examples play other timbres, keeping the default audio
codec unless asked to retrain it, and hands each artifact to the next step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "melody_timbres.sh"
DEFAULT = "anygen/assets/default"


def test_script_fine_tunes_the_default_model_on_augmented_melodies(tmp_path, run_recipe):
    done, calls = run_recipe(SCRIPT, STEPS="5", N_TRAIN="100")
    assert done.returncode == 0, done.stderr
    runs = str(tmp_path / "runs")
    shards, train, bundle = calls
    assert shards[:2] == ["pretokenize", "training/shapes_data.yaml"] and f"tokenizer={DEFAULT}/tokenizer" in shards
    assert "world.melody_timbres=augmented" in shards and "n_train=100" in shards
    assert train[:2] == ["train", "training/shapes.yaml"] and f"train.init_weights={DEFAULT}" in train
    assert "train.steps=5" in train and f"data.shard_dir={runs}/shards/train" in train and "--resume" in train
    assert bundle == ["bundle", f"{runs}/decoder/model", "--out", f"{runs}/model"]


def test_script_retrains_the_audio_codec_when_asked(tmp_path, run_recipe):
    done, calls = run_recipe(SCRIPT, AUDIO="retrain", CODEC_ARGS="train.steps=3")
    assert done.returncode == 0, done.stderr
    runs = str(tmp_path / "runs")
    codec, assemble, shards = calls[:3]
    assert codec[:3] == ["tokenizer", "train", "tokenizers/melody_audio.yaml"]
    assert "data.melody_timbres=augmented" in codec and "train.steps=3" in codec
    assert assemble[assemble.index("--audio") + 1] == f"{runs}/tokenizers/melody_audio"
    assert assemble[assemble.index("--text") + 1] == f"{DEFAULT}/tokenizer/text"
    assert f"tokenizer={runs}/tokenizer" in shards


def test_script_refuses_an_unknown_audio_choice(run_recipe):
    done, calls = run_recipe(SCRIPT, AUDIO="new")
    assert done.returncode == 2 and "AUDIO must be default or retrain" in done.stderr and not calls
