"""`anygen quickstart DATA --out DIR --minutes M`: from captioned images to a loadable model.

DATA is a folder of images with captions (`captions.jsonl` / `captions.csv` beside them, or
class sub-folders with `--labels subfolders --caption-template "a photo of {label}"`), or the
name of a registered world that has images and captions (e.g. `digits`). The steps are the
documented ones, run with recipes' defaults and a few overrides:

    1. text tokenizer on the data's text        anygen tokenizer train tokenizers/text.yaml ...
    2. image codec on its images                anygen tokenizer train tokenizers/shapes_image.yaml ...
    3. the tokenizer                            anygen tokenizer assemble ...
    4. token shards                             anygen pretokenize training/shapes_data.yaml ...
    5. the decoder, on the time left            anygen train training/shapes.yaml train.time_budget_minutes=...
    6. the model directory                      anygen bundle ... --out DIR

Intermediate runs go to `DIR.runs/`; a step whose output exists is kept, and an interrupted
codec or decoder run resumes, so rerunning the same command continues. The codec and the
decoder stop by wall time (`--minutes` split by `BUDGET_SHARES`); the rest takes what it takes
(about a minute for 60,000 examples). `plan()` lists the commands without running them. With
`processes` > 1 the decoder trains data-parallel on that many CPU processes of one thread each
(`accelerate launch --config_file training/accelerate_cpu_2proc.yaml --num_processes N`), which
stop together when the time is spent.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from anygen.config import check, choice
from anygen.errors import AnygenError

BUDGET_SHARES = {"codec": 0.2, "decoder": 0.75}  # of --minutes; tokenizer, shards and bundling take the rest
# Data-parallel decoder training on the CPU: accelerate's 2-process CPU config, its process count overridden.
# More processes than cores only contend, so the option stops at a machine's worth.
DDP_CONFIG = "training/accelerate_cpu_2proc.yaml"
MAX_PROCESSES = 64
CODEC_WIDTH = 48  # the codec's first-level channels, doubled per level up to 256: a 32 px codec of ~1M parameters
CODES_PER_SIDE = 8  # 8x8 = 64 image codes: short sequences a small decoder learns in minutes
WORLD_EXAMPLES = 60000  # training examples sampled from a world (user data is written as it is)
VAL_EXAMPLES = 300
USER_SEQUENCES = 0.5  # captioned sequences per captioned image: teaches interleaved documents (`generate`)
# a world's image->text examples per 2 text->image ones (the recipe has 1.5): a caption carries one informative
# token against an image's 64 codes, and at 1.5 an hour left image->text underfit, as wrong on the training
# digits as on the test ones (docs/experiments.md, "Digits, 60 minutes on both cores")
READ_WEIGHT = 3.0
TEXT_VOCAB = 1000  # a soft cap: BPE merges until every caption word is one piece (300 split 'three' into letters)


@dataclass
class QuickstartOptions:
    data: str  # a folder of captioned images, or a registered world's name
    out: str  # the model directory to write
    minutes: float = 60.0
    image_size: int = 32
    labels: str = choice("", "subfolders")  # subfolders: each sub-folder is a class, captioned by the template
    caption_template: str = ""  # with labels: e.g. "a photo of {label}"
    recursive: bool = False
    background: str = choice("white", "black", "none")  # the codec's weighting: dark-on-white, light-on-dark, none
    processes: int = 1  # decoder training processes on the CPU, one thread each (2 on a 2-core machine)

    def __post_init__(self):
        check(self.minutes >= 5, "minutes", f"must be at least 5, got {self.minutes}")
        check(isinstance(self.processes, int) and 1 <= self.processes <= MAX_PROCESSES, "processes",
              f"must be an integer in [1, {MAX_PROCESSES}], got {self.processes!r}")
        check(bool(self.out.strip()), "out", "is required (the model directory)")
        size = self.image_size
        check(size >= CODES_PER_SIDE * 2 and size % CODES_PER_SIDE == 0 and _is_power_of_two(size // CODES_PER_SIDE),
              "image_size", f"must be {CODES_PER_SIDE} times a power of two (16, 32, 64, ...), got {size}")

    @property
    def world(self) -> str | None:
        """The world DATA names, or None for a folder."""
        from anygen.worlds import WORLDS

        return self.data if self.data in WORLDS and not Path(self.data).exists() else None


def runs_of(opts: QuickstartOptions) -> Path:
    """Where the intermediate runs go."""
    return Path(opts.out + ".runs")


def _empty_shards(directory: Path) -> bool:
    import json

    index = directory / "index.json"
    return index.exists() and json.loads(index.read_text()).get("n_documents", 0) == 0


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _user_section(opts: QuickstartOptions) -> str:
    """The recipe override naming the folder (a pretokenize `user:` section)."""
    entry = {"path": opts.data, "recursive": opts.recursive}
    if opts.labels:
        entry.update(labels=opts.labels, caption_template=opts.caption_template)
    flow = ", ".join(f"{k}: {_yaml_scalar(v)}" for k, v in entry.items())
    return f"[{{{flow}}}]"


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def plan(opts: QuickstartOptions, overrides: dict[str, list[str]] | None = None) -> list[tuple[str, Path, list[str]]]:
    """The steps: (name, the output that marks it done, the anygen command line); `overrides`
    appends recipe overrides to the steps it names (e.g. tiny sizes in tests)."""
    runs = runs_of(opts)
    world = opts.world
    downsample = (opts.image_size // CODES_PER_SIDE).bit_length() - 1
    channels = "[" + ",".join(str(min(CODEC_WIDTH * 2 ** i, 256)) for i in range(downsample)) + "]"
    user = ([] if world else [f"data.user.image_folders={_user_section(opts)}"])
    text_source = [f"data.source={world}"] if world else ["data.source=user"] + user
    image_source = [f"data.source={world}"] if world else ["data.source=user"] + user
    minutes = opts.minutes
    shards = runs / "shards"
    # the recipe's task weights apply to the tasks the data has (text_to_image, image_to_text, document)
    # (a world's examples are drawn by them; a folder's are written once per task and item)
    data_overrides = ([f"source={world}", f"n_train={WORLD_EXAMPLES}", f"n_val={VAL_EXAMPLES}",
                       f"tasks.image_to_text.weight={READ_WEIGHT:g}"] if world else
                      ["n_train=0", "n_val=0", f"user.image_folders={_user_section(opts)}", "user.val_fraction=0.02",
                       f"user.sequences={USER_SEQUENCES}"])
    steps = [
        ("text tokenizer", runs / "text" / "summary.json",
         ["tokenizer", "train", "tokenizers/text.yaml", f"out={runs / 'text'}", f"codec.vocab_size={TEXT_VOCAB}",
          *text_source]),
        ("image codec", runs / "image" / "summary.json",
         ["tokenizer", "train", "tokenizers/shapes_image.yaml", f"out={runs / 'image'}", *image_source,
          "data.fill=0", f"codec.image_size={opts.image_size}", f"codec.downsample={downsample}",
          f"codec.channels={channels}", f"codec.background={opts.background}", "train.steps=100000",
          f"train.time_budget_minutes={minutes * BUDGET_SHARES['codec']:.2f}", "--resume"]),
        ("tokenizer", runs / "tokenizer" / "tokenizer.json",
         ["tokenizer", "assemble", "--text", str(runs / "text"), "--image", str(runs / "image"),
          "--out", str(runs / "tokenizer")]),
        ("token shards", shards / "val" / "index.json",
         ["pretokenize", "training/shapes_data.yaml", f"tokenizer={runs / 'tokenizer'}", f"out={shards}",
          "seq_len=512", *data_overrides]),
        ("decoder", runs / "decoder" / "model" / "anygen_decoder.json",
         ["train", "training/shapes.yaml", f"train.out_dir={runs / 'decoder'}", f"data.shard_dir={shards / 'train'}",
          f"data.eval_shard_dir={shards / 'val'}", "train.steps=100000", "train.threads=1",
          f"train.time_budget_minutes={minutes * BUDGET_SHARES['decoder']:.2f}", "--resume"]),
        ("model", Path(opts.out) / "anygen_decoder.json",
         ["bundle", str(runs / "decoder" / "model"), "--out", opts.out]),
    ]
    extra = overrides or {}
    if unknown := set(extra) - {name for name, _, _ in steps}:
        raise AnygenError(f"quickstart: no step named {sorted(unknown)[0]!r}")
    return [(name, done, _before_flags(argv, extra.get(name, []))) for name, done, argv in steps]


def _before_flags(argv: list[str], more: list[str]) -> list[str]:
    """`argv` with `more` inserted before its trailing --flags."""
    cut = len(argv) - (1 if argv[-1].startswith("--") and "=" not in argv[-1] else 0)
    return argv[:cut] + list(more) + argv[cut:]


def launch_command(argv: list[str], processes: int) -> list[str]:
    """The command line that runs `anygen ARGV` data-parallel on `processes` CPU processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", DDP_CONFIG,
            "--num_processes", str(processes), "-m", "anygen", *argv]


def _launch(command: list[str]) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", ANYGEN_THREADS="1")
    if subprocess.run(command, env=env).returncode != 0:
        raise AnygenError(f"quickstart stopped: `{shlex.join(command)}` failed (see above)")


def quickstart(opts: QuickstartOptions, run=None, log=print, overrides: dict[str, list[str]] | None = None,
               launch=None) -> Path:
    """Run the steps of `plan(opts, overrides)` not yet done, each through `run(argv)` (default:
    the CLI's `main`, raising on a non-zero exit), the decoder through `launch(launch_command(argv,
    opts.processes))` when `opts.processes` > 1 (default: a subprocess); returns the model directory."""
    from anygen.worlds import WORLDS

    if opts.world is None and not Path(opts.data).is_dir():
        raise AnygenError(f"{opts.data}: not a folder, nor a world ({', '.join(WORLDS)})")
    if run is None:
        from anygen.cli import main

        def run(argv):
            if main(argv) != 0:
                raise AnygenError(f"quickstart stopped: `anygen {shlex.join(argv)}` failed (see above)")
    start = time.monotonic()
    for name, done, argv in plan(opts, overrides):
        if done.exists():
            log(f"[quickstart] kept {name} ({done.parent})")
            continue
        if name == "decoder" and _empty_shards(runs_of(opts) / "shards" / "val"):
            # too little data to hold any out: no evaluation
            argv = ["data.eval_shard_dir=" if a.startswith("data.eval_shard_dir=") else a for a in argv]
        if name == "decoder" and opts.processes > 1:
            command = launch_command(argv, opts.processes)
            log(f"[quickstart] {(time.monotonic() - start) / 60:.1f} min: {name}: {shlex.join(command)}")
            (launch or _launch)(command)
            continue
        log(f"[quickstart] {(time.monotonic() - start) / 60:.1f} min: {name}: anygen {shlex.join(argv)}")
        run(argv)
    log(f"[quickstart] {(time.monotonic() - start) / 60:.1f} min: done: {opts.out} (anygen draw ... --model {opts.out})")
    return Path(opts.out)
