"""`anygen tokenizer train RECIPE.yaml [key=value ...]`: train an image codec, audio codec or text tokenizer.

A recipe (YAML, see `tokenizers/`) has `kind` (image | audio | text), `out` (the artifact
directory), a `data:` section (`DataConfig`), a `codec:` section
(the codec's own config: `ImageCodecConfig`, `AudioCodecConfig`, or `vocab_size` for text)
and a `train:` section (`TrainConfig`). Dotted overrides (`train.steps=200`) change any key.

Layout of `out/` while and after training:
    config.json, model.safetensors   the codec (loadable with ImageCodec.load / AudioCodec.load)
    recipe.yaml                      the resolved recipe
    metrics.jsonl                    one line per `log_every` steps (step, wall time, lr, losses, PSNR, usage)
    summary.json                     final step, wall time, threads, last metrics
    checkpoint/                      latest checkpoint: model + optimizer (safetensors), state.json
                                     (step, RNG states, wall time); replaced atomically
    .anygen.lock                     locked while a run trains here (a second run fails at once)

Resume (`resume=True`) restores model, optimizer, step, RNG states and elapsed time, and
continues with the batch stream where it stopped (batch k is a function of (seed, k)), so
without a time budget a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import yaml

from anygen.config import ConfigError, apply_overrides, build, check, choice, read_yaml, to_dict
from anygen.data.media_sources import BatchSource, ImageListSource, WaveListSource, folder_images, folder_waves
from anygen.errors import AnygenError
from anygen.io import atomic_write_bytes
from anygen.training import common
from anygen.threads import set_threads
from anygen.training.common import (OptimConfig, WallBudget, holds_run, json_default, load_checkpoint,
                                    lock_run_dir, refuse_existing_run, remove_stale_temps, save_checkpoint,
                                    trim_metrics, writing)
from anygen.worlds import MEDIA_SOURCES
from anygen.worlds.user import UserData

# what `out/` holds that is written atomically (a killed write leaves `.NAME.*.tmp` or `.NAME.old.*`)
ATOMIC_NAMES = ("checkpoint", "recipe.yaml", "summary.json", "metrics.jsonl")
STAGING_PREFIX = ".artifact."  # `_install_artifact`'s staging directories
IMAGE_SOURCES = tuple(k for k, (_, kind) in MEDIA_SOURCES.items() if kind == "image") + ("image-folder", "user")
AUDIO_SOURCES = tuple(k for k, (_, kind) in MEDIA_SOURCES.items() if kind == "audio") + ("audio-folder",)


@dataclass
class DataConfig:
    """The `data:` section of a tokenizer recipe."""

    source: str = choice(*IMAGE_SOURCES, *AUDIO_SOURCES, "text")
    path: str = ""  # image-folder / audio-folder
    recursive: bool = False  # image-folder / audio-folder: also the files in sub-folders
    user: UserData = field(default_factory=UserData)  # source user: the user's data (a pretokenize `user:` section)
    seed: int = 0  # world seed (ShapesWorld layout of held-out splits etc.)
    split: str = "train"
    max_objects: int = 3  # ShapesWorld: 1..max_objects per scene
    fill: float = 0.0  # > 0: dense training scenes instead, each of the 9 cells filled with this probability
    hflip: bool = False  # emoji / image-folder: mirror half of the images (doubles a small image set)
    clip_seconds: float = 1.0  # audio: length of training clips
    crop_align: int = 1  # audio: clip start offsets are multiples of this many samples (a codec hop keeps frames aligned)
    melody_timbres: str = "reference"  # melodies: "augmented" plays most in other timbres (checked by WorldConfig)
    sample_rate: int = 16000
    prefetch: int = 0  # batches rendered ahead in a background thread (0 = inline; rendering is cheap)
    # text kind only: corpus size from ShapesWorld (captions, instructions, melody texts)
    text_scenes: int = 20000
    text_include_emoji: bool = True

    def __post_init__(self):
        check(self.source not in ("image-folder", "audio-folder") or bool(self.path), "path",
              f"is required for source {self.source!r}")
        check(1 <= self.max_objects <= 9, "max_objects", f"must be 1..9, got {self.max_objects}")
        check(self.clip_seconds > 0, "clip_seconds", f"must be > 0, got {self.clip_seconds}")
        check(self.crop_align >= 1, "crop_align", f"must be >= 1, got {self.crop_align}")
        check(self.sample_rate > 0, "sample_rate", f"must be > 0, got {self.sample_rate}")
        check(self.prefetch >= 0, "prefetch", f"must be >= 0, got {self.prefetch}")
        check(0.0 <= self.fill <= 1.0, "fill", f"must be in [0, 1], got {self.fill}")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # 0 = off
    checkpoint_every: int = 500
    log_every: int = 25
    threads: int = 2  # torch.set_num_threads; 0 = leave torch's default
    seed: int = 0
    time_budget_minutes: float = 0.0  # > 0: the lr schedule and the run also end by wall time (not bit-reproducible)
    export_at_checkpoints: bool = True  # also refresh the artifact in `out/` at every checkpoint (usable early)

    def __post_init__(self):
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        check(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        check(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        check(self.time_budget_minutes >= 0, "time_budget_minutes", f"must be >= 0, got {self.time_budget_minutes}")
        _ = self.optim  # builds, and so validates, the optimizer fields not checked above

    @cached_property
    def optim(self) -> OptimConfig:
        """The optimizer fields as the trainers' OptimConfig (warmup, then cosine)."""
        return OptimConfig(lr=self.lr, min_lr_ratio=self.min_lr_ratio, schedule="cosine", warmup_steps=self.warmup,
                           weight_decay=self.weight_decay, betas=self.betas, grad_clip=self.grad_clip)


@dataclass
class TokenizerRecipe:
    kind: str = choice("image", "audio", "text")
    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    codec: dict = field(default_factory=dict)  # validated by the codec's own config class
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check(bool(self.out.strip()), "out", "is required (the artifact directory)")
        if self.kind == "image":
            check(self.data.source in IMAGE_SOURCES, "data.source",
                  f"{self.data.source!r} is not an image source ({', '.join(IMAGE_SOURCES)})")
        elif self.kind == "audio":
            check(self.data.source in AUDIO_SOURCES, "data.source",
                  f"{self.data.source!r} is not an audio source ({', '.join(AUDIO_SOURCES)})")



@dataclass
class TextCodecConfig:
    vocab_size: int = 1000
    model_type: str = choice("bpe", "unigram")

    def __post_init__(self):
        check(self.vocab_size >= 300, "vocab_size",
              f"must be >= 300 (256 byte-fallback pieces plus the corpus characters), got {self.vocab_size}")


def load_recipe(recipe_path: str | os.PathLike | None, overrides: list[str] = ()) -> TokenizerRecipe:
    data = read_yaml(recipe_path) if recipe_path is not None else {}
    return build(TokenizerRecipe, apply_overrides(data, list(overrides)))


def build_codec_config(recipe: TokenizerRecipe):
    """The codec section validated by its own dataclass (errors name `codec.<field>`)."""
    if recipe.kind == "image":
        from anygen.codecs.image import ImageCodecConfig

        return build(ImageCodecConfig, recipe.codec, prefix="codec.")
    if recipe.kind == "audio":
        from anygen.codecs.audio import AudioCodecConfig

        return build(AudioCodecConfig, recipe.codec, prefix="codec.")
    return build(TextCodecConfig, recipe.codec, prefix="codec.")


def build_codec(recipe: TokenizerRecipe, cfg=None) -> torch.nn.Module:
    cfg = cfg if cfg is not None else build_codec_config(recipe)
    if recipe.kind == "image":
        from anygen.codecs.image import ImageCodec

        return ImageCodec.from_config(cfg)
    from anygen.codecs.audio import AudioCodec

    return AudioCodec.from_config(cfg) if hasattr(AudioCodec, "from_config") else AudioCodec(cfg)


# ---- schedule ------------------------------------------------------------------------------
def lr_at(train: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from lr to lr*min_lr_ratio over `progress` in [0,1]."""
    return common.lr_at(step, train.optim, train.steps, progress)


class _Terminated(Exception):
    """SIGTERM arrived during training (a scheduler's preemption, `kill`)."""


def _checkpoint_on_sigterm():
    """Turn SIGTERM into `_Terminated` so the loop can checkpoint before exiting; returns the restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _architecture_changes(saved: dict, current: dict) -> list[str]:
    """Codec keys that differ between a checkpoint and the recipe, ignoring loss weights.

    Loss settings (`*_weight`, `disc_start`, `usage_decay`, `background`) may change on resume (fine-tuning);
    anything else changes what the weights mean, even where tensor shapes agree (e.g. FSQ levels).
    """
    def norm(d):
        return json.loads(json.dumps(d, default=json_default))

    saved, current = norm(saved), norm(current)
    tunable = {"disc_start", "usage_decay", "background"}
    return sorted(k for k in set(saved) | set(current)
                  if saved.get(k) != current.get(k) and not k.endswith("_weight") and k not in tunable)


def _install_artifact(save_fn, out: Path) -> None:
    """Let `save_fn(tmp_dir)` write an artifact, then move its files into `out` one atomic rename each.

    `out/` also holds checkpoint/ and metrics.jsonl, so it is not replaced as a whole; weights
    go in before the config, and each file is either the old or the new one.
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=STAGING_PREFIX))
    try:
        staged = tmp / "codec"
        save_fn(staged)
        files = sorted(p for p in staged.iterdir() if p.is_file())
        files.sort(key=lambda p: p.name in ("config.json", "text.json"))  # metadata last
        for p in files:
            os.replace(p, out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export(model: torch.nn.Module, out: Path) -> None:
    was = model.training
    model.eval()
    try:
        with writing(out):
            _install_artifact(model.save, out)
    finally:
        model.train(was)


# ---- data ----------------------------------------------------------------------------------
def make_source(data: DataConfig, batch_size: int, seed: int, *, image_size: int = 64,
                sample_rate: int | None = None) -> BatchSource:
    """The batch source a recipe's `data:` section describes: a folder, or a world's media
    (`anygen.worlds.MEDIA_SOURCES`)."""
    from anygen.worlds import get_world, media_source

    sr = sample_rate or data.sample_rate
    if data.source in ("image-folder", "user"):
        images = (folder_images(data.path, data.recursive) if data.source == "image-folder"
                  else get_world("user", data.user, seed=data.seed).images())
        return ImageListSource(images, batch_size, image_size, seed, data.prefetch, data.path or "user data",
                               data.hflip)
    if data.source == "audio-folder":
        return WaveListSource(folder_waves(data.path, sr, data.recursive), batch_size, sr, data.clip_seconds, seed,
                              data.prefetch, data.path, data.crop_align)
    if data.source in IMAGE_SOURCES:
        return media_source(data.source, "image").image_batches(data, batch_size, seed, image_size)
    if data.source in AUDIO_SOURCES:
        return media_source(data.source, "audio").audio_batches(data, batch_size, seed, sr)
    raise AnygenError(f"data.source: {data.source!r} does not produce media batches")


# ---- training ------------------------------------------------------------------------------
def train_tokenizer(recipe_path: str | os.PathLike | None, overrides: list[str] = (), resume: bool = False,
                    progress: bool = True) -> Path:
    """Train what the recipe describes; returns the artifact directory (`recipe.out`).

    The run holds a lock on `out` (a second run there fails at once) and first clears
    temporaries a killed run left; a codec run into a directory that holds one needs `resume`.
    """
    recipe = load_recipe(recipe_path, overrides)
    cfg = build_codec_config(recipe)  # validated before anything is written
    out = Path(recipe.out)
    with lock_run_dir(out, "out"):
        remove_stale_temps(out, ATOMIC_NAMES, globs=(STAGING_PREFIX + "*",))
        if recipe.kind == "text":
            return _train_text(recipe, cfg, out)
        if holds_run(out) and not resume:
            refuse_existing_run(out, "a run", "out")
        return _train_codec(recipe, cfg, out, resume=resume, progress=progress)


def text_corpus(data: DataConfig) -> list[str]:
    """The text tokenizer's corpus: with source user, every text of the user's data once
    (captions, transcripts, documents, instructions); with a world's source name (e.g. digits),
    `text_scenes` lines of that world's text corpus; else (text, shapes) the shapes world's text (captions,
    edit instructions, melody texts, stories) and, with `text_include_emoji`, the emoji world's names."""
    from anygen.worlds import MEDIA_SOURCES, get_world
    from anygen.worlds.shapes.world import WorldConfig

    if data.source == "user":
        return get_world("user", data.user, seed=data.seed).texts()

    rng = np.random.default_rng(data.seed)
    if data.source not in ("text", "shapes"):  # another world's text: its corpus of `text_scenes` lines
        world, _ = MEDIA_SOURCES.get(data.source, (data.source, None))
        return get_world(world, seed=data.seed).text_corpus(data.text_scenes, rng)
    lines = get_world("shapes", WorldConfig(seed=data.seed)).text_corpus(data.text_scenes, rng)
    if data.text_include_emoji:
        try:
            lines += get_world("emoji").text_corpus(0, rng)
        except AnygenError:
            pass  # no emoji font on this machine: shapes text only
    return lines


def _write_recipe(recipe: TokenizerRecipe, out: Path) -> None:
    text = yaml.safe_dump(json.loads(json.dumps(to_dict(recipe), default=json_default)), sort_keys=False)
    with writing(out / "recipe.yaml"):
        atomic_write_bytes(out / "recipe.yaml", text.encode())


def _write_summary(summary: dict, out: Path) -> None:
    with writing(out / "summary.json"):
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def _train_text(recipe: TokenizerRecipe, cfg: TextCodecConfig, out: Path) -> Path:
    from anygen.codecs.text import train_text_tokenizer

    start = time.time()
    lines = text_corpus(recipe.data)
    try:
        with writing(out):
            _install_artifact(lambda d: train_text_tokenizer(lines, cfg.vocab_size, d, model_type=cfg.model_type),
                              out)
    except RuntimeError as e:  # sentencepiece reports e.g. a vocabulary smaller than the character set
        raise AnygenError(f"codec.vocab_size: sentencepiece cannot train ({str(e).splitlines()[0]})") from None
    _write_recipe(recipe, out)
    _write_summary({"kind": "text", "lines": len(lines), "vocab_size": cfg.vocab_size,
                    "wall_s": round(time.time() - start, 2)}, out)
    return out


def _train_codec(recipe: TokenizerRecipe, cfg, out: Path, resume: bool, progress: bool) -> Path:
    from tqdm import tqdm

    train = recipe.train
    if train.threads:
        set_threads(train.threads, "train.threads")
    random.seed(train.seed)
    np.random.seed(train.seed % 2**32)
    torch.manual_seed(train.seed)

    model = build_codec(recipe, cfg)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=train.lr, betas=tuple(train.betas))

    ckpt_dir = out / "checkpoint"
    step, elapsed_before, cpu_before = 0, 0.0, 0.0
    if resume and (ckpt_dir / "state.json").exists():
        state = load_checkpoint(ckpt_dir, model, opt)
        try:
            saved_cfg = to_dict(build(type(cfg), state.get("recipe", {}).get("codec", {}), prefix="codec."))
        except ConfigError as e:
            raise AnygenError(f"{ckpt_dir}: the checkpoint's codec section is not valid here ({e})") from None
        changed = _architecture_changes(saved_cfg, to_dict(cfg))
        if changed:
            raise AnygenError(f"{ckpt_dir}: the checkpoint was trained with a different codec section "
                              f"({', '.join(changed)}); train into a new `out` or drop --resume")
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        cpu_before = float(state.get("cpu_s", 0.0))
    elif resume:
        print(f"no checkpoint in {ckpt_dir}; starting from step 0", file=sys.stderr)
    _write_recipe(recipe, out)
    trim_metrics(out / "metrics.jsonl", step)

    sample_rate = getattr(model, "sample_rate", None)
    image_size = getattr(model, "image_size", 64)
    source = make_source(recipe.data, train.batch_size, train.seed, image_size=image_size, sample_rate=sample_rate)
    batches = source.batches(start=step)

    start_cpu = time.process_time()
    budget = WallBudget(train.time_budget_minutes, elapsed_before)
    elapsed = budget.elapsed

    def cpu() -> float:  # process CPU seconds: the honest cost on a shared machine
        return cpu_before + time.process_time() - start_cpu

    def progress_of(s: int) -> float:
        return budget.progress(s, train.steps)

    restore_sigterm = _checkpoint_on_sigterm()
    bar = tqdm(total=train.steps, initial=step, disable=not progress, dynamic_ncols=True, desc=f"train {out.name}")
    window: dict[str, list[float]] = {}
    last_metrics: dict[str, float] = {}
    metrics_path = out / "metrics.jsonl"
    try:
        while step < train.steps and progress_of(step) < 1.0:
            lr = lr_at(train, step, progress_of(step))
            for g in opt.param_groups:
                g["lr"] = lr
            x = next(batches)
            loss, metrics = model.training_losses(x)
            if not torch.isfinite(loss):
                raise AnygenError(f"training diverged at step {step} (loss {float(loss)}); "
                                  f"lower train.lr or raise train.warmup")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip > 0:
                metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip))
            opt.step()
            step += 1
            for k, v in metrics.items():
                window.setdefault(k, []).append(float(v))
            bar.update(1)
            if step % train.log_every == 0 or step == train.steps:
                last_metrics = {k: float(np.mean(v)) for k, v in window.items()}
                if "usage" in window:
                    last_metrics["usage"] = window["usage"][-1]
                window = {}
                row = {"step": step, "time_s": round(elapsed(), 2), "cpu_s": round(cpu(), 2), "lr": lr,
                       **{k: round(v, 5) for k, v in last_metrics.items()}}
                with writing(metrics_path), open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix({k: f"{last_metrics[k]:.3g}" for k in ("loss", "psnr", "usage") if k in last_metrics})
            if step % train.checkpoint_every == 0:
                save_checkpoint(ckpt_dir, model, opt, step, elapsed(), recipe, cpu())
                if train.export_at_checkpoints:
                    _export(model, out)
    except (KeyboardInterrupt, _Terminated) as e:
        save_checkpoint(ckpt_dir, model, opt, step, elapsed(), recipe, cpu())
        bar.close()
        how = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        raise AnygenError(f"{how} at step {step}; checkpoint saved in {ckpt_dir} (resume with --resume)") from None
    finally:
        restore_sigterm()
        bar.close()
        close = getattr(batches, "close", None)
        if close:
            close()
    save_checkpoint(ckpt_dir, model, opt, step, elapsed(), recipe, cpu())
    _export(model, out)
    summary = {"kind": recipe.kind, "steps": step, "wall_s": round(elapsed(), 1), "cpu_s": round(cpu(), 1),
               "threads": torch.get_num_threads(), "codebook_size": getattr(model, "codebook_size", None),
               "last_metrics": last_metrics}
    _write_summary(summary, out)
    return out


__all__ = ["TokenizerRecipe", "TrainConfig", "TextCodecConfig", "load_recipe", "train_tokenizer",
           "save_checkpoint", "load_checkpoint", "text_corpus", "lr_at", "ConfigError"]
