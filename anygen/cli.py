"""`anygen <verb>`: the command line. Each verb is a thin wrapper over the Python API.

User mistakes (bad files, prompts, configs, model directories) print one line
`anygen: error: ...` and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from anygen.errors import AnygenError

WORLDS = ("shapes", "stories", "melodies", "edits", "emoji", "speech")


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# ---- worlds and judges -------------------------------------------------------------------
def cmd_worlds_sample(args) -> None:
    from anygen.data.preview import sample_world_document

    document = sample_world_document(args.world, n=args.n, seed=args.seed)
    out = document.save(args.out)
    print(f"wrote {len(document)} segments to {out / 'index.html'}")


def cmd_judge_image(args) -> None:
    from anygen.eval.judges import judge_image
    from anygen.io import read_image_file

    scene = judge_image(read_image_file(args.file))
    _print_json(None if scene is None else {"caption": scene.caption(),
                                            "objects": [vars(o) for o in scene.objects]})


def cmd_judge_melody(args) -> None:
    from anygen.eval.judges import judge_melody
    from anygen.io import read_audio_file

    waveform, sr = read_audio_file(args.file)
    notes = judge_melody(waveform, sr)
    _print_json(None if notes is None else {"notes": list(notes)})


def cmd_eval_judges(args) -> None:
    from anygen.eval.judges import measure_judges

    results = {}
    for degraded in (False, True):
        for key, value in measure_judges(n=args.n, seed=args.seed, degraded=degraded).items():
            results[f"{'degraded' if degraded else 'clean'}.{key}"] = value
    _print_json(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anygen",
        description="Unified any-to-any generation: train codebook tokenizers and an early-fusion "
                    "decoder, generate interleaved text/image/audio documents, edit images by prompt.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    # worlds
    worlds = sub.add_parser("worlds", help="sample the built-in data worlds").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = worlds.add_parser("sample", help="write a Document (JSON + HTML) of samples from a world")
    p.add_argument("world", choices=WORLDS, help="which world to sample")
    p.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="out/world", help="output directory (default out/world)")
    p.set_defaults(func=cmd_worlds_sample)

    # judges
    judge = sub.add_parser("judge", help="parse an image into a scene or audio into notes").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = judge.add_parser("image", help="print the ShapesWorld scene the judge sees in an image, as JSON")
    p.add_argument("file")
    p.set_defaults(func=cmd_judge_image)
    p = judge.add_parser("melody", help="print the notes the judge hears in a WAV file, as JSON")
    p.add_argument("file")
    p.set_defaults(func=cmd_judge_melody)

    # eval
    ev = sub.add_parser("eval", help="measure judges, tokenizers and models")
    ev_sub = ev.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ev_sub.add_parser("judges", help="accuracy of the scene and melody judges on clean and degraded renders")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval_judges)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = os.environ.get("ANYGEN_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        args.func(args)
    except AnygenError as e:
        print(f"anygen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anygen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
