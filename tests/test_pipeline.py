"""The whole chain on a tiny random model: load a model directory, then draw, caption, say,
transcribe, edit and generate through the Python API and the CLI, with clear errors for bad input."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import anygen
from anygen.cli import main as cli_main
from anygen.document import Audio, Document, Image, wav_bytes
from anygen.errors import AnygenError
from anygen.model.decoder import DecoderConfig, build_decoder, save_decoder
from anygen.sampling import SamplingSettings

_spec = importlib.util.spec_from_file_location("anygen_test_fake_codecs_pipe", Path(__file__).parent / "data" / "fake_codecs.py")
fake_codecs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_codecs)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "keep_aligned"])
def any_model_dir(request, tmp_path_factory):
    """The tiny model with the plain vocab, and with `<keep>` (image spans coded against the
    previous image) and image-aligned positions (anygen.model.positions)."""
    if not request.param:
        yield request.getfixturevalue("model_dir")
        return
    yield from _model_dir(tmp_path_factory, image_keep=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    yield from _model_dir(tmp_path_factory)


def _model_dir(tmp_path_factory, image_keep=False):
    mp = pytest.MonkeyPatch()
    import anygen.codecs.audio as audio_mod
    import anygen.codecs.image as image_mod

    mp.setattr(image_mod, "ImageCodec", fake_codecs.FakeImageCodec)
    mp.setattr(audio_mod, "AudioCodec", fake_codecs.FakeAudioCodec)
    root = tmp_path_factory.mktemp("model")
    tokenizer = fake_codecs.make_tokenizer(image_keep=image_keep)
    tokenizer.save(root / "tok")
    cfg = DecoderConfig(n_layers=2, hidden=32, n_heads=2, n_kv_heads=1, head_dim=16, intermediate=64, max_position=256,
                        image_position_stride=16 if image_keep else 0)
    model = build_decoder(cfg, tokenizer.vocab, seed=0)
    save_decoder(model, root / "model", config=cfg, vocab=tokenizer.vocab, tokenizer_dir=root / "tok")
    yield root / "model"
    mp.undo()


@pytest.fixture(scope="module")
def gen(model_dir):
    return anygen.load(model_dir)


def test_draw_returns_images_and_is_seeded(gen):
    images = gen.draw("a large red circle at the top left", n=2, seed=0, cfg_scale=3.0)
    assert len(images) == 2 and all(isinstance(im, PILImage.Image) for im in images)
    again = gen.draw("a large red circle at the top left", n=2, seed=0, cfg_scale=3.0)
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in again]


def test_best_of_returns_n_images(gen):
    assert len(gen.draw("a small blue square at the center", n=1, best_of=3, seed=1)) == 1


def test_caption_transcribe_say_edit(gen):
    image = gen.draw("a small blue square at the center")[0]
    assert isinstance(gen.caption(image), str)
    audio = gen.say("the notes C E G", max_frames=4)
    assert isinstance(audio, Audio) and 0 < len(audio.waveform) <= 4 * gen.tokenizer.audio.hop
    assert isinstance(gen.transcribe(audio), str)
    edited = gen.edit(image, "make the blue square red", text_scale=2.0, image_scale=1.5)
    assert edited.size == image.size
    # the image argument is positional-only, so `image=` is the per-modality sampling settings
    greedy = gen.edit(image, "make the blue square red", image=SamplingSettings(greedy=True), seed=1)
    assert np.array_equal(np.asarray(greedy), np.asarray(gen.edit(image, "make the blue square red",
                                                                     image=SamplingSettings(greedy=True), seed=2)))


def test_edit_mask_copies_source_codes(any_model_dir):
    gen = anygen.load(any_model_dir)
    image = gen.draw("a small blue square at the center", seed=3)[0]
    source = gen.tokenizer.image_codes(image).reshape(-1)
    editable = [True, False, False, True]
    edited = gen.tokenizer.image_codes(gen.edit(image, "make it red", editable=editable, seed=5)).reshape(-1)
    for i, flag in enumerate(editable):
        if not flag:
            assert edited[i] == source[i]
    if gen.vocab.image_keep:  # nothing editable: every code is a <keep>, and the image comes back exactly
        same = gen.edit(image, "make it red", editable=[False] * 4, seed=5)
        assert np.array_equal(np.asarray(same), np.asarray(gen.tokenizer.decode(
            gen.tokenizer.encode(Document([Image(image)]))).images[0]))


def test_edit_batch_equals_edits_one_by_one(any_model_dir):
    gen = anygen.load(any_model_dir)
    images = [gen.draw("a small blue square at the center", seed=s)[0] for s in (3, 4)]
    instructions = ["make it red", "remove the blue square now please"]  # different lengths: left padding
    greedy = SamplingSettings(greedy=True)
    batch = gen.edit_batch(images, instructions, image=greedy)
    alone = [gen.edit(im, ins, image=greedy) for im, ins in zip(images, instructions)]
    assert [np.asarray(a).tolist() for a in batch] == [np.asarray(b).tolist() for b in alone]
    with pytest.raises(AnygenError, match="2 images but 1 instructions"):
        gen.edit_batch(images, instructions[:1])


def test_generate_continues_a_document(gen):
    doc = gen.generate("a large red circle", max_new_tokens=40, seed=0)
    assert isinstance(doc, Document)


@pytest.mark.parametrize("call,message", [
    (lambda g: g.draw(""), "empty"),
    (lambda g: g.draw("   "), "empty"),
    (lambda g: g.draw(b"\xff\xfe"), "UTF-8"),
    (lambda g: g.generate("word " * 300, max_new_tokens=10), "context"),
    (lambda g: g.caption("/nonexistent.png"), "not found"),
])
def test_bad_input_errors(gen, call, message):
    with pytest.raises(AnygenError, match=message):
        call(gen)


def test_cli_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "cat.png"
    assert cli_main(["draw", "a small red circle at the top", "--model", str(model_dir), "--out", str(out)]) == 0
    assert PILImage.open(out).size[0] > 0
    assert cli_main(["caption", str(out), "--model", str(model_dir)]) == 0
    wav = tmp_path / "x.wav"
    wav.write_bytes(wav_bytes(np.sin(np.arange(4000) / 5).astype(np.float32) * 0.3, 8000))
    assert cli_main(["transcribe", str(wav), "--model", str(model_dir)]) == 0
    assert cli_main(["generate", "a red", "--model", str(model_dir), "--out", str(tmp_path / "g"),
                     "--max-new-tokens", "20"]) == 0
    assert (tmp_path / "g" / "index.html").exists()


@pytest.mark.parametrize("argv,message", [
    (["caption", "{tmp}/missing.png"], "not found"),
    (["draw", ""], "empty"),
    (["edit", "{tmp}/missing.png", "make it red"], "not found"),
])
def test_cli_errors_are_one_line(model_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--model", str(model_dir)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("anygen: error:") and message in err and "Traceback" not in err


def test_missing_model_dir_and_mismatched_tokenizer(tmp_path, model_dir):
    with pytest.raises(AnygenError, match="not found"):
        anygen.load(tmp_path / "nope")
    small = fake_codecs.make_tokenizer(audio=False)
    cfg = DecoderConfig(n_layers=1, hidden=16, n_heads=1, n_kv_heads=1, head_dim=16, intermediate=32)
    model = build_decoder(cfg, 50, seed=0)
    small.save(tmp_path / "tok")
    save_decoder(model, tmp_path / "m", config=cfg, tokenizer_dir=tmp_path / "tok")
    with pytest.raises(AnygenError, match="do not match"):
        anygen.load(tmp_path / "m")


def test_demo_and_eval_run_on_a_model(model_dir, tmp_path):
    assert cli_main(["demo", "--model", str(model_dir), "--out", str(tmp_path / "demo")]) == 0
    page = (tmp_path / "demo" / "index.html").read_text()
    assert page.count("<img") >= 6 + 4 + 2 and "<audio controls" in page
    from anygen.eval.suite import evaluate_shapes

    results = evaluate_shapes(anygen.load(model_dir), n=2, seed=0, suites=("t2i", "i2t", "edit", "a2t", "story"))
    assert "t2i.objects_3.all_correct" in results and "story.image_coherence" in results
    assert all(0.0 <= v <= 60.0 for v in results.values())

