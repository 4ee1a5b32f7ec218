"""`anygen quickstart` at toy size: a folder of class sub-folders -> a model that loads and draws."""

import json

import numpy as np
import pytest
from PIL import Image

import anygen
from anygen.errors import AnygenError
from anygen.training.quickstart import QuickstartOptions, plan, quickstart

TINY = {
    "image codec": ["codec.channels=[8]", "codec.fsq_levels=[3,3]", "train.steps=3", "train.batch_size=4",
                    "train.checkpoint_every=2", "train.log_every=1"],
    "decoder": ["model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.n_kv_heads=2", "model.head_dim=16",
                "model.intermediate=64", "model.max_position=512", "train.steps=3", "train.eval_every=2",
                "train.save_every=2", "train.log_every=1", "data.batch_size=2", "data.seq_len=256",
                "optim.warmup_steps=1"],
}


@pytest.fixture
def class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("circle", "square"):
        for i in range(6):
            (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.png")
    return tmp_path / "data"


def test_quickstart_trains_a_loadable_model_from_class_folders(tmp_path, class_folders):
    opts = QuickstartOptions(data=str(class_folders), out=str(tmp_path / "model"), minutes=5, image_size=16,
                             labels="subfolders", caption_template="a picture of a {label}")
    logged = []
    out = quickstart(opts, log=logged.append, overrides=TINY)
    model = anygen.load(out)
    meta = json.loads((out / "anygen_decoder.json").read_text())
    assert meta["worlds"] == ["user"] and "text_to_image" in meta["tasks"]
    [image] = model.draw("a picture of a circle")
    assert image.size == (16, 16)
    assert model.vocab.image_grids[0] == (8, 8)
    # a rerun keeps every finished step
    again = []
    quickstart(opts, log=again.append, overrides=TINY)
    assert sum("kept" in line for line in again) == 6


def test_quickstart_plan_and_errors(tmp_path, class_folders):
    opts = QuickstartOptions(data="digits", out=str(tmp_path / "m"), minutes=40, background="black")
    steps = plan(opts)
    assert [name for name, _, _ in steps] == ["text tokenizer", "image codec", "tokenizer", "token shards",
                                              "decoder", "model"]
    codec, decoder = steps[1][2], steps[4][2]
    assert "codec.background=black" in codec and "train.time_budget_minutes=8.00" in codec
    assert "train.time_budget_minutes=30.00" in decoder and decoder[-1] == "--resume"
    assert "source=digits" in steps[3][2] and "tasks.image_to_text.weight=3" in steps[3][2]
    folder = plan(QuickstartOptions(data=str(class_folders), out=str(tmp_path / "f"), labels="subfolders",
                                    caption_template="a photo of {label}"))
    assert not any(a.startswith("tasks.") for a in folder[3][2])  # a folder's items are written once per task
    with pytest.raises(AnygenError, match="image_size"):
        QuickstartOptions(data="digits", out="m", image_size=24)
    with pytest.raises(AnygenError, match="minutes"):
        QuickstartOptions(data="digits", out="m", minutes=1)
    with pytest.raises(AnygenError, match="not a folder, nor a world"):
        quickstart(QuickstartOptions(data=str(tmp_path / "nothing"), out=str(tmp_path / "m")))
    with pytest.raises(AnygenError, match="no step named 'decodr'"):
        plan(opts, {"decodr": []})


def test_quickstart_trains_the_decoder_on_two_processes(tmp_path, class_folders, capfd):
    """`processes=2`: the decoder step runs under `accelerate launch` on two CPU processes (the other
    steps as before) and the model loads and draws."""
    opts = QuickstartOptions(data=str(class_folders), out=str(tmp_path / "model"), minutes=5, image_size=16,
                             labels="subfolders", caption_template="a picture of a {label}", processes=2)
    logged = []
    out = quickstart(opts, log=logged.append, overrides=TINY)
    [decoder_line] = [line for line in logged if "decoder:" in line]
    assert "accelerate.commands.launch" in decoder_line and "--num_processes 2" in decoder_line
    assert "2 process(es)" in capfd.readouterr().out  # the trainer's start line, from the launched processes
    [image] = anygen.load(out).draw("a picture of a circle")
    assert image.size == (16, 16)
    with pytest.raises(AnygenError, match="processes"):
        QuickstartOptions(data="digits", out="m", processes=0)
