"""Decoder training with accelerate: one loop for a CPU core, several processes, or GPUs.

    train_decoder("training/shapes.yaml", ["train.steps=100"]) -> Path of the final model

Recipe (`TrainConfig`): sections `model` (DecoderConfig), `loss` (LossConfig), `optim`,
`train`, `data`. AdamW with warmup + cosine or WSD, gradient clipping and
accumulation, bf16 autocast on CUDA (fp32 on CPU), tqdm with per-modality loss and
tokens/s, JSONL metrics (+ TensorBoard through accelerate's trackers), periodic eval,
atomic checkpoints. Opt-in speed switches: `train.compile` (torch.compile per decoder layer;
refused in one line where inductor cannot build kernels) and `train.fused_adamw` (fused AdamW,
automatic on CUDA).

Checkpoint `out_dir/checkpoints/step_XXXXXXXX/` (written to a temp dir, then renamed):
    model/                      the decoder (HF safetensors + anygen_decoder.json)
    optimizer.safetensors/.json AdamW state by parameter name / param groups (no pickle anywhere)
    rng.safetensors             torch CPU (+ CUDA) generator states, one set per process
    trainer_state.json          step, data position, python/numpy RNG per process, bad-step count
`resume=True` restores all of it, so N steps + resume + N steps equals 2N steps
(bitwise on CPU). The learning rate is a pure function of the step.

`train.time_budget_minutes` > 0 also ends the run by wall time (counted across resumes), as
the tokenizer trainer does: the cosine schedule follows max(step/steps, time used/budget), and
when the time is spent the run stops cleanly after its current step with a checkpoint and the
final model (`out_dir/model`, loadable). `out_dir/summary.json` says why the run stopped
(`"stopped": "steps" | "stop_at" | "time_budget"`) and at which step; `--resume` with a larger
budget (or 0) continues from that checkpoint. Budgeted runs are not bit-reproducible.

A non-finite loss or gradient norm skips the update (weights and optimizer untouched)
with a warning; `train.max_bad_steps` in a row abort with `TrainingDiverged`. Weights
holding NaN or Inf are never saved, as a checkpoint or as the model.

One run per `train.out_dir`: the main process locks it (`.anygen.lock`; a second run fails
at once naming the first one's pid) and clears the temporaries a killed run left there.

Data: any object whose `__iter__` yields batches (dicts: input_ids, labels,
position_ids, document_ids; see anygen.data.shards) and whose `state_dict()` after k
batches, loaded into a fresh object, continues at batch k+1. `data.kind: shards` uses
`anygen.data.shards.TokenDataset` (each process takes its rows of a global batch);
`data.kind: stream` uses `anygen.data.stream.StreamLoader` (the documents split by process and
by `data.num_workers` DataLoader workers, each packing its own batches);
`data.kind: synthetic` makes random packed documents (benchmarks, smoke tests).

Run several processes with `accelerate launch [--config_file training/accelerate_ddp.yaml]
-m anygen train RECIPE.yaml [key=value ...] [--resume]`. An FSDP config shards the model
(FSDP2) on GPUs through accelerate and on CPU through the trainer (`cpu_fsdp_plugin`: accelerate
itself would fall back to DDP there); a DeepSpeed config is refused (`DEEPSPEED_REFUSED`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from anygen.config import check, choice, load_config, to_dict
from anygen.errors import AnygenError
from anygen.io import atomic_directory, atomic_write_bytes
from anygen.model.positions import ImagePositions
from anygen.model.decoder import (N_STATS, DecoderConfig, LossConfig, build_decoder, count_parameters,
                                  decoder_loss, forward_logits, save_decoder, stats_to_metrics)
from anygen.threads import set_threads
from anygen.training.common import (OptimConfig, RunLock, WallBudget, check_memory, count_nonfinite, flatten_optimizer,
                                    lock_run_dir, lr_at, refuse_existing_run, refuse_nonfinite, remove_stale_temps,
                                    rng_state, set_rng_state, trim_metrics, unflatten_optimizer, writing)
from anygen.vocab import Vocab

CHECKPOINT_FORMAT = 1  # trainer_state.json; bump when the checkpoint layout changes
# DeepSpeed's engine steps the optimizer inside backward (no skipping a non-finite update, its own accumulation)
# and checkpoints with pickle; the trainer's sharded engine is FSDP
DEEPSPEED_REFUSED = ("accelerate config: DeepSpeed is not supported by anygen's decoder trainer (its engine applies "
                     "updates itself, so non-finite steps cannot be skipped, and its checkpoints are pickled); shard "
                     "with FSDP instead: training/accelerate_fsdp.yaml (like ZeRO-3) or "
                     "training/accelerate_fsdp_zero2.yaml (like ZeRO-2)")
# the C++ compiler inductor builds torch.compile's CPU kernels with, when set (else its own default, g++)
CXX_ENV = "CXX"
# tqdm's bar without its own remaining-time estimate: the postfix's `eta` also honours the time budget
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"


class TrainingDiverged(AnygenError):
    """Too many non-finite losses in a row."""


# ---- recipe schema --------------------------------------------------------------------------
@dataclass
class TrainSection:
    out_dir: str = "runs/decoder"
    steps: int = 1000  # optimizer steps (each: grad_accum micro-batches per process)
    stop_at: int = 0  # stop (with a checkpoint) after this step in this invocation; 0 = run to `steps`
    time_budget_minutes: float = 0.0  # > 0: the lr schedule and the run also end by wall time (not bit-reproducible)
    grad_accum: int = 1
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass (less memory)
    compile: bool = False  # torch.compile each decoder layer (inductor: a C++ compiler on CPU, triton on CUDA)
    fused_adamw: bool | None = None  # true: fused AdamW, false: foreach (multi-tensor); null: fused on CUDA only
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
    init_layers: int = 0  # with init_from: keep only k of the pretrained model's layers, the first ones (0 = all)
    init_top_layers: int = 0  # with init_layers: that many of the kept layers are the pretrained model's last ones
    freeze_layers: int = 0  # with init_from: the first n (kept) layers do not train
    init_weights: str | None = None  # an anygen decoder directory (same architecture; vocab equal or a prefix)

    def __post_init__(self):
        check(bool(self.out_dir.strip()), "out_dir", "is required (the run directory)")
        for name in ("steps", "grad_accum", "log_every", "eval_batches", "keep_checkpoints", "max_bad_steps"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("stop_at", "threads", "eval_every", "save_every", "time_budget_minutes"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(not self.train_only_new_rows or self.init_from, "train_only_new_rows", "needs train.init_from")
        for name in ("init_layers", "init_top_layers", "freeze_layers"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
            check(not getattr(self, name) or self.init_from, name, "needs train.init_from")
        check(not self.init_layers or self.freeze_layers <= self.init_layers, "freeze_layers",
              f"must be <= train.init_layers ({self.init_layers}), got {self.freeze_layers}")
        check(self.init_top_layers <= self.init_layers, "init_top_layers",
              f"must be <= train.init_layers ({self.init_layers}), got {self.init_top_layers}")
        check(not (self.init_weights and self.init_from), "init_weights", "cannot be combined with init_from")


@dataclass
class DataSection:
    kind: str = choice("shards", "stream", "synthetic")  # stream: the shards split by rank and loader worker
    shard_dir: str = ""  # token shards (anygen pretokenize) for training
    eval_shard_dir: str = ""  # optional held-out shards
    seq_len: int = 512
    batch_size: int = 16  # rows per process per micro-batch
    seed: int = 0  # shuffling / synthetic documents
    tokenizer_dir: str = ""  # MultimodalTokenizer dir, copied into the model as tokenizer/ (default: the shards')
    vocab_file: str = ""  # a Vocab JSON (Vocab.to_dict); shards and tokenizers carry their own vocab
    synthetic_docs: int = 0  # synthetic: 0 = endless random documents, n = cycle n fixed documents
    synthetic_doc_len: tuple[int, int] = (16, 128)
    num_workers: int = 0  # stream: DataLoader worker processes per rank (0 = read in the training process)

    def __post_init__(self):
        check(self.seq_len >= 2, "seq_len", f"must be >= 2, got {self.seq_len}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.kind == "synthetic" or self.shard_dir, "shard_dir", f"is required when data.kind is {self.kind}")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.kind == "stream" or not self.num_workers, "num_workers", "needs data.kind: stream")
        lo, hi = self.synthetic_doc_len
        check(2 <= lo <= hi, "synthetic_doc_len", f"must be [min, max] with 2 <= min <= max, got {[lo, hi]}")


@dataclass
class TrainConfig:
    model: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)

    def __post_init__(self):
        check(bool(self.train.init_from) or self.model.max_position >= self.data.seq_len, "model.max_position",
              f"must be >= data.seq_len ({self.data.seq_len}), got {self.model.max_position}")


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
    if cfg.data.kind != "synthetic":
        index = Path(cfg.data.shard_dir) / "index.json"
        if index.exists():
            tok = ((json.loads(index.read_text()).get("meta") or {}).get("recipe") or {}).get("tokenizer")
            if tok and (Path(tok) / "tokenizer.json").exists():
                return Path(tok)
    return None


def trained_on(cfg: TrainConfig) -> dict:
    """{"worlds": [...], "tasks": [...]} the model learns: those its shards were made from
    (`anygen.training.pretokenize.trained_on`) and those of the weights it starts from. Written to
    `anygen_decoder.json`; `anygen.load` gives the model its worlds' strategies by it."""
    found = {"worlds": [], "tasks": []}
    sources = []
    if cfg.data.kind != "synthetic" and (Path(cfg.data.shard_dir) / "index.json").exists():
        sources.append(json.loads((Path(cfg.data.shard_dir) / "index.json").read_text()).get("meta") or {})
    if cfg.train.init_weights and (Path(cfg.train.init_weights) / "anygen_decoder.json").exists():
        sources.append(json.loads((Path(cfg.train.init_weights) / "anygen_decoder.json").read_text()))
    for meta in sources:
        for key in found:
            found[key] += [x for x in meta.get(key) or () if isinstance(x, str) and x not in found[key]]
    return {k: v for k, v in found.items() if v}


def resolve_vocab(cfg: TrainConfig, vocab: Vocab | None) -> Vocab:
    """`vocab`, else the recipe's: data.tokenizer_dir, data.vocab_file, or the shards' own."""
    if vocab is not None:
        return vocab
    if cfg.data.tokenizer_dir:
        return _tokenizer_vocab(Path(cfg.data.tokenizer_dir))
    if cfg.data.vocab_file:
        path = Path(cfg.data.vocab_file)
        if not path.exists():
            raise AnygenError(f"data.vocab_file: {path} not found")
        return Vocab.from_dict(json.loads(path.read_text()))
    if cfg.data.kind != "synthetic":
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
    if d.kind == "stream" and split == "train":
        from anygen.data.stream import StreamLoader

        return StreamLoader(shard_dir, d.seq_len, d.batch_size, d.seed, rank=rank, world_size=world_size,
                            num_workers=d.num_workers, vocab=vocab)
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


def init_pretrained(cfg: TrainConfig, vocab: Vocab):
    """The model `train.init_from` names, extended to `vocab` (`anygen.model.init_from`): with only
    `train.init_layers` of its layers (the last `train.init_top_layers` of them its last ones), its
    first `train.freeze_layers` layers frozen, and with `train.train_only_new_rows` all but the
    embeddings frozen."""
    from anygen.model.init_from import extend_pretrained, freeze_all_but_embeddings, freeze_first_layers

    t = cfg.train
    model = extend_pretrained(t.init_from, vocab, noise=t.init_noise, seed=t.seed,
                              attn_implementation=cfg.model.attn_implementation, n_layers=t.init_layers,
                              top_layers=t.init_top_layers)
    freeze_first_layers(model, t.freeze_layers)
    if t.train_only_new_rows:
        freeze_all_but_embeddings(model)
    return model


# ---- accelerate ---------------------------------------------------------------------------
def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons (one AcceleratorState per process)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def cpu_fsdp_plugin(acc):
    """The FSDP2 plugin `accelerate launch` asked for when accelerate runs the processes as MULTI_CPU, else None.

    accelerate selects FSDP only on accelerator devices (its `AcceleratorState` promotes
    MULTI_GPU/XPU/... to FSDP, never MULTI_CPU), so under gloo an FSDP config would silently
    train with DDP. The trainer then shards the model itself with accelerate's own
    `fsdp2_prepare_model` and this plugin (read from the launcher's environment).
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (acc.distributed_type != DistributedType.MULTI_CPU
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true"):
        return None
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise AnygenError(f"FSDP on CPU needs fsdp_version: 2 in the accelerate config, got {plugin.fsdp_version}")
    if acc.mixed_precision != "no":
        plugin.set_mixed_precision(acc.mixed_precision)
    return plugin


class _ShardingHost:
    """What accelerate's `fsdp2_prepare_model` reads of its Accelerator, for a MULTI_CPU one and a plugin."""

    def __init__(self, acc, plugin):
        from types import SimpleNamespace

        self.state = SimpleNamespace(fsdp_plugin=plugin)
        self.torch_device_mesh, self.parallelism_config = None, None  # the default 1-D mesh over all processes
        self.mixed_precision, self.is_main_process, self.device = acc.mixed_precision, acc.is_main_process, acc.device


def _mixed_precision(choice_: str) -> str | None:
    if choice_ != "auto":
        return choice_
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):  # set by `accelerate launch`
        return None
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def compile_unavailable(device_type: str) -> str | None:
    """Why torch.compile (inductor, its default backend) cannot run on `device_type` here; None when it can.

    Inductor writes C++ for CPU (built by `$CXX` or g++) and triton kernels for CUDA; without
    them torch.compile fails only at the first forward, so the trainer asks before it starts.
    """
    import shutil
    import sys

    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return (f"torch.compile is not supported by torch {torch.__version__} on Python "
                f"{sys.version_info.major}.{sys.version_info.minor}")
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile on CUDA needs triton (pip install triton)"
    if device_type == "cpu":
        import torch._inductor.config as inductor

        names = [os.environ.get(CXX_ENV)] + [c for c in inductor.cpp.cxx if c] + ["g++", "c++", "clang++"]
        if not any(name and shutil.which(name) for name in names):
            return ("torch.compile on CPU needs a C++ compiler (inductor builds its kernels with g++ or $CXX): "
                    "none found on PATH")
        return None
    return f"torch.compile is not wired for device {device_type!r} in anygen's trainer"


def compile_layers(model, device_type: str) -> None:
    """torch.compile each decoder layer in place (`nn.Module.compile`: parameter names and the state dict stay
    as they are, so checkpoints, FSDP's per-layer sharding and `save_decoder` see the plain model).

    One compiled graph serves every layer (they share code; their weights are graph inputs), so the
    compile cost is about one layer's whatever the depth. Raises AnygenError where it cannot run.
    """
    reason = compile_unavailable(device_type)
    if reason is not None:
        raise AnygenError(f"train.compile: {reason}; set train.compile=false")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise AnygenError(f"train.compile: {type(model).__name__} has no model.layers to compile")
    for layer in layers:
        layer.compile()


def adamw_kernel(fused: bool | None, device_type: str) -> str:
    """The AdamW implementation for `train.fused_adamw`: "fused" (one kernel over all parameters) or
    "foreach" (multi-tensor ops). None: fused on CUDA, foreach elsewhere (torch >= 2.4 also has a CPU
    fused kernel, chosen with true; foreach is what the CPU sharding tests ran)."""
    if fused is None:
        return "fused" if device_type == "cuda" else "foreach"
    if fused and device_type not in ("cuda", "cpu"):
        raise AnygenError(f"train.fused_adamw: torch has no fused AdamW for device {device_type!r}; "
                          "leave it unset")
    return "fused" if fused else "foreach"


def weight_decay_groups(model, weight_decay: float) -> list[dict]:
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
                 train_data=None, eval_data=None, model=None, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.resume, self.clock = cfg, resume, clock
        self.out = Path(cfg.train.out_dir)
        self._vocab, self._train_data, self._eval_data, self._model = vocab, train_data, eval_data, model
        self.lock: RunLock | None = None

    # -- setup --
    def _setup(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        cfg = self.cfg
        if cfg.train.threads:
            set_threads(cfg.train.threads, "train.threads")
        log_with = None
        if cfg.train.tensorboard:
            from accelerate.utils import is_tensorboard_available

            if is_tensorboard_available():
                log_with = "tensorboard"
            else:
                warnings.warn("train.tensorboard: tensorboard is not installed; logging to metrics.jsonl only")
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":  # set by `accelerate launch`
            raise AnygenError(DEEPSPEED_REFUSED)
        # cpu=True without a GPU: under torchrun (`accelerate launch --multi_gpu`) that selects gloo (MULTI_CPU)
        acc = Accelerator(mixed_precision=_mixed_precision(cfg.train.mixed_precision), log_with=log_with,
                          project_dir=str(self.out), cpu=not torch.cuda.is_available())
        self.acc = acc
        self.lock = self._lock_out_dir()
        self.cpu_fsdp = cpu_fsdp_plugin(acc)
        self.fsdp = acc.distributed_type == DistributedType.FSDP or self.cpu_fsdp is not None
        if self.fsdp and cfg.train.train_only_new_rows:
            raise AnygenError("train.train_only_new_rows is not supported with FSDP (use DDP)")
        ckpts = checkpoints(self.out)
        if ckpts and not self.resume:
            refuse_existing_run(self.out, "checkpoints", "train.out_dir")
        self.ckpt = ckpts[-1] if (ckpts and self.resume) else None
        if self.resume and self.ckpt is None:
            acc.print(f"resume: no checkpoint in {self.out}, starting from step 0")

        set_seed(cfg.train.seed)
        self.vocab = resolve_vocab(cfg, self._vocab if self._vocab is not None else
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
            model = init_pretrained(cfg, self.vocab)
            self.n_old = self.vocab.n_text
        else:
            check_memory(cfg.model, self.vocab.size, cfg.data.batch_size, cfg.data.seq_len,
                         "model.n_layers/hidden/intermediate, data.batch_size/seq_len")
            model = build_decoder(cfg.model, self.vocab)
            if cfg.train.init_weights and self.ckpt is None:  # fine-tuning: weights only, fresh optimizer
                _load_weights(model, Path(cfg.train.init_weights), grow=True)
        if model.config.vocab_size < self.vocab.size:
            raise AnygenError(f"the model has {model.config.vocab_size} rows but the vocab needs {self.vocab.size}")
        self.attn = model.config._attn_implementation
        if self.ckpt is not None:
            _load_weights(model, self.ckpt / "model")
        if cfg.train.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        if cfg.train.compile:
            compile_layers(model, acc.device.type)
        self.n_params = count_parameters(model)
        o = cfg.optim
        if self.cpu_fsdp is not None:  # sharded before the optimizer is built, so it holds the shards
            from accelerate.utils import fsdp2_prepare_model

            model = fsdp2_prepare_model(_ShardingHost(acc, self.cpu_fsdp), model)
        self.adamw_kernel = adamw_kernel(cfg.train.fused_adamw, acc.device.type)
        optimizer = torch.optim.AdamW(weight_decay_groups(model, o.weight_decay), lr=lr_at(0, o, cfg.train.steps),
                                      betas=o.betas, eps=o.eps, **{self.adamw_kernel: True})
        if self.cpu_fsdp is not None:
            self.model, self.optimizer = model, acc.prepare(optimizer)
        else:
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
        self.step, self.bad_in_row, self.skipped, self.elapsed_before = 0, 0, 0, 0.0
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self.stream = _Stream(self.train_source)
        if acc.is_main_process:  # holding the lock: temporaries here were left by a killed run
            remove_stale_temps(self.out / "checkpoints", (), globs=(".step_*",))
            remove_stale_temps(self.out, ("model", "config.json", "metrics.jsonl"))
            with writing(self.out / "config.json"):
                atomic_write_bytes(self.out / "config.json", json.dumps(to_dict(cfg), indent=2).encode())
            trim_metrics(self.out / "metrics.jsonl", self.step)  # those after the checkpoint are redone
        engine = acc.distributed_type.value + (" + FSDP2 (CPU)" if self.cpu_fsdp is not None else "")
        if self.fsdp:  # DTensor shards: what this process keeps of each parameter
            local = sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in self.model.parameters())
            engine += f" (the main process holds {local:,} of {self.n_params:,} parameters)"
        acc.print(f"decoder: {self.n_params / 1e6:.2f}M parameters, vocab {self.vocab.size}; "
                  f"{acc.num_processes} process(es), {engine}, {acc.device}, "
                  f"mixed precision {acc.mixed_precision}, AdamW {self.adamw_kernel}"
                  f"{', compiled layers' if cfg.train.compile else ''}; step {self.step}/{cfg.train.steps}")
        if log_with:
            flat = {f"{s}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for s, sec in to_dict(cfg).items() for k, v in sec.items()}
            acc.init_trackers("tensorboard", config=flat)

    def _lock_out_dir(self) -> RunLock | None:
        """The main process locks train.out_dir for the run; if it cannot, every process raises."""
        acc, lock, error = self.acc, None, None
        if acc.is_main_process:
            try:
                lock = lock_run_dir(self.out, "train.out_dir")
            except AnygenError as e:
                error = e
        if acc.num_processes > 1:
            failed = acc.reduce(torch.tensor(float(error is not None), device=acc.device), reduction="sum")
            if float(failed) and error is None:
                error = AnygenError(f"train.out_dir: the main process could not lock {self.out}")
        if error is not None:
            raise error
        return lock

    def close(self) -> None:
        """Release train.out_dir for other runs."""
        if self.lock is not None:
            self.lock.release()

    def _log(self, record: dict) -> None:
        if self.acc.is_main_process:
            with writing(self.out / "metrics.jsonl"), open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.cfg.train.tensorboard:
            self.acc.log({f"{record['split']}/{k}": v for k, v in record.items()
                          if isinstance(v, (int, float)) and k not in ("step", "split")}, step=record["step"])

    # -- checkpoints --
    def _model_state(self) -> dict:
        """The full model state dict on the main process (gathered from the shards under FSDP)."""
        if self.cpu_fsdp is None:
            return self.acc.get_state_dict(self.model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _optimizer_state(self) -> dict:
        """Full AdamW state keyed by parameter name (same file for one process, DDP and FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_checkpoint(self) -> Path:
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        acc = self.acc
        state_dict = self._model_state()
        final = self.out / "checkpoints" / f"step_{self.step:08d}"
        self._refuse_nonfinite(state_dict, final)
        opt = self._optimizer_state()
        rngs = gather_object([rng_state(f"rank{acc.process_index}.")])  # objects made by our own processes
        data_state = self.train_source.state_dict()
        if acc.is_main_process:
            with writing(final), atomic_directory(final) as tmp:
                save_decoder(self.raw, tmp / "model", config=None if self.n_old else self.cfg.model,
                             vocab=self.vocab, state_dict=state_dict, extra=self._model_extra(),
                             tokenizer_dir=self.tokenizer_dir)
                tensors, rest = flatten_optimizer(opt)
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                (tmp / "optimizer.json").write_text(json.dumps({"param_groups": opt["param_groups"], "state": rest}))
                save_file({k: t for _, ts in rngs for k, t in ts.items()}, str(tmp / "rng.safetensors"))
                state = {"format_version": CHECKPOINT_FORMAT, "step": self.step, "data": data_state,
                         "rng": [meta for meta, _ in rngs],
                         "bad_in_row": self.bad_in_row, "skipped": self.skipped, "world_size": acc.num_processes,
                         "elapsed_s": self.budget.elapsed(),
                         "distributed_type": acc.distributed_type.value, "config": to_dict(self.cfg)}
                (tmp / "trainer_state.json").write_text(json.dumps(state))
            for old in checkpoints(self.out)[:-self.cfg.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _refuse_nonfinite(self, state_dict: dict, where: Path) -> None:
        """Every process raises when the main process's full state dict holds NaN or Inf (see check_finite)."""
        counts = count_nonfinite(state_dict.values()) if self.acc.is_main_process else (0, 0)
        if self.acc.num_processes > 1:
            counts = self.acc.reduce(torch.tensor(counts, device=self.acc.device), reduction="sum").tolist()
        refuse_nonfinite(int(counts[0]), int(counts[1]), where)

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
        opt = unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")), meta["state"],
                                  meta["param_groups"])
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer.optimizer, opt,
                                 options=StateDictOptions(full_state_dict=True))
        self.step, self.bad_in_row, self.skipped = state["step"], state["bad_in_row"], state.get("skipped", 0)
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.train_source.load_state_dict(state["data"])
        rank = self.acc.process_index
        if state["world_size"] == self.acc.num_processes:
            set_rng_state(state["rng"][rank], load_file(str(ckpt / "rng.safetensors")), f"rank{rank}.")
        else:
            warnings.warn(f"resuming with {self.acc.num_processes} processes (checkpoint: {state['world_size']}); "
                          "RNG streams restart")
        self.acc.print(f"resumed from {ckpt} at step {self.step}")

    def _model_extra(self) -> dict:
        extra = {"step": self.step, "train": to_dict(self.cfg), **trained_on(self.cfg)}
        if self.n_old is not None:
            t = self.cfg.train
            extra["init_from"] = {"source": str(t.init_from), "n_pretrained_rows": self.n_old,
                                  "train_only_new_rows": t.train_only_new_rows, "layers_kept": t.init_layers or None,
                                  "top_layers_kept": t.init_top_layers,
                                  "frozen_layers": t.freeze_layers}
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
        steps = self.cfg.train.steps
        progress = self.budget.progress(self.step, steps) if self.budget.budget_s > 0 else None
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg.optim, steps, progress)
        stats = torch.zeros(N_STATS, dtype=torch.float64, device=acc.device)
        finite = torch.ones((), device=acc.device)
        tokens = 0
        for i in range(accum):
            batch = self.stream.next()
            tokens += batch["input_ids"].numel()
            sync = i == accum - 1
            ctx = acc.no_sync(self.model) if not sync else nullcontext()
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

    def _out_of_time(self) -> bool:
        """Whether the time budget is spent; every process gets the same answer (the slowest clock's)."""
        spent = self.budget.spent()
        if self.budget.budget_s > 0 and self.acc.num_processes > 1:
            spent = bool(self.acc.reduce(torch.tensor(float(spent), device=self.acc.device), reduction="sum") > 0)
        return spent

    def run(self) -> Path:
        from tqdm.auto import tqdm

        self._setup()
        cfg, acc = self.cfg, self.acc
        t = cfg.train
        end = min(t.steps, t.stop_at) if t.stop_at else t.steps
        self.budget = WallBudget(t.time_budget_minutes, self.elapsed_before, self.clock)
        started, first_step = self.clock(), self.step
        saved = self.step if self.ckpt is not None else None  # the step of the newest checkpoint
        self.model.train()
        bar = tqdm(total=t.steps, initial=self.step, disable=not (t.progress and acc.is_main_process),
                   desc="train", dynamic_ncols=True, bar_format=BAR_FORMAT)
        postfix: dict[str, str] = {}
        window = torch.zeros(N_STATS, dtype=torch.float64, device=acc.device)
        win_tokens, win_time, last_eval, out_of_time = 0, 0.0, None, False
        while self.step < end:
            if self._out_of_time():
                out_of_time = True
                break
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
            if self.step % t.log_every == 0 or self.step == end:
                m = stats_to_metrics(acc.reduce(window, reduction="sum"))
                rec = {"step": self.step, "split": "train", "lr": lr, "grad_norm": norm,
                       "tokens_per_s": win_tokens / max(win_time, 1e-9), "skipped": self.skipped, **m}
                self._log(rec)
                postfix.update({k: f"{rec[k]:.3f}" for k in ("loss", "loss_text", "loss_image", "loss_audio")
                                if k in rec} | {"tok/s": f"{rec['tokens_per_s']:.0f}"})
                window.zero_()
                win_tokens, win_time = 0, 0.0
            eta = self.budget.eta(end - self.step, (self.clock() - started) / (self.step - first_step))
            bar.set_postfix(postfix | {"eta": tqdm.format_interval(eta)}, refresh=False)
            bar.update(1)
            if self.eval_batches and t.eval_every and self.step % t.eval_every == 0:
                last_eval = self.step
                self._log({"step": self.step, "split": "eval", **self.evaluate()})
            if (t.save_every and self.step % t.save_every == 0) or self.step == end:
                self.save_checkpoint()
                saved = self.step
        bar.close()
        if out_of_time and saved != self.step:
            self.save_checkpoint()
        if self.eval_batches and last_eval != self.step:
            self._log({"step": self.step, "split": "eval", **self.evaluate()})
        final = self.out / "model"
        finished = self.step >= t.steps or out_of_time
        if finished:
            state_dict = self._model_state()
            self._refuse_nonfinite(state_dict, final)
            if acc.is_main_process:
                with writing(final):
                    save_decoder(self.raw, final, config=None if self.n_old else cfg.model, vocab=self.vocab,
                                 state_dict=state_dict, extra=self._model_extra(), tokenizer_dir=self.tokenizer_dir)
            acc.wait_for_everyone()
        result = final if finished else checkpoints(self.out)[-1] / "model"
        self._summarise("time_budget" if out_of_time else "steps" if self.step >= t.steps else "stop_at", result)
        # trackers end, and so does the process group: a gloo group left to interpreter exit can abort a rank
        # ("terminate called without an active exception") after the model is written
        acc.end_training()
        return result

    def _summarise(self, stopped: str, model: Path) -> None:
        """`out_dir/summary.json`: why and at which step the run stopped; a budget stop is also printed."""
        t = self.cfg.train
        summary = {"stopped": stopped, "step": self.step, "steps": t.steps,
                   "time_budget_minutes": t.time_budget_minutes, "wall_s": round(self.budget.elapsed(), 1),
                   "skipped": self.skipped, "model": str(model)}
        if self.acc.is_main_process:
            with writing(self.out / "summary.json"):
                atomic_write_bytes(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        if stopped == "time_budget":
            self.acc.print(f"time budget of {t.time_budget_minutes:g} min spent: stopped at step {self.step} of "
                           f"{t.steps} with a checkpoint; continue with --resume and a larger "
                           f"train.time_budget_minutes (or 0)")


def run_training(cfg: TrainConfig, *, resume: bool = False, vocab: Vocab | None = None, train_data=None,
                 eval_data=None, model=None, clock: Callable[[], float] = time.monotonic) -> Path:
    """Train per `cfg`; returns the final model directory (or, with `train.stop_at`, the last checkpoint's).

    `vocab`, `train_data`, `eval_data` and `model` override what the recipe would build
    (tests, callers with their own data); `clock` (monotonic seconds) is what
    `train.time_budget_minutes` is measured by. A single-process run resets accelerate's
    process-wide state when it ends, so runs can follow one another in one process.
    """
    trainer = Trainer(cfg, resume=resume, vocab=vocab, train_data=train_data, eval_data=eval_data, model=model,
                      clock=clock)
    threads = torch.get_num_threads()
    try:
        return trainer.run()
    finally:
        trainer.close()
        acc = getattr(trainer, "acc", None)
        if acc is None or acc.num_processes == 1:
            reset_accelerate_state()
            torch.set_num_threads(threads)


def load_train_config(recipe_path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, recipe_path, list(overrides))


def train_decoder(recipe_path: str | os.PathLike | None, overrides: list[str] = (), resume: bool = False, **kw) -> Path:
    """Recipe YAML + dotted overrides -> trained decoder directory (`out_dir/model`)."""
    return run_training(load_train_config(recipe_path, overrides), resume=resume, **kw)
