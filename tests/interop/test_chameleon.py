"""Chameleon through anygen: a tiny random `ChameleonForConditionalGeneration` the test writes itself,
loaded by `anygen.load`, answers in greedy text exactly what transformers' `generate` answers; what
it cannot do (draw: transformers has no decoder for its VQVAE) is a one-line error naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import anygen
from anygen.document import Document, Text
from anygen.document import Image as ImageSegment
from anygen.errors import AnygenError
from anygen.interop.tiny import write_tiny_chameleon

RESOLUTION = 8


@pytest.fixture(scope="module")
def cham_dir(tmp_path_factory):
    return write_tiny_chameleon(tmp_path_factory.mktemp("chameleon") / "chameleon-tiny", resolution=RESOLUTION)


@pytest.fixture(scope="module")
def hf(cham_dir):
    from transformers import ChameleonForConditionalGeneration

    return ChameleonForConditionalGeneration.from_pretrained(str(cham_dir)).eval()


@pytest.fixture(scope="module")
def tok(cham_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(cham_dir))


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8))


def image_ids(hf, image):
    """Chameleon's own image tokens: its processor's pixels through `get_image_tokens`, framed as its processor frames them."""
    from transformers import ChameleonImageProcessorPil

    vm = hf.config.vocabulary_map
    processor = ChameleonImageProcessorPil(size={"shortest_edge": RESOLUTION},
                                           crop_size={"height": RESOLUTION, "width": RESOLUTION})
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    return [vm["<racm3:break>"]] + hf.model.get_image_tokens(pixels)[0].tolist() + [vm["<eoss>"]]


def reference(g, hf, tok, prompt, n):
    """transformers' greedy answer, restricted to what anygen's text mode may draw (text ids and </s>)."""
    allowed = set(g.model.idmap.text) | {hf.config.eos_token_id}
    suppress = [i for i in range(hf.config.vocab_size) if i not in allowed]
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, suppress_tokens=suppress)
    new = out[0, len(prompt):].tolist()
    new = new[:new.index(hf.config.eos_token_id)] if hf.config.eos_token_id in new else new
    return tok.decode(new).strip()


def test_caption_equals_transformers_generate(cham_dir, hf, tok):
    g = anygen.load(cham_dir)
    for seed in (0, 1):
        image = picture(seed)
        caption = g.caption(image, max_new_tokens=12)
        assert caption == reference(g, hf, tok, [hf.config.bos_token_id] + image_ids(hf, image), 12)


def test_generate_with_an_image_in_the_prompt_equals_transformers(cham_dir, hf, tok):
    g = anygen.load(cham_dir)
    image = picture(2)
    doc = g.generate(Document([Text("look "), ImageSegment(image), Text(" it is")]), max_new_tokens=10)
    prompt = ([hf.config.bos_token_id] + tok.encode("look ", add_special_tokens=False) + image_ids(hf, image)
              + tok.encode(" it is", add_special_tokens=False))
    assert doc.text.strip() == reference(g, hf, tok, prompt, 10)


def test_drawing_is_refused_naming_chameleon(cham_dir):
    g = anygen.load(cham_dir)
    for call in (lambda: g.draw("a cat"), lambda: g.edit(picture(0), "make it blue"), lambda: g.say("hi")):
        with pytest.raises(AnygenError, match=r"this chameleon model cannot .*") as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(AnygenError, match="no image decoder"):
        g.draw("a cat")
