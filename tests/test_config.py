"""Config system: dataclass schema, YAML recipes, dotted overrides, field-naming errors."""

from dataclasses import dataclass, field

import pytest

from anygen.config import ConfigError, build, check, choice, load_config, to_dict


@dataclass
class ModelSection:
    n_layers: int = 4
    hidden: int = 256
    quantizer: str = choice("fsq", "lfq", "vq")
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])

    def __post_init__(self):
        check(self.n_layers > 0, "n_layers", f"must be positive, got {self.n_layers}")


@dataclass
class Recipe:
    name: str = "run"
    lr: float = 1e-3
    model: ModelSection = field(default_factory=ModelSection)


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: shapes\nmodel:\n  hidden: 64\n")
    cfg = load_config(Recipe, path, ["model.n_layers=2", "lr=5e-4", "model.levels=[5,5,5]"])
    assert cfg.name == "shapes" and cfg.model.hidden == 64 and cfg.model.n_layers == 2
    assert cfg.lr == 5e-4 and cfg.model.levels == [5, 5, 5]
    assert to_dict(cfg)["model"]["quantizer"] == "fsq"


@pytest.mark.parametrize("override,message", [
    (["model.quantizer=pq"], r"model\.quantizer: invalid value 'pq' \(allowed: fsq, lfq, vq\)"),
    (["model.n_layers=two"], r"model\.n_layers: expected an integer"),
    (["model.n_layers=0"], r"model\.n_layers: must be positive"),
    (["model.depth=3"], r"model\.depth: unknown config key \(known keys: hidden, levels, n_layers, quantizer\)"),
    (["lr=fast"], r"lr: expected a number"),
    (["model.levels=[5,x]"], r"model\.levels\[1\]: expected an integer"),
    (["nonsense"], r"expected KEY=VALUE"),
])
def test_invalid_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Recipe, None, override)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Recipe, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Recipe, bad)


def test_build_defaults():
    assert build(Recipe) == Recipe()


def _laughs(levels: int, width: int = 9) -> str:
    """A recipe whose `name` is a YAML alias bomb: `levels` levels of `width` aliases each."""
    items = ["&a1 [" + ", ".join(["lol"] * width) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(2, levels + 1)]
    return "name: [" + ", ".join(items) + "]\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_yaml_alias_bombs_are_refused_quickly(tmp_path, levels):
    """9 levels: under 500 bytes that expand to 9**9 strings (the error message used to print them all)."""
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_laughs(levels))
    assert len(path.read_bytes()) < 500
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(Recipe, path)
    assert time.perf_counter() - start < 5
    assert "expands to over 100000 values" in str(e.value) and len(str(e.value)) < 300


def test_error_messages_quote_values_briefly():
    with pytest.raises(ConfigError) as e:
        load_config(Recipe, None, ["name=[" + ", ".join(["abcdefgh"] * 5000) + "]"])
    assert str(e.value).startswith("name: expected a string, got ['abcdefgh'") and len(str(e.value)) < 200


@pytest.mark.parametrize("text", ["[" * 20_000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 20_000))])
def test_deeply_nested_recipes_are_one_line_errors(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="deep.yaml: not valid YAML") as e:
        load_config(Recipe, path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(Recipe, None, ["model.levels=" + "[" * 20_000])


def test_a_recipe_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}: not a file \\(expected a YAML recipe\\)"):
        load_config(Recipe, tmp_path)
