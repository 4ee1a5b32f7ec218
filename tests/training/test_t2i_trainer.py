"""The text->image side-by-side trainer: both heads train on the same batches, resume exactly, load."""

import json

import pytest
import torch

import anygen
from anygen.codecs.image import ImageCodec, ImageCodecConfig
from anygen.errors import AnygenError


def _tokenizer_dir(tmp_path):
    from anygen.codecs.text import train_text_tokenizer
    from anygen.worlds.shapes.world import ShapesWorld, WorldConfig
    from anygen.tokenizer import MultimodalTokenizer

    world = ShapesWorld(WorldConfig(seed=0))
    import numpy as np

    rng = np.random.default_rng(0)
    corpus = [world.sample_scene(rng).caption() for _ in range(300)]
    text = train_text_tokenizer(corpus, vocab_size=320)
    torch.manual_seed(0)
    codec = ImageCodec(ImageCodecConfig(image_size=16, downsample=2, channels=(8, 8), fsq_levels=[3, 3]))
    MultimodalTokenizer(text, codec, None).save(tmp_path / "tok")
    return tmp_path / "tok"


TINY = ["model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.n_kv_heads=2", "model.head_dim=16",
        "model.intermediate=64", "data.batch_size=4", "train.log_every=1", "train.save_every=3",
        "optim.warmup_steps=2", "optim.lr=3e-3", "optim.weight_decay=0", "diffusion.image_size=16", "diffusion.patch_size=4",
        "diffusion.time_dim=16"]


CODEC_SPACE = ["diffusion.space=codec", "diffusion.image_size=4", "diffusion.channels=2", "diffusion.patch_size=1"]


@pytest.mark.parametrize("head,extra", [("tokens", []), ("diffusion", []), ("diffusion", CODEC_SPACE)],
                         ids=["tokens", "diffusion-pixels", "diffusion-codec"])
def test_trains_resumes_exactly_and_loads(tmp_path, head, extra):
    from anygen.training.t2i_trainer import train_t2i

    tok = _tokenizer_dir(tmp_path)
    common = TINY + [f"image_head={head}", f"data.tokenizer={tok}"] + extra
    full = train_t2i("training/t2i_tokens.yaml", common + ["train.steps=6", f"train.out_dir={tmp_path}/a"],
                     progress=False)
    # a run stopped after 3 steps and resumed ends at the same weights
    train_t2i("training/t2i_tokens.yaml", common + ["train.steps=3", f"train.out_dir={tmp_path}/b"], progress=False)
    resumed = train_t2i("training/t2i_tokens.yaml", common + ["train.steps=6", f"train.out_dir={tmp_path}/b"],
                        resume=True, progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert metrics[-1]["ce"] < metrics[0]["ce"]  # 6 steps at lr 3e-3 already lower the token loss
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["tokens"] > 0 and summary["train_flops"] > 6 * summary["tokens"]
    assert (summary["head_parameters"] > 0) == (head == "diffusion")
    gen = anygen.load(full)
    assert (gen.diffusion is not None) == (head == "diffusion")
    kw = {"num_inference_steps": 2} if head == "diffusion" else {}
    [image] = gen.draw("a large red circle at the center", seed=0, **kw)
    assert image.size == (16, 16)
    with pytest.raises(AnygenError, match="already holds a run"):
        train_t2i("training/t2i_tokens.yaml", common + ["train.steps=6", f"train.out_dir={tmp_path}/a"],
                  progress=False)


def test_codec_space_must_fit_the_codec(tmp_path):
    from anygen.training.t2i_trainer import train_t2i

    tok = _tokenizer_dir(tmp_path)
    bad = TINY + ["image_head=diffusion", f"data.tokenizer={tok}", "diffusion.space=codec", "diffusion.image_size=8",
                  "diffusion.channels=2", "diffusion.patch_size=1", f"train.out_dir={tmp_path}/x", "train.steps=1"]
    with pytest.raises(AnygenError, match="grid and latent width"):
        train_t2i("training/t2i_tokens.yaml", bad, progress=False)


def test_codec_space_round_trip_is_the_codec_reconstruction(tmp_path):
    """Pixels -> codec latents -> pixels equals the codec's own encode/decode."""
    from anygen.model.transfusion import DiffusionHeadConfig, to_head_space, to_pixels
    from anygen.tokenizer import MultimodalTokenizer

    codec = MultimodalTokenizer.load(_tokenizer_dir(tmp_path)).image
    head = DiffusionHeadConfig(space="codec", image_size=4, channels=2, patch_size=1)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = to_head_space(head, x, codec)
    assert z.shape == (3, 2, 4, 4) and z.abs().max() <= 1
    assert torch.allclose(to_pixels(head, z, codec), codec.decode(codec.encode(x)), atol=1e-6)


def test_batches_come_from_the_named_world(tmp_path):
    from anygen.config import load_config
    from anygen.tokenizer import MultimodalTokenizer
    from anygen.training.t2i_trainer import T2IBatches, T2IConfig

    tok = MultimodalTokenizer.load(_tokenizer_dir(tmp_path))
    cfg = load_config(T2IConfig, "training/t2i_tokens.yaml", TINY + ["data.world=shapes"])
    batch = T2IBatches(cfg, tok).batch(0)
    assert batch["input_ids"].shape[0] == 4 and batch["tokens"] > 0
    cfg = load_config(T2IConfig, "training/t2i_tokens.yaml", TINY + ["data.world=speech"])
    with pytest.raises(AnygenError, match="world 'speech' has no text_to_image examples"):
        T2IBatches(cfg, tok)
