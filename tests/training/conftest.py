"""Fixtures of the training tests."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_recipe(tmp_path):
    """Runs a `training/*.sh` recipe with `RUNS` under tmp_path and a fake `anygen` that records each
    call's arguments: `run(script, **env) -> (the finished process, the calls as argument lists)`."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_anygen"
    fake.write_text(f'#!/usr/bin/env bash\nline=$(printf "%q " "$@")\necho "$line" >> {shlex.quote(str(calls))}\n')
    fake.chmod(0o755)

    def run(script, **env):
        env = dict(os.environ, ANYGEN=str(fake), RUNS=str(tmp_path / "runs"), **env)
        done = subprocess.run([str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        lines = calls.read_text().splitlines() if calls.exists() else []
        return done, [shlex.split(line) for line in lines]

    return run
