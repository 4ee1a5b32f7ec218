"""`anygen tokenizer train`: recipes, artifacts, checkpoints, exact resume, crash safety, text/audio dispatch."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import anygen.data.media_sources as media_sources
from anygen.codecs.image import ImageCodec
from anygen.config import ConfigError
from anygen.errors import AnygenError
from anygen.training.tokenizer_trainer import load_checkpoint, load_recipe, lr_at, train_tokenizer, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY_CODEC = {"image_size": 16, "channels": [8, 16], "downsample": 2, "encoder_blocks": 1, "decoder_blocks": 1,
              "fsq_levels": [5, 5, 3]}


def write_recipe(tmp_path: Path, out: Path, **sections) -> Path:
    recipe = {"kind": "image", "out": str(out), "data": {"source": "shapes"}, "codec": dict(TINY_CODEC),
              "train": {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup": 1, "checkpoint_every": 2,
                        "log_every": 1, "threads": 1, "seed": 0}}
    for key, value in sections.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and isinstance(recipe.get(key), dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_recipes_in_repo_validate():
    names = sorted(p.name for p in (ROOT / "tokenizers").glob("*.yaml"))
    assert {"shapes_image.yaml", "emoji_image.yaml", "melody_audio.yaml", "speech_audio.yaml", "text.yaml"} <= set(names)
    for name in names:
        recipe = load_recipe(ROOT / "tokenizers" / name)
        from anygen.training.tokenizer_trainer import build_codec_config

        build_codec_config(recipe)  # the codec section is valid for its kind


def test_recipe_errors_name_the_field(tmp_path):
    path = write_recipe(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="train.stepz"):
        load_recipe(path, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="kind"):
        load_recipe(path, ["kind=video"])
    with pytest.raises(ConfigError, match="data.source"):
        load_recipe(path, ["data.source=melodies"])  # not an image source
    with pytest.raises(ConfigError, match="codec.quantizer"):
        train_tokenizer(path, ["codec.quantizer=pq"], progress=False)
    with pytest.raises(ConfigError, match="train.lr"):
        load_recipe(path, ["train.lr=-1"])


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(cfg, 99, 1.0) == pytest.approx(0.1)
    assert lr_at(cfg, 55, 0.55) == pytest.approx(0.55)


def test_train_writes_artifact_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "out"
    result = train_tokenizer(write_recipe(tmp_path, out), progress=False)
    assert result == out
    codec = ImageCodec.load(out)
    assert codec.grid == (4, 4)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and "psnr" in r and "usage" in r for r in rows)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and "rng" in state and state["optimizer"]["param_groups"]
    assert (out / "recipe.yaml").exists() and json.loads((out / "summary.json").read_text())["steps"] == 4
    assert not list(out.glob(".*tmp*")) and not list(out.glob(".artifact*"))  # no leftovers


def _interrupt_at(monkeypatch, index: int, how: str):
    """At batch `index`, once: Ctrl-C (KeyboardInterrupt) or a SIGTERM sent to this process."""
    original = media_sources.BatchSource.batch
    fired = []

    def batch(self, i):
        if i == index and not fired:
            fired.append(i)
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return original(self, i)

    monkeypatch.setattr(media_sources.BatchSource, "batch", batch)


@pytest.mark.parametrize("how,message", [("ctrl-c", "interrupted at step 2"),
                                         ("sigterm", r"terminated \(SIGTERM\) at step 2")])
def test_interrupt_then_resume_continues_exactly(tmp_path, monkeypatch, how, message):
    straight = tmp_path / "straight"
    train_tokenizer(write_recipe(tmp_path, straight, train={"checkpoint_every": 1}), progress=False)

    resumed = tmp_path / "resumed"
    recipe = write_recipe(tmp_path, resumed, train={"checkpoint_every": 3})  # no checkpoint at step 2
    _interrupt_at(monkeypatch, 2, how)
    with pytest.raises(AnygenError, match=message):
        train_tokenizer(recipe, progress=False)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    state = json.loads((resumed / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    # the optimizer state comes back: Adam's step counters equal the checkpoint's step
    codec = ImageCodec.from_config(load_checkpoint_config(resumed))
    opt = torch.optim.AdamW([{"params": [p for p in codec.parameters() if p.ndim >= 2]},
                             {"params": [p for p in codec.parameters() if p.ndim < 2]}])
    load_checkpoint(resumed / "checkpoint", codec, opt)
    assert all(int(s["step"]) == 2 for s in opt.state.values())

    train_tokenizer(recipe, resume=True, progress=False)
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 4
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def load_checkpoint_config(out: Path):
    from anygen.codecs.image import ImageCodecConfig
    from anygen.config import build

    return build(ImageCodecConfig, json.loads((out / "checkpoint" / "state.json").read_text())["recipe"]["codec"])


def test_resume_with_a_different_codec_is_refused(tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path, out, train={"steps": 2})
    train_tokenizer(recipe, progress=False)
    with pytest.raises(AnygenError, match="different codec"):
        train_tokenizer(recipe, ["codec.fsq_levels=[5,5,5]", "train.steps=3"], resume=True, progress=False)


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import anygen.training.tokenizer_trainer as tt
    from safetensors.torch import save_file as real_save
    calls = []
    def save_file(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if filename.endswith("optimizer.safetensors"):
            calls.append(filename)
            if len(calls) == 2:  # second checkpoint: die half-way through writing it
                os.kill(os.getpid(), signal.SIGKILL)
    import safetensors.torch
    safetensors.torch.save_file = save_file
    tt.train_tokenizer(sys.argv[1], progress=False)
""")


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    straight = tmp_path / "straight"
    train_tokenizer(write_recipe(tmp_path, straight), progress=False)

    out = tmp_path / "crashed"
    recipe = write_recipe(tmp_path, out)
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(recipe)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2  # the step-2 checkpoint survived the crash during the step-4 write
    train_tokenizer(recipe, resume=True, progress=False)
    a, b = weights(straight), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # rows logged after the surviving checkpoint were dropped and logged again, once
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_image_folder_source_trains(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(folder / "gray.png")
    out = tmp_path / "out"
    train_tokenizer(write_recipe(tmp_path, out, data={"source": "image-folder", "path": str(folder)},
                                 train={"steps": 2}), progress=False)
    assert ImageCodec.load(out).image_size == 16


def test_text_kind_trains_a_sentencepiece_tokenizer(tmp_path):
    from anygen.codecs.text import load_text_tokenizer

    out = tmp_path / "text"
    recipe = tmp_path / "text.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "text", "out": str(out),
                                      "data": {"source": "text", "text_scenes": 300, "text_include_emoji": False},
                                      "codec": {"vocab_size": 400}}))
    train_tokenizer(recipe, progress=False)
    tok = load_text_tokenizer(out)
    text = "a large red circle at the top left and a small blue square at the center"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text) / 2


def test_audio_kind_dispatches_to_the_audio_codec(tmp_path):
    pytest.importorskip("anygen.codecs.audio")
    from anygen.codecs.audio import AudioCodec

    out = tmp_path / "audio"
    recipe = tmp_path / "audio.yaml"
    codec = {"n_q": 2, "codebook_size": 16, "latent_dim": 8, "num_filters": 4, "upsampling_ratios": [4, 4],
             "num_lstm_layers": 0, "stft_sizes": [64], "n_mels": 8, "kmeans_iters": 2}
    recipe.write_text(yaml.safe_dump({"kind": "audio", "out": str(out), "data": {"source": "melodies", "clip_seconds": 0.25},
                                      "codec": codec, "train": {"steps": 2, "batch_size": 2, "threads": 1,
                                                                "checkpoint_every": 1, "warmup": 1}}))
    train_tokenizer(recipe, progress=False)
    loaded = AudioCodec.load(out)
    assert loaded.n_q == 2 and (out / "checkpoint" / "state.json").exists()


def test_image_folder_source_is_flat_unless_recursive(tmp_path):
    folder = tmp_path / "data"
    for sub in ("train", "test"):
        (folder / sub).mkdir(parents=True)
        Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / sub / "a.png")
    recipe = write_recipe(tmp_path, tmp_path / "out", data={"source": "image-folder", "path": str(folder)},
                          train={"steps": 1})
    with pytest.raises(AnygenError, match="no image files.*2 sub-folders: set recursive: true"):
        train_tokenizer(recipe, progress=False)
    train_tokenizer(recipe, ["data.recursive=true", f"out={tmp_path / 'out2'}"], progress=False)
    assert ImageCodec.load(tmp_path / "out2").image_size == 16


def test_text_tokenizer_trains_on_the_user_data_text(tmp_path):
    from anygen.codecs.text import load_text_tokenizer

    folder = tmp_path / "digits"
    for label in "0123456789":
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / label / "a.png")
    out = tmp_path / "text"
    recipe = tmp_path / "text.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "text", "out": str(out), "codec": {"vocab_size": 300},
                                      "data": {"source": "user", "user": {"image_folders": [{
                                          "path": str(folder), "labels": "subfolders",
                                          "caption_template": "a handwritten digit {label}"}]}}}))
    train_tokenizer(recipe, progress=False)
    assert json.loads((out / "summary.json").read_text())["lines"] == 10
    tok = load_text_tokenizer(out)
    assert tok.decode(tok.encode("a handwritten digit 7")) == "a handwritten digit 7"
    assert len(tok.encode("a handwritten digit 7")) < len("a handwritten digit 7")  # learned pieces, not bytes
    with pytest.raises(AnygenError, match="the user world has no data"):
        train_tokenizer(recipe, ["data.user.image_folders=[]"], progress=False)
