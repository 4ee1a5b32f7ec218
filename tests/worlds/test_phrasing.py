"""The paraphrase layer: its fixed held-out split, the template round trip, the training tasks
that use it, and `anygen eval shapes --phrasing`."""

import re
from collections import Counter

import numpy as np
import pytest

from anygen.tasks.layouts import TaskMix
from anygen.worlds.shapes import phrasing as ph
from anygen.worlds.shapes.suite import evaluate_shapes
from anygen.worlds.shapes.tasks import ShapesTasks
from anygen.worlds.shapes.world import (EDIT_KINDS, ShapesWorld, WorldConfig, apply_instruction, parse_caption,
                                        render_scene)
from test_reliability import cli_error


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(WorldConfig(seed=0))


def test_the_split_holds_out_a_fixed_list_of_templates():
    ids, held = ph.template_ids(), ph.held_out_ids()
    assert len(ids) == len(set(ids)) == 154
    assert len(held) == 35
    assert Counter(i.split(":")[0] for i in held) == {"word": 15, "edit": 10, "frame": 7, "object": 1, "style": 1,
                                                      "prep": 1}
    assert "frame:draw" in held and "word:large=big" in held and "prep:in" in held
    assert not set(held) & ph.CANONICAL_IDS
    for kind in EDIT_KINDS:  # every kind has held-out frames and training frames
        frames = [i for i in ids if i.startswith(f"edit:{kind}:")]
        assert 0 < sum(ph.held_out(i) for i in frames) < len(frames), kind


@pytest.mark.parametrize("split", ph.PHRASING_SPLITS)
def test_every_phrasing_parses_back_to_its_scene_and_edit(world, split):
    rng = np.random.default_rng(1)
    used = set()
    for _ in range(1500):
        scene = world.sample_scene(rng)
        phrased = ph.phrase_caption(scene, rng, split)
        assert ph.parse_phrased_caption(phrased.text) == scene, phrased.text
        edit = world.sample_edit(rng)
        said = ph.phrase_instruction(edit, rng, split)
        canonical = ph.canonical_instruction(said.text)
        assert canonical is not None and apply_instruction(edit.source, canonical) == edit.target, said.text
        used |= set(phrased.items) | set(said.items)
        if split == "train":
            assert not [i for i in phrased.items + said.items if ph.held_out(i)]
        else:  # a held-out frame each time
            assert any(ph.held_out(i) for i in phrased.items if i.startswith("frame:"))
            assert any(ph.held_out(i) for i in said.items if i.startswith("edit:"))
    if split == "train":  # every training template was rendered and read back
        assert used == {i for i in ph.template_ids() if not ph.held_out(i)}
    else:  # and every held-out one
        assert set(ph.held_out_ids()) <= used


def test_canonical_texts_parse_as_phrasings(world):
    rng = np.random.default_rng(2)
    for _ in range(200):
        scene, edit = world.sample_scene(rng), world.sample_edit(rng)
        assert ph.parse_phrased_caption(scene.caption()) == scene
        assert ph.canonical_instruction(edit.instruction) == edit.instruction


def _texts(spec) -> list[str]:
    return [p.value for p in spec.pieces if p.kind == "text" and isinstance(p.value, str)]


def test_training_tasks_never_use_a_held_out_template(monkeypatch):
    import anygen.worlds.shapes.tasks as tasks_module

    items = []
    for name in ("phrase_caption", "phrase_instruction"):
        real = getattr(ph, name)

        def record(*args, real=real, **kwargs):
            out = real(*args, **kwargs)
            items.extend(out.items)
            return out
        monkeypatch.setattr(tasks_module, name, record)
    source = ShapesTasks(ShapesWorld(WorldConfig(seed=0, phrasing="paraphrase")), TaskMix())
    rng = np.random.default_rng(3)
    texts = []
    for _ in range(400):
        for task in ("text_to_image", "edit", "reasoned_edit", "reasoned_text"):
            texts += _texts(source.sample(task, rng))
    assert items and not [i for i in items if ph.held_out(i)]
    canonical = sum(parse_caption(t) is not None for t in texts)
    assert 0 < canonical < len(texts)  # canonical captions and paraphrases both
    # the texts themselves: no held-out frame matches, no held-out word that no training word contains
    held_frames = [ph.FRAMES[i.split(":")[1]] for i in ph.held_out_ids() if i.startswith("frame:")]
    train_words = [i.split("=", 1)[1] for i in ph.template_ids() if i.startswith("word:") and not ph.held_out(i)]
    held_words = [i.split("=", 1)[1] for i in ph.held_out_ids() if i.startswith("word:")]
    lone = [w for w in held_words if not any(re.search(rf"\b{re.escape(w)}\b", t) for t in train_words)]
    assert "big" in lone and "navy" in lone
    for text in texts:
        low = text.lower()
        for pattern, frame in ph._FRAME_RES:  # a held-out frame whose objects all parse: that frame was used
            m = pattern.fullmatch(ph._clean(text))
            if frame in held_frames and m is not None:
                parts = ph._JOIN_RE.split(m.group("objs"))
                assert None in [ph._phrase_obj(part.strip()) for part in parts], (frame, text)
        for word in lone:
            assert not re.search(rf"\b{re.escape(word)}\b", low), (word, text)


def test_canonical_phrasing_leaves_the_training_stream_unchanged():
    mix = TaskMix()
    a = ShapesTasks(ShapesWorld(WorldConfig(seed=0)), mix)
    b = ShapesTasks(ShapesWorld(WorldConfig(seed=0, phrasing="canonical", paraphrase_share=0.9)), mix)
    for task in ("text_to_image", "edit"):
        ra, rb = np.random.default_rng(4), np.random.default_rng(4)
        assert [_texts(a.sample(task, ra)) for _ in range(20)] == [_texts(b.sample(task, rb)) for _ in range(20)]


class PhrasingOracle:
    """Draws exactly what a prompt in any phrasing asks for; records the prompts."""

    def __init__(self):
        self.prompts, self.instructions = [], []

    def draw_batch(self, texts, seed=0):
        self.prompts += texts
        return [render_scene(ph.parse_phrased_caption(t)) for t in texts]

    def edit_batch(self, images, instructions, seed=0):
        from anygen.worlds.shapes.judges import judge_image

        self.instructions += instructions
        return [render_scene(apply_instruction(judge_image(im), ph.canonical_instruction(ins)))
                for im, ins in zip(images, instructions)]


def test_eval_phrasing_heldout_scores_the_same_scenes_in_held_out_phrasings():
    runs = {}
    for phrasing in ("canonical", "heldout"):
        oracle = PhrasingOracle()
        results = evaluate_shapes(oracle, n=4, seed=5, suites=("t2i", "edit"), phrasing=phrasing)
        assert all(v == 1.0 for k, v in results.items() if k.endswith(("all_correct", "success")))
        runs[phrasing] = oracle
    canonical, heldout = runs["canonical"], runs["heldout"]
    assert [parse_caption(t) for t in canonical.prompts] == [ph.parse_phrased_caption(t) for t in heldout.prompts]
    assert all(parse_caption(t) is None for t in heldout.prompts)  # none is canonical
    assert canonical.instructions == [ph.canonical_instruction(t) for t in heldout.instructions]
    with pytest.raises(ValueError, match="phrasing"):
        evaluate_shapes(PhrasingOracle(), n=1, suites=("t2i",), phrasing="free")


def test_eval_phrasing_flag_is_checked_before_the_model_loads(tmp_path, capsys):
    line = cli_error(["eval", "shapes", "--phrasing", "free", "--model", tmp_path / "none"], capsys)
    assert "--phrasing" in line


def test_world_config_checks_phrasing():
    from anygen.config import ConfigError

    with pytest.raises(ConfigError, match="phrasing"):
        WorldConfig(phrasing="free")
    with pytest.raises(ConfigError, match="paraphrase_share"):
        WorldConfig(paraphrase_share=1.5)


def test_the_shapes_lm_recipes_are_valid_and_share_their_shards():
    from pathlib import Path

    from anygen.config import load_config
    from anygen.training.decoder_trainer import TrainConfig
    from anygen.training.pretokenize import PretokenizeConfig

    root = Path(__file__).resolve().parents[2] / "training"
    data = load_config(PretokenizeConfig, root / "shapes_lm_data.yaml")
    assert data.world.phrasing == "paraphrase"
    lm = load_config(TrainConfig, root / "shapes_lm.yaml")
    scratch = load_config(TrainConfig, root / "shapes_lm_scratch.yaml")
    assert lm.train.init_from and not scratch.train.init_from
    assert lm.data.shard_dir == scratch.data.shard_dir == f"{data.out}/train"  # the same data
    assert lm.train.time_budget_minutes == scratch.train.time_budget_minutes  # at equal compute
    assert lm.train.steps == scratch.train.steps and lm.data.batch_size == scratch.data.batch_size
