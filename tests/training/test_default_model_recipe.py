"""The from-scratch default-model recipe (`make default-model` -> training/default_model.sh): its
configs validate and its steps hand each artifact to the next one."""

import os
import shlex
import subprocess
from pathlib import Path

from anygen.config import load_config
from anygen.training.pretokenize import PretokenizeConfig
from anygen.worlds.shapes.world import EDIT_KINDS
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
    # one append per call (steps run side by side): line=...; echo "$line" >> calls
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


def overrides(args: list[str]) -> list[str]:
    return [a for a in args[2:] if "=" in a and not a.startswith("-")]


def by_verb(calls: list[list[str]], verb: str) -> list[list[str]]:
    return [c for c in calls if " ".join(c[:2]).startswith(verb)]


def test_script_chains_tokenizers_shards_decoder_phases_and_bundle(tmp_path):
    calls = run_with_fake_anygen(tmp_path)
    assert [" ".join(c[:2]) for c in calls[:3]] == ["tokenizer train"] * 3
    assert calls[3][:2] == ["tokenizer", "assemble"]
    assert calls[-1][0] == "bundle" and len(calls) == 4 + 3 + 3 + 1  # 3 shard sets, 3 decoder phases
    recipes = {c[2]: option(c, "out") for c in calls[:3]}
    assert set(recipes) == {"tokenizers/text.yaml", "tokenizers/shapes_image.yaml", "tokenizers/melody_audio.yaml"}
    assemble, bundle = calls[3], calls[-1]
    assert option(assemble, "--text") == recipes["tokenizers/text.yaml"]
    assert option(assemble, "--image") == recipes["tokenizers/shapes_image.yaml"]
    assert option(assemble, "--audio") == recipes["tokenizers/melody_audio.yaml"]
    assert "--image-keep" in assemble

    shard_sets = {}
    for call in by_verb(calls, "pretokenize training/shapes_data.yaml"):
        assert option(call, "tokenizer") == option(assemble, "--out")
        shard_sets[option(call, "out")] = load_config(PretokenizeConfig, ROOT / call[1], overrides(call))
    assert len(shard_sets) == 3 and len({cfg.world.seed for cfg in shard_sets.values()}) == 3  # fresh examples
    trains = by_verb(calls, "train training/shapes.yaml")
    assert len(trains) == 3 and all("--resume" in t for t in trains)  # a rerun continues an interrupted phase
    previous, phase_data = None, []
    for train in trains:  # each phase reads one shard set and starts from the phase before
        cfg = load_train_config(ROOT / train[1], overrides(train))
        shards = cfg.data.shard_dir.removesuffix("/train")
        assert shards in shard_sets and cfg.data.eval_shard_dir == f"{shards}/val"
        assert cfg.train.init_weights == previous
        previous = f"{cfg.train.out_dir}/model"
        phase_data.append(shard_sets[shards])
    assert bundle[1] == previous and option(bundle, "--out") == str(tmp_path / "bundle")

    # phase 2 practises the plan in words alone; phase 3 goes back to every task, most on reasoned edits;
    # both see more edits whose object has a same-colour look-alike than phase 1's plain world,
    everything, plans, mixed = phase_data
    assert everything.world.lookalike_prob == 0 and plans.world.lookalike_prob > 0 and mixed.world.lookalike_prob > 0
    # ... and more moves, the kind left furthest from its target without them
    assert everything.world.edit_weights == {}
    assert all(p.world.edit_weight("move") > p.world.edit_weight(k) for p in (plans, mixed) for k in EDIT_KINDS
               if k != "move")
    from anygen.worlds.shapes.tasks import SHAPES_TASKS

    assert {t for t, w in plans.tasks.weights().items() if w > 0 and t in SHAPES_TASKS} == {"reasoned_text"}
    weights = mixed.tasks.weights()
    assert all(weights.get(task, 0) > 0 for task in load_config(
        PretokenizeConfig, ROOT / "training" / "shapes_data.yaml").tasks.weights())
    assert max(weights, key=weights.get) == "reasoned_edit"
    assert all(path.startswith(str(tmp_path / "runs")) for path in [*recipes.values(), *shard_sets, bundle[1]])


def test_script_keeps_finished_steps_when_rerun(tmp_path):
    runs = tmp_path / "runs"
    finished = ["tokenizers/text/summary.json", "tokenizers/shapes_image/summary.json",
                "tokenizers/melody_audio/summary.json", "tokenizer/tokenizer.json", "shards/shapes/val/index.json",
                "decoder/shapes/model"]
    for path in finished:
        (runs / path).parent.mkdir(parents=True, exist_ok=True)
        (runs / path).touch()
    calls = run_with_fake_anygen(tmp_path)
    assert sorted(" ".join(c[:2]) for c in calls) == sorted(
        ["pretokenize training/shapes_data.yaml"] * 2 + ["train training/shapes.yaml"] * 2
        + [f"bundle {runs}/decoder/reasoned/model"])
    assert all(option(c, "out") != f"{runs}/shards/shapes" for c in by_verb(calls, "pretokenize"))


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
