"""Transfusion head: the mask, the loss, the cached sampler and guidance, save/load."""

import pytest
import torch

from anygen.model.decoder import DecoderConfig, build_decoder
from anygen.model.transfusion import (DiffusionHeadConfig, TransfusionModel, attention_mask_for, block_ids_from_slots,
                                      load_transfusion, patchify, save_transfusion, transfusion_loss, unpatchify)
from anygen.sampling import diffusion
from anygen.sampling.diffusion import DiffusionSettings, sample_images
from anygen.vocab import Vocab

VOCAB = Vocab(n_text=40, image_codebook_size=8, image_grids=((4, 4),))
HEAD = DiffusionHeadConfig(image_size=16, patch_size=4, time_dim=16)  # 4x4 = 16 slots of 48 values
GRID = VOCAB.grid_id((4, 4))


def tiny_model(seed=0) -> TransfusionModel:
    cfg = DecoderConfig(n_layers=2, hidden=32, n_heads=2, n_kv_heads=2, head_dim=16, intermediate=64,
                        max_position=256)
    torch.manual_seed(seed)
    model = TransfusionModel(build_decoder(cfg, VOCAB, seed=seed), HEAD)
    torch.nn.init.normal_(model.patch_out.weight, std=0.02)  # zero-init would make every velocity 0
    return model.eval()


def t2i_row(caption):
    """<bos> caption <boi> <grid> [16 slots] <eoi> <eos> -> (ids, slots)."""
    ids = [VOCAB.bos, *caption, VOCAB.boi, GRID] + [VOCAB.pad] * HEAD.n_slots + [VOCAB.eoi, VOCAB.eos]
    slots = [False] * (len(caption) + 3) + [True] * HEAD.n_slots + [False, False]
    return torch.tensor([ids]), torch.tensor([slots])


def test_patchify_round_trip():
    x = torch.randn(3, 3, 16, 16)
    p = patchify(x, 4)
    assert p.shape == (3, 16, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))  # slot 1 = row 0, column 1
    assert torch.equal(unpatchify(p, 4), x)


def test_mask_bidirectional_inside_images_causal_elsewhere():
    model = tiny_model()
    # text text [img0 x3] text [img1 x2] text
    slots = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    block = torch.tensor([[-1, -1, 0, 0, 0, -1, 1, 1, -1]])
    mask = attention_mask_for(model.lm.config, torch.zeros(1, 9, 32), block)[0, 0]  # (T, T) True = attend
    T = 9
    expected = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(T):
            expected[q, k] = k <= q or (block[0, q] >= 0 and block[0, q] == block[0, k])
    assert torch.equal(mask, expected)
    assert mask[2, 4] and not mask[1, 2] and not mask[4, 6]  # image sees its future slots; text/earlier do not
    assert torch.equal(block_ids_from_slots(slots, 3)[0, :5], block[0, :5])


def test_slots_see_each_other_text_before_does_not():
    model = tiny_model()
    ids, slots = t2i_row([5, 6, 7])
    block = block_ids_from_slots(slots, HEAD.n_slots)
    x = torch.randn(1, HEAD.n_slots, HEAD.patch_dim)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        h1 = model.hidden(model.embed(ids, slots, x, sigma), block)
        x2 = x.clone()
        x2[0, -1] += 1.0  # change the last patch only
        h2 = model.hidden(model.embed(ids, slots, x2, sigma), block)
    first_slot = int(slots[0].nonzero()[0])
    assert torch.allclose(h1[0, :first_slot], h2[0, :first_slot])  # causal: the caption never sees the image
    assert not torch.allclose(h1[0, first_slot], h2[0, first_slot])  # bidirectional: slot 0 sees the last slot


def test_loss_decreases_on_tiny_config():
    model = tiny_model().train()
    ids, slots = t2i_row([5, 6, 7])
    ids, slots = ids.repeat(4, 1), slots.repeat(4, 1)
    labels = torch.where(slots, torch.full_like(ids, -100), ids)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    batch = {"input_ids": ids, "labels": labels, "slots": slots, "images": images}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss, metrics = transfusion_loss(model, batch, torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics)
    assert losses[-1]["ce"] < 0.5 * losses[0]["ce"]
    first = sum(m["diffusion_mse"] for m in losses[:4]) / 4
    last = sum(m["diffusion_mse"] for m in losses[-4:]) / 4
    assert last < 0.8 * first


def test_cached_velocity_equals_full_forward():
    model = tiny_model()
    prompt = [VOCAB.bos, 5, 6, 7, VOCAB.boi, GRID]
    ids, slots = t2i_row([5, 6, 7])
    x = torch.randn(1, HEAD.n_slots, HEAD.patch_dim)
    with torch.no_grad():
        _, v_full = model(ids, slots, block_ids_from_slots(slots, HEAD.n_slots), x, torch.tensor([0.3]))
        ctx = diffusion._Context(model, [prompt], VOCAB.pad)
        v_cached = ctx.velocity(x, 0.3)
        v_again = ctx.velocity(x, 0.3)  # the cache was cropped back: same answer
    assert torch.allclose(v_cached, v_full, atol=1e-5)
    assert torch.allclose(v_again, v_cached, atol=1e-6)


def test_guidance_scale_one_equals_unguided():
    """Null rows batched beside (and padded differently from) the conditional rows do not
    change the conditional velocity, and guide(., ., 1) is the conditional velocity."""
    model = tiny_model()
    cond = [[VOCAB.bos, 5, 6, 7, 8, VOCAB.boi, GRID], [VOCAB.bos, 9, 10, 11, 12, VOCAB.boi, GRID]]
    null = [[VOCAB.bos, VOCAB.null, VOCAB.boi, GRID]] * 2
    x = torch.randn(2, HEAD.n_slots, HEAD.patch_dim)
    with torch.no_grad():
        v_alone = diffusion._Context(model, cond, VOCAB.pad).velocity(x, 0.7)
        v_both = diffusion._Context(model, cond + null, VOCAB.pad).velocity(torch.cat([x, x]), 0.7)
    assert torch.allclose(v_both[:2], v_alone, atol=1e-5)
    assert torch.allclose(diffusion.guide(v_both[:2], v_both[2:], 1.0), v_alone, atol=1e-5)
    assert not torch.allclose(diffusion.guide(v_both[:2], v_both[2:], 3.0), v_alone, atol=1e-3)
    # end to end: scale 1 (no null rows) and a scale of 1 + tiny give nearly the same images
    prompts = [cond[0]]
    a = sample_images(model, VOCAB, prompts, DiffusionSettings(num_inference_steps=4, guidance_scale=1.0), seed=3)
    b = sample_images(model, VOCAB, prompts, DiffusionSettings(num_inference_steps=4, guidance_scale=1.0 + 1e-6), seed=3)
    assert torch.allclose(a, b, atol=1e-4)


def test_sampler_runs_k_steps_and_returns_images(monkeypatch):
    model = tiny_model()
    calls = []
    real = diffusion._Context.velocity

    def counting(self, x, sigma):
        calls.append(sigma)
        return real(self, x, sigma)

    monkeypatch.setattr(diffusion._Context, "velocity", counting)
    prompts = [[VOCAB.bos, 5, VOCAB.boi, GRID], [VOCAB.bos, 6, 7, 8, VOCAB.boi, GRID]]
    images = sample_images(model, VOCAB, prompts, DiffusionSettings(num_inference_steps=7, guidance_scale=2.0), seed=0)
    assert images.shape == (2, 3, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    assert len(calls) == 7  # one batched forward per step, conditional and null rows together
    assert calls == sorted(calls, reverse=True) and calls[0] == pytest.approx(1.0)


def test_interleaved_generate_places_images_between_text():
    model = tiny_model()
    head = model.lm.lm_head
    boost = torch.zeros(VOCAB.size)
    boost[VOCAB.boi] = 100.0  # an untrained model: make it want an image

    class Boosted(torch.nn.Module):
        def forward(self, h):
            return head(h) + boost

    model.lm.lm_head = Boosted()
    ids, images = diffusion.generate(model, VOCAB, [VOCAB.bos, 5, 6], max_new_tokens=12, min_images=1,
                                     max_images=1, settings=DiffusionSettings(num_inference_steps=2, guidance_scale=2.0), seed=0)
    assert len(images) == 1 and images[0].shape == (3, 16, 16)
    i = ids.index(VOCAB.boi)
    assert ids[i + 1:i + 3] == [GRID, VOCAB.eoi]
    assert all(t < VOCAB.n_text or t in (VOCAB.boi, GRID, VOCAB.eoi, VOCAB.eos) for t in ids)


def test_image_first_puts_the_picture_right_after_the_prompt():
    """A story's opening is closed as written: with image_first the first new token is <boi>."""
    ids, images = diffusion.generate(tiny_model(), VOCAB, [VOCAB.bos, 5, 6], max_new_tokens=12, max_images=1,
                                     settings=DiffusionSettings(num_inference_steps=2), seed=0, image_first=True)
    assert ids[:3] == [VOCAB.boi, GRID, VOCAB.eoi] and len(images) == 1


def test_save_load_round_trip(tmp_path):
    from anygen.model.decoder import load_decoder, read_decoder_meta

    model = tiny_model()
    save_transfusion(model, tmp_path / "m", vocab=VOCAB)
    meta = read_decoder_meta(tmp_path / "m")
    assert meta["image_head"] == "diffusion"
    loaded = load_transfusion(tmp_path / "m", load_decoder(tmp_path / "m"), meta).eval()
    prompts = [[VOCAB.bos, 5, VOCAB.boi, GRID]]
    settings = DiffusionSettings(num_inference_steps=3, guidance_scale=1.5)
    assert torch.allclose(sample_images(model, VOCAB, prompts, settings, seed=1),
                          sample_images(loaded, VOCAB, prompts, settings, seed=1), atol=1e-5)
    (tmp_path / "m" / "diffusion_head.safetensors").unlink()
    from anygen.errors import AnygenError

    with pytest.raises(AnygenError, match="diffusion_head.safetensors is missing"):
        load_transfusion(tmp_path / "m", load_decoder(tmp_path / "m"), meta)


def test_pipeline_and_cli_draw_with_a_diffusion_head(tmp_path, monkeypatch):
    """`anygen.load` picks the head from the model directory; draw/CLI work (image-reading tasks:
    tests/test_transfusion_tasks.py)."""
    import anygen
    import anygen.codecs.audio as audio_mod
    import anygen.codecs.image as image_mod
    from anygen.cli import main as cli_main
    from anygen.errors import AnygenError

    import fakes as fake
    monkeypatch.setattr(image_mod, "ImageCodec", fake.FakeImageCodec)
    monkeypatch.setattr(audio_mod, "AudioCodec", fake.FakeAudioCodec)
    tokenizer = fake.make_tokenizer()  # image grid 2x2
    tokenizer.save(tmp_path / "tok")
    cfg = DecoderConfig(n_layers=1, hidden=32, n_heads=2, n_kv_heads=2, head_dim=16, intermediate=64,
                        max_position=256)
    model = TransfusionModel(build_decoder(cfg, tokenizer.vocab, seed=0),
                             DiffusionHeadConfig(image_size=16, patch_size=8, time_dim=16))
    save_transfusion(model, tmp_path / "m", config=cfg, vocab=tokenizer.vocab, tokenizer_dir=tmp_path / "tok")

    gen = anygen.load(tmp_path / "m")
    assert gen.diffusion is not None
    a = gen.draw("a red circle", n=2, num_inference_steps=2, seed=5)
    b = gen.draw("a red circle", n=2, num_inference_steps=2, seed=5)
    assert [im.size for im in a] == [(16, 16)] * 2
    assert all((x.tobytes() == y.tobytes()) for x, y in zip(a, b))  # seeded
    with pytest.raises(AnygenError, match="num_inference_steps"):
        gen.draw("a red circle", num_inference_steps=0)
    with pytest.raises(AnygenError, match="guidance_scale and num_inference_steps, not temperature"):
        gen.draw("a red circle", temperature=1.0)
    out = tmp_path / "d.png"
    assert cli_main(["draw", "a blue square", "--model", str(tmp_path / "m"), "--num-inference-steps", "2", "--out", str(out)]) \
        in (0, None)
    assert out.exists()
    # the eval harness through the CLI (`--suite` spelling), with the head's own options
    report = tmp_path / "eval.json"
    assert cli_main(["eval", "--suite", "shapes", "--model", str(tmp_path / "m"), "--only", "t2i", "--n", "2",
                     "--num-inference-steps", "2", "--guidance-scale", "2", "--json", str(report)]) in (0, None)
    import json

    results = json.loads(report.read_text())
    assert set(results) >= {"t2i.objects_1.all_correct", "t2i.fd_pool8", "t2i.seconds_per_image"}
    assert results["t2i.fd_pool8"] > 0  # an untrained head draws noise, not ShapesWorld renders


@pytest.mark.parametrize("guidance", [1.0, 2.0], ids=["unguided", "guided"])
def test_a_sampled_image_does_not_depend_on_its_batch(guidance):
    # a 3x3 grid of 3x3x3 patches: 243 noise values per image, which one shared generator would
    # split differently for different batch sizes (torch draws normals 16 at a time)
    vocab = Vocab(n_text=40, image_codebook_size=8, image_grids=((3, 3),))
    cfg = DecoderConfig(n_layers=2, hidden=32, n_heads=2, n_kv_heads=2, head_dim=16, intermediate=64,
                        max_position=256)
    torch.manual_seed(0)
    model = TransfusionModel(build_decoder(cfg, vocab, seed=0),
                             DiffusionHeadConfig(image_size=9, patch_size=3, time_dim=16)).eval()
    torch.nn.init.normal_(model.patch_out.weight, std=0.02)
    grid = vocab.grid_id((3, 3))
    p = [vocab.bos, 5, 6, vocab.boi, grid]
    q = [vocab.bos, 9, 10, 11, 12, 13, vocab.boi, grid]
    settings = DiffusionSettings(num_inference_steps=3, guidance_scale=guidance)
    alone = sample_images(model, vocab, [p], settings, seed=7)
    batch = sample_images(model, vocab, [p, q, p, q, p], settings, seed=7)
    assert torch.allclose(batch[0], alone[0], atol=1e-5)
    assert torch.allclose(batch[2], sample_images(model, vocab, [p] * 3, settings, seed=7)[2], atol=1e-5)
    assert not torch.allclose(batch[0], batch[2], atol=1e-2)  # same prompt, own noise


def test_non_finite_velocity_or_logits_are_errors_naming_the_step():
    from anygen.errors import AnygenError

    model = tiny_model()
    with torch.no_grad():
        model.patch_out.weight[0, 0] = float("nan")
    with pytest.raises(AnygenError, match="velocity is not finite .* denoising step 1 of 3"):
        sample_images(model, VOCAB, [[VOCAB.bos, 5, VOCAB.boi, GRID]], DiffusionSettings(num_inference_steps=3), seed=0)
    model = tiny_model()
    with torch.no_grad():
        model.lm.lm_head.weight[7, 0] = float("inf")
    with pytest.raises(AnygenError, match="logits are not finite .* at step 1"):
        diffusion.generate(model, VOCAB, [VOCAB.bos, 5], max_new_tokens=4, seed=0)
    with pytest.raises(AnygenError, match="temperature"):
        diffusion.generate(tiny_model(), VOCAB, [VOCAB.bos, 5], max_new_tokens=4, temperature=float("inf"))
