"""The package ships a default model that loads with the real codecs and fits the size budget."""

import torch

import anygen


def test_bundled_model_loads_and_fits_the_budget():
    from anygen.pipeline import DEFAULT_MODEL

    assert DEFAULT_MODEL.is_dir(), "the package ships its default model in anygen/assets/default"
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*") if p.is_file())
    assert size < 30e6, f"bundled model is {size / 1e6:.1f} MB, over the 30 MB budget"
    gen = anygen.load()
    assert gen.tokenizer.image is not None and gen.tokenizer.audio is not None
    assert gen.model.get_input_embeddings().weight.shape[0] == gen.vocab.size
    assert gen.model.dtype == torch.float32  # stored in float16, computed in float32
