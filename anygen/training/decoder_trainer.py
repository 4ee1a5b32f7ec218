"""Decoder training with accelerate: one loop for a CPU core, several processes, or GPUs.

    train_decoder("training/shapes.yaml", ["train.steps=100"]) -> Path of the final model

Recipe (`TrainConfig`): sections `model` (DecoderConfig), `loss` (LossConfig), `optim`,
`train`, `data`. AdamW with warmup + cosine or WSD, gradient clipping and
accumulation, bf16 autocast on CUDA (fp32 on CPU), tqdm with per-modality loss and
tokens/s, JSONL metrics (+ TensorBoard through accelerate's trackers), periodic eval,
atomic checkpoints.

Checkpoint `out_dir/checkpoints/step_XXXXXXXX/` (written to a temp dir, then renamed):
    model/                      the decoder (HF safetensors + anygen_decoder.json)
    optimizer.safetensors/.json AdamW state by parameter name / param groups (no pickle anywhere)
    rng.safetensors             torch CPU (+ CUDA) generator states, one set per process
    trainer_state.json          step, data position, python/numpy RNG per process, bad-step count
`resume=True` restores all of it, so N steps + resume + N steps equals 2N steps
(bitwise on CPU). The learning rate is a pure function of the step.

A non-finite loss or gradient norm skips the update (weights and optimizer untouched)
with a warning; `train.max_bad_steps` in a row abort with `TrainingDiverged`.

Data: any object whose `__iter__` yields batches (dicts: input_ids, labels,
position_ids, document_ids; see anygen.data.shards) and whose `state_dict()` after k
batches, loaded into a fresh object, continues at batch k+1. `data.kind: shards` uses
`anygen.data.shards.TokenDataset` (each process takes its rows of a global batch);
`data.kind: synthetic` makes random packed documents (benchmarks, smoke tests).

Run several processes with `accelerate launch [--config_file training/ddp.yaml]
-m anygen.training.decoder_trainer RECIPE.yaml [key=value ...] [--resume]`.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anygen.config import check, choice, load_config, to_dict
from anygen.errors import AnygenError
from anygen.io import atomic_directory, atomic_write_bytes
from anygen.model.positions import ImagePositions
from anygen.model.decoder import (N_STATS, DecoderConfig, LossConfig, build_decoder, count_parameters,
                                  decoder_loss, forward_logits, save_decoder, stats_to_metrics)
from anygen.vocab import Vocab

CHECKPOINT_FORMAT = 1  # trainer_state.json; bump when the checkpoint layout changes


class TrainingDiverged(AnygenError):
    """Too many non-finite losses in a row."""


# ---- recipe schema --------------------------------------------------------------------------
@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr × min_lr_ratio
    schedule: str = choice("cosine", "wsd", "constant")
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly to the final lr
    weight_decay: float = 0.1  # on matrices only (not embeddings, norms, biases)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off

    def __post_init__(self):
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 < self.decay_fraction <= 1, "decay_fraction", "must be in (0, 1]")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass
class TrainSection:
    out_dir: str = "runs/decoder"
    steps: int = 1000  # optimizer steps (each: grad_accum micro-batches per process)
    stop_at: int = 0  # stop (with a checkpoint) after this step in this invocation; 0 = run to `steps`
    grad_accum: int = 1
    seed: int = 0
    mixed_precision: str = choice("auto", "no", "bf16")  # auto: bf16 on CUDA, fp32 on CPU
    threads: int = 0  # torch CPU threads per process; 0 = torch's default
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end (when there is eval data)
    eval_batches: int = 8
    save_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # abort after this many non-finite steps in a row
    tensorboard: bool = False
    progress: bool = True
    init_from: str | None = None  # a local HF causal LM directory to extend (anygen.model.init_from)
    init_noise: float = 0.1  # new rows: mean + init_noise × std × N(0, 1)
    train_only_new_rows: bool = False  # with init_from: Anole's recipe (only new embedding rows train)
    init_weights: str | None = None  # an anygen decoder directory (same architecture; vocab equal or a prefix)

    def __post_init__(self):
        for name in ("steps", "grad_accum", "log_every", "eval_batches", "keep_checkpoints", "max_bad_steps"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("stop_at", "threads", "eval_every", "save_every"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(not self.train_only_new_rows or self.init_from, "train_only_new_rows", "needs train.init_from")
        check(not (self.init_weights and self.init_from), "init_weights", "cannot be combined with init_from")


@dataclass
class DataSection:
    kind: str = choice("shards", "synthetic")
    shard_dir: str = ""  # token shards (anygen pretokenize) for training
    eval_shard_dir: str = ""  # optional held-out shards
    seq_len: int = 512
    batch_size: int = 16  # rows per process per micro-batch
    seed: int = 0  # shuffling / synthetic documents
    tokenizer_dir: str = ""  # MultimodalTokenizer dir, copied into the model as tokenizer/ (default: the shards')
    vocab_file: str = ""  # a Vocab JSON (Vocab.to_dict); shards and tokenizers carry their own vocab
    synthetic_docs: int = 0  # synthetic: 0 = endless random documents, n = cycle n fixed documents
    synthetic_doc_len: tuple[int, int] = (16, 128)

    def __post_init__(self):
        check(self.seq_len >= 2, "seq_len", f"must be >= 2, got {self.seq_len}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.kind != "shards" or self.shard_dir, "shard_dir", "is required when data.kind is shards")
        lo, hi = self.synthetic_doc_len
        check(2 <= lo <= hi, "synthetic_doc_len", f"must be [min, max] with 2 <= min <= max, got {[lo, hi]}")


@dataclass
class TrainConfig:
    model: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)


def lr_at(step: int, cfg: OptimConfig, total: int) -> float:
    """Learning rate of update `step` (0-based): linear warmup, then cosine or WSD to lr·min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))
    decay_start = max(cfg.warmup_steps, total - int(round(cfg.decay_fraction * total)))
    if step < decay_start:
        return cfg.lr
    t = min(1.0, (step - decay_start + 1) / max(1, total - decay_start))
    return cfg.lr + (lo - cfg.lr) * t


# ---- data -------------------------------------------------------------------------------------
class SyntheticBatches:
    """Random packed documents in the loader's batch format; batch k is a pure function of (seed, k).

    `n_docs > 0` draws documents from a fixed pool of n (something a model can memorise).
    Each process takes its `batch_size` rows of a global batch, like TokenDataset.
    """

    def __init__(self, vocab: Vocab, seq_len: int, batch_size: int, seed: int = 0, n_docs: int = 0,
                 doc_len: tuple[int, int] = (16, 128), rank: int = 0, world_size: int = 1):
        self.vocab, self.seq_len, self.batch_size, self.seed = vocab, seq_len, batch_size, seed
        self.doc_len = (min(doc_len[0], seq_len), min(doc_len[1], seq_len))
        self.rank, self.world_size = rank, world_size
        self.index = 0
        self.pool = [self._doc(torch.Generator().manual_seed(seed * 1_000_003 + 7 + i)) for i in range(n_docs)]

    def _doc(self, g: torch.Generator) -> torch.Tensor:
        n = int(torch.randint(self.doc_len[0], self.doc_len[1] + 1, (1,), generator=g))
        ids = torch.randint(self.vocab.image_start if self.vocab.image_codebook_size else 0, self.vocab.size,
                            (n,), generator=g)
        text = torch.randint(0, self.vocab.n_text, (n,), generator=g)
        ids = torch.where(torch.rand(n, generator=g) < 0.5, text, ids)
        ids[0] = self.vocab.bos
        return ids

    def _row(self, g: torch.Generator):
        T = self.seq_len
        ids = torch.full((T,), self.vocab.pad, dtype=torch.long)
        labels = torch.full((T,), -100, dtype=torch.long)
        pos = torch.zeros(T, dtype=torch.long)
        doc = torch.zeros(T, dtype=torch.long)
        at, k = 0, 0
        while at < T:
            d = self.pool[int(torch.randint(len(self.pool), (1,), generator=g))] if self.pool else self._doc(g)
            n = min(len(d), T - at)
            if n < 2:
                break
            k += 1
            ids[at:at + n], labels[at + 1:at + n] = d[:n], d[1:n]
            pos[at:at + n], doc[at:at + n] = torch.arange(n), k
            at += n
        return ids, labels, pos, doc

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 1_000_000_007 + k)
        rows = [self._row(g) for _ in range(self.batch_size * self.world_size)]
        rows = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        names = ("input_ids", "labels", "position_ids", "document_ids")
        return {n: torch.stack([r[i] for r in rows]) for i, n in enumerate(names)}

    def __iter__(self):
        while True:
            b = self.batch(self.index)
            self.index += 1
            yield b

    def state_dict(self) -> dict:
        return {"index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])


def _tokenizer_vocab(directory: Path) -> Vocab:
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        raise AnygenError(f"data.tokenizer_dir: {directory} is not a tokenizer directory (missing tokenizer.json)")
    return Vocab.from_dict(json.loads(path.read_text())["vocab"])


def resolve_tokenizer_dir(cfg: TrainConfig) -> Path | None:
    """data.tokenizer_dir, else the tokenizer the shards were made with (when it still exists)."""
    if cfg.data.tokenizer_dir:
        return Path(cfg.data.tokenizer_dir)
    if cfg.data.kind == "shards":
        index = Path(cfg.data.shard_dir) / "index.json"
        if index.exists():
            tok = ((json.loads(index.read_text()).get("meta") or {}).get("recipe") or {}).get("tokenizer")
            if tok and (Path(tok) / "tokenizer.json").exists():
                return Path(tok)
    return None


def _resolve_vocab(cfg: TrainConfig, vocab: Vocab | None) -> Vocab:
    if vocab is not None:
        return vocab
    if cfg.data.tokenizer_dir:
        return _tokenizer_vocab(Path(cfg.data.tokenizer_dir))
    if cfg.data.vocab_file:
        path = Path(cfg.data.vocab_file)
        if not path.exists():
            raise AnygenError(f"data.vocab_file: {path} not found")
        return Vocab.from_dict(json.loads(path.read_text()))
    if cfg.data.kind == "shards":
        from anygen.data.shards import TokenShards

        return TokenShards(cfg.data.shard_dir).vocab
    raise AnygenError("data.vocab_file is required for synthetic data (a Vocab JSON)")


def open_data(cfg: TrainConfig, vocab: Vocab, rank: int = 0, world_size: int = 1, split: str = "train"):
    """The recipe's data source for this process (None for a missing eval split)."""
    d = cfg.data
    if d.kind == "synthetic":
        seed = d.seed if split == "train" else d.seed + 1
        return SyntheticBatches(vocab, d.seq_len, d.batch_size, seed, d.synthetic_docs, d.synthetic_doc_len,
                                rank, world_size)
    from anygen.data.shards import make_loader

    shard_dir = d.shard_dir if split == "train" else d.eval_shard_dir
    if not shard_dir:
        return None
    return make_loader(shard_dir, d.seq_len, d.batch_size, d.seed, shuffle=split == "train",
                       loop=split == "train", rank=rank, world_size=world_size, vocab=vocab)


class _Stream:
    """Endless batches from a source; a finite iterator is restarted (the source tracks its epoch)."""

    def __init__(self, source):
        self.source, self.it = source, None

    def next(self) -> dict:
        for _ in range(2):
            if self.it is None:
                self.it = iter(self.source)
            try:
                return next(self.it)
            except StopIteration:
                self.it = None
        raise AnygenError("the training data yields no batches")


# ---- checkpoint I/O (safetensors + JSON) ---------------------------------------------------
def _flatten_optimizer(sd: dict) -> tuple[dict, dict]:
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    def key(i: str):  # parameter index (torch.optim) or parameter name (FSDP full state dict)
        return int(i) if i.isdigit() else i

    state = {key(i): dict(v) for i, v in meta["state"].items()}
    for flat, t in tensors.items():
        idx, name = flat.rsplit(".", 1)
        state.setdefault(key(idx), {})[name] = t
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_state() -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, tensors: dict, rank: int) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors[f"rank{rank}.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith(f"rank{rank}.cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def _deepen(sd: dict, n_layers: int) -> dict:
    """A checkpoint of n layers -> one of `n_layers` (a multiple of n), computing the same function.

    Block expansion as in LLaMA Pro: new layer j copies old layer j // m (m = n_layers / n);
    the copies after the first of each group start with zero output projections (`o_proj`,
    `down_proj`), so they add nothing to the residual stream until training moves them.
    """
    old = {int(m.group(1)) for m in map(_LAYER.match, sd) if m}
    if not old or n_layers == len(old):
        return sd
    if n_layers % len(old):
        raise AnygenError(f"cannot grow {len(old)} layers to {n_layers}: the new depth must be a multiple")
    m = n_layers // len(old)
    out = {}
    for k, w in sd.items():
        match = _LAYER.match(k)
        if not match:
            out[k] = w
            continue
        i, rest = int(match.group(1)), match.group(2)
        for j in range(i * m, (i + 1) * m):
            zero = j % m and rest.endswith(("o_proj.weight", "down_proj.weight", "o_proj.bias", "down_proj.bias"))
            out[f"model.layers.{j}.{rest}"] = torch.zeros_like(w) if zero else w.clone()
    return out


def _load_weights(model, directory: Path, grow: bool = False) -> None:
    """Load a saved decoder's safetensors (sharded or not) into `model` in place.

    `grow` (fine-tuning a saved decoder into a larger model): a checkpoint with fewer
    embedding rows (a vocab that appends ids, e.g. `<keep>`) fills the first rows and the new
    rows start at the mean of the old ones, so a new id's logit starts near the average (as
    in `anygen.model.init_from`); a checkpoint with fewer layers is deepened by `_deepen`.
    """
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    sd = {}
    for f in files:
        sd.update(load_file(str(directory / f)))
    if grow:
        own = model.state_dict()
        sd = _deepen(sd, model.config.num_hidden_layers)
        for name, w in sd.items():
            rows = own[name].shape[0] if name in own else 0
            if name.endswith(("embed_tokens.weight", "lm_head.weight")) and w.dim() == 2 and w.shape[0] < rows:
                sd[name] = torch.cat([w, w.float().mean(0, keepdim=True).to(w.dtype).expand(rows - w.shape[0], -1)])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(model.config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise AnygenError(f"{directory}: checkpoint does not match the model "
                          f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if tied:
        model.tie_weights()


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").exists())


# ---- accelerate ---------------------------------------------------------------------------
def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons (one AcceleratorState per process)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def _mixed_precision(choice_: str) -> str | None:
    if choice_ != "auto":
        return choice_
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):  # set by `accelerate launch`
        return None
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; embeddings (input and output), norms and biases are not decayed."""
    from anygen.model.init_from import embedding_matrices

    emb = {id(p) for p in embedding_matrices(model)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in emb else no_decay).append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---- the loop ---------------------------------------------------------------------------------
class Trainer:
    """One training run; `run()` returns the final model directory."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, vocab: Vocab | None = None,
                 train_data=None, eval_data=None, model=None):
        self.cfg, self.resume = cfg, resume
        self.out = Path(cfg.train.out_dir)
        self._vocab, self._train_data, self._eval_data, self._model = vocab, train_data, eval_data, model

    # -- setup --
    def _setup(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        log_with = None
        if cfg.train.tensorboard:
            from accelerate.utils import is_tensorboard_available

            if is_tensorboard_available():
                log_with = "tensorboard"
            else:
                warnings.warn("train.tensorboard: tensorboard is not installed; logging to metrics.jsonl only")
        # cpu=True without a GPU: under torchrun (`accelerate launch --multi_gpu`) that selects gloo (MULTI_CPU)
        acc = Accelerator(mixed_precision=_mixed_precision(cfg.train.mixed_precision), log_with=log_with,
                          project_dir=str(self.out), cpu=not torch.cuda.is_available())
        self.acc = acc
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if self.fsdp and cfg.train.train_only_new_rows:
            raise AnygenError("train.train_only_new_rows is not supported with FSDP (use DDP)")
        ckpts = checkpoints(self.out)
        if ckpts and not self.resume:
            raise AnygenError(f"{self.out} already holds checkpoints; resume (--resume) or pick another train.out_dir")
        self.ckpt = ckpts[-1] if (ckpts and self.resume) else None
        if self.resume and self.ckpt is None:
            acc.print(f"resume: no checkpoint in {self.out}, starting from step 0")

        set_seed(cfg.train.seed)
        self.vocab = _resolve_vocab(cfg, self._vocab if self._vocab is not None else
                                    getattr(self._train_data, "vocab", None))
        self.tokenizer_dir = resolve_tokenizer_dir(cfg)
        if self.tokenizer_dir is not None and _tokenizer_vocab(self.tokenizer_dir) != self.vocab:
            msg = f"data.tokenizer_dir: {self.tokenizer_dir} has a different vocab than the training data"
            if cfg.data.tokenizer_dir:
                raise AnygenError(msg)
            warnings.warn(msg + "; the model is saved without tokenizer/")
            self.tokenizer_dir = None
        # model
        self.n_old = None
        if self._model is not None:
            model = self._model
        elif cfg.train.init_from:
            from anygen.model.init_from import extend_pretrained

            model = extend_pretrained(cfg.train.init_from, self.vocab, noise=cfg.train.init_noise,
                                      seed=cfg.train.seed, attn_implementation=cfg.model.attn_implementation)
            self.n_old = self.vocab.n_text
        else:
            model = build_decoder(cfg.model, self.vocab)
            if cfg.train.init_weights and self.ckpt is None:  # fine-tuning: weights only, fresh optimizer
                _load_weights(model, Path(cfg.train.init_weights), grow=True)
        if model.config.vocab_size < self.vocab.size:
            raise AnygenError(f"the model has {model.config.vocab_size} rows but the vocab needs {self.vocab.size}")
        if cfg.train.train_only_new_rows:
            from anygen.model.init_from import freeze_all_but_embeddings

            freeze_all_but_embeddings(model)
        self.attn = model.config._attn_implementation
        if self.ckpt is not None:
            _load_weights(model, self.ckpt / "model")
        self.n_params = count_parameters(model)
        o = cfg.optim
        optimizer = torch.optim.AdamW(_param_groups(model, o.weight_decay), lr=lr_at(0, o, cfg.train.steps),
                                      betas=o.betas, eps=o.eps, foreach=True)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.raw = acc.unwrap_model(self.model)
        self.positions = ImagePositions.of(self.raw, self.vocab)

        # data
        rank, world = acc.process_index, acc.num_processes
        self.train_source = (self._train_data if self._train_data is not None
                             else open_data(cfg, self.vocab, rank, world))
        eval_source = (self._eval_data if self._eval_data is not None
                       else open_data(cfg, self.vocab, rank, world, "eval"))
        self.eval_batches = []
        if eval_source is not None:
            it = iter(eval_source)
            for _ in range(cfg.train.eval_batches):
                try:
                    self.eval_batches.append(next(it))
                except StopIteration:
                    break

        # state
        self.step, self.bad_in_row, self.skipped = 0, 0, 0
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self.stream = _Stream(self.train_source)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            for tmp in (self.out / "checkpoints").glob(".step_*"):  # left by a crash mid-checkpoint
                shutil.rmtree(tmp, ignore_errors=True)
            atomic_write_bytes(self.out / "config.json", json.dumps(to_dict(cfg), indent=2).encode())
            self._trim_metrics(self.step)
        acc.print(f"decoder: {self.n_params / 1e6:.2f}M parameters, vocab {self.vocab.size}; "
                  f"{acc.num_processes} process(es), {acc.distributed_type.value}, {acc.device}, "
                  f"mixed precision {acc.mixed_precision}; step {self.step}/{cfg.train.steps}")
        if log_with:
            flat = {f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for s, sec in to_dict(cfg).items() for k, v in sec.items()}
            acc.init_trackers("tensorboard", config=flat)

    def _trim_metrics(self, step: int) -> None:
        """On resume, drop metric lines after the checkpoint (they are about to be redone)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for ln in path.read_text().splitlines():
            try:
                if json.loads(ln).get("step", 0) <= step:
                    keep.append(ln)
            except ValueError:  # a line torn by a crash mid-write (or blank) is dropped
                pass
        atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())

    def _log(self, record: dict) -> None:
        if self.acc.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.cfg.train.tensorboard:
            self.acc.log({f"{record['split']}/{k}": v for k, v in record.items()
                          if isinstance(v, (int, float)) and k not in ("step", "split")}, step=record["step"])

    # -- checkpoints --
    def _optimizer_state(self) -> dict:
        """Full AdamW state keyed by parameter name (same file for one process, DDP and FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_checkpoint(self) -> Path:
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        acc = self.acc
        state_dict = acc.get_state_dict(self.model)
        opt = self._optimizer_state()
        rngs = gather_object([_rng_state()])  # objects made by our own processes, in memory
        data_state = self.train_source.state_dict()
        final = self.out / "checkpoints" / f"step_{self.step:08d}"
        if acc.is_main_process:
            with atomic_directory(final) as tmp:
                save_decoder(self.raw, tmp / "model", config=None if self.n_old else self.cfg.model,
                             vocab=self.vocab, state_dict=state_dict, extra=self._model_extra(),
                             tokenizer_dir=self.tokenizer_dir)
                tensors, meta = _flatten_optimizer(opt)
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                (tmp / "optimizer.json").write_text(json.dumps(meta))
                rng_tensors = {}
                for r, s in enumerate(rngs):
                    rng_tensors[f"rank{r}.torch"] = s.pop("torch")
                    for i, t in enumerate(s.pop("cuda", [])):
                        rng_tensors[f"rank{r}.cuda{i:02d}"] = t
                save_file(rng_tensors, str(tmp / "rng.safetensors"))
                state = {"format_version": CHECKPOINT_FORMAT, "step": self.step, "data": data_state, "rng": rngs,
                         "bad_in_row": self.bad_in_row, "skipped": self.skipped, "world_size": acc.num_processes,
                         "distributed_type": acc.distributed_type.value, "config": to_dict(self.cfg)}
                (tmp / "trainer_state.json").write_text(json.dumps(state))
            for old in checkpoints(self.out)[:-self.cfg.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _restore(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        try:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            meta = json.loads((ckpt / "optimizer.json").read_text())
        except (OSError, ValueError) as e:
            raise AnygenError(f"{ckpt}: unreadable checkpoint ({type(e).__name__}: {e})") from None
        version = state.get("format_version", 1)  # checkpoints from before versioning are version 1
        if version != CHECKPOINT_FORMAT:
            raise AnygenError(f"{ckpt / 'trainer_state.json'}: unsupported checkpoint format_version {version!r} "
                              f"(this anygen reads {CHECKPOINT_FORMAT})")
        opt = _unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")), meta)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer.optimizer, opt,
                                 options=StateDictOptions(full_state_dict=True))
        self.step, self.bad_in_row, self.skipped = state["step"], state["bad_in_row"], state.get("skipped", 0)
        self.train_source.load_state_dict(state["data"])
        rank = self.acc.process_index
        if state["world_size"] == self.acc.num_processes:
            _set_rng_state(state["rng"][rank], load_file(str(ckpt / "rng.safetensors")), rank)
        else:
            warnings.warn(f"resuming with {self.acc.num_processes} processes (checkpoint: {state['world_size']}); "
                          "RNG streams restart")
        self.acc.print(f"resumed from {ckpt} at step {self.step}")

    def _model_extra(self) -> dict:
        extra = {"step": self.step, "train": to_dict(self.cfg)}
        if self.n_old is not None:
            extra["init_from"] = {"source": str(self.cfg.train.init_from), "n_pretrained_rows": self.n_old,
                                  "train_only_new_rows": self.cfg.train.train_only_new_rows}
        return extra

    # -- steps --
    def _micro(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _to(batch, self.acc.device)
        with self.acc.autocast():
            logits = forward_logits(self.model, batch, self.attn, self.positions)
        return decoder_loss(logits, batch["labels"], self.cfg.loss, self.vocab, batch.get("document_ids"))

    def train_step(self) -> tuple[torch.Tensor, float, bool, int]:
        """One optimizer step over grad_accum micro-batches: (stats, grad_norm, applied, tokens)."""
        acc, accum = self.acc, self.cfg.train.grad_accum
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg.optim, self.cfg.train.steps)
        stats = torch.zeros(N_STATS, dtype=torch.float64, device=acc.device)
        finite = torch.ones((), device=acc.device)
        tokens = 0
        for i in range(accum):
            batch = self.stream.next()
            tokens += batch["input_ids"].numel()
            sync = i == accum - 1
            ctx = acc.no_sync(self.model) if not sync else _nullcontext()
            with ctx:
                loss, s = self._micro(batch)
                if not torch.isfinite(loss):
                    finite.zero_()
                acc.backward(loss / accum)
            stats += s
        if self.n_old is not None and self.cfg.train.train_only_new_rows:
            from anygen.model.init_from import mask_old_row_grads

            mask_old_row_grads(self.raw, self.n_old)
        clip = self.cfg.optim.grad_clip
        params = [p for p in self.model.parameters() if p.requires_grad]
        if clip > 0:
            norm = acc.clip_grad_norm_(params, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in params
                                                         if p.grad is not None]))
        norm = torch.as_tensor(norm, device=acc.device, dtype=torch.float32)
        finite = finite * torch.isfinite(norm)
        if acc.num_processes > 1:
            finite = acc.reduce(finite, reduction="sum") == acc.num_processes
        applied = bool(finite)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats, float(norm), applied, tokens

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        stats = torch.zeros(N_STATS, dtype=torch.float64, device=self.acc.device)
        for batch in self.eval_batches:
            stats += self._micro(batch)[1]
        self.model.train()
        return stats_to_metrics(self.acc.reduce(stats, reduction="sum"))

    def run(self) -> Path:
        from tqdm.auto import tqdm

        self._setup()
        cfg, acc = self.cfg, self.acc
        t = cfg.train
        end = min(t.steps, t.stop_at) if t.stop_at else t.steps
        self.model.train()
        bar = tqdm(total=t.steps, initial=self.step, disable=not (t.progress and acc.is_main_process),
                   desc="train", dynamic_ncols=True)
        window = torch.zeros(N_STATS, dtype=torch.float64, device=acc.device)
        win_tokens, win_time, last_eval = 0, 0.0, None
        while self.step < end:
            t0 = time.perf_counter()
            stats, norm, applied, tokens = self.train_step()
            lr = self.optimizer.param_groups[0]["lr"]
            self.step += 1
            if applied:
                self.bad_in_row = 0
                window += stats
            else:
                self.bad_in_row += 1
                self.skipped += 1
                if acc.is_main_process:
                    warnings.warn(f"step {self.step}: non-finite loss or gradient, update skipped "
                                  f"({self.bad_in_row} in a row)", stacklevel=1)
                if self.bad_in_row >= t.max_bad_steps:
                    bar.close()
                    raise TrainingDiverged(f"{self.bad_in_row} non-finite steps in a row (last: step {self.step}); "
                                           f"lower optim.lr or raise optim.warmup_steps")
            win_tokens += tokens * acc.num_processes
            win_time += time.perf_counter() - t0
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == end:
                m = stats_to_metrics(acc.reduce(window, reduction="sum"))
                rec = {"step": self.step, "split": "train", "lr": lr, "grad_norm": norm,
                       "tokens_per_s": win_tokens / max(win_time, 1e-9), "skipped": self.skipped, **m}
                self._log(rec)
                bar.set_postfix({k: f"{rec[k]:.3f}" for k in ("loss", "loss_text", "loss_image", "loss_audio")
                                 if k in rec} | {"tok/s": f"{rec['tokens_per_s']:.0f}"}, refresh=False)
                window.zero_()
                win_tokens, win_time = 0, 0.0
            if self.eval_batches and t.eval_every and self.step % t.eval_every == 0:
                last_eval = self.step
                self._log({"step": self.step, "split": "eval", **self.evaluate()})
            if (t.save_every and self.step % t.save_every == 0) or self.step == end:
                self.save_checkpoint()
        bar.close()
        if self.eval_batches and last_eval != self.step:
            self._log({"step": self.step, "split": "eval", **self.evaluate()})
        final = self.out / "model"
        if self.step >= t.steps:
            state_dict = acc.get_state_dict(self.model)
            if acc.is_main_process:
                save_decoder(self.raw, final, config=None if self.n_old else cfg.model, vocab=self.vocab,
                             state_dict=state_dict, extra=self._model_extra(), tokenizer_dir=self.tokenizer_dir)
            acc.wait_for_everyone()
        if cfg.train.tensorboard:
            acc.end_training()
        return final if self.step >= t.steps else checkpoints(self.out)[-1] / "model"


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_training(cfg: TrainConfig, *, resume: bool = False, vocab: Vocab | None = None, train_data=None,
                 eval_data=None, model=None) -> Path:
    """Train per `cfg`; returns the final model directory (or, with `train.stop_at`, the last checkpoint's).

    `vocab`, `train_data`, `eval_data` and `model` override what the recipe would build
    (tests, callers with their own data). A single-process run resets accelerate's
    process-wide state when it ends, so runs can follow one another in one process.
    """
    trainer = Trainer(cfg, resume=resume, vocab=vocab, train_data=train_data, eval_data=eval_data, model=model)
    threads = torch.get_num_threads()
    try:
        return trainer.run()
    finally:
        acc = getattr(trainer, "acc", None)
        if acc is None or acc.num_processes == 1:
            reset_accelerate_state()
            torch.set_num_threads(threads)


def load_train_config(recipe_path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, recipe_path, list(overrides))


def train_decoder(recipe_path: str | os.PathLike | None, overrides: list[str] = (), resume: bool = False, **kw) -> Path:
    """Recipe YAML + dotted overrides -> trained decoder directory (`out_dir/model`)."""
    return run_training(load_train_config(recipe_path, overrides), resume=resume, **kw)


# ---- throughput / MFU -----------------------------------------------------------------------
def matmul_peak_flops(n: int = 1024, reps: int = 10, dtype: torch.dtype = torch.float32, device="cpu") -> float:
    """Best observed FLOP/s of an n×n×n matmul (2n³ FLOPs) on this process's threads."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(reps + 2):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def flops_per_token(model, seq_len: int) -> tuple[float, int]:
    """Training FLOPs per token: 6·N + 12·L·H·Q·T (PaLM appendix B / nanoGPT's estimate_mfu).

    N = parameters that take part in matmuls (all but the input embedding lookup; the
    output projection counts even when tied); 6 = 2 FLOPs per multiply-add × (forward
    + 2× backward). The attention term counts QKᵀ and AV over the full T×T square
    (L layers, H heads of size Q), as PaLM does: causal/packed masking does not skip work
    in SDPA's math here, so this is the work actually done, not a useful-work discount.
    """
    cfg = model.config
    n = count_parameters(model, non_embedding=True)
    if getattr(cfg, "tie_word_embeddings", False):
        n += model.get_output_embeddings().weight.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq_len, n


def measure_mfu(model_cfg: DecoderConfig | None = None, vocab: Vocab | int = 2048, *, seq_len: int = 512,
                batch_size: int = 8, steps: int = 8, warmup: int = 2, threads: int | None = None,
                packed: bool = True, matmul_n: int = 1024, seed: int = 0) -> dict:
    """Training tokens/s and model-FLOPs utilisation against a matmul peak measured in this process.

    Runs the trainer's own step (packed forward, CE + z-loss, backward, clipping, AdamW)
    in fp32 on CPU. Other processes on a shared machine slow both the model and the
    matmul, so a short matmul peak is measured right before every step and each step's
    MFU is its achieved FLOP/s over that neighbouring peak; `mfu` is the median of those,
    `mfu_vs_best_peak` the median achieved FLOP/s over the best peak seen (conservative).
    """
    if threads:
        torch.set_num_threads(threads)
    model_cfg = model_cfg or DecoderConfig()
    if isinstance(vocab, int):
        n_text = max(16, vocab // 2)
        vocab = Vocab(n_text=n_text, image_codebook_size=vocab - n_text - 10)  # 10 = specials + one grid token
    model = build_decoder(model_cfg, vocab, seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), foreach=True)
    doc_len = (max(2, seq_len // 4), seq_len) if packed else (seq_len, seq_len)
    data = SyntheticBatches(vocab, seq_len, batch_size, seed, doc_len=doc_len)
    batches = [data.batch(k) for k in range(2)]
    loss_cfg = LossConfig()
    fpt, n = flops_per_token(model, seq_len)
    tokens = batch_size * seq_len
    times, peaks = [], []
    for i in range(warmup + steps):
        peak = matmul_peak_flops(matmul_n, reps=3)
        batch = batches[i % 2]
        t0 = time.perf_counter()
        logits = forward_logits(model, batch, model_cfg.attn_implementation)
        loss, _ = decoder_loss(logits, batch["labels"], loss_cfg, vocab, batch["document_ids"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            peaks.append(peak)
    step_s = statistics.median(times)
    tps = tokens / step_s
    return {"tokens_per_s": tps, "step_s": step_s, "flops_per_token": fpt, "matmul_params": n,
            "params": count_parameters(model), "achieved_flops": fpt * tps,
            "peak_flops": statistics.median(peaks), "best_peak_flops": max(peaks),
            "mfu": statistics.median(fpt * tokens / t / p for t, p in zip(times, peaks)),
            "mfu_vs_best_peak": fpt * tps / max(peaks),
            "threads": torch.get_num_threads(), "seq_len": seq_len, "batch_size": batch_size,
            "vocab_size": vocab.size, "steps": steps}


def measure_recipe_mfu(recipe_path: str | os.PathLike | None, overrides: list[str] = (), steps: int = 8) -> dict:
    """measure_mfu with a recipe's model, seq_len, batch_size, threads and vocab (random tokens)."""
    cfg = load_train_config(recipe_path, overrides)
    try:
        vocab: Vocab | int = _resolve_vocab(cfg, None)
    except (AnygenError, OSError):
        vocab = 2048
    return measure_mfu(cfg.model, vocab, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size, steps=steps,
                       threads=cfg.train.threads or None)


# ---- `python -m anygen.training.decoder_trainer` (what `accelerate launch -m` runs) ----------
USAGE = """usage: python -m anygen.training.decoder_trainer RECIPE.yaml [key=value ...] [--resume]
       python -m anygen.training.decoder_trainer --mfu [RECIPE.yaml] [key=value ...]
  (several processes: accelerate launch [--config_file training/ddp.yaml] -m anygen.training.decoder_trainer ...)"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    resume, mfu = "--resume" in argv, "--mfu" in argv
    argv = [a for a in argv if a not in ("--resume", "--mfu")]
    if any(a in ("-h", "--help") for a in argv) or not (argv or mfu):
        print(USAGE)
        return 0 if argv else 2
    recipe = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if recipe is not None else argv
    try:
        if mfu:
            print(json.dumps(measure_recipe_mfu(recipe, overrides), indent=2))
            return 0
        path = train_decoder(recipe, overrides, resume=resume)
    except AnygenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from accelerate.state import PartialState

    if PartialState().is_main_process:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
