"""The Transfusion head on every task: given images enter clean, drawn images are denoised in place;
caption, edit (with image guidance), describe_edit, generate and story through the same API; the
all-task trainer on token shards; save/load. Tiny random models (conftest's `transfusion_dir`)."""

import pytest
import torch
from PIL import Image as PILImage

from anygen.document import Document, Image, Text
from anygen.errors import AnygenError
from anygen.model.transfusion import latent_sequence, transfusion_loss
from anygen.sampling import diffusion


def picture(colour):
    return PILImage.new("RGB", (8, 8), colour)


@pytest.fixture(scope="module")
def tf(transfusion_dir):
    import anygen

    return anygen.load(transfusion_dir)


def record_sigmas(monkeypatch, model):
    """Every (slot count, sigmas) the model embeds, recorded through its `embed`."""
    seen, embed = [], model.embed

    def spy(ids, slots, patches, sigmas):
        if patches is not None:
            seen.append((int(slots.sum()), sigmas.clone()))
        return embed(ids, slots, patches, sigmas)

    monkeypatch.setattr(model, "embed", spy)
    return seen


def test_latent_sequence_takes_images_out_given_clean_drawn_as_targets(tiny_tokenizer):
    from anygen.vocab import Vocab

    v = Vocab(n_text=40, image_codebook_size=8, image_grids=((2, 2),), image_keep=True)
    grid = v.grid_id((2, 2))
    src, tgt = [1, 2, 3, 4], [1, 2, 3, 7]
    img = lambda codes: [v.boi, grid, *v.image_ids(torch.tensor(codes)).tolist(), v.eoi]  # noqa: E731
    target = img(tgt)
    target[2:5] = [v.keep] * 3  # <keep>-coded against the source, as the shards write it
    ids = [v.bos, 5, 6] + img(src) + target + [v.eos]
    loss = [0] * (3 + 7) + [1] * 7 + [1]
    seq = latent_sequence(ids, v, (2, 2), loss)
    assert [c.flatten().tolist() for c in seq.codes] == [src, tgt]  # <keep> resolved
    assert seq.targets == [False, True]  # the source is given, the edited image is drawn
    assert seq.slots == [False] * 5 + [True] * 4 + [False] * 3 + [True] * 4 + [False] * 2
    assert all(t == v.pad for t, s in zip(seq.ids, seq.slots) if s)
    assert seq.labels[10:12] == [v.boi, grid] and seq.labels[12:17] == [-100] * 5 and seq.labels[-1] == v.eos
    cut = latent_sequence(ids[:14], v, (2, 2), loss[:14])  # a shard document truncated inside the 2nd image
    assert len(cut.ids) == 10 and len(cut.codes) == 1


def test_an_image_in_the_prompt_changes_the_caption_logits_and_enters_at_noise_zero(tf, monkeypatch):
    s, model = tf.session, tf.diffusion.transfusion
    seen = record_sigmas(monkeypatch, model)
    logits = []
    for colour in ("white", "black"):
        ids = s.prompt("image_to_text", image=tf.tokenizer.image_codes(picture(colour)))
        ctx = diffusion.context(model, tf.vocab, [ids], tf.tokenizer.image)
        logits.append(model.lm.lm_head(ctx.last_hidden))
    assert not torch.allclose(logits[0], logits[1])
    assert seen and all(n == 4 and float(sig.abs().max()) == 0.0 for n, sig in seen)  # clean: sigma 0
    seen.clear()
    caption = tf.caption(picture("white"), max_new_tokens=8)  # the API no longer refuses
    assert isinstance(caption, str)
    assert seen and all(float(sig.abs().max()) == 0.0 for _, sig in seen)


def test_edit_on_the_diffusion_head_uses_image_guidance(tf, monkeypatch):
    calls = []
    guide = diffusion.chain_guide
    monkeypatch.setattr(diffusion, "chain_guide", lambda vs, scales: calls.append((len(vs), tuple(scales)))
                        or guide(vs, scales))
    src = picture("white")
    a = tf.edit(src, "make it red", guidance_scale=2.0, image_guidance_scale=1.5, refuse=False, seed=3)
    b = tf.edit(src, "make it red", guidance_scale=2.0, image_guidance_scale=1.5, refuse=False, seed=3)
    assert isinstance(a, PILImage.Image) and a.tobytes() == b.tobytes()  # seeded
    steps = diffusion.DiffusionSettings().num_inference_steps
    assert calls == [(3, (2.0, 1.5))] * (2 * steps)  # [instruction + image, image only, neither] every step
    assert tf.describe_edit(src, a, max_new_tokens=4) is not None
    with pytest.raises(AnygenError, match="best_of is not supported"):
        tf.edit(src, "make it red", best_of=2, refuse=False)


def test_chain_guide_is_instructpix2pix():
    c, i, n = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0)
    assert float(diffusion.chain_guide([c, i, n], (2.0, 1.5))) == pytest.approx(float(n + 1.5 * (i - n) + 2.0 * (c - i)))
    assert float(diffusion.chain_guide([c, n], (1.0,))) == 3.0


def test_generate_and_story_read_images_in_the_prompt(tf, monkeypatch):
    seen = record_sigmas(monkeypatch, tf.diffusion.transfusion)
    doc = tf.generate(Document([Text("a small red circle"), Image(picture("white"))]), max_new_tokens=80,
                      num_inference_steps=2, seed=0)
    assert isinstance(doc, Document)
    assert seen[0][0] == 4 and float(seen[0][1].abs().max()) == 0.0  # the prompt's image, clean
    story = tf.story("a small green square at the center", n_steps=1, num_inference_steps=2, seed=0)
    assert len(story.images) == 1


def test_save_load_round_trip_keeps_every_task(tf, transfusion_dir, tmp_path):
    import anygen
    from anygen.model.transfusion import save_transfusion

    model = tf.diffusion.transfusion
    save_transfusion(model, tmp_path / "again", vocab=tf.vocab,
                     tokenizer_dir=transfusion_dir / "tokenizer", extra={"worlds": ["shapes"]})
    back = anygen.load(tmp_path / "again")
    for a, b in zip(model.state_dict().values(), back.diffusion.transfusion.state_dict().values()):
        assert torch.equal(a, b)
    src = picture("white")
    assert back.caption(src, max_new_tokens=6) == tf.caption(src, max_new_tokens=6)
    kw = dict(guidance_scale=1.5, image_guidance_scale=1.2, refuse=False, seed=1)
    assert back.edit(src, "make it red", **kw).tobytes() == tf.edit(src, "make it red", **kw).tobytes()


def test_loss_given_images_are_clean_and_carry_no_diffusion_loss(tf, monkeypatch):
    model = tf.diffusion.transfusion
    v, grid = tf.vocab, (2, 2)
    gid = v.grid_id(grid)
    span = lambda codes: [v.boi, gid, *v.image_ids(torch.tensor(codes)).tolist(), v.eoi]  # noqa: E731
    ids = [v.bos, 5] + span([1, 2, 3, 4]) + span([4, 3, 2, 1]) + [v.eos]
    loss = [0] * 9 + [1] * 9
    seq = latent_sequence(ids, v, grid, loss)
    head = model.head
    from anygen.model.transfusion import codes_to_head

    batch = {"input_ids": torch.tensor([seq.ids]), "labels": torch.tensor([seq.labels]),
             "slots": torch.tensor([seq.slots]), "attention_mask": torch.ones(1, len(seq.ids), dtype=torch.long),
             "images": codes_to_head(head, torch.stack(seq.codes), tf.tokenizer.image),
             "noised": torch.tensor(seq.targets)}
    seen = record_sigmas(monkeypatch, model)
    loss_value, metrics = transfusion_loss(model, batch, torch.Generator().manual_seed(0))
    sig = seen[-1][1]
    assert float(sig[0]) == 0.0 and float(sig[1]) > 0.0 and metrics["noised_images"] == 1
    only_given = dict(batch, noised=torch.tensor([False, False]))
    _, m = transfusion_loss(model, only_given, torch.Generator().manual_seed(0))
    assert m["diffusion_mse"] == 0.0 and m["ce"] > 0


def test_all_task_trainer_on_token_shards(tmp_path, monkeypatch):
    """A few steps on shards written here; the model loads and captions; a resumed run refuses to redo."""
    import fakes
    import anygen
    from anygen.data.shards import ShardWriter
    from anygen.training.transfusion_trainer import train_transfusion

    fakes.use_fake_codecs(monkeypatch)
    tok = fakes.make_tokenizer(image_keep=True)
    tok.save(tmp_path / "tok")
    v = tok.vocab
    gid = v.grid_id((2, 2))
    span = lambda codes: [v.boi, gid, *v.image_ids(torch.tensor(codes)).tolist(), v.eoi]  # noqa: E731
    meta = {"recipe": {"tokenizer": str(tmp_path / "tok")}, "worlds": ["shapes"],
            "tasks": ["text_to_image", "image_to_text", "edit"]}
    with ShardWriter(tmp_path / "shards" / "train", v, 64, meta=meta) as w:
        for k in range(6):
            caption = tok.encode_text("a small red circle")
            w.add([v.bos, *caption, *span([k, 1, 2, 3]), v.eos], [0] * (1 + len(caption)) + [1] * 8, "text_to_image")
            w.add([v.bos, *span([3, k, 1, 0]), *caption, v.eos], [0] * 8 + [1] * (len(caption) + 1), "image_to_text")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer: transfusion\n")
    out = train_transfusion(recipe, [f"data.shards={tmp_path / 'shards'}", f"train.out_dir={tmp_path / 'run'}",
                                     "train.steps=3", "data.batch_size=4", "model.n_layers=1", "model.hidden=32",
                                     "model.n_heads=2", "model.n_kv_heads=1", "model.head_dim=16",
                                     "model.intermediate=64", "model.max_position=128", "diffusion.space=codec",
                                     "diffusion.image_size=2", "diffusion.channels=1", "diffusion.patch_size=1",
                                     "diffusion.time_dim=16", "train.log_every=1"], progress=False)
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["diffusion_mse"] > 0 and r["ce"] > 0 for r in rows)
    gen = anygen.load(out)
    assert gen.meta["tasks"] == meta["tasks"] and gen.diffusion is not None
    assert isinstance(gen.caption(picture("white"), max_new_tokens=4), str)
    with pytest.raises(AnygenError, match="image_position_stride"):
        train_transfusion(recipe, ["model.image_position_stride=16"], progress=False)


def test_the_side_by_side_recipes_name_a_tokenizer_every_clone_has():
    """`data.tokenizer: default` is the bundled model's tokenizer; an unknown name is a one-line error."""
    from pathlib import Path

    from anygen.api import tokenizer_dir
    from anygen.config import load_config
    from anygen.training.t2i_trainer import T2IConfig

    root = Path(__file__).resolve().parent.parent
    for name in ("t2i_tokens", "t2i_diffusion", "t2i_diffusion_pixels"):
        cfg = load_config(T2IConfig, root / "training" / f"{name}.yaml", [])
        assert (tokenizer_dir(cfg.data.tokenizer) / "tokenizer.json").is_file()
    with pytest.raises(AnygenError, match="no bundled model of that name"):
        tokenizer_dir("runs/no-such-tokenizer")
