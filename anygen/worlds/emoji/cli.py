"""The command-line verb the emoji world brings: `anygen eval emoji` (registered through
`anygen.worlds.WORLD_COMMANDS`)."""

from __future__ import annotations

from anygen.cli import json_out, model_of, run_suite
from anygen.errors import AnygenError


def cmd_eval_emoji(args) -> None:
    from anygen.worlds.emoji import EmojiWorld
    from anygen.worlds.emoji.suite import SUITES, EvalSettings, evaluate_emoji, format_report

    suites = tuple(args.only.split(",")) if args.only else SUITES
    if unknown := [s for s in suites if s not in SUITES]:
        raise AnygenError(f"--only: unknown suite {unknown[0]!r} (choose from {', '.join(SUITES)})")
    settings = EvalSettings(n=args.n, batch_size=args.batch_size, seed=args.seed, guidance_scale=args.guidance_scale,
                            image_guidance_scale=args.image_guidance_scale)  # checked before the model loads
    json_path = json_out(args)
    world = EmojiWorld()  # the font is checked before the model loads too
    model = model_of(args)
    run_suite("emoji", lambda progress: evaluate_emoji(model, world, settings, suites, progress=progress),
              format_report, json_path)


def add_commands(sub, ev_sub) -> None:
    """Add the world's verbs to `anygen eval` (`ev_sub`); the emoji world has no top-level verb."""
    p = ev_sub.add_parser("emoji", help="held-out and seen skin-tone/gender edits, text->image and image->text on "
                                        "the Noto emoji, judged against the true 64x64 renders")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--only", help="comma-separated subset of edit,seen,t2i,i2t (default: all)")
    p.add_argument("--n", type=int, help="cap every suite's count (default: every held-out base and variant, "
                                         "200 seen bases, 300 names, 300 captions)")
    p.add_argument("--batch-size", type=int, default=16, dest="batch_size",
                   help="rows per call (default 16; 1 measures an edit as a user makes it)")
    p.add_argument("--guidance-scale", type=float, dest="guidance_scale",
                   help="classifier-free guidance of drawings and edits (default: the model's recommended one)")
    p.add_argument("--image-guidance-scale", type=float, dest="image_guidance_scale",
                   help="edits' guidance on the source image (default: the API's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the flat results to this JSON file")
    p.set_defaults(func=cmd_eval_emoji)
