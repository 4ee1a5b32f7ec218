"""The from-scratch default-model recipe (`make default-model` -> training/default_model.sh): its
configs validate and its steps hand each artifact to the next one."""

import os
import shlex
import subprocess
from pathlib import Path

from anygen.config import load_config
from anygen.data.pretokenize import PretokenizeConfig
from anygen.training.decoder_trainer import load_train_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "default_model.sh"


def test_decoder_and_data_recipes_validate_and_agree():
    train = load_train_config(ROOT / "training" / "shapes.yaml")
    data = load_config(PretokenizeConfig, ROOT / "training" / "shapes_data.yaml")
    assert train.data.seq_len == data.seq_len
    assert train.model.image_position_stride > 0  # the bundled model's positions (README "Default model")
    weights = data.tasks.weights()
    for task in ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "edit", "describe_edit",
                 "reasoned_edit", "reasoned_text", "story"):
        assert weights.get(task, 0) > 0, f"the default model learns {task}"
    assert data.tasks.reasoned_edit.form == "slots"  # the form the edit self-check reads (tasks.planned_scene)


def run_with_fake_anygen(tmp_path: Path, bundle: bool = True) -> list[list[str]]:
    """Run the recipe with `anygen` replaced by a recorder; return each call's arguments in order."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_anygen"
    # one append per call (the two codecs run side by side): line=...; echo "$line" >> calls
    fake.write_text(f'#!/usr/bin/env bash\nline=$(printf "%q " "$@")\necho "$line" >> {shlex.quote(str(calls))}\n')
    fake.chmod(0o755)
    env = dict(os.environ, ANYGEN=str(fake), RUNS=str(tmp_path / "runs"), BUNDLE=str(tmp_path / "bundle"))
    if not bundle:
        del env["BUNDLE"]
    done = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "done:" in done.stdout
    return [shlex.split(line) for line in calls.read_text().splitlines()]


def option(args: list[str], key: str) -> str:
    """The value of `key=VALUE` or `--key VALUE` in args."""
    for i, arg in enumerate(args):
        if arg.startswith(key + "="):
            return arg.split("=", 1)[1]
        if arg == key:
            return args[i + 1]
    raise AssertionError(f"{key} not in {args}")


def test_script_chains_tokenizers_shards_decoder_and_bundle(tmp_path):
    calls = run_with_fake_anygen(tmp_path)
    verbs = [" ".join(c[:2]) for c in calls]
    assert verbs[:3] == ["tokenizer train"] * 3
    assert verbs[3:] == ["tokenizer assemble", "pretokenize training/shapes_data.yaml", "train training/shapes.yaml",
                         f"bundle {tmp_path}/runs/decoder/shapes/model"]
    recipes = {c[2]: option(c, "out") for c in calls[:3]}
    assert set(recipes) == {"tokenizers/text.yaml", "tokenizers/shapes_image.yaml", "tokenizers/melody_audio.yaml"}
    assemble, pretokenize, train, bundle = calls[3:]
    assert option(assemble, "--text") == recipes["tokenizers/text.yaml"]
    assert option(assemble, "--image") == recipes["tokenizers/shapes_image.yaml"]
    assert option(assemble, "--audio") == recipes["tokenizers/melody_audio.yaml"]
    assert "--image-keep" in assemble
    assert option(pretokenize, "tokenizer") == option(assemble, "--out")
    shards = option(pretokenize, "out")
    assert option(train, "data.shard_dir") == f"{shards}/train"
    assert option(train, "data.eval_shard_dir") == f"{shards}/val"
    assert bundle[1] == option(train, "train.out_dir") + "/model"
    assert option(bundle, "--out") == str(tmp_path / "bundle")
    assert all(path.startswith(str(tmp_path / "runs")) for path in [*recipes.values(), shards, bundle[1]])


def test_script_leaves_the_shipped_model_alone_by_default(tmp_path):
    bundle = run_with_fake_anygen(tmp_path, bundle=False)[-1]
    assert option(bundle, "--out") == str(tmp_path / "runs" / "default_model")


def test_script_stops_when_a_codec_fails(tmp_path):
    fake = tmp_path / "fake_anygen"
    fake.write_text('#!/usr/bin/env bash\n[[ "$3" == tokenizers/melody_audio.yaml ]] && exit 3\nexit 0\n')
    fake.chmod(0o755)
    env = dict(os.environ, ANYGEN=str(fake), RUNS=str(tmp_path / "runs"), BUNDLE=str(tmp_path / "bundle"))
    done = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "audio codec failed" in done.stderr
    assert not (tmp_path / "bundle").exists()
