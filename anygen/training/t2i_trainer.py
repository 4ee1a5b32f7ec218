"""Text→image training with either image head, for the discrete-vs-Transfusion side-by-side.

Both heads see the same stream of (caption, image) pairs — the `text_to_image` examples of
the world `data.world` (ShapesWorld by default); batch k is a pure function of (seed, k), so a
resumed run continues exactly — and the same decoder:

    tokens     <bos> caption <boi> <grid> 64 codes <eoi> <eos>   CE on everything after the caption
    diffusion  <bos> caption <boi> <grid> 64 slots <eoi> <eos>   CE on <boi> <grid> <eos>, λ·MSE on slots

A dropped caption (`p_null`) becomes `<null>`, the unconditional row of guidance. The
image codec of the tokenizer directory encodes the tokens head's images on the fly; the
diffusion head uses pixels or (`diffusion.space: codec`) the same codec's continuous latents. Compute is reported as FLOPs (6·N·tokens + attention, the
trainers' `flops_per_token`) and CPU/wall seconds, in `summary.json`.

`anygen train RECIPE` runs this trainer when the recipe says `trainer: t2i`. It runs in one
process: under `accelerate launch` (several processes, or an FSDP/DeepSpeed config) it refuses
in one line (`anygen.training.common.refuse_distributed`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anygen.config import check, choice, load_config, read_yaml, to_dict
from anygen.errors import AnygenError
from anygen.io import atomic_write_bytes
from anygen.model.decoder import DecoderConfig, build_decoder, count_parameters, save_decoder
from anygen.model.transfusion import (DiffusionHeadConfig, TransfusionModel, check_codec_fits, next_token_ce,
                                      save_transfusion, to_head_space, transfusion_loss)
from anygen.training.common import (OptimConfig, check_finite, check_memory, flops_per_token, load_checkpoint, lr_at,
                                    save_checkpoint, single_process_run, writing)

# at least <bos>, one caption token, <boi>, <grid>, <eoi> and <eos> around a row's image positions
ROW_TOKENS_BESIDES_IMAGE = 6


@dataclass
class T2IData:
    tokenizer: str = "default"  # tokenizer directory or a bundled model's name (`default`: the bundled model's)
    world: str = "shapes"  # the registered world (`anygen.worlds.WORLDS`) whose text_to_image examples train
    world_seed: int = 0
    p_null: float = 0.1  # caption -> <null> (classifier-free guidance)
    batch_size: int = 16

    def __post_init__(self):
        check(0 <= self.p_null <= 1, "p_null", f"must be in [0, 1], got {self.p_null}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class T2ITrain:
    out_dir: str = "runs/t2i"
    steps: int = 1000
    threads: int = 1
    seed: int = 0
    log_every: int = 20
    save_every: int = 200

    def __post_init__(self):
        check(bool(self.out_dir.strip()), "out_dir", "is required (the run directory)")
        for name in ("steps", "threads", "log_every", "save_every"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass
class T2IConfig:
    trainer: str = choice("t2i")
    image_head: str = choice("tokens", "diffusion")
    model: DecoderConfig = field(default_factory=DecoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)  # as the decoder trainer's: AdamW and lr schedule
    diffusion: DiffusionHeadConfig = field(default_factory=DiffusionHeadConfig)
    data: T2IData = field(default_factory=T2IData)
    train: T2ITrain = field(default_factory=T2ITrain)


def is_t2i_recipe(path: str | os.PathLike) -> bool:
    return read_yaml(path).get("trainer") == "t2i"


class T2IBatches:
    """Batch k: `batch_size` fresh (caption, image) pairs of the world, from (seed, k)."""

    def __init__(self, cfg: T2IConfig, tokenizer):
        from anygen.tasks.layouts import TaskMix, TextToImageSpec
        from anygen.worlds import get_world

        self.cfg, self.tok, self.vocab = cfg, tokenizer, tokenizer.vocab
        world = get_world(cfg.data.world, seed=cfg.data.world_seed)
        if "text_to_image" not in world.tasks:
            raise AnygenError(f"data.world: world {cfg.data.world!r} has no text_to_image examples")
        # the world's own drop is off: this trainer drops captions itself (`data.p_null`)
        self.source = world.task_source(TaskMix(text_to_image=TextToImageSpec(p_null=0.0)))
        if cfg.image_head == "tokens" and tokenizer.image is None:
            raise AnygenError(f"{cfg.data.tokenizer}: the tokens head needs an image codec in the tokenizer")
        self.diffusion = cfg.diffusion if cfg.image_head == "diffusion" else None
        if self.diffusion is not None:
            check_codec_fits(self.diffusion, tokenizer.image, cfg.data.tokenizer)
        pixels_only = self.diffusion is not None and self.diffusion.space == "pixels"
        self.size = self.diffusion.image_size if pixels_only else tokenizer.image.image_size  # render size
        self.grid = (self.diffusion.grid,) * 2 if self.diffusion is not None else None

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        from anygen.codecs.image import images_to_tensor

        rng = np.random.default_rng([self.cfg.train.seed, k])
        pairs = [_caption_and_image(self.source.sample("text_to_image", rng)) for _ in range(self.cfg.data.batch_size)]
        drop = rng.random(len(pairs)) < self.cfg.data.p_null
        pixels = images_to_tensor([image for _, image in pairs], self.size)  # (B, 3, S, S) in [-1, 1]
        v = self.vocab
        rows, labels, slots = [], [], []
        codes, images = None, None
        if self.diffusion is None:
            codes = self.tok.image.encode(pixels)  # (B, h, w)
        else:
            images = to_head_space(self.diffusion, pixels, self.tok.image)  # (B, C, S, S)
        for i, (caption, _) in enumerate(pairs):
            prompt = [v.bos] + ([v.null] if drop[i] else self.tok.encode_text(caption))
            if codes is not None:
                body = [v.boi, v.grid_id(tuple(codes[i].shape))] + v.image_ids(codes[i].reshape(-1)).tolist() \
                    + [v.eoi, v.eos]
                lab = [-100] * len(prompt) + body
                slot = [False] * (len(prompt) + len(body))
            else:
                n = self.cfg.diffusion.n_slots
                body = [v.boi, v.grid_id(self.grid)] + [v.pad] * n + [v.eoi, v.eos]
                lab = [-100] * len(prompt) + [v.boi, v.grid_id(self.grid)] + [-100] * (n + 1) + [v.eos]
                slot = [False] * (len(prompt) + 2) + [True] * n + [False, False]
            rows.append(prompt + body)
            labels.append(lab)
            slots.append(slot)
        width = max(len(r) for r in rows)

        def pad(seqs, value):
            return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

        attn = pad([[1] * len(r) for r in rows], 0)
        return {"input_ids": pad(rows, v.pad), "labels": pad(labels, -100), "slots": pad(slots, False).bool(),
                "attention_mask": attn, "images": images, "tokens": int(attn.sum())}


def _caption_and_image(spec):
    """(caption, PIL image) of an undropped text_to_image Spec."""
    text = next(p.value for p in spec.pieces if p.kind == "text")
    media = next(p.value for p in spec.pieces if p.kind == "image")
    return text, media.make()


def _token_loss(model, batch) -> tuple[torch.Tensor, dict]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    ce = next_token_ce(logits, batch["labels"])
    return ce, {"loss": ce.item(), "ce": ce.item()}


def train_t2i(recipe_path: str | os.PathLike | None, overrides: list[str] = (), resume: bool = False,
              progress: bool = True) -> Path:
    """Train one side of the side-by-side; returns `out_dir/model` (an `anygen.load` directory).

    The run holds a lock on `train.out_dir` (a second run there fails at once) and first clears
    temporaries a killed run left; a directory holding a run needs `resume`.
    """
    cfg = load_config(T2IConfig, recipe_path, list(overrides))
    return single_process_run("the t2i trainer (tokens or Transfusion head)", cfg.train, resume,
                              lambda out: _train(cfg, out, resume, progress))


def train_steps(model, lm, opt, next_batch, loss_of, cfg, out: Path, resume: bool, desc: str,
                progress: bool) -> dict:
    """The one-process training loop of the text->image and all-task Transfusion trainers: resumes
    from `out/checkpoint` when `resume`, runs `cfg.train.steps` steps of `loss_of(model,
    next_batch(step), generator)` (lr from `cfg.optim`, one generator seed per step), appends
    metrics to `out/metrics.jsonl`, checkpoints every `save_every` steps and at the end, and returns
    the summary figures: steps, tokens, parameters, head_parameters, train_flops, wall_s, cpu_s.
    `lm` is the decoder inside `model` (`model` itself for the token head)."""
    t, o = cfg.train, cfg.optim
    ckpt = out / "checkpoint"
    step, elapsed, cpu, tokens, flops = 0, 0.0, 0.0, 0, 0.0
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, model, opt)
        step, elapsed, cpu = state["step"], state["elapsed_s"], state.get("cpu_s", 0.0)
        tokens, flops = state.get("tokens", 0), state.get("flops", 0.0)
    flops_base, _ = flops_per_token(lm, 0)  # 6·N per position; the attention term grows with the row width
    flops_per_width = flops_per_token(lm, 1)[0] - flops_base
    head_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("lm.")) \
        if model is not lm else 0  # the diffusion head's patch/time projections
    log = (out / "metrics.jsonl").open("a", encoding="utf-8")
    generator = torch.Generator()
    model.train()
    bar = tqdm(total=t.steps, initial=step, desc=desc, disable=not progress)
    t0, c0 = time.time() - elapsed, time.process_time() - cpu
    while step < t.steps:
        batch = next_batch(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, o, t.steps)
        generator.manual_seed(t.seed * 1_000_003 + step)
        loss, metrics = loss_of(model, batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        step += 1
        tokens += batch["tokens"]
        flops += (flops_base + flops_per_width * batch["input_ids"].shape[1]) * batch["tokens"] \
            + 6 * head_params * int(batch["slots"].sum())
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if step % t.log_every == 0 or step == t.steps:
            rec = {"step": step, "lr": lr_at(step - 1, o, t.steps), **metrics, "tokens": tokens, "flops": flops,
                   "time_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
            with writing(out / "metrics.jsonl"):
                log.write(json.dumps(rec) + "\n")
                log.flush()
        if step % t.save_every == 0 or step == t.steps:
            save_checkpoint(ckpt, model, opt, step, time.time() - t0, cfg, time.process_time() - c0,
                            extra={"tokens": tokens, "flops": flops})
    bar.close()
    log.close()
    return {"steps": step, "tokens": tokens, "parameters": count_parameters(lm) + head_params,
            "head_parameters": head_params, "train_flops": flops, "wall_s": round(time.time() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}


def _train(cfg: T2IConfig, out: Path, resume: bool, progress: bool) -> Path:
    from anygen.tokenizer import MultimodalTokenizer

    from anygen.api import tokenizer_dir

    t = cfg.train

    tok_dir = tokenizer_dir(cfg.data.tokenizer)
    tokenizer = MultimodalTokenizer.load(tok_dir)
    data = T2IBatches(cfg, tokenizer)
    image_positions = cfg.diffusion.n_slots if data.diffusion is not None else math.prod(tokenizer.image.grid)
    check_memory(cfg.model, tokenizer.vocab.size, cfg.data.batch_size, ROW_TOKENS_BESIDES_IMAGE + image_positions,
                 "model.n_layers/hidden/intermediate, data.batch_size")
    lm = build_decoder(cfg.model, tokenizer.vocab, seed=t.seed)
    model = TransfusionModel(lm, cfg.diffusion) if cfg.image_head == "diffusion" else lm
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if cfg.image_head == "diffusion":
        loss_of = transfusion_loss
    else:
        def loss_of(model, batch, generator):
            return _token_loss(model, batch)
    figures = train_steps(model, lm, opt, data.batch, loss_of, cfg, out, resume, f"train t2i/{cfg.image_head}",
                          progress)
    summary = {"image_head": cfg.image_head, **figures, "config": to_dict(cfg)}
    extra = {"t2i_training": {k: v for k, v in summary.items() if k != "config"}}
    check_finite(model.state_dict().values(), out / "model")
    with writing(out / "model"):
        save = save_transfusion if cfg.image_head == "diffusion" else save_decoder
        save(model, out / "model", config=cfg.model, vocab=tokenizer.vocab, tokenizer_dir=tok_dir, extra=extra)
    with writing(out / "summary.json"):
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    return out / "model"

