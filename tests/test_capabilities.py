"""What a model directory records about itself, acted on by the API: tasks it never learned are
refused with one line, its recommended defaults apply where the caller sets none; `draw` samples
different images for n > 1 and stays greedy for one; `generate`'s default budget fits the context."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image as PILImage

import anygen
from anygen.api import load_model
from anygen.api.capabilities import Recommended, write_recommended
from anygen.cli import main as cli_main
from anygen.document import Document, Text
from anygen.errors import AnygenError
from anygen.sampling.settings import SamplingSettings

IMAGE_TASKS = ["text_to_image", "image_to_text"]


class Stop(Exception):
    pass


class Recorder:
    """A sampler that records each call's config and runs the real one (or stops, with `stop`)."""

    def __init__(self, stop: bool = False):
        self.configs, self.stop = [], stop

    def __call__(self, model, vocab, prompts, cfg, callback=None):
        from anygen.sampling.engine import generate

        self.configs.append(cfg)
        if self.stop:
            raise Stop
        return generate(model, vocab, prompts, cfg, callback=callback)


def with_meta(model_dir, tmp_path, **meta):
    """A copy of `model_dir` whose anygen_decoder.json also records `meta`."""
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    path = d / "anygen_decoder.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **meta}))
    return d


def pixels(images):
    return [np.asarray(im) for im in images]


# ---- draw: n > 1 samples, n = 1 is greedy -----------------------------------------------------
def test_draw_n_samples_different_images_and_one_stays_greedy(gen):
    many = pixels(gen.draw("a red circle", n=6, seed=0))
    assert any(not np.array_equal(many[0], other) for other in many[1:]), "n > 1 drew identical images"
    assert all(np.array_equal(a, b) for a, b in zip(pixels(gen.draw("a red circle", n=6, seed=0)), many))  # seeded
    one = pixels(gen.draw("a red circle", seed=0))[0]
    assert np.array_equal(one, pixels(gen.draw("a red circle", seed=7))[0])  # greedy: the seed does not matter
    greedy = pixels(gen.draw("a red circle", n=3, seed=0, greedy=True))
    assert all(np.array_equal(one, g) for g in greedy)


def test_draw_sampling_rule_reaches_the_sampler(model_dir):
    rec = Recorder()
    gen = load_model(model_dir, sampler=rec)
    gen.draw("a red circle", n=2)
    gen.draw("a red circle")
    gen.draw("a red circle", n=2, greedy=True)
    gen.draw("a red circle", n=2, image=SamplingSettings(temperature=0))
    gen.draw("a red circle", greedy=False)
    sampled, one, greedy, zero, forced = (cfg.image for cfg in rec.configs)
    assert not sampled.is_greedy and (sampled.temperature, sampled.top_k) == (1.0, 64)
    assert one.is_greedy and greedy.is_greedy and zero.is_greedy and not forced.is_greedy


def test_draw_batch_stays_greedy_for_the_eval(model_dir):
    """`anygen eval shapes --only t2i` draws through draw_batch with its own options: greedy codes."""
    from anygen.api.options import DrawOptions

    rec = Recorder()
    gen = load_model(model_dir, sampler=rec)
    gen.draw_batch(["a red circle", "a blue square"], options=DrawOptions(guidance_scale=None))
    [cfg] = rec.configs
    assert cfg.image.is_greedy and cfg.guidance_scales == (1.0,)


def test_cli_draw_n_writes_different_images_and_greedy_flag(model_dir, tmp_path, monkeypatch, capsys):
    gen = anygen.load(model_dir)
    monkeypatch.setattr(anygen, "load", lambda directory=None, device="cpu": gen)
    assert cli_main(["draw", "a red circle", "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    sampled = [np.asarray(PILImage.open(tmp_path / f"s_{i}.png")) for i in range(4)]
    assert any(not np.array_equal(sampled[0], s) for s in sampled[1:])
    assert cli_main(["draw", "a red circle", "--n", "3", "--greedy", "--out", str(tmp_path / "g.png")]) == 0
    greedy = [np.asarray(PILImage.open(tmp_path / f"g_{i}.png")) for i in range(3)]
    assert all(np.array_equal(greedy[0], g) for g in greedy)
    capsys.readouterr()
    assert cli_main(["draw", "x", "--greedy", "--temperature", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "--greedy" in capsys.readouterr().err


# ---- tasks the model never learned ------------------------------------------------------------
@pytest.fixture
def image_only(model_dir, tmp_path):
    return load_model(with_meta(model_dir, tmp_path, tasks=IMAGE_TASKS))


REFUSED = [
    ("edit", lambda g, im: g.edit(im, "make it blue"), "not trained to edit images"),
    ("edit best_of", lambda g, im: g.edit(im, "make it blue", best_of=2), "not trained to edit images"),
    ("reasoned edit", lambda g, im: g.edit_with_reasoning(im, "make it blue"), "not trained to edit images with"),
    ("describe_edit", lambda g, im: g.describe_edit(im, im), "not trained to describe edits"),
    ("plan_edits", lambda g, im: g.plan_edits(["make it blue"], ["a red circle"]), "not trained to plan edits"),
    ("story", lambda g, im: g.story("Once", n_steps=1), "not trained to write illustrated stories"),
    ("say", lambda g, im: g.say("the notes C E G"), "not trained to turn text into audio"),
    ("transcribe", lambda g, im: g.transcribe((np.zeros(800, dtype=np.float32), 8000)),
     "not trained to transcribe audio"),
]


@pytest.mark.parametrize("name,call,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_tasks_never_learned_are_refused(image_only, name, call, message):
    image = image_only.draw("a red circle")[0]
    with pytest.raises(AnygenError, match=message) as e:
        call(image_only, image)
    assert "(its tasks: text_to_image, image_to_text)" in str(e.value)


def test_learned_tasks_still_work(image_only):
    image = image_only.draw("a red circle")[0]
    assert isinstance(image_only.caption(image, max_new_tokens=4), str)


def test_caption_refused_without_image_to_text_and_best_of_names_why(model_dir, tmp_path):
    gen = load_model(with_meta(model_dir, tmp_path, tasks=["text_to_image"]))
    image = gen.draw("a red circle")[0]
    with pytest.raises(AnygenError, match=r"not trained to caption images \(its tasks: text_to_image\)"):
        gen.caption(image)
    with pytest.raises(AnygenError, match="best_of ranks pictures by their caption: this model was not trained"):
        gen.draw("a red circle", best_of=2)


def test_models_without_a_tasks_record_are_not_checked(gen):
    image = gen.draw("a red circle")[0]
    assert gen.capabilities.tasks is None
    assert gen.edit(image, "make it blue").size == image.size


def test_cli_refuses_an_unlearned_task_with_one_line(model_dir, tmp_path, capsys):
    d = with_meta(model_dir, tmp_path, tasks=IMAGE_TASKS)
    load_model(d).draw("a red circle")[0].save(tmp_path / "in.png")
    capsys.readouterr()
    code = cli_main(["edit", str(tmp_path / "in.png"), "make it blue", "--model", str(d),
                     "--out", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out.png").exists()
    assert err.strip() == ("anygen: error: this model was not trained to edit images "
                           "(its tasks: text_to_image, image_to_text)")


# ---- recommended defaults ---------------------------------------------------------------------
def test_recommended_defaults_apply_unless_the_caller_sets_them(model_dir, tmp_path):
    d = with_meta(model_dir, tmp_path, recommended={"guidance_scale": 3.0, "image": {"temperature": 0.7, "top_k": 5}})
    rec = Recorder()
    gen = load_model(d, sampler=rec)
    gen.draw("a red circle", n=2)
    gen.draw("a red circle", n=2, guidance_scale=1.0, image=SamplingSettings(temperature=1.0, top_k=9))
    gen.draw("a red circle")
    recommended, explicit, one = rec.configs
    assert recommended.guidance_scales == (3.0,)
    assert (recommended.image.temperature, recommended.image.top_k) == (0.7, 5)
    assert explicit.guidance_scales == (1.0,) and (explicit.image.temperature, explicit.image.top_k) == (1.0, 9)
    assert one.guidance_scales == (3.0,) and one.image.is_greedy


def test_recommended_audio_bound_applies_to_say_unless_the_caller_sets_one(model_dir, tmp_path):
    rec = Recorder(stop=True)
    gen = load_model(with_meta(model_dir, tmp_path, recommended={"audio_max_frames": 5}), sampler=rec)
    for kwargs in ({}, {"max_frames": 3}):
        with pytest.raises(Stop):
            gen.say("the notes C E G", **kwargs)
    assert [cfg.audio_max_frames for cfg in rec.configs] == [5, 3]
    plain = Recorder(stop=True)
    with pytest.raises(Stop):
        load_model(model_dir, sampler=plain).say("the notes C E G")
    assert plain.configs[0].audio_max_frames == 64  # the sampler's default


def test_write_recommended_round_trips_and_bad_records_are_one_line_errors(model_dir, tmp_path):
    d = with_meta(model_dir, tmp_path)
    write_recommended(d, {"guidance_scale": 2.5, "image": {"temperature": 1.0, "top_k": 32}, "audio_max_frames": 200})
    rec = load_model(d).capabilities.recommended
    assert rec == Recommended(2.5, SamplingSettings(temperature=1.0, top_k=32), audio_max_frames=200)
    assert json.loads((d / "anygen_decoder.json").read_text())["vocab"]  # the rest of the record is kept
    with pytest.raises(AnygenError, match="recommended.*guidance_scale"):
        write_recommended(d, {"guidance_scale": -1})
    for bad, message in (({"guidance": 3}, "unknown key 'guidance'"), ({"image": {"temprature": 1}}, "temprature"),
                         ({"image": {"top_k": -1}}, "top_k"), ({"audio_max_frames": 0}, "audio_max_frames")):
        meta = json.loads((d / "anygen_decoder.json").read_text())
        (d / "anygen_decoder.json").write_text(json.dumps({**meta, "recommended": bad}))
        with pytest.raises(AnygenError, match=message):
            load_model(d)


# ---- generate's budget fits the context -------------------------------------------------------
def test_generate_default_budget_fits_the_context(model_dir):
    rec = Recorder(stop=True)
    gen = load_model(model_dir, sampler=rec)
    with pytest.raises(Stop):
        gen.generate("a red circle")
    ids = gen.tokenizer.encode(Document([Text("a red circle")]), eos=False)
    assert rec.configs[-1].max_new_tokens == min(512, gen.context - len(ids)) < 512
    with pytest.raises(AnygenError, match=f"exceeds the model's context of {gen.context} tokens"):
        gen.generate("a red circle", max_new_tokens=gen.context)
    with pytest.raises(AnygenError, match="exceeds the model's context"):
        gen.generate(" ".join(["red"] * gen.context))


def test_cli_recommend_writes_prints_and_refuses_bad_values(model_dir, tmp_path, capsys):
    d = with_meta(model_dir, tmp_path)
    assert cli_main(["recommend", str(d), "guidance_scale=3", "image.temperature=1", "image.top_k=64"]) == 0
    assert json.loads(capsys.readouterr().out)["image"]["top_k"] == 64
    assert load_model(d).capabilities.recommended.guidance_scale == 3.0
    assert cli_main(["recommend", str(d), "image.top_k=-2"]) == 2
    assert "top_k" in capsys.readouterr().err
    assert cli_main(["recommend", str(d)]) == 0 and json.loads(capsys.readouterr().out)["guidance_scale"] == 3.0
