"""Janus through anygen: a tiny random `JanusForConditionalGeneration` the test writes itself, loaded
by `anygen.load`, draws token for token what transformers' `generate(generation_mode="image")` draws
(its generation head and embeddings, guidance with the prompt masked to padding), answers in greedy
text what transformers' `generate` answers (an image in the prompt read by SigLIP), and says in one
line what it cannot do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import anygen
from anygen.api import load_model
from anygen.errors import AnygenError
from anygen.interop.tiny import write_tiny_janus

from interop_helpers import Recorder, expand

GRID = 4  # codes per side; the tiny VQ-VAE's images are 8 * GRID pixels


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory):
    return write_tiny_janus(tmp_path_factory.mktemp("janus") / "Janus-tiny", grid=GRID)


@pytest.fixture(scope="module")
def hf(janus_dir):
    from transformers import JanusForConditionalGeneration

    return JanusForConditionalGeneration.from_pretrained(str(janus_dir)).eval()


@torch.no_grad()
def unguided_reference(hf, prompt_ids, n):
    """transformers' image-mode loop without guidance, from the model's own modules (its `generate`
    cannot run unguided: it doubles the batch for guidance and fails at scale 1)."""
    from transformers import DynamicCache

    lm, cache = hf.model.language_model, DynamicCache()
    x = hf.get_input_embeddings()(torch.tensor([prompt_ids]))
    codes = []
    for _ in range(n):
        h = lm(inputs_embeds=x, cache=cache, use_cache=True).last_hidden_state[:, -1]
        codes.append(int(hf.model.generation_head(h).argmax(-1)))
        x = hf.prepare_embeddings_for_image_generation(torch.tensor([[codes[-1]]]))
    return codes


@pytest.mark.parametrize("backend", ["auto", "hf"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_draw_equals_transformers_image_generation(janus_dir, hf, scale, backend):
    """Both decoders: `FastDecoder` over Janus's Llama body fed its embeddings ("auto") and the
    language model's own forward ("hf")."""
    recorder = Recorder()
    g = load_model(janus_dir, sampler=recorder)
    [picture] = g.draw("a red cat on a mat", guidance_scale=scale, backend=backend)
    [(prompts, [result])] = recorder.calls
    v = g.vocab
    codes = [t - v.image_start for t in result.ids[2:2 + GRID * GRID]]
    prompt = expand(g, list(prompts[0].ids) + [v.boi])  # ... <begin_of_image>, as Janus's processor writes it
    if scale == 1.0:
        theirs = unguided_reference(hf, prompt, GRID * GRID)
    else:
        ids = torch.tensor([prompt])
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_mode="image", do_sample=False,
                             guidance_scale=scale)[0].tolist()
        assert expand(g, prompts[0].uncond[0]) == [prompt[0]] + [hf.generation_config.pad_token_id] * (len(prompt) - 2)
    assert codes == theirs and len(set(codes)) > 1
    from transformers import JanusImageProcessorPil

    pixels = hf.model.vqmodel.decode(torch.tensor([theirs])).detach()
    [image] = JanusImageProcessorPil.from_pretrained(str(janus_dir)).postprocess(list(pixels.float()),
                                                                               return_tensors="PIL.Image.Image")["pixel_values"]
    assert np.abs(np.asarray(picture, dtype=int) - np.asarray(image, dtype=int)).max() <= 1  # rounding


def test_guided_batch_rows_equal_single_rows(janus_dir):
    g = anygen.load(janus_dir)
    texts = ["a cat", "two small dogs near a big red house"]
    together = g.draw_batch(texts, guidance_scale=2.5)
    alone = [g.draw(t, guidance_scale=2.5)[0] for t in texts]
    for a, b in zip(together, alone):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def suppress_non_text(g, hf):
    allowed = set(g.model.idmap.text) | {hf.generation_config.eos_token_id}
    return [i for i in range(hf.config.text_config.vocab_size) if i not in allowed]


def reference_text(hf, tok, prompt_ids, n, suppress, **kwargs):
    ids = torch.tensor([prompt_ids])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                      suppress_tokens=suppress, **kwargs)
    new = out[0, len(prompt_ids):].tolist()
    eos = hf.generation_config.eos_token_id
    new = new[:new.index(eos)] if eos in new else new
    return tok.decode(new).strip()


@pytest.mark.parametrize("backend", ["auto", "hf"])
def test_caption_equals_transformers_generate(janus_dir, hf, backend):
    """A greedy caption equals transformers' greedy answer with the image in Janus's understanding
    layout (`<begin_of_image>`, placeholders, `<end_of_image>`), its pixels the VQ-VAE's decoding of
    the image's codes (what anygen holds of an image)."""
    from transformers import AutoTokenizer

    g = anygen.load(janus_dir)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (8 * GRID, 8 * GRID, 3), dtype=np.uint8))
    caption = g.caption(image, max_new_tokens=12, backend=backend)
    codes = g.tokenizer.image.encode_images([image])
    pixels = hf.model.vqmodel.decode(codes.view(1, -1)).detach()
    tok = AutoTokenizer.from_pretrained(str(janus_dir))
    boi, eoi, placeholder = tok.convert_tokens_to_ids(["<begin_of_image>", "<end_of_image>", "<image_placeholder>"])
    prompt = [hf.generation_config.bos_token_id, boi] + [placeholder] * (GRID * GRID) + [eoi]
    assert caption == reference_text(hf, tok, prompt, 12, suppress_non_text(g, hf), pixel_values=pixels)
    assert caption


def test_text_generate_equals_transformers_generate(janus_dir, hf):
    from transformers import AutoTokenizer

    g = anygen.load(janus_dir)
    doc = g.generate("hello there", max_new_tokens=10, allow_image=False)
    tok = AutoTokenizer.from_pretrained(str(janus_dir))
    prompt = [hf.generation_config.bos_token_id] + tok.encode("hello there", add_special_tokens=False)
    assert doc.text.strip() == reference_text(hf, tok, prompt, 10, suppress_non_text(g, hf))


def test_scoring_logits_equal_the_model_forward(janus_dir, hf):
    """The full-sequence forward reads text logits from the language model's head after a prompt image."""
    g = anygen.load(janus_dir)
    v = g.vocab
    image = Image.new("RGB", (8 * GRID, 8 * GRID), "red")
    codes = g.tokenizer.image.encode_images([image])
    ids = [v.bos, v.boi, v.grid_id((GRID, GRID))] + (codes.view(-1) + v.image_start).tolist() + [v.eoi] + \
        g.tokenizer.encode_text("ok")
    ours = g.model(input_ids=torch.tensor([ids])).logits[0]
    tok_ids = expand(g, ids)
    pixels = hf.model.vqmodel.decode(codes.view(1, -1)).detach()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([tok_ids]), pixel_values=pixels).logits[0]
    assert torch.allclose(ours[-1, :v.n_text], theirs[-1, list(g.model.idmap.text)], atol=1e-5)
    assert torch.allclose(ours[-2, :v.n_text], theirs[-2, list(g.model.idmap.text)], atol=1e-5)


def test_codec_round_trip_is_the_vqvae(janus_dir, hf):
    g = anygen.load(janus_dir)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8 * GRID, 8 * GRID, 3), dtype=np.uint8))
    codec = g.tokenizer.image
    x = codec.pixel_values([image])
    with torch.no_grad():
        expected = hf.model.vqmodel.encode(x).image_tokens.view(1, GRID, GRID)
    codes = codec.encode_images([image])
    assert torch.equal(codes, expected)
    assert torch.allclose(codec.decode_normalised(codes), hf.model.vqmodel.decode(expected.view(1, -1)).detach())


def test_what_janus_cannot_do_is_one_line_naming_it(janus_dir):
    g = anygen.load(janus_dir)
    image = Image.new("RGB", (8, 8), "white")
    for call in (lambda: g.edit(image, "make it blue"), lambda: g.say("hello"),
                 lambda: g.transcribe((np.zeros(1600, dtype=np.float32), 16000)),
                 lambda: g.story("a cat on a mat", n_steps=2)):
        with pytest.raises(AnygenError, match=r"this janus model cannot .*: ") as e:
            call()
        assert "\n" not in str(e.value)


def test_refuses_remote_code_and_pickled_weights(janus_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(janus_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(AnygenError, match="auto_map"):
        anygen.load(bad)
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AnygenError, match="not safetensors"):
        anygen.load(bad)


def test_best_of_ranks_drawn_candidates_by_the_captions_likelihood(janus_dir):
    """`draw(best_of=N)` keeps the candidate whose image makes the prompt most likely (read back by
    SigLIP): one of the N sampled candidates, the same for the same seed."""
    g = anygen.load(janus_dir)
    [best] = g.draw("a red cat on a mat", best_of=3, seed=5)
    candidates = g.draw("a red cat on a mat", n=3, seed=5)
    assert any(np.array_equal(np.asarray(best), np.asarray(c)) for c in candidates)
    [again] = g.draw("a red cat on a mat", best_of=3, seed=5)
    assert np.array_equal(np.asarray(best), np.asarray(again))
