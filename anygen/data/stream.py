"""Token shards as a stream split by rank and by DataLoader worker, resumable mid-stream.

    loader = StreamLoader(shard_dir, seq_len=512, batch_size=8, rank=r, world_size=R, num_workers=W)
    for batch in loader: ...            # dicts as anygen.data.shards.TokenDataset yields, plus "documents"
    state = loader.state_dict()         # after k batches; a fresh loader + load_state_dict continues at k + 1

The shard format is `anygen.data.shards` (pretokenized documents, memmapped). Epoch e visits
the documents in the order of a permutation seeded by (seed, e) (file order without
`shuffle`). The stream has R × W consumers, consumer c = rank · W + worker; consumer c takes
the documents at positions c, c + R·W, c + 2·R·W, … of each epoch's order, so within an epoch
every document goes to exactly one consumer. A consumer packs its documents, in order, into
batches of `batch_size` rows of `seq_len` tokens: each document goes first-fit into the
batch's rows, and the first one that fits nowhere closes the batch and opens the next. A
consumer's place in the stream is therefore two numbers at every batch boundary, (epoch, index
into its share of that epoch), which each batch reports back; `state_dict` keeps them per
worker with the worker whose batch comes next. A DataLoader hands out its workers' batches in
turn (worker 0, 1, …), so on resume worker i plays the part of worker (i + next) mod W: the
batches then come in exactly the order the uninterrupted stream would have given them.

Ranks may differ by a batch or so per epoch in how much data they see; each consumer moves
through epochs at its own pace. A resume must keep R, W, the seed, the lengths and the
shards; a change is refused with a message naming it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from anygen.data.shards import TokenShards, check_loader_args, packed_batch
from anygen.errors import AnygenError
from anygen.vocab import Vocab

STATE_FORMAT = 1  # StreamLoader.state_dict; bump when its layout changes
# what state_dict records and load_state_dict insists on: a change would split or pack the documents differently
FIXED = ("seed", "seq_len", "batch_size", "shuffle", "world_size", "num_workers", "n_documents", "vocab_fingerprint")


def consumer_documents(n_documents: int, epoch: int, consumer: int, consumers: int, seed: int,
                       shuffle: bool = True) -> np.ndarray:
    """The document indices consumer `consumer` of `consumers` visits in `epoch`, in order."""
    order = np.random.default_rng([seed, epoch]).permutation(n_documents) if shuffle else np.arange(n_documents)
    return order[consumer::consumers]


class DocumentStream(torch.utils.data.IterableDataset):
    """The batches of one rank's consumers; meant to be read through `StreamLoader`.

    Under a DataLoader with W workers, worker i is consumer rank · W + (i + rotate) mod W and
    starts at `starts[that worker]` = (epoch, index). Each batch carries "stream_position":
    (worker, epoch, index) where that consumer continues after it, and "documents": the
    document indices it packed, in order.
    """

    def __init__(self, shard_dir: str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True, *, rank: int = 0, world_size: int = 1, loop: bool = True):
        super().__init__()
        self.shard_dir, self.seq_len, self.batch_size = shard_dir, int(seq_len), int(batch_size)
        self.seed, self.shuffle, self.rank, self.world_size, self.loop = int(seed), shuffle, rank, world_size, loop
        self.starts: list[tuple[int, int]] | None = None  # per worker; None = all at (0, 0)
        self.rotate = 0

    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        n = 1 if info is None else info.num_workers
        return ((0 if info is None else info.id) + self.rotate) % n, n

    def __iter__(self):
        worker, n_workers = self._worker()
        shards = TokenShards(self.shard_dir)  # opened in the worker: memmaps are not shared across processes
        consumers, consumer = self.world_size * n_workers, self.rank * n_workers + worker
        epoch, index = self.starts[worker] if self.starts else (0, 0)
        docs = consumer_documents(len(shards), epoch, consumer, consumers, self.seed, self.shuffle)
        T, B = self.seq_len, self.batch_size
        rows: list[list[int]] = []
        room: list[int] = []
        taken: list[int] = []
        while True:
            if index >= len(docs):  # the consumer's share of this epoch is done
                if not self.loop:
                    break
                epoch, index = epoch + 1, 0
                docs = consumer_documents(len(shards), epoch, consumer, consumers, self.seed, self.shuffle)
                if len(docs) == 0:  # more consumers than documents
                    raise AnygenError(f"{self.shard_dir}: {len(shards)} documents cannot feed {consumers} "
                                      f"stream consumers (ranks × workers)")
                continue
            d = int(docs[index])
            n = min(int(shards.lengths[d]), T)
            slot = next((i for i, r in enumerate(room) if r >= n), None)
            if slot is None and len(rows) < B:
                rows.append([])
                room.append(T)
                slot = len(rows) - 1
            if slot is None:  # the batch is full: it ends here, and d opens the next one
                yield self._emit(shards, rows, taken, worker, epoch, index)
                rows, room, taken = [], [], []
                continue
            rows[slot].append(d)
            room[slot] -= n
            taken.append(d)
            index += 1
        if rows:  # one pass: the last, partly filled batch
            yield self._emit(shards, rows, taken, worker, epoch, index)

    def _emit(self, shards: TokenShards, rows, taken, worker: int, epoch: int, index: int) -> dict:
        rows = rows + [[] for _ in range(self.batch_size - len(rows))]
        batch = packed_batch(shards, rows, self.seq_len, shards.vocab.pad)
        batch["documents"] = torch.tensor(taken, dtype=torch.long)
        batch["stream_position"] = torch.tensor([worker, epoch, index], dtype=torch.long)
        return batch


class StreamLoader:
    """Endless (or, with `loop=False`, one-pass) packed batches of one rank, read by `num_workers` processes.

    Batches are TokenDataset's dicts (input_ids, labels, position_ids, document_ids; B × T)
    plus "documents" (the shard indices of the documents in the batch). `state_dict()` after
    k batches, loaded into a fresh StreamLoader with the same settings, continues with batch
    k + 1 exactly, whatever the workers had read ahead.
    """

    def __init__(self, shard_dir: str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True, *, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 loop: bool = True, vocab: Vocab | None = None):
        check_loader_args(seq_len, batch_size, rank, world_size)
        if num_workers < 0:
            raise AnygenError(f"num_workers must be >= 0, got {num_workers}")
        shards = TokenShards(shard_dir, vocab=vocab)  # checks the directory and the vocab once, here
        consumers = world_size * max(1, num_workers)
        if len(shards) < consumers:
            raise AnygenError(f"{shard_dir}: {len(shards)} documents cannot feed {consumers} stream consumers "
                              f"({world_size} ranks × {max(1, num_workers)} workers)")
        self.vocab = shards.vocab
        self.dataset = DocumentStream(shard_dir, seq_len, batch_size, seed, shuffle, rank=rank,
                                      world_size=world_size, loop=loop)
        self.num_workers = num_workers
        self._fixed = {"seed": int(seed), "seq_len": int(seq_len), "batch_size": int(batch_size),
                       "shuffle": bool(shuffle), "world_size": int(world_size), "num_workers": int(num_workers),
                       "n_documents": len(shards), "vocab_fingerprint": shards.fingerprint}
        self.positions: list[list[int]] = [[0, 0] for _ in range(max(1, num_workers))]
        self.next_worker = 0
        self.batches = 0

    def __iter__(self):
        self.dataset.starts = [tuple(p) for p in self.positions]
        self.dataset.rotate = self.next_worker
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                             persistent_workers=False)
        n = len(self.positions)
        for batch in loader:
            worker, epoch, index = batch.pop("stream_position").tolist()
            self.positions[worker] = [epoch, index]
            self.next_worker = (worker + 1) % n
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, **self._fixed, "positions": [list(p) for p in self.positions],
                "next_worker": self.next_worker, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise AnygenError(f"cannot resume the data stream: state format {state.get('format')!r}, "
                              f"this anygen reads {STATE_FORMAT}")
        for key in FIXED:
            if state.get(key) != self._fixed[key]:
                raise AnygenError(f"cannot resume the data stream: {key} was {state.get(key)!r}, "
                                  f"now {self._fixed[key]!r}")
        self.positions = [[int(e), int(i)] for e, i in state["positions"]]
        self.next_worker, self.batches = int(state["next_worker"]), int(state["batches"])
