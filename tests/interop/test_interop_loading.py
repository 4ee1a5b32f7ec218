"""A released-checkpoint folder is recognised by its config.json and refused in one line, before
anything loads, when it cannot be read."""

import json

import pytest

import anygen
from anygen.errors import AnygenError


@pytest.mark.parametrize("model_type", ["emu3", "chameleon", "janus"])
def test_a_folder_without_safetensors_is_one_line(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(AnygenError, match="safetensors") as e:
        anygen.load(tmp_path)
    assert "\n" not in str(e.value)
