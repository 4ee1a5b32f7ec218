"""Released checkpoints anygen recognises but does not run are refused before anything loads."""

import json

import pytest

import anygen
from anygen.errors import AnygenError


def test_janus_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(AnygenError, match="janus checkpoints are not supported: Janus reads images") as e:
        anygen.load(tmp_path)
    assert "\n" not in str(e.value)
