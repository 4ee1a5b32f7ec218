"""Token shards on disk, packing into fixed-length rows, and a deterministic resumable loader.

On disk (one directory per split, written atomically: temp directory + rename):

    index.json           format, format_version, dtype, vocab (+ fingerprint), max_len, overflow
                         policy and counts, tasks, per-task totals, shard files, and per
                         document: shard, offset, length, task (index into `tasks`)
    tokens-00000.bin     ids, little-endian uint16 (vocab <= 65536) or uint32, all documents back to back
    loss-00000.bin       uint8, parallel to the ids: 1 where the token is a training target
    ...                  a new shard file pair every `shard_tokens` tokens

Documents longer than `max_len` (the recipe's `seq_len`) are truncated to it (the default;
the tail is lost, the count is reported and kept in the index) or dropped (`overflow:
drop`). They are never split: a continuation without its beginning would teach the model
to start mid-image.

Packing (done by the loader, per epoch, so every epoch packs differently): documents in
the epoch's order are placed first-fit into a window of `open_rows` partly filled rows of
`seq_len` tokens; the rest of a row is padding. Each batch row carries
`position_ids` that restart at 0 at each document and `document_ids` 1, 2, … per document
(0 = padding). `anygen.model.decoder.packed_attention_mask` turns these into a block-diagonal
causal mask, so no token attends across documents; labels are -100 at padding, where the
loss mask is 0, and at every document's first token.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anygen.errors import AnygenError
from anygen.io import atomic_directory, atomic_write_bytes
from anygen.vocab import Vocab

FORMAT = "anygen.shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
IGNORE_INDEX = -100


def vocab_fingerprint(vocab: Vocab) -> str:
    """A short hash of the vocab layout (sizes, grids, audio layout)."""
    return hashlib.sha256(json.dumps(vocab.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def token_dtype(vocab: Vocab) -> np.dtype:
    return np.dtype("<u2") if vocab.size <= 2 ** 16 else np.dtype("<u4")


# ---- writing ------------------------------------------------------------------------------
class ShardWriter:
    """Append documents (ids + loss mask + task name); `close()` writes the index and publishes
    the directory atomically. Use as a context manager: an exception leaves no directory."""

    def __init__(self, directory: str | os.PathLike, vocab: Vocab, max_len: int, overflow: str = "truncate",
                 shard_tokens: int = 1 << 27, meta: dict | None = None):
        if overflow not in ("truncate", "drop"):
            raise ValueError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        self.directory = Path(directory)
        self.vocab, self.max_len, self.overflow = vocab, int(max_len), overflow
        self.shard_tokens = max(int(shard_tokens), self.max_len)
        self.meta = meta or {}
        self.dtype = token_dtype(vocab)
        self._ctx = atomic_directory(self.directory)
        self._tmp = self._ctx.__enter__()
        self._shards: list[dict] = []
        self._files = None
        self._doc_shard: list[int] = []
        self._doc_offset: list[int] = []
        self._doc_length: list[int] = []
        self._doc_task: list[int] = []
        self.tasks: list[str] = []
        self.truncated: Counter = Counter()
        self.dropped: Counter = Counter()
        self.documents: Counter = Counter()
        self.tokens: Counter = Counter()
        self.loss_tokens: Counter = Counter()
        self.closed = False

    def _open_shard(self) -> None:
        self._close_files()
        k = len(self._shards)
        entry = {"tokens": f"tokens-{k:05d}.bin", "loss": f"loss-{k:05d}.bin", "n_tokens": 0}
        self._shards.append(entry)
        self._files = (open(self._tmp / entry["tokens"], "wb"), open(self._tmp / entry["loss"], "wb"))

    def _close_files(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            self._files = None

    def add(self, ids, loss, task: str) -> bool:
        """Append one document; returns False when it was dropped (too long, `overflow: drop`)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        loss = np.asarray(loss, dtype=np.uint8).reshape(-1)
        if len(ids) != len(loss):
            raise ValueError(f"ids and loss differ in length ({len(ids)} vs {len(loss)})")
        if len(ids) == 0:
            raise ValueError("empty document")
        if ids.min() < 0 or ids.max() >= self.vocab.size:
            raise ValueError(f"token id outside the vocab [0, {self.vocab.size}): {int(ids.min())}..{int(ids.max())}")
        if len(ids) > self.max_len:
            if self.overflow == "drop":
                self.dropped[task] += 1
                return False
            self.truncated[task] += 1
            ids, loss = ids[: self.max_len], loss[: self.max_len]
        if task not in self.tasks:
            self.tasks.append(task)
        if self._files is None or self._shards[-1]["n_tokens"] + len(ids) > self.shard_tokens:
            self._open_shard()
        shard = self._shards[-1]
        self._doc_shard.append(len(self._shards) - 1)
        self._doc_offset.append(shard["n_tokens"])
        self._doc_length.append(len(ids))
        self._doc_task.append(self.tasks.index(task))
        self._files[0].write(ids.astype(self.dtype).tobytes())
        self._files[1].write(np.minimum(loss, 1).astype(np.uint8).tobytes())
        shard["n_tokens"] += len(ids)
        self.documents[task] += 1
        self.tokens[task] += len(ids)
        self.loss_tokens[task] += int(loss.sum())
        return True

    def summary(self) -> dict:
        tasks = sorted(set(self.tasks) | set(self.dropped))
        return {t: {"documents": self.documents[t], "tokens": self.tokens[t], "loss_tokens": self.loss_tokens[t],
                    "truncated": self.truncated[t], "dropped": self.dropped[t]} for t in tasks}

    def close(self) -> Path:
        if self.closed:
            return self.directory
        self._close_files()
        index = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": self.dtype.str,
            "vocab": self.vocab.to_dict(), "vocab_fingerprint": vocab_fingerprint(self.vocab),
            "max_len": self.max_len, "overflow": self.overflow,
            "n_documents": len(self._doc_length), "n_tokens": int(sum(self._doc_length)),
            "tasks": self.tasks, "per_task": self.summary(), "shards": self._shards,
            "documents": {"shard": self._doc_shard, "offset": self._doc_offset, "length": self._doc_length,
                          "task": self._doc_task},
            "meta": self.meta,
        }
        atomic_write_bytes(self._tmp / INDEX_FILE, json.dumps(index, separators=(",", ":")).encode())
        self._ctx.__exit__(None, None, None)
        self.closed = True
        return self.directory

    def abort(self) -> None:
        if not self.closed:
            self._close_files()
            try:
                self._ctx.__exit__(AnygenError, AnygenError("aborted"), None)
            except AnygenError:
                pass
            self.closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# ---- reading ------------------------------------------------------------------------------
class TokenShards:
    """Read-only view of a shard directory: `shards[i] -> (ids, loss)` as numpy arrays (memmapped)."""

    def __init__(self, directory: str | os.PathLike, vocab: Vocab | None = None):
        self.directory = Path(directory)
        path = self.directory / INDEX_FILE
        if not path.exists():
            raise AnygenError(f"{self.directory}: not a token shard directory (missing {INDEX_FILE}; "
                              f"run `anygen pretokenize RECIPE.yaml` first)")
        try:
            index = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AnygenError(f"{path}: not valid JSON ({e})") from None
        if index.get("format") != FORMAT or index.get("format_version") != FORMAT_VERSION:
            raise AnygenError(f"{path}: unsupported shard format {index.get('format')!r} version "
                              f"{index.get('format_version')!r} (this anygen reads {FORMAT} {FORMAT_VERSION})")
        self.index = index
        self.vocab = Vocab.from_dict(index["vocab"])
        if vocab is not None and vocab_fingerprint(vocab) != index["vocab_fingerprint"]:
            raise AnygenError(f"{self.directory}: shards were made with a different vocab "
                              f"({index['vocab']}) than this tokenizer's ({vocab.to_dict()}); pretokenize again")
        self.dtype = np.dtype(index["dtype"])
        self.tasks: list[str] = list(index["tasks"])
        docs = index["documents"]
        self.doc_shard = np.asarray(docs["shard"], dtype=np.int64)
        self.doc_offset = np.asarray(docs["offset"], dtype=np.int64)
        self.lengths = np.asarray(docs["length"], dtype=np.int64)
        self.doc_task = np.asarray(docs["task"], dtype=np.int64)
        self._tokens, self._loss = [], []
        for s in index["shards"]:
            n = int(s["n_tokens"])
            tok_path, loss_path = self.directory / s["tokens"], self.directory / s["loss"]
            for p, itemsize in ((tok_path, self.dtype.itemsize), (loss_path, 1)):
                if not p.exists() or p.stat().st_size != n * itemsize:
                    raise AnygenError(f"{p}: missing or wrong size (expected {n * itemsize} bytes); "
                                      f"the shard directory is damaged, pretokenize again")
            self._tokens.append(np.memmap(tok_path, dtype=self.dtype, mode="r", shape=(n,)))
            self._loss.append(np.memmap(loss_path, dtype=np.uint8, mode="r", shape=(n,)))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, o, n = int(self.doc_shard[i]), int(self.doc_offset[i]), int(self.lengths[i])
        return self._tokens[s][o:o + n].astype(np.int64), self._loss[s][o:o + n].astype(np.uint8)

    def task(self, i: int) -> str:
        return self.tasks[int(self.doc_task[i])]

    @property
    def fingerprint(self) -> str:
        return self.index["vocab_fingerprint"]


# ---- packing and the attention mask --------------------------------------------------------
def pack(lengths: np.ndarray, order: np.ndarray, seq_len: int, open_rows: int = 8) -> list[list[int]]:
    """Documents (in `order`) -> rows of document indices, each row's total length <= seq_len.

    First-fit over a window of `open_rows` partly filled rows (1 = next-fit); when the window
    is full, its oldest row is closed. Lengths over `seq_len` count as `seq_len` (truncated).
    Deterministic: the same inputs give the same rows.
    """
    rows: list[list[int]] = []
    window: list[list] = []  # [remaining, [docs]]
    for d in order.tolist():
        n = min(int(lengths[d]), seq_len)
        for slot in window:
            if slot[0] >= n:
                slot[0] -= n
                slot[1].append(d)
                break
        else:
            window.append([seq_len - n, [d]])
            if len(window) > open_rows:
                rows.append(window.pop(0)[1])
    rows.extend(slot[1] for slot in window)
    return rows


def _row_tensors(shards: TokenShards, docs: list[int], seq_len: int, pad_id: int) -> tuple[np.ndarray, ...]:
    T = seq_len
    ids = np.full(T, pad_id, dtype=np.int64)
    labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros(T, dtype=np.int64)
    doc = np.zeros(T, dtype=np.int64)
    at = 0
    for k, d in enumerate(docs, start=1):
        t, m = shards[d]
        n = min(len(t), T - at)
        t, m = t[:n], m[:n]
        ids[at:at + n] = t
        labels[at:at + n] = np.where(m > 0, t, IGNORE_INDEX)
        labels[at] = IGNORE_INDEX  # a document's first token is never predicted from the previous one
        pos[at:at + n] = np.arange(n)
        doc[at:at + n] = k
        at += n
    return ids, labels, pos, doc


def packed_batch(shards: TokenShards, rows: list[list[int]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of document indices -> the loader's batch (input_ids, labels, position_ids, document_ids; B × seq_len)."""
    parts = [_row_tensors(shards, r, seq_len, pad_id) for r in rows]
    names = ("input_ids", "labels", "position_ids", "document_ids")
    return {name: torch.from_numpy(np.stack([p[i] for p in parts])) for i, name in enumerate(names)}


# ---- the loader -----------------------------------------------------------------------------
def check_loader_args(seq_len: int, batch_size: int, rank: int, world_size: int) -> None:
    """One-line errors for a loader's row length, rows per batch and process rank."""
    if seq_len < 2:
        raise AnygenError(f"seq_len must be >= 2, got {seq_len}")
    if batch_size < 1:
        raise AnygenError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise AnygenError(f"rank {rank} outside 0..{world_size - 1}")


@dataclass
class _Position:
    epoch: int = 0
    row: int = 0  # rows of this epoch's plan already consumed


class TokenDataset:
    """Infinite (or one-pass) iterable of packed batches from a shard directory.

    Batch: dict of tensors (B = batch_size, T = seq_len)
        input_ids     (B, T) long   pad id at padding
        labels        (B, T) long   input_ids where the loss applies, -100 elsewhere (the model shifts)
        position_ids  (B, T) long   0, 1, … restarting at each packed document (0 at padding)
        document_ids  (B, T) long   1, 2, … per document in the row, 0 = padding

    Epoch e packs the documents in the order of a permutation seeded by (seed, e) (or in
    file order without `shuffle`); rows stream across epoch ends, so every batch is full.
    With `world_size` > 1 each global batch holds batch_size × world_size rows and rank r
    takes rows r·B … (r+1)·B − 1. `state_dict()` after k batches, loaded into a fresh
    dataset, continues with batch k + 1 exactly. `loop=False` gives one pass over epoch 0,
    its last batch padded with empty rows.
    """

    def __init__(self, shard_dir: str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True, *, rank: int = 0, world_size: int = 1, loop: bool = True,
                 open_rows: int = 8, vocab: Vocab | None = None):
        check_loader_args(seq_len, batch_size, rank, world_size)
        self.shards = TokenShards(shard_dir, vocab=vocab)
        if len(self.shards) == 0:
            raise AnygenError(f"{shard_dir}: the shard directory holds no documents")
        self.seq_len, self.batch_size, self.seed, self.shuffle = int(seq_len), int(batch_size), int(seed), shuffle
        self.rank, self.world_size, self.loop, self.open_rows = rank, world_size, loop, open_rows
        self.pad_id = self.shards.vocab.pad
        self.truncated = int((self.shards.lengths > self.seq_len).sum())  # documents cut at load time
        self._pos = _Position()
        self._plan_epoch, self._plan = -1, []

    # -- plan --
    def _rows(self, epoch: int) -> list[list[int]]:
        if self._plan_epoch != epoch:
            n = len(self.shards)
            order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                     else np.arange(n))
            self._plan = pack(self.shards.lengths, order, self.seq_len, self.open_rows)
            self._plan_epoch = epoch
        return self._plan

    def rows_per_epoch(self) -> int:
        return len(self._rows(0))

    def _batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        return packed_batch(self.shards, rows, self.seq_len, self.pad_id)

    # -- iteration --
    def __iter__(self):
        global_rows = self.batch_size * self.world_size
        if not self.loop:  # each iteration is a fresh pass
            self._pos = _Position()
        while True:
            rows: list[list[int]] = []
            while len(rows) < global_rows:
                plan = self._rows(self._pos.epoch)
                if self._pos.row >= len(plan):
                    if not self.loop:
                        break
                    self._pos = _Position(self._pos.epoch + 1, 0)
                    continue
                take = plan[self._pos.row:self._pos.row + global_rows - len(rows)]
                rows += take
                self._pos = _Position(self._pos.epoch, self._pos.row + len(take))
            if not rows:
                return
            rows += [[] for _ in range(global_rows - len(rows))]  # one-pass tail: empty rows
            yield self._batch(rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])
            if not self.loop and self._pos.row >= len(self._rows(self._pos.epoch)):
                return

    # -- resume --
    def state_dict(self) -> dict:
        return {"epoch": self._pos.epoch, "row": self._pos.row, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "shuffle": self.shuffle,
                "open_rows": self.open_rows, "n_documents": len(self.shards), "vocab_fingerprint": self.shards.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "shuffle", "open_rows", "n_documents", "vocab_fingerprint"):
            if key in state and state[key] != mine[key]:
                raise AnygenError(f"cannot resume the data position: {key} was {state[key]!r}, now {mine[key]!r}")
        self._pos = _Position(int(state["epoch"]), int(state["row"]))

    @property
    def epoch(self) -> int:
        return self._pos.epoch


def make_loader(shard_dir: str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0, *,
                shuffle: bool = True, loop: bool = True, rank: int = 0, world_size: int = 1,
                vocab: Vocab | None = None) -> TokenDataset:
    """A TokenDataset over `shard_dir` (e.g. `data/shapes/train`); `vocab` checks the fingerprint."""
    return TokenDataset(shard_dir, seq_len, batch_size, seed, shuffle, rank=rank, world_size=world_size,
                        loop=loop, vocab=vocab)
