"""The command-line verb the speech world brings: `anygen eval speech` (registered through
`anygen.worlds.WORLD_COMMANDS`)."""

from __future__ import annotations


from anygen.cli import json_out, model_of, run_suite
from anygen.errors import AnygenError

SUITE_TASKS = {"say": "text_to_audio", "transcribe": "audio_to_text"}  # what each suite needs the model to have learned


def cmd_eval_speech(args) -> None:
    from anygen.worlds.asr import WhisperTranscriber
    from anygen.worlds.speech.suite import SUITES, evaluate_speech, format_report

    suites = tuple(args.only.split(",")) if args.only else SUITES
    if unknown := [s for s in suites if s not in SUITES]:
        raise AnygenError(f"--only: unknown suite {unknown[0]!r} (choose from {', '.join(SUITES)})")
    if args.n < 1:
        raise AnygenError(f"--n must be at least 1, got {args.n}")
    json_path = json_out(args)
    transcriber = WhisperTranscriber()  # before the model: a missing judge fails fast
    model = model_of(args)
    worlds = model.meta.get("worlds")
    if worlds is not None and "speech" not in worlds:
        raise AnygenError(f"{args.model or 'the bundled model'} was not trained on speech (its worlds: "
                          f"{', '.join(worlds) or 'none'}): its audio is not words")
    model.capabilities.require(*(SUITE_TASKS[s] for s in suites))
    run_suite("speech", lambda progress: evaluate_speech(
        model, transcriber, n=args.n, seed=args.seed, suites=suites, guidance_scale=args.guidance_scale,
        progress=progress), format_report, json_path, total=len(suites))


def add_commands(sub, ev_sub) -> None:
    """Add the world's verbs to `anygen eval` (`ev_sub`)."""
    p = ev_sub.add_parser("speech", help="say and transcribe held-out sentences, judged by Whisper's word error "
                                         "rate (needs the speech extra: make speech-deps)")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--n", type=int, default=100, help="held-out sentences (default 100)")
    p.add_argument("--only", help="comma-separated subset of say,transcribe (default: both)")
    p.add_argument("--guidance-scale", type=float, default=1.0, dest="guidance_scale",
                   help="classifier-free guidance of `say` (default 1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the flat results to this JSON file")
    p.set_defaults(func=cmd_eval_speech)
