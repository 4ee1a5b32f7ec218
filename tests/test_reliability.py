"""The bad-input matrix through the CLI and the Python API, on a tiny model with real codecs.

Every user mistake ends in one line `anygen: error: ...` naming the file/field and exit code 2
(CLI) or an `AnygenError` (API); inputs the README documents as converted (image modes, sample
rates, stereo, ...) work. Cases already covered elsewhere are not repeated: see the README's
"Reliability" section for the full table.
"""

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from scipy.io import wavfile

import anygen
import anygen.io as aio
from anygen.api.inputs import MAX_PROMPT_CHARS
from anygen.cli import main as cli_main
from anygen.codecs.audio import AudioCodec, AudioCodecConfig
from anygen.codecs.image import ImageCodec, ImageCodecConfig
from anygen.codecs.text import train_text_tokenizer
from anygen.config import build
from anygen.document import Audio, Document, Text, wav_bytes
from anygen.errors import AnygenError
from anygen.model.decoder import DecoderConfig, build_decoder, save_decoder
from anygen.tokenizer import MultimodalTokenizer

torch.set_num_threads(1)

import fakes as fake_codecs

SR = 8000
TINY_AUDIO = dict(sample_rate=SR, n_q=2, codebook_size=8, latent_dim=8, num_filters=4, upsampling_ratios=[4, 2],
                  num_lstm_layers=0, stft_sizes=[64], n_mels=8, kmeans_init=False)
TINY_IMAGE = dict(image_size=16, channels=(8, 16), downsample=2, encoder_blocks=1, decoder_blocks=1,
                  fsq_levels=[3, 3])
TINY_DECODER = DecoderConfig(n_layers=1, hidden=32, n_heads=2, n_kv_heads=1, head_dim=16, intermediate=64,
                             max_position=512)


def make_tokenizer(text_vocab: int = 320, fsq=(3, 3)) -> MultimodalTokenizer:
    torch.manual_seed(0)
    text = train_text_tokenizer(fake_codecs.CORPUS * 4, vocab_size=text_vocab)
    image = ImageCodec(ImageCodecConfig(**{**TINY_IMAGE, "fsq_levels": list(fsq)})).eval()
    audio = AudioCodec.from_config(build(AudioCodecConfig, TINY_AUDIO)).eval()
    return MultimodalTokenizer(text, image, audio)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    tokenizer = make_tokenizer()
    tokenizer.save(root / "tok")
    model = build_decoder(TINY_DECODER, tokenizer.vocab, seed=0)
    return save_decoder(model, root / "model", config=TINY_DECODER, vocab=tokenizer.vocab,
                        tokenizer_dir=root / "tok")


@pytest.fixture(scope="module")
def gen(model_dir):
    return anygen.load(model_dir)


@pytest.fixture
def cached_load(gen, monkeypatch):
    """The CLI's model loading returns the already loaded model (the input handling is what is tested)."""
    monkeypatch.setattr(anygen, "load", lambda directory=None, device="cpu": gen)


def cli_error(argv, capsys) -> str:
    """Run the CLI, expect a user error: exit 2 and exactly one line, no traceback."""
    capsys.readouterr()
    assert cli_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anygen: error: "), err
    assert "Traceback" not in err
    return lines[0]


def cli_ok(argv, capsys) -> str:
    capsys.readouterr()
    assert cli_main([str(a) for a in argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def tone(seconds=0.01, freq=440.0, sr=SR) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def scene(size=(16, 16)) -> PILImage.Image:
    arr = np.full((size[1], size[0], 3), 255, np.uint8)
    arr[3:10, 4:12] = (220, 40, 40)
    return PILImage.fromarray(arr, "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that claims to be width×height (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# ---- images ------------------------------------------------------------------------------------
def _bad_image(tmp_path, kind) -> Path:
    path = tmp_path / f"{kind}.png"
    good = tmp_path / "good.png"
    scene((64, 64)).save(good)
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated_png":
        data = good.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "truncated_jpeg":
        path = tmp_path / "t.jpg"
        PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif kind == "text_file":
        path.write_text("this is not an image")
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind,message", [
    ("zero", "empty (0 bytes)"), ("truncated_png", "truncated"), ("truncated_jpeg", "truncated"),
    ("garbage", "cannot read image"), ("text_file", "cannot read image"), ("directory", "cannot read image"),
    ("missing", "not found"),
])
def test_bad_image_files(tmp_path, capsys, cached_load, gen, kind, message):
    path = _bad_image(tmp_path, kind)
    for argv in (["caption", path], ["edit", path, "make it blue"], ["judge", "image", path]):
        line = cli_error(argv + (["--model", "m"] if argv[0] != "judge" else []), capsys)
        assert str(path) in line and message in line
    with pytest.raises(AnygenError, match=re.escape(message)):
        gen.caption(path)


def test_decompression_bomb_guard(tmp_path, capsys, cached_load, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))  # 10^10 pixels in 100 bytes
    line = cli_error(["caption", bomb, "--model", "m"], capsys)
    assert "bomb.png" in line and ("decompression-bomb" in line or "pixel limit" in line)
    # anygen's own documented limit applies well below PIL's: a real, valid file over MAX_IMAGE_PIXELS
    big = tmp_path / "big.png"
    PILImage.new("RGB", (40, 30), "white").save(big)
    monkeypatch.setattr(aio, "MAX_IMAGE_PIXELS", 1000)
    line = cli_error(["caption", big, "--model", "m"], capsys)
    assert "40x30, over the 1000-pixel limit" in line
    monkeypatch.setattr(aio, "MAX_IMAGE_PIXELS", 1200)
    cli_ok(["caption", big, "--model", "m"], capsys)


def _image_in_mode(mode: str) -> tuple[PILImage.Image, str]:
    rgb = scene((20, 12))
    if mode == "I;16":
        return PILImage.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257), "png"
    if mode == "I":
        return PILImage.fromarray(np.asarray(rgb.convert("L"), np.int32) * 257), "tiff"
    if mode == "F":
        return PILImage.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255.0), "tiff"
    if mode == "P+transparency":
        p = rgb.convert("P", palette=PILImage.Palette.ADAPTIVE, colors=4)
        p.info["transparency"] = 0
        return p, "png"
    if mode == "CMYK":
        return rgb.convert("CMYK"), "jpeg"
    return rgb.convert(mode), "png"


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "P+transparency", "1", "I;16", "I", "F", "CMYK"])
def test_image_modes_are_converted(tmp_path, capsys, cached_load, gen, mode):
    image, fmt = _image_in_mode(mode)
    path = tmp_path / f"x.{fmt}"
    image.save(path)
    cli_ok(["caption", path, "--model", "m"], capsys)
    rgb = aio.to_rgb(aio.read_image_file(path))
    assert rgb.mode == "RGB" and rgb.size == (20, 12)
    codes = gen.tokenizer.image_codes(aio.read_image_file(path))
    assert torch.equal(codes, gen.tokenizer.image_codes(rgb))  # the codec sees the documented RGB conversion
    assert codes.shape == tuple(gen.vocab.image_grids[0])


def test_mode_conversions_follow_the_documented_policy():
    transparent = PILImage.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(aio.to_rgb(transparent)).tolist() == np.full((4, 4, 3), 255).tolist()  # composited on white
    deep = PILImage.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(aio.to_rgb(deep)).max() == 255  # 16-bit scaled to 8-bit, not clipped
    mid = PILImage.fromarray(np.full((4, 4), 32896, np.uint16))  # 128 * 257
    assert np.asarray(aio.to_rgb(mid))[0, 0].tolist() == [128, 128, 128]
    assert aio.fit_image(scene((40, 10)), 16).size == (16, 16)  # centre crop + resize


# ---- audio -------------------------------------------------------------------------------------
def _bad_wav(tmp_path, kind) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(wav_bytes(tone(0.1), SR)[:30])
    elif kind == "not_wav":
        path.write_bytes(b"ID3\x03" + np.random.default_rng(0).bytes(200))
    elif kind == "no_samples":
        wavfile.write(path, SR, np.zeros(0, np.int16))
    elif kind in ("nan", "inf"):
        wave = tone(0.05)
        wave[7] = np.nan if kind == "nan" else -np.inf
        wavfile.write(path, SR, wave)
    elif kind == "too_long":
        wavfile.write(path, 1000, np.zeros(int(1000 * (aio.MAX_AUDIO_SECONDS + 1)), np.int16))
    elif kind == "zero_rate":
        data = bytearray(wav_bytes(tone(0.01), SR))
        data[24:32] = struct.pack("<II", 0, 0)  # nSamplesPerSec = nAvgBytesPerSec = 0
        path.write_bytes(bytes(data))
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind,message", [
    ("zero", "empty (0 bytes)"), ("truncated", "cannot read audio"), ("not_wav", "expected a WAV file"),
    ("no_samples", "no samples"), ("nan", "NaN or Inf"), ("inf", "NaN or Inf"), ("too_long", "601 s long"),
    ("zero_rate", "invalid sample rate 0"), ("missing", "not found"),
])
def test_bad_audio_files(tmp_path, capsys, cached_load, gen, kind, message):
    path = _bad_wav(tmp_path, kind)
    for argv in (["transcribe", path, "--model", "m"], ["judge", "melody", path]):
        line = cli_error(argv, capsys)
        assert str(path) in line and message in line
    with pytest.raises(AnygenError, match=re.escape(message)):
        gen.transcribe(path)


@pytest.mark.parametrize("fmt", ["stereo_int16_44k", "uint8_22k", "int32_16k", "float64_8k", "silence"])
def test_audio_formats_are_converted(tmp_path, capsys, cached_load, gen, fmt):
    path = tmp_path / f"{fmt}.wav"
    mono = tone(0.02, sr=SR)
    if fmt == "stereo_int16_44k":
        w = tone(0.02, sr=44100)
        wavfile.write(path, 44100, (np.stack([w, w], axis=1) * 32767).astype(np.int16))
        expected = aio.resample(w, 44100, SR)
    elif fmt == "uint8_22k":
        w = tone(0.02, sr=22050)
        wavfile.write(path, 22050, (w * 127 + 128).astype(np.uint8))
        expected = None
    elif fmt == "int32_16k":
        w = tone(0.02, sr=16000)
        wavfile.write(path, 16000, (w * (2**31 - 1)).astype(np.int32))
        expected = aio.resample(w, 16000, SR)
    elif fmt == "float64_8k":
        wavfile.write(path, SR, mono.astype(np.float64))
        expected = mono
    else:
        wavfile.write(path, SR, np.zeros(160, np.int16))
        expected = np.zeros(160, np.float32)
    cli_ok(["transcribe", path, "--model", "m"], capsys)
    wave, sr = aio.read_audio_file(path, sample_rate=SR)
    assert sr == SR and wave.dtype == np.float32 and np.abs(wave).max() <= 1.0
    assert abs(len(wave) - int(0.02 * SR)) <= 1
    if expected is not None:
        np.testing.assert_allclose(wave[:len(expected)], expected[:len(wave)], atol=2e-3)
    codes = gen.tokenizer.audio_codes(*aio.read_audio_file(path))
    assert codes.shape[0] == gen.vocab.audio_levels and codes.shape[1] >= 1


def test_api_audio_arrays(gen):
    wave = tone(0.02)
    stereo = np.stack([wave, wave], axis=1)
    assert isinstance(gen.transcribe((stereo, SR), max_new_tokens=4), str)
    assert isinstance(gen.transcribe(Audio(tone(0.02, sr=16000), 16000), max_new_tokens=4), str)
    bad = wave.copy()
    bad[3] = np.nan
    with pytest.raises(AnygenError, match="NaN or Inf"):
        gen.transcribe((bad, SR))
    with pytest.raises(AnygenError, match="sample rate must be positive"):
        gen.transcribe((wave, 0))
    with pytest.raises(AnygenError, match="empty"):
        gen.transcribe((np.zeros(0, np.float32), SR))
    huge = np.broadcast_to(np.float32(0), (int(SR * (aio.MAX_AUDIO_SECONDS + 5)),))  # no memory, refused first
    with pytest.raises(AnygenError, match="over the 600 s limit"):
        gen.transcribe((huge, SR))
    with pytest.raises(AnygenError, match="context"):  # under the limit but longer than the model's context
        gen.transcribe((tone(1.0), SR))


def test_api_integer_arrays_are_scaled_like_files(gen, monkeypatch):
    """int16 samples given to the Python API reach the codec as the same audio as their float equivalent."""
    codes = []
    real = gen.tokenizer.audio_codes
    monkeypatch.setattr(gen.tokenizer, "audio_codes", lambda wave, sr: codes.append(real(wave, sr)) or codes[-1])
    ints = np.round(tone(0.02) * 32768).astype(np.int16)
    gen.transcribe((ints, SR), max_new_tokens=1)
    gen.transcribe((ints / 32768.0, SR), max_new_tokens=1)
    assert len(codes) == 2 and torch.equal(codes[0], codes[1])


# ---- prompts -----------------------------------------------------------------------------------
SURROGATES = os.fsdecode(b"a red \xff\xfe circle")  # how undecodable argv bytes reach Python


@pytest.mark.parametrize("call,message", [
    (lambda g: g.draw(""), "prompt is empty"),
    (lambda g: g.draw(" \n\t"), "prompt is empty"),
    (lambda g: g.say(""), "prompt is empty"),
    (lambda g: g.story("  "), "opening is empty"),
    (lambda g: g.edit(scene(), ""), "instruction is empty"),
    (lambda g: g.generate(""), "prompt is empty"),
    (lambda g: g.generate(Document([])), "prompt is empty"),
    (lambda g: g.draw(b"a red \xff circle"), "not valid UTF-8"),
    (lambda g: g.draw(SURROGATES), "not valid UTF-8"),
    (lambda g: g.edit(scene(), SURROGATES), "instruction is not valid UTF-8"),
    (lambda g: g.generate(Document([Text(SURROGATES)])), "not valid UTF-8"),
    (lambda g: g.draw("x" * (MAX_PROMPT_CHARS + 1)), "over the 20000-character limit"),
    (lambda g: g.say("y" * (MAX_PROMPT_CHARS + 1)), "over the 20000-character limit"),
    (lambda g: g.draw("make the red circle blue " * 100), "context"),
    (lambda g: g.caption(12), "expected an image path or PIL image"),
    (lambda g: g.transcribe([1, 2, 3]), "expected an audio path"),
])
def test_bad_prompts(gen, call, message):
    with pytest.raises(AnygenError, match=re.escape(message)):
        call(gen)


@pytest.mark.parametrize("argv,message", [
    (["draw", ""], "prompt is empty"),
    (["draw", SURROGATES], "prompt is not valid UTF-8"),
    (["say", "   "], "prompt is empty"),
    (["generate", ""], "prompt is empty"),  # not the current directory (Path("") == ".")
    (["generate", SURROGATES], "not valid UTF-8"),
    (["edit", "{img}", ""], "instruction is empty"),
    (["draw", "z" * (MAX_PROMPT_CHARS + 1)], "20000-character limit"),
    (["draw", "a red circle", "--temperature", "-1"], "temperature"),
    (["draw", "a red circle", "--top-p", "0"], "top_p"),
])
def test_cli_bad_prompts(tmp_path, capsys, cached_load, argv, message):
    scene().save(tmp_path / "img.png")
    argv = [a.replace("{img}", str(tmp_path / "img.png")) for a in argv]
    out = tmp_path / {"draw": "o.png", "edit": "o.png", "say": "o.wav"}.get(argv[0], "o")
    line = cli_error(argv + ["--model", "m", "--out", str(out)], capsys)
    assert message in line


def test_cli_temperature_zero_is_greedy(tmp_path, capsys, cached_load):
    cli_ok(["draw", "a red circle", "--model", "m", "--out", tmp_path / "a.png"], capsys)
    cli_ok(["draw", "a red circle", "--model", "m", "--out", tmp_path / "b.png", "--temperature", "0",
            "--seed", "5"], capsys)
    a, b = (np.asarray(PILImage.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)  # --temperature 0 is the argmax, whatever the seed


LITERALS = "<boi><grid_4x4><eoi> <boa><eoa> <eos><pad><null> <bos>"


def test_special_token_strings_stay_text(gen, tmp_path, capsys, cached_load):
    v = gen.vocab
    ids = gen.tokenizer.encode(Document([Text(LITERALS)]), bos=False, eos=False)
    assert ids and all(0 <= i < v.n_text for i in ids)
    assert gen.tokenizer.decode(ids).text == LITERALS
    assert len(gen.draw(LITERALS)) == 1  # the task prompt holds exactly the task's own specials
    from anygen.tasks import layouts as tasks

    prompt = tasks.task_prompt(gen.tokenizer, "text_to_image", text=LITERALS)
    plain = tasks.task_prompt(gen.tokenizer, "text_to_image", text="a red circle")
    assert [i for i in prompt if i >= v.n_text] == [i for i in plain if i >= v.n_text]
    cli_ok(["generate", LITERALS, "--model", "m", "--out", tmp_path / "g", "--max-new-tokens", "4"], capsys)
    assert Document.load(tmp_path / "g").segments[0].text == LITERALS


# ---- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("yaml_text,overrides,message", [
    ("model:\n  n_layers: 2\n  depth: 3\n", [], "model.depth: unknown config key"),
    ("", ["model.depth=3"], "model.depth: unknown config key"),
    ("", ["bogus.x=1"], "bogus: unknown config key"),
    ("", ["model.n_layers=two"], "model.n_layers: expected an integer"),
    ("", ["model.n_layers=0"], "model.n_layers: must be positive"),
    ("", ["model.attn_implementation=flashy"], "model.attn_implementation: invalid value 'flashy'"),
    ("", ["optim.lr=.nan"], "optim.lr: expected a finite number"),
    ("", ["optim.betas=[0.9]"], "optim.betas: expected 2 values"),
    ("", ["model=3"], "model: expected a section"),
    ("", ["nonsense"], "expected KEY=VALUE"),
    ("", ["data.kind=synthetic", "data.seq_len=1"], "data.seq_len: must be >= 2"),
    ("", [], "data.shard_dir: is required"),  # the default section is named too
    ("model: [1, 2\n", [], "not valid YAML"),  # a multi-line YAML error still prints as one line
    (b"model:\n  n_layers: \xff\n", [], "not valid YAML"),
    ("- a\n- list\n", [], "must be a mapping"),
])
def test_cli_train_config_errors(tmp_path, capsys, yaml_text, overrides, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(yaml_text if isinstance(yaml_text, bytes) else yaml_text.encode())
    line = cli_error(["train", recipe, *overrides, f"train.out_dir={tmp_path / 'out'}"], capsys)
    assert message in line
    assert not (tmp_path / "out").exists()  # nothing written by a refused recipe


@pytest.mark.parametrize("argv,message", [
    (["tokenizer", "train", "tokenizers/shapes_image.yaml", "codec.quantizer=pq"],
     "codec.quantizer: invalid value 'pq' (allowed: fsq, lfq, vq)"),
    (["tokenizer", "train", "tokenizers/shapes_image.yaml", "train.lr=-1"], "train.lr: must be > 0"),
    (["tokenizer", "train", "tokenizers/shapes_image.yaml", "codec.colour=red"], "codec.colour: unknown config key"),
    (["tokenizer", "train", "tokenizers/melody_audio.yaml", "codec.n_q=0"], "codec.n_q: must be >= 1"),
    (["tokenizer", "train", "{tmp}/missing.yaml"], "recipe file not found"),
    (["pretokenize", "{tmp}/p.yaml", "tokenizer=x", "seq_len=4"], "seq_len: must be >= 16"),
    (["pretokenize", "{tmp}/p.yaml", "tokenizer=x", "tasks.nonsense=1"], "tasks.nonsense: unknown config key"),
])
def test_cli_other_recipe_errors(tmp_path, capsys, argv, message):
    (tmp_path / "p.yaml").write_text(f"out: {tmp_path / 'shards'}\n")
    root = Path(__file__).resolve().parents[1]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    argv = [str(root / a) if a.startswith("tokenizers/") else a for a in argv]
    line = cli_error(argv + [f"out={tmp_path / 'out'}"], capsys)  # never the recipe's own out dir
    assert message in line
    assert not (tmp_path / "out").exists()


# ---- model directories and artifacts -------------------------------------------------------------
def _clone(model_dir, tmp_path) -> Path:
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    return d


def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_config(path: Path, section: str, **changes):
    data = json.loads(path.read_text())
    data[section].update(changes)
    path.write_text(json.dumps(data))


def _swap_tokenizer(d: Path, **kw):
    shutil.rmtree(d / "tokenizer")
    make_tokenizer(**kw).save(d / "tokenizer")


def _edit_weights(path: Path, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={"format": "pt"})


def _nan_in_first_float(state):
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().view(-1).index_fill(0, torch.tensor([0]), float("nan")).view(state[name].shape)


def _to_integers(state):
    for k, v in state.items():
        state[k] = v.to(torch.int32) if v.is_floating_point() else v


def _index_naming(d: Path, name: str):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": name}}))


_IMAGE_WEIGHTS = Path("tokenizer") / "image" / "model.safetensors"


MODEL_DIR_CASES = {
    "not a directory": (lambda d: shutil.rmtree(d) or d.write_text("x"), "model directory not found"),
    "no tokenizer/": (lambda d: shutil.rmtree(d / "tokenizer"), "missing tokenizer/ directory"),
    "no tokenizer.json": (lambda d: (d / "tokenizer" / "tokenizer.json").unlink(), "missing tokenizer.json"),
    "corrupt tokenizer.json": (lambda d: (d / "tokenizer" / "tokenizer.json").write_text("{oops"),
                               "tokenizer.json: not valid JSON"),
    "tokenizer version": (lambda d: _edit_json(d / "tokenizer" / "tokenizer.json", format_version=2),
                          "unsupported tokenizer format version 2"),
    "no text model": (lambda d: (d / "tokenizer" / "text" / "text.model").unlink(), "text.model"),
    "corrupt text model": (lambda d: (d / "tokenizer" / "text" / "text.model").write_bytes(b"junk"),
                           "not a sentencepiece model"),
    "no image codec": (lambda d: shutil.rmtree(d / "tokenizer" / "image"), "image codec directory not found"),
    "image codec version": (lambda d: _edit_json(d / "tokenizer" / "image" / "config.json", format_version=99),
                            "format_version 99"),
    "image codec wrong shapes": (lambda d: _edit_config(d / "tokenizer" / "image" / "config.json", "config",
                                                        channels=[16, 32]), "shape"),
    "image codec truncated weights": (lambda d: (d / "tokenizer" / "image" / "model.safetensors").write_bytes(
        (d / "tokenizer" / "image" / "model.safetensors").read_bytes()[:100]), "model.safetensors"),
    "audio codec version": (lambda d: _edit_json(d / "tokenizer" / "audio" / "config.json", format_version=99),
                            "format_version"),
    "audio codec wrong shapes": (lambda d: _edit_config(d / "tokenizer" / "audio" / "config.json", "config",
                                                        n_q=3), "model.safetensors"),
    "tokenizer vocab edited": (lambda d: _edit_config(d / "tokenizer" / "tokenizer.json", "vocab",
                                                      image_codebook_size=4), "saved vocab does not match"),
    "no config.json": (lambda d: (d / "config.json").unlink(), "no config.json"),
    "corrupt config.json": (lambda d: (d / "config.json").write_text("{not json"), "cannot load the decoder"),
    "decoder version": (lambda d: _edit_json(d / "anygen_decoder.json", format_version=99), "format_version 99"),
    "decoder version string": (lambda d: _edit_json(d / "anygen_decoder.json", format_version="1"),
                               "format_version '1'"),
    "corrupt anygen_decoder.json": (lambda d: (d / "anygen_decoder.json").write_text("[1,"),
                                    "anygen_decoder.json: not valid JSON"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "cannot load the decoder"),
    "truncated weights": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000]), "cannot load the decoder"),
    "garbage weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "cannot load the decoder"),
    "wrong shapes": (lambda d: _edit_json(d / "config.json", hidden_size=64), "tensor shapes differ"),
    "wrong layer count": (lambda d: _edit_json(d / "config.json", num_hidden_layers=3), "cannot load the decoder"),
    "tokenizer of another model": (lambda d: _swap_tokenizer(d, text_vocab=300), "do not match"),
    "tokenizer with another codebook": (lambda d: _swap_tokenizer(d, fsq=(3, 4)), "do not match"),
    # untrusted checkpoints: refused before transformers sees them, or right after loading
    "pickled weights beside safetensors": (lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x04N."),
                                           "pytorch_model.bin: weights that are not safetensors are never loaded"),
    "index naming a .bin": (lambda d: _index_naming(d, "pytorch_model.bin"),
                            "weight file 'pytorch_model.bin' is not a .safetensors file"),
    "index naming a file outside": (lambda d: _index_naming(d, "../model.safetensors"),
                                    "weight file '../model.safetensors' is not a .safetensors file in the directory"),
    "missing tensor": (lambda d: _edit_weights(d / "model.safetensors",
                                               lambda s: s.pop("model.layers.0.mlp.down_proj.weight")),
                       "tensor model.layers.0.mlp.down_proj.weight is missing"),
    "integer weights": (lambda d: _edit_weights(d / "model.safetensors", _to_integers),
                        "is I32, expected floating-point weights"),
    "NaN weights": (lambda d: _edit_weights(d / "model.safetensors", _nan_in_first_float), "holds NaN or Inf values"),
    "negative rms_norm_eps": (lambda d: _edit_json(d / "config.json", rms_norm_eps=-1),
                              "config.json: rms_norm_eps must be a finite number > 0, got -1"),
    "NaN rope_theta": (lambda d: _edit_json(d / "config.json", rope_parameters={"rope_type": "default",
                                                                                "rope_theta": float("nan")}),
                       "rope_parameters.rope_theta must be a finite number > 0, got nan"),
    "negative image_position_stride": (lambda d: _edit_json(d / "config.json", image_position_stride=-5),
                                       "image_position_stride must be an integer in 0..512"),
    "another model family": (lambda d: _edit_json(d / "config.json", model_type="bert"),
                             "model_type 'bert' builds BertLMHeadModel, but anygen_decoder.json says the model is "
                             "Qwen3ForCausalLM"),
    "unknown model family": (lambda d: _edit_json(d / "config.json", model_type="evil_lm"),
                             "model_type 'evil_lm' is not a causal language model transformers implements"),
    "a billion layers (float)": (lambda d: _edit_json(d / "config.json", num_hidden_layers=1e9),
                                 "num_hidden_layers must be an integer in 1..1024, got 1000000000.0"),
    "a billion layers": (lambda d: _edit_json(d / "config.json", num_hidden_layers=10**9),
                         "num_hidden_layers must be an integer in 1..1024, got 1000000000"),
    "decoder version 0": (lambda d: _edit_json(d / "anygen_decoder.json", format_version=0), "format_version 0"),
    "decoder version -5": (lambda d: _edit_json(d / "anygen_decoder.json", format_version=-5), "format_version -5"),
    "decoder version true": (lambda d: _edit_json(d / "anygen_decoder.json", format_version=True),
                             "format_version True is not supported"),
    "decoder section not an object": (lambda d: _edit_json(d / "anygen_decoder.json", decoder="abc"),
                                      "anygen_decoder.json: 'decoder' must be an object, got 'abc'"),
    "image codec NaN weights": (lambda d: _edit_weights(d / _IMAGE_WEIGHTS, _nan_in_first_float),
                                "holds NaN or Inf values"),
    "image codec integer weights": (lambda d: _edit_weights(d / _IMAGE_WEIGHTS, _to_integers),
                                    "expected floating-point weights"),
    "image codec huge channels": (lambda d: _edit_config(d / "tokenizer" / "image" / "config.json", "config",
                                                         channels=[100_000, 100_000]),
                                  "channels: widths must be multiples of 8 in 8..4096"),
    "audio codec huge sample rate": (lambda d: _edit_config(d / "tokenizer" / "audio" / "config.json", "config",
                                                            sample_rate=1e9),
                                     "sample_rate: must be 1000..768000 Hz"),
    "tokenizer.json image not a bool": (lambda d: _edit_json(d / "tokenizer" / "tokenizer.json", image="no"),
                                        "tokenizer.json: 'image' must be true or false, got 'no'"),
    "text.json unknown kind": (lambda d: (d / "tokenizer" / "text" / "text.json").write_text('{"kind": "evil"}'),
                               "text.json: unknown text tokenizer kind 'evil'"),
}


@pytest.mark.parametrize("case", list(MODEL_DIR_CASES))
def test_broken_model_directories(model_dir, tmp_path, capsys, case):
    breaker, message = MODEL_DIR_CASES[case]
    d = _clone(model_dir, tmp_path)
    breaker(d)
    line = cli_error(["draw", "a red circle", "--model", d, "--out", tmp_path / "x.png"], capsys)
    assert message in line and str(tmp_path) in line
    with pytest.raises(AnygenError, match=re.escape(message.split(":")[0])):
        anygen.load(d)


def test_unknown_document_version_through_the_cli(tmp_path, capsys):
    doc = tmp_path / "doc"
    Document([Text("a red circle")]).save(doc)
    _edit_json(doc / "document.json", version=99)
    line = cli_error(["generate", doc, "--model", tmp_path / "no-model-needed", "--out", tmp_path / "o"], capsys)
    assert "unsupported document version 99" in line
    (doc / "document.json").write_text("{")
    assert "not valid JSON" in cli_error(["generate", doc, "--out", tmp_path / "o"], capsys)


def test_generate_never_copies_files_from_outside_the_document(tmp_path, capsys, cached_load):
    secret = tmp_path / "secret"
    secret.mkdir()
    scene().save(secret / "private_photo.png")
    doc = tmp_path / "doc"
    doc.mkdir()
    (doc / "document.json").write_text(json.dumps({"version": 1, "segments": [
        {"type": "text", "text": "look"}, {"type": "image", "file": "../secret/private_photo.png"}]}))
    line = cli_error(["generate", doc, "--model", "m", "--out", tmp_path / "out", "--max-new-tokens", "4"], capsys)
    assert "segment 1: 'file': '../secret/private_photo.png' must be a relative path inside" in line
    assert not (tmp_path / "out").exists()


def test_document_prompts_are_bounded_before_encoding(gen):
    with pytest.raises(AnygenError, match="prompt has 20001 characters of text, over the 20000-character limit"):
        gen.generate(Document([Text("x" * 10_000), Text("y" * 10_001)]))


def test_intact_model_directory_still_loads(model_dir, gen):
    assert anygen.load(model_dir).vocab == gen.vocab


def test_unknown_versions_of_shards_and_tokenizer_checkpoints(tmp_path):
    from anygen.data.shards import ShardWriter, TokenShards
    from anygen.training.tokenizer_trainer import load_checkpoint

    vocab = make_tokenizer().vocab
    with ShardWriter(tmp_path / "shards", vocab, max_len=8) as w:
        w.add(np.array([vocab.bos, 5, 6, vocab.eos]), np.ones(4, bool), "t")
    assert len(TokenShards(tmp_path / "shards").index["shards"]) >= 1
    _edit_json(tmp_path / "shards" / "index.json", format_version=99)
    with pytest.raises(AnygenError, match="index.json: unsupported shard format .* version 99"):
        TokenShards(tmp_path / "shards")
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    for name in ("model.safetensors", "optimizer.safetensors"):
        (ckpt / name).write_bytes(b"")
    (ckpt / "state.json").write_text(json.dumps({"format_version": 99, "step": 1}))
    with pytest.raises(AnygenError, match="state.json: unsupported checkpoint format_version 99"):
        load_checkpoint(ckpt, torch.nn.Linear(1, 1), None)


# ---- safe loading ----------------------------------------------------------------------------------
class _Trap:
    """A pickle that creates a directory when unpickled: proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _trap_directory(tmp_path, kind: str) -> Path:
    """A checkpoint directory whose only weights are a malicious pickle (`pytorch_model.bin`)."""
    import pickle

    d = tmp_path / kind
    if kind == "encodec":
        from transformers import EncodecConfig, EncodecModel

        EncodecModel(EncodecConfig(sampling_rate=SR, hidden_size=8, num_filters=4, upsampling_ratios=[4, 2],
                                   codebook_size=16, target_bandwidths=[4.0])).save_pretrained(d)
    else:
        build_decoder(TINY_DECODER, 64, seed=0).save_pretrained(d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": _Trap(tmp_path / "pwned")}))
    return d


@pytest.mark.parametrize("kind", ["decoder", "init_from", "encodec"])
def test_pickled_weights_are_refused_unopened(tmp_path, kind):
    d = _trap_directory(tmp_path, kind)
    with pytest.raises(AnygenError, match=re.escape(str(d))):
        if kind == "decoder":
            from anygen.model.decoder import load_decoder

            load_decoder(d)
        elif kind == "init_from":
            from anygen.model.init_from import extend_pretrained
            from anygen.vocab import Vocab

            extend_pretrained(d, Vocab(n_text=64, image_codebook_size=4))
        else:
            AudioCodec.from_pretrained_encodec(d)
    assert not (tmp_path / "pwned").exists(), "a pickle was executed"


def test_every_weight_loading_call_insists_on_safetensors():
    """Static check beside tests/test_package.py's pickle scan: each transformers model `from_pretrained`
    in the package passes `use_safetensors=True`, so a directory with only pickled weights is refused."""
    offenders = [f"{path.name}: {name}" for path, name, call in _package_calls(r"(\w+)\.from_pretrained\(")
                 if re.search(r"Model|ForCausalLM", name)  # configs and tokenizers are JSON
                 and "use_safetensors=True" not in call]
    assert not offenders, offenders


def _package_calls(pattern: str):
    """(file, callee, whole call text) for each call in the anygen package whose start matches `pattern`."""
    for path in (Path(__file__).resolve().parents[1] / "anygen").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(pattern, text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            yield path, m.group(0), text[m.start():i]


EVIL_MODULE = """import pathlib
pathlib.Path({marker!r}).mkdir()
"""


def _hf_tokenizer_with_code(d: Path, marker: Path) -> Path:
    """A Hugging Face tokenizer directory whose tokenizer_config.json names code in evil.py (auto_map)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "red": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(d)
    _edit_json(d / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
               auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    (d / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return d


@pytest.mark.parametrize("where", ["decoder config.json", "text tokenizer", "--init-from tokenizer"])
def test_checkpoint_code_is_never_run(model_dir, tmp_path, monkeypatch, where):
    """Even when the terminal answers "y" to transformers' "run the custom code?" prompt."""
    monkeypatch.setattr("builtins.input", lambda *args: "y")
    marker = tmp_path / "checkpoint-code-ran"
    if where == "decoder config.json":
        d = _clone(model_dir, tmp_path)
        _edit_json(d / "config.json", model_type="evil_lm",
                   auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
        (d / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
        load, message = (lambda: anygen.load(d)), "config.json: 'auto_map' asks to run code"
    elif where == "text tokenizer":
        from anygen.codecs.text import load_text_tokenizer

        d = tmp_path / "text"
        _hf_tokenizer_with_code(d / "hf_tokenizer", marker)
        (d / "text.json").write_text('{"kind": "huggingface"}')
        load, message = (lambda: load_text_tokenizer(d)), "tokenizer_config.json: 'auto_map' asks to run code"
    else:
        from anygen.model.init_from import extend_pretrained
        from anygen.vocab import Vocab

        d = tmp_path / "lm"
        build_decoder(TINY_DECODER, 3, seed=0).save_pretrained(d)
        _hf_tokenizer_with_code(d, marker)
        load, message = (lambda: extend_pretrained(d, Vocab(n_text=3, image_codebook_size=4))), "'auto_map'"
    with pytest.raises(AnygenError, match=re.escape(message)):
        load()
    assert not marker.exists(), "code shipped with the checkpoint was run"


def test_every_transformers_auto_load_refuses_remote_code():
    """Static check: each Auto* `from_pretrained`/`from_config` in the package passes `trust_remote_code=False`."""
    offenders = [f"{path.name}: {name}" for path, name, call in _package_calls(r"Auto\w+\.from_(pretrained|config)\(")
                 if "trust_remote_code=False" not in call]
    assert not offenders, offenders
