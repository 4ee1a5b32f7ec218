"""The command-line verbs ShapesWorld brings: `anygen judge`, `anygen eval judges`,
`anygen eval shapes` and `anygen demo` (registered through `anygen.worlds.WORLD_COMMANDS`)."""

from __future__ import annotations

from anygen.cli import (add_edit_flags, edit_options_of, json_out, model_of, out_dir, print_json, run_suite,
                        write_json)
from anygen.errors import AnygenError


def cmd_judge_image(args) -> None:
    from anygen.worlds.shapes.judges import judge_image
    from anygen.io import read_image_file

    scene = judge_image(read_image_file(args.file))
    print_json(None if scene is None else {"caption": scene.caption(),
                                            "objects": [vars(o) for o in scene.objects]})


def cmd_judge_melody(args) -> None:
    from anygen.worlds.shapes.judges import judge_melody
    from anygen.io import read_audio_file

    waveform, sr = read_audio_file(args.file)
    notes = judge_melody(waveform, sr)
    print_json(None if notes is None else {"notes": list(notes)})


def cmd_eval_judges(args) -> None:
    from anygen.worlds.shapes.judges import measure_judges

    json_path = json_out(args)
    results = {}
    for degraded in (False, True):
        for key, value in measure_judges(n=args.n, seed=args.seed, degraded=degraded).items():
            results[f"{'degraded' if degraded else 'clean'}.{key}"] = value
    print_json(results)
    write_json(json_path, results)


def cmd_eval_shapes(args) -> None:
    from anygen.api.options import DrawOptions, StoryOptions
    from anygen.sampling.settings import SamplingSettings
    from anygen.worlds.shapes.plans import REASON_FORMS
    from anygen.worlds.shapes.suite import EVAL_PHRASINGS, EXTRA_SUITES, SUITES, evaluate_shapes, format_table
    from anygen.worlds.shapes.world import EDIT_KINDS

    suites = tuple(args.only.split(",")) if args.only else SUITES
    unknown = [x for x in suites if x not in SUITES + EXTRA_SUITES]
    if unknown:
        raise AnygenError(f"--only: unknown suite {unknown[0]!r} (choose from {', '.join(SUITES + EXTRA_SUITES)})")
    edit_kinds = tuple(args.edit_kinds.split(",")) if args.edit_kinds else EDIT_KINDS
    if unknown := [k for k in edit_kinds if k not in EDIT_KINDS]:
        raise AnygenError(f"--edit-kinds: unknown kind {unknown[0]!r} (choose from {', '.join(EDIT_KINDS)})")
    if args.phrasing not in EVAL_PHRASINGS:
        raise AnygenError(f"--phrasing: {args.phrasing!r} is not one of {', '.join(EVAL_PHRASINGS)}")
    if args.reason_form not in REASON_FORMS:
        raise AnygenError(f"--reason-form: {args.reason_form!r} is not one of {', '.join(REASON_FORMS)}")
    # every option is checked here, before the model loads
    json_path = json_out(args)
    if args.n < 1:
        raise AnygenError(f"--n: must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise AnygenError(f"--batch-size: must be >= 1, got {args.batch_size}")
    draw = DrawOptions(guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps,
                       best_of=args.best_of)
    edit = edit_options_of(args, "edit-", refuse=False)  # the edit suite scores pictures; `--only refuse` scores refusals
    story = StoryOptions(best_of=args.story_best_of, reason=args.story_reason, sentences=args.story_sentences,
                         plan_in_words=args.story_plan_in_words)
    draw_settings = {}
    if args.best_of > 1 or args.sample_images:
        draw_settings["image"] = SamplingSettings(temperature=1.0, top_k=64)
    parallel = {} if args.parallel == "none" else {"parallel": args.parallel}
    model = _WithOptions(model_of(args), draw, {**draw_settings, **parallel}, edit, story, parallel)
    run_suite("shapes", lambda progress: evaluate_shapes(
        model, n=args.n, seed=args.seed, suites=suites, batch_size=args.batch_size, edit_reason=args.edit_reason,
        edit_kinds=edit_kinds, reason_form=args.reason_form, phrasing=args.phrasing, progress=progress),
        lambda results: f"phrasing: {args.phrasing}\n{format_table(results)}", json_path)


class _WithOptions:
    """A generator whose text->image, edit and story calls carry the eval's options (`parallel`:
    the sampler's image-span decoding, for drawn and edited images)."""

    def __init__(self, model, draw, draw_settings: dict, edit, story, parallel: dict):
        self.model, self.draw, self.draw_settings, self.edit, self.story_options = model, draw, draw_settings, edit, story
        self.parallel = parallel

    def draw_batch(self, texts, seed=0):
        return self.model.draw_batch(texts, seed=seed, options=self.draw, **self.draw_settings)

    def edit_batch(self, images, instructions, seed=0, **options):
        return self.model.edit_batch(images, instructions, seed=seed, options=self.edit, **self.parallel, **options)

    def edit_batch_with_reasoning(self, images, instructions, seed=0):
        return self.model.edit_batch_with_reasoning(images, instructions, seed=seed, options=self.edit, **self.parallel)

    def story(self, opening, n_steps=3, seed=0):
        return self.model.story(opening, seed=seed, options=self.story_options, n_steps=n_steps)

    def __getattr__(self, name):
        return getattr(self.model, name)


def cmd_demo(args) -> None:
    from anygen.worlds.shapes.demo import run_demo

    run_demo(out_dir(args.out), args.model, seed=args.seed)


def add_commands(sub, ev_sub) -> None:
    """Add the world's verbs to the `anygen` parser (`sub`) and to `anygen eval` (`ev_sub`)."""
    from anygen.worlds.shapes.suite import EVAL_BATCH

    # judges
    judge = sub.add_parser("judge", help="parse an image into a scene or audio into notes").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = judge.add_parser("image", help="print the ShapesWorld scene the judge sees in an image, as JSON")
    p.add_argument("file")
    p.set_defaults(func=cmd_judge_image)
    p = judge.add_parser("melody", help="print the notes the judge hears in a WAV file, as JSON")
    p.add_argument("file")
    p.set_defaults(func=cmd_judge_melody)
    p = ev_sub.add_parser("judges", help="accuracy of the scene and melody judges on clean and degraded renders")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval_judges)
    p = ev_sub.add_parser("shapes", help="text->image, image->text, editing, melodies and story coherence, "
                                         "judged on fresh ShapesWorld samples")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--n", type=int, default=200, help="samples per task (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="comma-separated subset of t2i,i2t,edit,t2a,a2t,story (the default), or "
                                  "plan: the reasoned edit's plan in words alone (models trained with reasoned_text), "
                                  "or refuse: edits of absent objects and no-op edits refused, valid ones let through "
                                  "(with --edit-reason: reasoned edits)")
    p.add_argument("--phrasing", default="canonical",
                   help="t2i prompts and edit instructions: canonical (default) or heldout: phrasings whose "
                        "templates no training example uses (anygen.worlds.shapes.phrasing); judged the same")
    p.add_argument("--sample-images", action="store_true", dest="sample_images",
                   help="text->image with sampled codes (temperature 1, top-k 64) instead of greedy")
    p.add_argument("--best-of", type=int, default=1, dest="best_of",
                   help="text->image: sample K candidates and keep the best by caption likelihood")
    p.add_argument("--guidance-scale", type=float, default=None, dest="guidance_scale",
                   help="text->image guidance scale (default: the model's: 1 for tokens, 3 for diffusion)")
    p.add_argument("--parallel", choices=("none", "sjd"), default="none",
                   help="drawn and edited images' codes by speculative Jacobi decoding (sjd) or one per forward "
                        "(default); SJD needs a few codes per row in its window, so it runs only in small batches "
                        "(at most 3 rows with the default window of 12, guidance rows included; see --batch-size)")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH, dest="batch_size",
                   help=f"t2i and edit rows sampled together (default {EVAL_BATCH}; 1: as a user draws one image)")
    add_edit_flags(p, "edit-")  # the edits' strategy, as `anygen edit` takes it
    p.add_argument("--edit-kinds", dest="edit_kinds",
                   help="edit and plan: comma-separated subset of recolor,move,resize,remove,add (default: all); "
                        "each kind scores the same samples as in a run of all kinds")
    p.add_argument("--reason-form", default="slots", dest="reason_form",
                   help="plan: the reasoning form the model was trained with (tasks.reasoned_edit.form: scene, "
                        "object, caption_object or slots; default slots, the bundled model's)")
    p.add_argument("--story-best-of", type=int, default=1, dest="story_best_of",
                   help="story: sample each picture K times and keep the one that best explains its sentence")
    p.add_argument("--story-sentences", type=int, default=1, dest="story_sentences",
                   help="story: write K sentences per step, draw each, keep the one its picture explains best")
    p.add_argument("--story-reason", action="store_true", dest="story_reason",
                   help="story: draw each later picture as a reasoned edit of the one before (reasoned_edit)")
    p.add_argument("--story-plan-in-words", action="store_true", dest="story_plan_in_words",
                   help="story: with --story-reason, those edits keep their text greedy and re-plan it in words "
                        "(story(plan_in_words=True))")
    p.add_argument("--num-inference-steps", type=int, default=None, dest="num_inference_steps",
                   help="text->image denoising steps (diffusion-head models)")
    p.add_argument("--json", help="also write the flat results to this JSON file")
    p.set_defaults(func=cmd_eval_shapes)

    p = sub.add_parser("demo", help="write an HTML page of interleaved documents generated by the bundled model")
    p.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
