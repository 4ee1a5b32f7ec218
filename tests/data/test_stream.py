"""The shard stream: split by rank and DataLoader worker without duplicates or gaps, exact mid-stream resume."""

import numpy as np
import pytest
import torch

from anygen.data.shards import ShardWriter, TokenShards
from anygen.data.stream import StreamLoader
from anygen.errors import AnygenError
from anygen.vocab import Vocab

VOCAB = Vocab(n_text=100, image_codebook_size=16, image_grids=((2, 2),))
SEQ_LEN = 16


@pytest.fixture
def shard_dir(tmp_path):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "train", VOCAB, max_len=SEQ_LEN, shard_tokens=64) as w:  # several shard files
        for i in range(37):
            ids = rng.integers(0, VOCAB.n_text, int(rng.integers(3, 13)))
            ids[0] = VOCAB.bos
            w.add(ids, np.ones(len(ids), np.uint8), "t")
    return tmp_path / "train"


def batches(loader, n=None):
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def test_two_ranks_by_two_workers_read_every_document_once(shard_dir):
    shards = TokenShards(shard_dir)
    seen = []
    for rank in range(2):
        loader = StreamLoader(shard_dir, SEQ_LEN, batch_size=2, seed=3, rank=rank, world_size=2, num_workers=2,
                              loop=False)
        for b in batches(loader):
            docs = b["documents"].tolist()
            seen += docs
            # the batch holds exactly these documents, in order, each with its own tokens
            rows = [(b["input_ids"][r][b["document_ids"][r] == k]) for r in range(2)
                    for k in range(1, int(b["document_ids"][r].max()) + 1)]
            assert sorted(t.tolist() for t in rows) == sorted(shards[d][0].tolist() for d in docs)
    assert len(seen) == len(shards)  # no document twice
    assert sorted(seen) == list(range(len(shards)))  # and none skipped


def test_resume_mid_stream_continues_the_uninterrupted_stream(shard_dir):
    kw = dict(seq_len=SEQ_LEN, batch_size=2, seed=1, rank=1, world_size=2, num_workers=2)
    full = batches(StreamLoader(shard_dir, **kw), 14)  # crosses epochs: a consumer's share is ~9 documents
    first = StreamLoader(shard_dir, **kw)
    head = batches(first, 5)  # odd: the next batch comes from the second worker
    state = first.state_dict()
    assert state["batches"] == 5 and state["next_worker"] == 1
    again = StreamLoader(shard_dir, **kw)
    again.load_state_dict(state)
    tail = batches(again, 9)
    assert len(head + tail) == len(full)
    for a, b in zip(full, head + tail):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len({d for b in full for d in b["documents"].tolist()}) < sum(len(b["documents"]) for b in full)  # epoch 2


def test_resume_refuses_a_different_split(shard_dir):
    loader = StreamLoader(shard_dir, SEQ_LEN, batch_size=2, num_workers=2)
    batches(loader, 3)
    other = StreamLoader(shard_dir, SEQ_LEN, batch_size=2, num_workers=1)
    with pytest.raises(AnygenError, match="num_workers was 2, now 1"):
        other.load_state_dict(loader.state_dict())
    with pytest.raises(AnygenError, match="cannot feed 80 stream consumers"):
        StreamLoader(shard_dir, SEQ_LEN, batch_size=2, world_size=40, num_workers=2)
