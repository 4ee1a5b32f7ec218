"""`anygen pretokenize RECIPE.yaml [key=value ...]`: worlds and user data -> token shards.

A recipe (schema: `PretokenizeConfig`) names the tokenizer directory, the ShapesWorld
(seed, held-out colour-shape pairs, ...), how many examples each split gets, the task mix
and the longest document kept. Output:

    OUT/train/           shards of `n_train` world examples (+ user data: `anygen.worlds.user`)
    OUT/val/             `n_val` fresh world examples from the same distribution (another seed stream)
                         (+ the user data's `val_fraction`)
    OUT/holdout/         `n_holdout` examples whose scenes contain a held-out pair (when > 0)
    OUT/recipe.yaml      the resolved recipe

Examples are split over tasks exactly in proportion to the weights, then shuffled; each
split is deterministic given `world.seed`. A recipe with a `user:` section trains on its data
alone: `n_train` and `n_val` (world examples) default to 0 there, and 20000 / 500 without one;
set them to mix ShapesWorld examples in. A task the written examples do not contain needs no
codec; one they do contain names the codec the tokenizer lacks. Images go through the codec in batches of
`codec_batch`, and a scene or melody seen before reuses its codes.

Example recipe:

    tokenizer: runs/tokenizer
    out: data/shapes
    n_train: 60000
    n_val: 1000
    seq_len: 1024
    world: {seed: 0, holdout: [purple triangle]}
    tasks:
      text_to_image: {weight: 3, p_null: 0.1}
      edit: {weight: 2, p_null_instruction: 0.05, p_null_image: 0.05, p_null_both: 0.05}
      describe_edit: {weight: 1}   # the verifier of best-of-N edits (default weight 0)
      story: {weight: 1}
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from anygen.config import check, choice, load_config, to_dict
from anygen.data.shards import ShardWriter
from anygen.tasks.encoder import SequenceEncoder
from anygen.tasks.layouts import Spec, TaskMix, allocate
from anygen.worlds import get_world
from anygen.worlds.shapes.world import WorldConfig
from anygen.worlds.user import UserData
from anygen.errors import AnygenError
from anygen.io import atomic_write_bytes, check_output_path

SPLITS = ("train", "val", "holdout")
WORLD_EXAMPLES = {"n_train": 20000, "n_val": 500}  # world examples per split of a recipe without user data
IMAGE_TASKS = ("text_to_image", "image_to_text", "edit", "describe_edit", "reasoned_edit", "story")
AUDIO_TASKS = ("text_to_audio", "audio_to_text")


@dataclass
class EmojiData:
    """Emoji as an extra source of text->image, image->text and edit examples."""

    share: float = 0.0  # fraction of those tasks' examples drawn from emoji instead of shapes
    size: int = 64

    def __post_init__(self):
        check(0.0 <= self.share <= 1.0, "share", f"must be in [0, 1], got {self.share}")


@dataclass
class PretokenizeConfig:
    tokenizer: str = ""  # MultimodalTokenizer directory, or a bundled model's name (`default`: its tokenizer)
    out: str = "data/shapes"  # writes OUT/train, OUT/val (and OUT/holdout)
    n_train: int | None = None  # world examples in the train split (default: 20000, or 0 with user data)
    n_val: int | None = None  # world examples in the val split (default: 500, or 0 with user data)
    n_holdout: int = 0  # examples from scenes with a held-out pair (needs world.holdout)
    seq_len: int = 1024  # longest document kept; longer ones follow `overflow`
    overflow: str = choice("truncate", "drop")
    source: str = "shapes"  # the registered world (`anygen.worlds.WORLDS`) of the n_train/n_val examples
    world: WorldConfig = field(default_factory=WorldConfig)  # shapes' settings; `world.seed` seeds every source
    tasks: TaskMix = field(default_factory=TaskMix)
    emoji: EmojiData = field(default_factory=EmojiData)
    user: UserData = field(default_factory=UserData)
    codec_batch: int = 64  # images per codec call
    chunk: int = 512  # examples sampled, encoded and written per step
    shard_tokens: int = 1 << 27  # tokens per shard file

    def __post_init__(self):
        for name, default in WORLD_EXAMPLES.items():
            if getattr(self, name) is None:
                setattr(self, name, 0 if self.user else default)
        check(bool(self.tokenizer), "tokenizer", "set the tokenizer directory (tokenizer=DIR)")
        check(bool(self.out), "out", "set the output directory")
        for name in ("n_train", "n_val", "n_holdout"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.n_holdout == 0 or bool(self.world.holdout), "n_holdout",
              "a holdout split needs held-out pairs in world.holdout")
        check(self.seq_len >= 16, "seq_len", f"must be >= 16, got {self.seq_len}")
        check(self.codec_batch >= 1, "codec_batch", f"must be >= 1, got {self.codec_batch}")
        check(self.chunk >= 1, "chunk", f"must be >= 1, got {self.chunk}")


# ---- building the examples of a split ------------------------------------------------------
def _world_plan(cfg: PretokenizeConfig, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(task, source) for each of `n` world examples, in a shuffled order."""
    if n == 0:
        return []
    counts = allocate(_world_weights(cfg), n)
    plan = []
    for task, k in counts.items():
        mixed = cfg.source == "shapes" and task in get_world("emoji").tasks
        n_emoji = int(round(k * cfg.emoji.share)) if mixed else 0
        plan += [(task, "emoji")] * n_emoji + [(task, cfg.source)] * (k - n_emoji)
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def _source_world(cfg: PretokenizeConfig):
    if cfg.source == "shapes":
        return get_world("shapes", cfg.world)
    return get_world(cfg.source, seed=cfg.world.seed)


def _world_weights(cfg: PretokenizeConfig) -> dict[str, float]:
    """The mix's weights of the tasks the source world has (the others it cannot sample)."""
    tasks = _source_world(cfg).tasks
    return {t: w for t, w in cfg.tasks.weights().items() if t in tasks}


def _world_examples(cfg: PretokenizeConfig) -> bool:
    return cfg.n_train + cfg.n_val + cfg.n_holdout > 0


def written_tasks(cfg: PretokenizeConfig) -> list[str]:
    """The tasks the recipe's shards hold: the world's weighted tasks (when it writes world
    examples), then those the user data teaches under the mix."""
    tasks = [t for t, w in _world_weights(cfg).items() if w > 0] if _world_examples(cfg) else []
    if cfg.user:
        tasks += [t for t in get_world("user", cfg.user).tasks_for(cfg.tasks) if t not in tasks]
    return tasks


def trained_on(cfg: PretokenizeConfig) -> dict:
    """{"worlds": [...], "tasks": [...]}: what a model trained on this recipe's shards knows (the
    decoder trainer records it in `anygen_decoder.json`, and `anygen.load` picks strategies by it)."""
    mixed = cfg.source == "shapes" and cfg.emoji.share > 0
    worlds = ([cfg.source] + (["emoji"] if mixed else [])) if _world_examples(cfg) else []
    if cfg.user:
        worlds.append("user")
    return {"worlds": worlds, "tasks": written_tasks(cfg)}


def _check_tokenizer(cfg: PretokenizeConfig, tokenizer) -> None:
    """Each codec the written examples need is in the tokenizer; the error names the tasks that need it."""
    w, tasks = cfg.tasks.weights(), written_tasks(cfg)

    def weighted(names) -> str:
        return ", ".join(f"{t} {w[t]:g}" if t in w else t for t in names)

    image_tasks = [t for t in IMAGE_TASKS if t in tasks]
    if tokenizer.image is None and image_tasks:
        raise AnygenError(f"{cfg.tokenizer}: no image codec, and image tasks have weight > 0 "
                          f"({weighted(image_tasks)}): set "
                          f"{' and '.join(f'tasks.{t}.weight=0' for t in image_tasks)} or give an image codec")
    audio_tasks = [t for t in AUDIO_TASKS if t in tasks]
    melodies = "story" in tasks and cfg.source == "shapes" and _world_examples(cfg) and cfg.world.melody_prob > 0
    if tokenizer.audio is None and (audio_tasks or melodies):
        fixes = [f"tasks.{t}.weight=0" for t in audio_tasks] + (["world.melody_prob=0"] if melodies else [])
        need = [weighted(audio_tasks)] if audio_tasks else []
        need += [f"story with world.melody_prob {cfg.world.melody_prob:g}"] if melodies else []
        raise AnygenError(f"{cfg.tokenizer}: no audio codec, and audio tasks have weight > 0 ({', '.join(need)}): "
                          f"set {' and '.join(fixes)} or give an audio codec")
    if tokenizer.audio is None and cfg.user.audio_folders:
        raise AnygenError(f"{cfg.tokenizer}: no audio codec, but the recipe has user.audio_folders: "
                          "give an audio codec or drop them")


def write_split(cfg: PretokenizeConfig, tokenizer, encoder: SequenceEncoder, split: str, n: int,
                directory: Path, progress: bool = True) -> dict:
    """Sample, encode and write one split; returns the writer's per-task summary."""
    from tqdm import tqdm

    rng = np.random.default_rng([cfg.world.seed, SPLITS.index(split)])
    plan = _world_plan(cfg, n, rng)
    world = _source_world(cfg)
    sources = {cfg.source: world.task_source(cfg.tasks)} if plan else {}
    if any(src == "emoji" for _, src in plan):
        sources["emoji"] = get_world("emoji", size=cfg.emoji.size).task_source(cfg.tasks)
    # val examples come from the world's val split where it has one (else fresh train-distribution samples)
    world_split = split if split == "holdout" or split in getattr(world, "splits", ()) else "train"
    emoji_split = "heldout" if split == "holdout" else "train"
    makers = [lambda t=t, s=s: sources[s].sample(t, rng, emoji_split if s == "emoji" else world_split)
              for t, s in plan]
    if split != "holdout" and cfg.user:
        makers += get_world("user", cfg.user, seed=cfg.world.seed).task_source(cfg.tasks).examples(split, rng)
    meta = {"split": split, "recipe": to_dict(cfg), **trained_on(cfg)}
    with ShardWriter(directory, tokenizer.vocab, cfg.seq_len, cfg.overflow, cfg.shard_tokens, meta) as writer:
        bar = tqdm(total=len(makers), desc=f"pretokenize {split}", unit="ex", disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)
        for start in range(0, len(makers), cfg.chunk):
            specs: list[Spec] = [make() for make in makers[start:start + cfg.chunk]]
            for seq in encoder.encode(specs):
                writer.add(seq.ids, seq.loss, seq.task)
            bar.update(len(specs))
            bar.set_postfix(tokens=sum(writer.tokens.values()))
        bar.close()
        summary = writer.summary()
    return summary


def format_summary(split: str, summary: dict) -> str:
    lines = [f"{split}: {'task':<14} {'docs':>8} {'tokens':>11} {'loss tok':>11} {'mean len':>9} {'trunc':>6} {'drop':>5}"]
    total = Counter()
    for task, s in summary.items():
        mean = s["tokens"] / s["documents"] if s["documents"] else 0.0
        lines.append(f"{'':{len(split) + 1}} {task:<14} {s['documents']:>8} {s['tokens']:>11} "
                     f"{s['loss_tokens']:>11} {mean:>9.1f} {s['truncated']:>6} {s['dropped']:>5}")
        total.update(s)
    mean = total["tokens"] / total["documents"] if total["documents"] else 0.0
    lines.append(f"{'':{len(split) + 1}} {'total':<14} {total['documents']:>8} {total['tokens']:>11} "
                 f"{total['loss_tokens']:>11} {mean:>9.1f} {total['truncated']:>6} {total['dropped']:>5}")
    return "\n".join(lines)


def pretokenize(recipe_path: str | os.PathLike | None, overrides: list[str] = (), *, tokenizer=None,
                progress: bool = True) -> Path:
    """Recipe -> shards under `out` (train, val and, when asked, holdout); returns the out directory.

    `tokenizer`: an already loaded MultimodalTokenizer (default: load `cfg.tokenizer`).
    """
    cfg = load_config(PretokenizeConfig, recipe_path, list(overrides))
    out = check_output_path(cfg.out, "out", directory=True)  # before the tokenizer loads
    if tokenizer is None:
        from anygen.api import tokenizer_dir
        from anygen.tokenizer import MultimodalTokenizer

        cfg.tokenizer = str(tokenizer_dir(cfg.tokenizer))  # a bundled model's name -> its tokenizer, recorded so
        tokenizer = MultimodalTokenizer.load(cfg.tokenizer)
    _check_tokenizer(cfg, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "recipe.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    encoder = SequenceEncoder(tokenizer, batch_size=cfg.codec_batch)
    counts = {"train": cfg.n_train, "val": cfg.n_val, "holdout": cfg.n_holdout}
    for split in SPLITS:
        if split == "holdout" and counts[split] == 0:
            continue
        summary = write_split(cfg, tokenizer, encoder, split, counts[split], out / split, progress)
        print(format_summary(split, summary))
    s = encoder.stats
    print(f"codec cache: images {s['image_misses']} encoded in {s['image_batches']} batches, {s['image_hits']} reused; "
          f"audio {s['audio_misses']} encoded, {s['audio_hits']} reused")
    print(f"wrote {out}")
    return out
