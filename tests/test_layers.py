"""The layers read bottom to top: a module imports only from its own layer or those below it, and
nothing below `anygen.worlds` imports a world (docs/design.md, "Layers"). Every import counts,
also one inside a function."""

import ast
from pathlib import Path

import anygen

ROOT = Path(anygen.__file__).parent
LAYERS = [  # bottom to top; a module belongs to the layer of its longest listed prefix
    ("anygen.errors", "anygen.config", "anygen.io", "anygen.document", "anygen.vocab", "anygen.threads",
     "anygen.weights"),
    ("anygen.codecs", "anygen.model", "anygen.tokenizer"),
    ("anygen.sampling",),
    ("anygen.tasks", "anygen.data", "anygen.interop"),
    ("anygen.api",),
    ("anygen.worlds",),
    # the applications: the CLI and its verbs (a world's too), training, evaluation, `anygen.load`
    ("anygen", "anygen.cli", "anygen.__main__", "anygen.bundle", "anygen.training", "anygen.eval",
     "anygen.worlds.shapes.cli", "anygen.worlds.shapes.demo", "anygen.worlds.digits.cli",
     "anygen.worlds.emoji.cli", "anygen.worlds.speech.cli"),
]


def layer_of(module: str) -> int:
    best, layer = "", None
    for k, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, layer = p, k
    assert layer is not None, f"{module} is in no layer: add it to LAYERS"
    return layer


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether `from a.b import c` imports a module (a.b.c) rather than a name in a.b."""
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or path.is_dir()


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "anygen"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "anygen":
            names = [f"{node.module}.{a.name}" for a in node.names]
            modules = {n for n in names if is_module(n)}
            found |= modules if len(modules) == len(names) else modules | {node.module}
    return found


def test_every_import_points_down():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        for target in imports(path):
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_no_world_below_the_worlds():
    """The library under the API (codecs, model, sampler, tasks, api) never names a world's module."""
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        if layer_of(module) < layer_of("anygen.worlds"):
            assert not [t for t in imports(path) if t.startswith("anygen.worlds")], module


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    """A function-level import counts: the check would catch `sampling` importing a world lazily."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from anygen.worlds.shapes import world\n    return world\n")
    assert imports(source) == {"anygen.worlds.shapes.world"}
    assert layer_of("anygen.worlds.shapes.world") > layer_of("anygen.sampling.engine")
