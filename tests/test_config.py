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
