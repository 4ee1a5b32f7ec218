"""Token shards, packing, the loader (determinism, exact resume) and document isolation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anygen.training.pretokenize import pretokenize
from anygen.data.shards import IGNORE_INDEX, ShardWriter, TokenDataset, TokenShards, make_loader, pack, vocab_fingerprint
from anygen.errors import AnygenError
from anygen.model.decoder import packed_attention_mask
from anygen.vocab import Vocab

import fakes as fake_codecs

VOCAB = Vocab(n_text=100, image_codebook_size=16, image_grids=((2, 2),))


def random_docs(n, seed=0, lo=3, hi=20):
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        L = int(rng.integers(lo, hi))
        ids = rng.integers(0, VOCAB.size, L)
        ids[0] = VOCAB.bos
        loss = (rng.random(L) < 0.7).astype(np.uint8)
        loss[0] = 0
        docs.append((ids, loss, ("a", "b", "c")[i % 3]))
    return docs


def write(path, docs, max_len=64, **kw):
    with ShardWriter(path, VOCAB, max_len, **kw) as w:
        for ids, loss, task in docs:
            w.add(ids, loss, task)
    return path


@pytest.fixture
def shard_dir(tmp_path):
    return write(tmp_path / "train", random_docs(60), shard_tokens=200)


def test_round_trip(tmp_path, shard_dir):
    docs = random_docs(60)
    shards = TokenShards(shard_dir, vocab=VOCAB)
    assert len(shards) == 60 and len(shards.index["shards"]) > 1  # several shard files
    for i, (ids, loss, task) in enumerate(docs):
        got_ids, got_loss = shards[i]
        assert got_ids.tolist() == ids.tolist() and got_loss.tolist() == loss.tolist() and shards.task(i) == task
    index = json.loads((shard_dir / "index.json").read_text())
    assert index["format_version"] == 1 and index["dtype"] == "<u2"
    assert index["vocab_fingerprint"] == vocab_fingerprint(VOCAB)
    assert index["per_task"]["a"]["documents"] == 20
    assert sum(t["tokens"] for t in index["per_task"].values()) == sum(len(d[0]) for d in docs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    with pytest.raises(AnygenError, match="different vocab"):
        TokenShards(shard_dir, vocab=Vocab(n_text=101))
    # uint32 when the vocab is large
    big = Vocab(n_text=70000)
    with ShardWriter(tmp_path / "big", big, 8) as w:
        w.add([big.bos, 69999, 65536], [0, 1, 1], "t")
    s = TokenShards(tmp_path / "big")
    assert s.dtype.itemsize == 4 and s[0][0].tolist() == [big.bos, 69999, 65536]


def test_writes_are_atomic(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "x", VOCAB, 16) as w:
            w.add([VOCAB.bos, 1, 2], [0, 1, 1], "t")
            raise RuntimeError("crash")
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="outside the vocab"):
        with ShardWriter(tmp_path / "y", VOCAB, 16) as w:
            w.add([VOCAB.size], [1], "t")


def test_overflow_truncate_and_drop(tmp_path):
    docs = [(np.arange(1, 31), np.ones(30, np.uint8), "long"), (np.arange(1, 6), np.ones(5, np.uint8), "short")]
    s = TokenShards(write(tmp_path / "t", docs, max_len=16, overflow="truncate"))
    assert s.lengths.tolist() == [16, 5] and s.index["per_task"]["long"]["truncated"] == 1
    s = TokenShards(write(tmp_path / "d", docs, max_len=16, overflow="drop"))
    assert s.lengths.tolist() == [5] and s.index["per_task"]["long"]["dropped"] == 1


def test_pack_places_every_document_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 500)
    for open_rows in (1, 8):
        rows = pack(lengths, rng.permutation(500), 64, open_rows)
        assert sorted(d for r in rows for d in r) == list(range(500))
        assert all(sum(min(lengths[d], 64) for d in r) <= 64 for r in rows)
    fill8 = lengths.sum() / (64 * len(pack(lengths, np.arange(500), 64, 8)))
    fill1 = lengths.sum() / (64 * len(pack(lengths, np.arange(500), 64, 1)))
    assert fill8 > fill1 and fill8 > 0.9


def test_batch_format_and_isolation(shard_dir):
    ds = TokenDataset(shard_dir, seq_len=48, batch_size=4, seed=0)
    shards = ds.shards
    batch = next(iter(ds))
    assert set(batch) == {"input_ids", "labels", "position_ids", "document_ids"}
    for v in batch.values():
        assert v.shape == (4, 48) and v.dtype == torch.long
    for b in range(4):
        doc, pos, ids, labels = (batch[k][b] for k in ("document_ids", "position_ids", "input_ids", "labels"))
        starts = torch.nonzero(doc[1:] != doc[:-1]).flatten() + 1
        for k in [0] + starts.tolist():
            if doc[k] > 0:
                assert pos[k] == 0 and labels[k] == IGNORE_INDEX  # positions reset, no cross-document target
        assert (labels[doc == 0] == IGNORE_INDEX).all() and (ids[doc == 0] == shards.vocab.pad).all()
        # each packed document is exactly one stored document, with its loss mask
        for d in doc.unique().tolist():
            if d == 0:
                continue
            sel = doc == d
            seg = ids[sel].numpy()
            match = [i for i in range(len(shards)) if np.array_equal(shards[i][0], seg)]
            assert match
            ref_ids, ref_loss = shards[match[0]]
            want = np.where(ref_loss > 0, ref_ids, IGNORE_INDEX)
            want[0] = IGNORE_INDEX
            assert labels[sel].tolist() == want.tolist()
            assert pos[sel].tolist() == list(range(int(sel.sum())))
    mask = packed_attention_mask(batch["document_ids"], "eager")  # additive: 0 = attend
    assert mask.shape == (4, 1, 48, 48) and mask.dtype == torch.float32
    same = batch["document_ids"][:, :, None] == batch["document_ids"][:, None, :]
    assert ((mask[:, 0] == 0) == (same & torch.ones(48, 48, dtype=torch.bool).tril())).all()


def test_packed_logits_equal_unpacked_tiny_qwen3():
    """A document packed after another gives the same logits as alone (transformers' Qwen3 + our mask)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    a, b = torch.randint(0, 64, (5,)), torch.randint(0, 64, (7,))
    ids = torch.cat([a, b, torch.zeros(4, dtype=torch.long)])[None]
    doc = torch.tensor([[1] * 5 + [2] * 7 + [0] * 4])
    pos = torch.cat([torch.arange(5), torch.arange(7), torch.zeros(4, dtype=torch.long)])[None]
    for impl in ("eager", "sdpa"):
        cfg._attn_implementation = impl
        model = Qwen3ForCausalLM(cfg).eval()
        with torch.no_grad():
            packed = model(input_ids=ids, attention_mask=packed_attention_mask(doc, impl), position_ids=pos).logits
            alone_b = model(input_ids=b[None]).logits
            alone_a = model(input_ids=a[None]).logits
            leaky = model(input_ids=ids, position_ids=pos).logits  # plain causal mask: doc 2 sees doc 1
        torch.testing.assert_close(packed[0, 5:12], alone_b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[0, :5], alone_a[0], atol=1e-5, rtol=1e-5)
        assert not torch.isnan(packed).any()
        assert (leaky[0, 5:12] - alone_b[0]).abs().max() > 1e-3


def batches(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_loader_deterministic_and_exact_resume(shard_dir):
    ds = TokenDataset(shard_dir, seq_len=32, batch_size=3, seed=5)
    per_epoch = ds.rows_per_epoch()
    n = 2 * per_epoch // 3 + 3  # crosses at least one epoch boundary
    ref = batches(ds, n)
    assert same(ref, batches(TokenDataset(shard_dir, seq_len=32, batch_size=3, seed=5), n))
    assert not same(ref, batches(TokenDataset(shard_dir, seq_len=32, batch_size=3, seed=6), n))
    for k in (1, per_epoch // 3, per_epoch // 3 + 1, n - 1):  # mid-epoch and around the epoch boundary
        first = TokenDataset(shard_dir, seq_len=32, batch_size=3, seed=5)
        it = iter(first)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
        resumed = TokenDataset(shard_dir, seq_len=32, batch_size=3, seed=5)
        resumed.load_state_dict(state)
        assert same(ref[k:], batches(resumed, n - k)), k
    assert ds.epoch >= 1
    other = TokenDataset(shard_dir, seq_len=16, batch_size=3, seed=5)
    with pytest.raises(AnygenError, match="seq_len"):
        other.load_state_dict(state)


def test_epochs_cover_every_document(shard_dir):
    ds = TokenDataset(shard_dir, seq_len=32, batch_size=4, seed=0, loop=False)
    seen = []
    for batch in ds:
        for row_doc, row_ids in zip(batch["document_ids"], batch["input_ids"]):
            for d in row_doc.unique().tolist():
                if d:
                    seen.append(tuple(row_ids[row_doc == d].tolist()))
    stored = [tuple(ds.shards[i][0].tolist()) for i in range(len(ds.shards))]
    assert sorted(seen) == sorted(stored)
    assert same(list(ds), list(ds))  # every iter() is a fresh pass


def test_ranks_split_the_global_batch(shard_dir):
    full = batches(TokenDataset(shard_dir, seq_len=32, batch_size=4, seed=1), 3)
    r0 = batches(TokenDataset(shard_dir, seq_len=32, batch_size=2, seed=1, rank=0, world_size=2), 3)
    r1 = batches(TokenDataset(shard_dir, seq_len=32, batch_size=2, seed=1, rank=1, world_size=2), 3)
    for f, a, b in zip(full, r0, r1):
        for k in f:
            assert torch.equal(f[k], torch.cat([a[k], b[k]]))


def test_pretokenize_end_to_end(tmp_path, capsys):
    tok = fake_codecs.make_tokenizer()
    recipe = tmp_path / "data.yaml"
    recipe.write_text(f"""
tokenizer: unused-in-this-test
out: {tmp_path / 'shards'}
n_train: 120
n_val: 30
n_holdout: 12
seq_len: 96
world: {{seed: 3, holdout: [purple triangle]}}
tasks:
  text_to_image: {{weight: 2, p_null: 0.2}}
  story: {{weight: 1}}
""")
    out = pretokenize(recipe, ["chunk=50"], tokenizer=tok, progress=False)
    printed = capsys.readouterr().out
    assert "text_to_image" in printed and "total" in printed
    train = TokenShards(out / "train", vocab=tok.vocab)
    assert len(train) + sum(t["dropped"] for t in train.index["per_task"].values()) == 120
    per = train.index["per_task"]
    assert per["text_to_image"]["documents"] == 30 and per["edit"]["documents"] == 30
    assert train.index["max_len"] == 96 and train.lengths.max() <= 96
    assert len(TokenShards(out / "val")) == 30 and len(TokenShards(out / "holdout")) == 12
    assert train.index["meta"]["recipe"]["world"]["holdout"] == ["purple triangle"]
    # deterministic: a second run writes the same bytes
    first = (out / "train" / "tokens-00000.bin").read_bytes()
    pretokenize(recipe, ["chunk=7", f"out={tmp_path / 'again'}"], tokenizer=fake_codecs.make_tokenizer(),
                progress=False)
    assert (tmp_path / "again" / "train" / "tokens-00000.bin").read_bytes() == first
    # the holdout split's images are held-out scenes; the loader reads the shards
    batch = next(iter(make_loader(out / "train", 128, 2, seed=0, vocab=tok.vocab)))
    assert batch["input_ids"].shape == (2, 128)
    with pytest.raises(Exception, match="n_holdout"):
        pretokenize(recipe, ["world.holdout=[]"], tokenizer=tok, progress=False)


def test_pretokenize_user_data(tmp_path):
    from PIL import Image as PILImage

    from anygen.document import wav_bytes

    folder = tmp_path / "imgs"
    folder.mkdir()
    colors = {"red": (220, 40, 40), "blue": (40, 90, 220), "green": (40, 170, 70)}
    for name, rgb in colors.items():
        PILImage.new("RGB", (16, 16), rgb).save(folder / f"{name}.png")
    (folder / "captions.jsonl").write_text("\n".join(
        json.dumps({"file": f"{n}.png", "caption": f"a {n} square"}) for n in ("red", "blue")) + "\n")
    (folder / "edits.jsonl").write_text(json.dumps(
        {"source": "red.png", "instruction": "make it blue", "target": "blue.png"}) + "\n")
    (folder / "tone.wav").write_bytes(wav_bytes(np.sin(np.arange(4000) / 5.0).astype(np.float32) * 0.3, 8000))
    (folder / "docs.jsonl").write_text(json.dumps({"segments": [
        {"type": "text", "text": "a tone"}, {"type": "audio", "file": "tone.wav"},
        {"type": "image", "file": "green.png"}]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
tokenizer: unused
out: {tmp_path / 'out'}
n_train: 6
n_val: 0
user:
  image_folders: [{folder}]
  edits: [{folder / 'edits.jsonl'}]
  documents: [{folder / 'docs.jsonl'}]
  repeat: 2
""")
    out = pretokenize(recipe, [], tokenizer=fake_codecs.make_tokenizer(), progress=False)
    per = TokenShards(out / "train").index["per_task"]
    # 6 world examples + 2 × (2 captioned images × 2 tasks + 1 uncaptioned image + 1 edit + 1 document)
    assert sum(t["documents"] for t in per.values()) == 6 + 2 * 7
    assert per["document"]["documents"] == 2 * 2 and per["document"]["loss_tokens"] > 0
