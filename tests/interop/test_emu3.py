"""Emu3 through anygen: a tiny random `Emu3ForConditionalGeneration` the test writes itself, loaded by
`anygen.load` as a user would load the released weights, gives token for token what transformers'
own `generate` gives for the same prompt (images under Emu3's documented prefix constraint, with
and without guidance; greedy text)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import anygen
from anygen.api import load_model
from anygen.errors import AnygenError
from anygen.interop.tiny import write_tiny_emu3

from interop_helpers import Recorder, expand

GRID = 4


@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory):
    return write_tiny_emu3(tmp_path_factory.mktemp("emu3") / "Emu3-tiny", grid=GRID)


@pytest.fixture(scope="module")
def hf(emu3_dir):
    from transformers import Emu3ForConditionalGeneration

    return Emu3ForConditionalGeneration.from_pretrained(str(emu3_dir)).eval()


def emu3_prefix_constraint(hf, height, width):
    """transformers' documented `prefix_allowed_tokens_fn` for Emu3 image generation."""
    vm = hf.config.vocabulary_map
    visual = sorted(v for k, v in vm.items() if k.startswith("<|visual token"))
    wrapper, eol, eof, eoi = vm["<|image token|>"], vm["<|extra_200|>"], vm["<|extra_201|>"], vm["<|image end|>"]
    eos, pad = hf.config.text_config.eos_token_id, hf.config.text_config.pad_token_id

    def allowed(batch_id, input_ids):
        position = torch.nonzero(input_ids == wrapper, as_tuple=True)[0][0]
        offset = input_ids.shape[0] - position
        if offset % (width + 1) == 0:
            return (eol,)
        if offset == (width + 1) * height + 1:
            return (eof,)
        if offset == (width + 1) * height + 2:
            return (eoi,)
        if offset == (width + 1) * height + 3:
            return (eos,)
        if offset > (width + 1) * height + 3:
            return (pad,)
        return visual

    return allowed


@pytest.mark.parametrize("backend", ["auto", "hf"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_draw_equals_transformers_generate(emu3_dir, hf, scale, backend):
    """Greedy image tokens (and the decoded picture) equal transformers' generate with Emu3's prefix
    constraint; with guidance, transformers' guidance_scale + negative_prompt_ids path. Both decoders:
    `FastDecoder` over Emu3's Llama-style weights ("auto") and the model's own forward ("hf")."""
    recorder = Recorder()
    g = load_model(emu3_dir, sampler=recorder)
    [picture] = g.draw("a red cat on a mat", guidance_scale=scale, backend=backend)
    [(prompts, [result])] = recorder.calls
    v = g.vocab
    eoi_at = result.ids.index(v.eoi)
    ours = expand(g, list(prompts[0].ids) + result.ids[:eoi_at + 1])
    prefix = expand(g, list(prompts[0].ids) + result.ids[:2])  # ... <boi> <grid>: "<|image start|>4*4<|image token|>"
    kwargs = {}
    if scale != 1.0:
        kwargs = {"guidance_scale": scale,
                  "negative_prompt_ids": torch.tensor([expand(g, list(prompts[0].uncond[0]) + result.ids[:2])])}
    n_new = (GRID + 1) * GRID + 3  # rows with their end-of-line ids, end of frame, end of image, eos
    out = hf.generate(torch.tensor([prefix]), max_new_tokens=n_new, do_sample=False,
                      prefix_allowed_tokens_fn=emu3_prefix_constraint(hf, GRID, GRID), **kwargs)
    theirs = out[0].tolist()
    assert ours == theirs[:len(ours)]
    assert len(ours) == len(prefix) + n_new - 1  # everything up to <|image end|>
    image = hf.model.decode_image_tokens(image_tokens=out[:, len(prefix):], height=GRID, width=GRID)
    pixels = ((image[0].float() * 0.5 + 0.5) * 255).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(picture), pixels)


def test_guided_batch_rows_equal_single_rows(emu3_dir):
    """Prompts of different lengths drawn together (their guidance rows in the same batch) give the
    codes each gives alone: the padded expansions are masked exactly."""
    recorder = Recorder()
    g = load_model(emu3_dir, sampler=recorder)
    texts = ["a cat", "two small dogs near a big red house"]
    together = g.draw_batch(texts, guidance_scale=2.5)
    alone = [g.draw(t, guidance_scale=2.5)[0] for t in texts]
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(together, together[::-1]))
    for a, b in zip(together, alone):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert len(recorder.calls[0][1]) == 2


def suppress_non_text(g, hf):
    """Model ids anygen's text mode never draws (image codes, structural specials but <eos>)."""
    allowed = set(g.model.idmap.text) | {hf.config.text_config.eos_token_id}
    return [i for i in range(hf.config.text_config.vocab_size) if i not in allowed]


def reference_text(hf, tokenizer, prompt_ids, n, suppress):
    out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, suppress_tokens=suppress)
    new = out[0, len(prompt_ids):].tolist()
    eos = hf.config.text_config.eos_token_id
    new = new[:new.index(eos)] if eos in new else new
    return tokenizer.decode(new).strip()


@pytest.mark.parametrize("backend", ["auto", "hf"])
def test_caption_equals_transformers_generate(emu3_dir, hf, backend):
    """A greedy caption equals transformers' greedy answer to Emu3's own image tokens (the processor's
    pixels through `get_image_tokens`, which adds the end-of-line ids) in Emu3's image layout."""
    from transformers import AutoTokenizer, Emu3ImageProcessor

    g = anygen.load(emu3_dir)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (GRID * 2, GRID * 2, 3), dtype=np.uint8))
    caption = g.caption(image, max_new_tokens=12, backend=backend)
    tok = AutoTokenizer.from_pretrained(str(emu3_dir))
    processor = Emu3ImageProcessor.from_pretrained(str(emu3_dir))
    pixels = processor(images=[image], do_resize=False, return_tensors="pt")["pixel_values"]
    bpe = hf.model.get_image_tokens(pixels, torch.tensor([[GRID * 2, GRID * 2]])).tolist()
    vm = hf.config.vocabulary_map
    prompt = ([hf.config.text_config.bos_token_id, vm["<|image start|>"]] + tok.encode("4*4", add_special_tokens=False)
              + [vm["<|image token|>"]] + bpe + [vm["<|extra_201|>"], vm["<|image end|>"]])
    assert caption == reference_text(hf, tok, prompt, 12, suppress_non_text(g, hf))
    assert caption  # the random model says something


def test_text_generate_equals_transformers_generate(emu3_dir, hf):
    from transformers import AutoTokenizer

    g = anygen.load(emu3_dir)
    doc = g.generate("hello there", max_new_tokens=10, allow_image=False)
    tok = AutoTokenizer.from_pretrained(str(emu3_dir))
    prompt = [hf.config.text_config.bos_token_id] + tok.encode("hello there", add_special_tokens=False)
    assert doc.text.strip() == reference_text(hf, tok, prompt, 10, suppress_non_text(g, hf))


def test_scoring_logits_equal_the_model_forward(emu3_dir, hf):
    """The full-sequence forward (domain scores, best-of) reads the model's logits after each id's expansion."""
    g = anygen.load(emu3_dir)
    v = g.vocab
    ids = [v.bos] + g.tokenizer.encode_text("a cat") + [v.boi, v.grid_id((GRID, GRID))] + \
        [v.image_start + 3] * (GRID * GRID) + [v.eoi] + g.tokenizer.encode_text("ok")
    ours = g.model(input_ids=torch.tensor([ids])).logits[0]
    model_ids = expand(g, ids)
    theirs = hf(input_ids=torch.tensor([model_ids])).logits[0]
    fed = 0
    for t, tok in enumerate(ids):
        fed += len(expand(g, ids[:t + 1])) - fed
        col = g.model.cols[v.eos]
        assert torch.allclose(ours[t, v.eos], theirs[fed - 1, col], atol=1e-5)
        assert torch.allclose(ours[t, :v.n_text], theirs[fed - 1, list(g.model.idmap.text)], atol=1e-5)


def test_what_emu3_cannot_do_is_one_line_naming_it(emu3_dir):
    g = anygen.load(emu3_dir)
    image = Image.new("RGB", (8, 8), "white")
    for call in (lambda: g.edit(image, "make it blue"), lambda: g.say("hello"),
                 lambda: g.transcribe((np.zeros(1600, dtype=np.float32), 16000))):
        with pytest.raises(AnygenError, match=r"this emu3 model cannot .*: ") as e:
            call()
        assert "\n" not in str(e.value)


def test_refuses_remote_code_and_pickled_weights(emu3_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(emu3_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(AnygenError, match="auto_map"):
        anygen.load(bad)
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "preprocessor_config.json").write_text(json.dumps({"auto_map": {"AutoImageProcessor": "x.Y"}}))
    with pytest.raises(AnygenError, match="auto_map"):
        anygen.load(bad)
    shutil.copy(emu3_dir / "preprocessor_config.json", bad / "preprocessor_config.json")
    (bad / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AnygenError, match="not safetensors"):
        anygen.load(bad)


def test_fast_weights_are_prepared_once(emu3_dir):
    """Draws after the first reuse the decode-ready view of the weights (FastDecoder prepares its
    weights once per view: a new view per call would copy the model every call)."""
    g = anygen.load(emu3_dir)
    g.draw("a cat")
    view = g.model.fast_view()
    g.draw("a dog")
    assert g.model.fast_view() is view

