"""All-task Transfusion training on the token model's shards (the Transfusion paper's setting).

Each shard document (any task: text→image, image→text, edits, stories, ...) becomes a
`transfusion.latent_sequence`: its image spans' codes leave the token stream and enter as images in
the head's space (`codec`: the codec's code embeddings). An image whose codes were training
targets (loss mask 1: the image the task draws) is noised and denoised in place (λ·MSE on its
slots); an image the task is given (a caption's image, an edit's source) enters clean, at noise
level 0; text and audio tokens keep their next-token loss. So the same shards (`anygen
pretokenize`, e.g. training/shapes_transfusion_data.yaml) train the token model and this one.

Batch k is `batch_size` documents drawn from (seed, k), each its own row (right-padded; images
bidirectional inside, causal elsewhere), so a resumed run continues exactly. Compute is reported
as in the t2i trainer: FLOPs (6·N·tokens + attention, plus the head's projections on slots) and
CPU/wall seconds, in `summary.json`. `anygen train RECIPE` runs this trainer when the recipe says
`trainer: transfusion`. It runs in one process: a distributed or sharded launch (`accelerate
launch`, FSDP/DeepSpeed) is refused in one line (`anygen.training.common.refuse_distributed`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anygen.config import check, choice, load_config, read_yaml, to_dict
from anygen.errors import AnygenError
from anygen.io import atomic_write_bytes
from anygen.model.decoder import DecoderConfig, build_decoder
from anygen.model.transfusion import (DiffusionHeadConfig, TransfusionModel, check_codec_fits, codes_to_head,
                                      latent_sequence, save_transfusion, transfusion_loss)
from anygen.training.common import OptimConfig, check_finite, single_process_run, writing
from anygen.training.t2i_trainer import T2ITrain, train_steps


@dataclass
class TransfusionData:
    shards: str = "runs/shards/transfusion"  # `anygen pretokenize` output: its train/ split trains
    tokenizer: str = ""  # tokenizer directory or bundled model name; "" = the one the shards were made with
    batch_size: int = 8  # documents per step

    def __post_init__(self):
        check(bool(self.shards.strip()), "shards", "is required (an `anygen pretokenize` output directory)")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class TransfusionTrain(T2ITrain):
    """The t2i trainer's loop settings, with this trainer's defaults."""

    out_dir: str = "runs/transfusion"
    steps: int = 2000


@dataclass
class TransfusionConfig:
    trainer: str = choice("transfusion")
    model: DecoderConfig = field(default_factory=DecoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    diffusion: DiffusionHeadConfig = field(default_factory=DiffusionHeadConfig)
    data: TransfusionData = field(default_factory=TransfusionData)
    train: TransfusionTrain = field(default_factory=TransfusionTrain)

    def __post_init__(self):
        check(self.model.image_position_stride == 0, "model.image_position_stride",
              "must be 0 for a diffusion head (its sampler places positions consecutively)")


def is_transfusion_recipe(path: str | os.PathLike) -> bool:
    return read_yaml(path).get("trainer") == "transfusion"


def shard_meta(shards_dir: Path) -> dict:
    """The `meta` the shards' index records (recipe, worlds, tasks); {} for none."""
    index = shards_dir / "train" / "index.json"
    return (json.loads(index.read_text()).get("meta") or {}) if index.exists() else {}


class TransfusionBatches:
    """Batch k: `batch_size` shard documents drawn from (seed, k), as latent sequences."""

    def __init__(self, cfg: TransfusionConfig, shards, codec):
        self.cfg, self.shards, self.codec, self.vocab = cfg, shards, codec, shards.vocab
        self.grid = (cfg.diffusion.grid,) * 2
        if tuple(self.grid) not in [tuple(g) for g in self.vocab.image_grids]:
            raise AnygenError(f"diffusion: the head's grid {self.grid} is not an image grid of the shards' vocab "
                              f"({list(self.vocab.image_grids)})")

    def batch(self, k: int) -> dict:
        rng = np.random.default_rng([self.cfg.train.seed, k])
        docs = rng.integers(0, len(self.shards), self.cfg.data.batch_size)
        docs = [self.shards[int(i)] for i in docs]  # (ids, loss mask)
        seqs = [latent_sequence(ids, self.vocab, self.grid, loss) for ids, loss in docs]
        seqs = [s for s in seqs if len(s.ids) >= 2] or seqs  # a document cut to nothing trains nothing
        width = max(len(s.ids) for s in seqs)

        def pad(rows, value):
            return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])

        codes = [c for s in seqs for c in s.codes]
        images = codes_to_head(self.cfg.diffusion, torch.stack(codes), self.codec) if codes else None
        attn = pad([[1] * len(s.ids) for s in seqs], 0)
        return {"input_ids": pad([s.ids for s in seqs], self.vocab.pad), "labels": pad([s.labels for s in seqs], -100),
                "slots": pad([s.slots for s in seqs], False).bool(), "attention_mask": attn, "images": images,
                "noised": torch.tensor([t for s in seqs for t in s.targets], dtype=torch.bool),
                "tokens": int(attn.sum())}


def train_transfusion(recipe_path: str | os.PathLike | None, overrides: list[str] = (), resume: bool = False,
                      progress: bool = True) -> Path:
    """Train the all-task Transfusion model; returns `out_dir/model` (an `anygen.load` directory).
    Same run-directory rules as the other trainers (a lock; a directory holding a run needs `resume`)."""
    cfg = load_config(TransfusionConfig, recipe_path, list(overrides))
    return single_process_run("the all-task Transfusion trainer", cfg.train, resume,
                              lambda out: _train(cfg, out, resume, progress))


def _train(cfg: TransfusionConfig, out: Path, resume: bool, progress: bool) -> Path:
    from anygen.api import tokenizer_dir
    from anygen.data.shards import TokenShards
    from anygen.tokenizer import MultimodalTokenizer

    t, o = cfg.train, cfg.optim
    shards_dir = Path(cfg.data.shards)
    meta = shard_meta(shards_dir)
    tok_spec = cfg.data.tokenizer or (meta.get("recipe") or {}).get("tokenizer")
    if not tok_spec:
        raise AnygenError("data.tokenizer: the shards record no tokenizer; name one (a directory or `default`)")
    tok_dir = tokenizer_dir(tok_spec)
    tokenizer = MultimodalTokenizer.load(tok_dir)
    shards = TokenShards(shards_dir / "train", tokenizer.vocab)
    check_codec_fits(cfg.diffusion, tokenizer.image, str(tok_dir))
    data = TransfusionBatches(cfg, shards, tokenizer.image)
    lm = build_decoder(cfg.model, tokenizer.vocab, seed=t.seed)
    model = TransfusionModel(lm, cfg.diffusion)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    figures = train_steps(model, lm, opt, data.batch, transfusion_loss, cfg, out, resume, "train transfusion",
                          progress)
    summary = {"image_head": "diffusion", **figures, "config": to_dict(cfg)}
    learned = {k: [x for x in meta.get(k) or () if isinstance(x, str)] for k in ("worlds", "tasks")}
    extra = {"transfusion_training": {k: v for k, v in summary.items() if k != "config"},
             **{k: v for k, v in learned.items() if v}}
    check_finite(model.state_dict().values(), out / "model")
    with writing(out / "model"):
        save_transfusion(model, out / "model", config=cfg.model, vocab=tokenizer.vocab, tokenizer_dir=tok_dir,
                         extra=extra)
    with writing(out / "summary.json"):
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    return out / "model"
