"""Domain scores: every result says how far its input lies from what the model knows and whether it
is empty; a calibrated model flags inputs outside its in-domain range, `strict` turns a flag into an
error, and `anygen calibrate` writes the calibration. Tiny random models with the fake codecs
(`conftest.py`); calibrations are written by the tests with chosen ranges (the seam is the model
directory's `domain.json`)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from anygen.api import DomainScore, domain_of, load_model
from anygen.api.domain import (DOMAIN_FILE, KINDS, QUANTILES, Answer, Calibration, KindCalibration, is_empty,
                               is_silent)
from anygen.cli import main as cli_main
from anygen.document import Audio, Document
from anygen.errors import AnygenError
from anygen.model.decoder import forward_logits
from anygen.model.positions import ImagePositions
from anygen.sampling.engine import SampleResult
from anygen.sampling.state import Span

torch.set_num_threads(1)

PROMPT = "a small blue square at the center"


def grey(level: int, size: int = 16) -> PILImage.Image:
    return PILImage.new("RGB", (size, size), (level, level, level))


def cells(size: int = 16) -> PILImage.Image:
    """Four cells of different grey: never blank."""
    a = np.zeros((size, size, 3), np.uint8)
    a[: size // 2, : size // 2], a[: size // 2, size // 2:], a[size // 2:, : size // 2] = 40, 120, 200
    return PILImage.fromarray(a)


def tone(sr: int = 8000) -> tuple[np.ndarray, int]:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32), sr


def reference_nll(gen, ids) -> float:
    """Mean NLL of ids[1:] given their prefix: a plain forward with the model's own positions."""
    with torch.no_grad():
        logits = forward_logits(gen.model, {"input_ids": torch.tensor([ids])},
                                positions=ImagePositions.of(gen.model, gen.vocab))[0]
    logp = logits[:-1].float().log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return -float(logp.mean())


def calibrated_copy(model_dir, tmp_path, low: float, high: float):
    """A copy of the model directory whose domain.json puts every kind's in-domain range at [low, high]."""
    directory = tmp_path / "model"
    shutil.copytree(model_dir, directory)
    qs = tuple(np.linspace(low, high, len(QUANTILES)))
    Calibration({k: KindCalibration(100, qs, low, high) for k in KINDS}).save(directory)
    return directory


class Scripted:
    """A sampler whose every row answers `ids` (an image span's Span recorded for draws)."""

    def __init__(self, ids):
        self.ids = list(ids)

    def __call__(self, model, vocab, prompts, cfg, callback=None):
        spans = []
        if vocab.boi in self.ids:
            start, end = self.ids.index(vocab.boi), self.ids.index(vocab.eoi) + 1
            spans = [Span("image", start, end, tuple(self.ids[start:end]), True, vocab.image_grids[0])]
        return [SampleResult(list(self.ids), spans, "eos") for _ in prompts]


def test_every_result_carries_its_domain_score(model_dir):
    gen = load_model(model_dir)
    v, tok = gen.vocab, gen.tokenizer
    image = cells()
    results = {
        "text_to_image": gen.draw(PROMPT)[0],
        "image_to_text": gen.caption(image, max_new_tokens=4),
        "text_to_audio": gen.say("the notes C E G", max_frames=4),
        "audio_to_text": gen.transcribe(tone(), max_new_tokens=4),
        "edit": gen.edit(image, "make the blue square red"),
        "describe_edit": gen.describe_edit(image, image, max_new_tokens=4),
        "story": gen.story(PROMPT, n_steps=1),
        "document": gen.generate("the notes C", max_new_tokens=4),
    }
    assert isinstance(results["image_to_text"], Answer) and isinstance(results["image_to_text"], str)
    assert isinstance(results["text_to_audio"], Audio) and isinstance(results["story"], Document)
    assert "anygen_domain" in results["text_to_image"].info
    for kind, result in results.items():
        score = domain_of(result)
        assert isinstance(score, DomainScore) and score.kind == kind, kind
        assert math.isfinite(score.nll) and score.nll > 0, kind
        assert not score.calibrated and score.rank is None and not score.outside, kind  # no domain.json
    # the score is the decoder's own mean NLL of the input after <bos>
    assert domain_of(results["text_to_image"]).nll == pytest.approx(
        reference_nll(gen, [v.bos] + tok.encode_text(PROMPT)), rel=1e-4)
    assert domain_of(results["edit"]).nll == pytest.approx(
        reference_nll(gen, [v.bos] + tok.encode_text("make the blue square red")), rel=1e-4)
    assert domain_of(results["image_to_text"]).nll == pytest.approx(
        reference_nll(gen, [v.bos] + tok.image_span(tok.image_codes(image))), rel=1e-4)


def test_a_calibrated_model_flags_inputs_outside_its_range_and_strict_raises(model_dir, tmp_path):
    gen = load_model(model_dir)
    nll = domain_of(gen.caption(cells(), max_new_tokens=4)).nll
    below = load_model(calibrated_copy(model_dir, tmp_path / "below", 0.0, nll - 0.5))  # less likely than in-domain
    above = load_model(calibrated_copy(model_dir, tmp_path / "above", nll + 0.5, nll + 1.0))  # far more likely
    inside = load_model(calibrated_copy(model_dir, tmp_path / "inside", nll - 0.5, nll + 0.5))
    for flagging in (below, above):
        score = domain_of(flagging.caption(cells(), max_new_tokens=4))
        assert score.calibrated and score.outside and score.flagged
        assert score.message().startswith("the image looks outside what this model knows (score")
        with pytest.raises(AnygenError, match="looks outside what this model knows"):
            flagging.caption(cells(), max_new_tokens=4, strict=True)
    assert domain_of(below.caption(cells(), max_new_tokens=4)).rank == 1.0
    score = domain_of(inside.caption(cells(), max_new_tokens=4, strict=True))
    assert score.calibrated and not score.outside and 0.0 < score.rank < 1.0
    # every kind of input goes through the same check
    with pytest.raises(AnygenError, match="the prompt looks outside"):
        below.draw(PROMPT, strict=True)
    with pytest.raises(AnygenError, match="the instruction looks outside"):
        below.edit(cells(), "make the blue square red", strict=True)
    with pytest.raises(AnygenError, match="the audio looks outside"):
        below.transcribe(tone(), strict=True)
    for result in (below.say("the notes C", max_frames=2), below.generate("hello", max_new_tokens=2),
                   below.story(PROMPT, n_steps=1)):
        assert domain_of(result).outside


def test_an_uncalibrated_model_never_flags_an_input(model_dir, tmp_path):
    flagging = load_model(calibrated_copy(model_dir, tmp_path, 0.0, 1e-3))
    plain = load_model(model_dir)
    for prompt in ("a cat", "asdkjh qwe zxcv", PROMPT):
        assert domain_of(flagging.draw(prompt)[0]).outside
        score = domain_of(plain.draw(prompt)[0])
        assert not score.calibrated and not score.outside


def test_a_blank_input_image_and_silent_audio_are_flagged_without_calibration(model_dir):
    gen = load_model(model_dir)
    score = domain_of(gen.caption(grey(255), max_new_tokens=4))
    assert score.blank_input and score.flagged and score.message() == "the image is blank"
    assert not domain_of(gen.caption(cells(), max_new_tokens=4)).blank_input
    with pytest.raises(AnygenError, match="the audio is silent"):
        gen.transcribe((np.zeros(8000, np.float32), 8000), strict=True)


def test_empty_results_are_flagged(model_dir):
    gen = load_model(model_dir)
    v, tok = gen.vocab, gen.tokenizer
    flat = tok.image_span(torch.full(v.image_grids[0], 7, dtype=torch.long))  # one grey level everywhere
    blank = load_model(model_dir, sampler=Scripted(flat + [v.eos]))
    image = blank.draw(PROMPT)[0]
    score = domain_of(image)
    assert score.empty_result and score.flagged and not score.outside
    assert score.message() == "the result is empty"
    with pytest.raises(AnygenError, match="the result is empty"):
        blank.draw(PROMPT, strict=True)
    with pytest.raises(AnygenError, match="the result is empty"):
        blank.edit(cells(), "make the blue square red", strict=True)
    shown = tok.image_span(torch.arange(4).reshape(v.image_grids[0]) * 4)  # four grey levels
    assert not domain_of(load_model(model_dir, sampler=Scripted(shown + [v.eos])).draw(PROMPT)[0]).flagged

    nothing = load_model(model_dir, sampler=Scripted([v.eos]))
    for result in (nothing.caption(cells()), nothing.transcribe(tone()), nothing.generate("hello", max_new_tokens=8),
                   nothing.story(PROMPT, n_steps=1)):
        assert domain_of(result).empty_result, type(result)
    assert nothing.caption(cells()) == ""
    with pytest.raises(AnygenError, match="the result is empty"):
        nothing.generate("hello", max_new_tokens=8, strict=True)
    # audio (the fake codec never decodes silence, so `say`'s check is the one is_empty makes)
    assert is_empty(Audio(np.zeros(800, np.float32), 8000)) and is_empty(Audio(np.full(800, 0.0005), 8000))
    assert not is_empty(Audio(*tone())) and not is_empty(Audio(np.full(800, 0.01), 8000))
    assert is_silent(np.full(800, 1, np.int16)) and not is_silent(np.full(800, 1000, np.int16))  # PCM full scale


def test_the_cli_warns_on_stderr_and_strict_exits_2(model_dir, tmp_path, capsys):
    directory = calibrated_copy(model_dir, tmp_path, 0.0, 1e-3)
    out = tmp_path / "a.png"
    assert cli_main(["draw", "a cat", "--model", str(directory), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("anygen: warning: the prompt looks outside what this model knows "
                                               "(score ")
    assert out.exists()
    out.unlink()
    assert cli_main(["draw", "a cat", "--model", str(directory), "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("anygen: error: the prompt looks outside") and not out.exists()
    # no calibration: no warning about the input
    assert cli_main(["caption", str(_save(cells(), tmp_path / "c.png")), "--model", str(model_dir)]) == 0
    assert "outside" not in capsys.readouterr().err


def _save(image, path):
    image.save(path)
    return path


def test_calibrate_writes_a_valid_domain_json_atomically(model_dir, tmp_path, capsys):
    directory = tmp_path / "model"
    shutil.copytree(model_dir, directory)
    (directory / DOMAIN_FILE).write_text('{"format_version": 1, "kinds": ')  # a broken file
    with pytest.raises(AnygenError, match="domain.json: not valid JSON"):
        load_model(directory)
    (directory / DOMAIN_FILE).write_text('{"format_version": 1, "kinds": {}}')  # a stale one
    with pytest.raises(AnygenError, match="domain.json: not a valid domain calibration"):
        load_model(directory)
    assert cli_main(["calibrate", "--model", str(directory), "--n", "20"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {directory / DOMAIN_FILE}")
    calibration = Calibration.load(directory)
    assert set(calibration.kinds) == set(KINDS)
    for k in calibration.kinds.values():
        assert k.n == 20 and k.quantiles[0] <= k.low <= k.high <= k.quantiles[-1]
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []  # no temporary left
    data = json.loads((directory / DOMAIN_FILE).read_text())
    assert data["kinds"]["text_to_image"]["high"] == calibration.kinds["text_to_image"].high
    # a model recording no world to sample from: an error, and the calibration in place stays as it was
    meta = json.loads((directory / "anygen_decoder.json").read_text())
    (directory / "anygen_decoder.json").write_text(json.dumps({**meta, "worlds": []}))
    before = (directory / DOMAIN_FILE).read_bytes()
    assert cli_main(["calibrate", "--model", str(directory), "--n", "20"]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err
    assert (directory / DOMAIN_FILE).read_bytes() == before


def test_kind_calibration_range_holds_all_but_the_flag_share():
    nlls = np.random.default_rng(0).normal(5.0, 1.0, 2000)
    k = KindCalibration.of(nlls)
    outside = np.mean((nlls < k.low) | (nlls > k.high))
    assert 0.002 <= outside <= 0.008
    assert k.rank(-100.0) == 0.0 and k.rank(100.0) == 1.0 and k.rank(5.0) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(AnygenError, match="at least"):
        KindCalibration.of(nlls[:5])
