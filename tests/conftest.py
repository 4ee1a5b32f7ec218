"""Shared fixtures: tiny codecs and tokenizers (`fakes.py`), tiny random decoders saved as model
directories that `anygen.load` opens (recording the shapes world, so reasoned edits and its
`--mask` cells are available), and test doubles for the API's seams. Everything here is written
by the tests themselves."""

from __future__ import annotations

import pytest

import fakes


@pytest.fixture
def tiny_tokenizer():
    """A MultimodalTokenizer with fake image (2x2 codes) and audio codecs and a tiny text model."""
    return fakes.make_tokenizer()


def write_model_dir(root, image_keep: bool = False):
    """A tiny random decoder + fake-codec tokenizer saved as a model directory under `root`."""
    from anygen.model.decoder import DecoderConfig, build_decoder, save_decoder

    tokenizer = fakes.make_tokenizer(image_keep=image_keep)
    tokenizer.save(root / "tok")
    cfg = DecoderConfig(n_layers=2, hidden=32, n_heads=2, n_kv_heads=1, head_dim=16, intermediate=64,
                        max_position=256, image_position_stride=16 if image_keep else 0)
    model = build_decoder(cfg, tokenizer.vocab, seed=0)
    save_decoder(model, root / "model", config=cfg, vocab=tokenizer.vocab, tokenizer_dir=root / "tok",
                 extra={"worlds": ["shapes"]})
    return root / "model"


def write_transfusion_dir(root, image_keep: bool = False):
    """A tiny random all-task Transfusion model (codec-space head on the fake codec's 2x2 grid) saved as a
    model directory; its head's output is not zero-initialised, so images and velocities vary."""
    import torch

    from anygen.model.decoder import DecoderConfig, build_decoder
    from anygen.model.transfusion import DiffusionHeadConfig, TransfusionModel, save_transfusion

    tokenizer = fakes.make_tokenizer(image_keep=image_keep)
    tokenizer.save(root / "tok")
    cfg = DecoderConfig(n_layers=2, hidden=32, n_heads=2, n_kv_heads=1, head_dim=16, intermediate=64,
                        max_position=512)
    head = DiffusionHeadConfig(space="codec", image_size=2, channels=1, patch_size=1, time_dim=16)
    torch.manual_seed(0)
    model = TransfusionModel(build_decoder(cfg, tokenizer.vocab, seed=0), head)
    torch.nn.init.normal_(model.patch_out.weight, std=0.5)
    save_transfusion(model, root / "model", config=cfg, vocab=tokenizer.vocab, tokenizer_dir=root / "tok",
                     extra={"worlds": ["shapes"]})
    return root / "model"


@pytest.fixture(scope="module")
def transfusion_dir(tmp_path_factory):
    """A tiny random all-task Transfusion model directory (`<keep>` vocab); fake codecs within the module."""
    with pytest.MonkeyPatch.context() as mp:
        fakes.use_fake_codecs(mp)
        yield write_transfusion_dir(tmp_path_factory.mktemp("transfusion"), image_keep=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random model directory with the plain vocab; the fake codecs load it within the module."""
    with pytest.MonkeyPatch.context() as mp:
        fakes.use_fake_codecs(mp)
        yield write_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def keep_model_dir(tmp_path_factory):
    """The tiny model with `<keep>` (image spans coded against the previous image) and image-aligned positions."""
    with pytest.MonkeyPatch.context() as mp:
        fakes.use_fake_codecs(mp)
        yield write_model_dir(tmp_path_factory.mktemp("model"), image_keep=True)


@pytest.fixture(scope="module", params=["plain", "keep_aligned"])
def any_model_dir(request):
    """Each tiny model directory in turn."""
    return request.getfixturevalue("model_dir" if request.param == "plain" else "keep_model_dir")


@pytest.fixture(scope="module")
def gen(model_dir):
    import anygen

    return anygen.load(model_dir)
