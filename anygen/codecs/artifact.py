"""A codec on disk: `config.json` (format_version, kind, class, config) + `model.safetensors`.

One writer and one reader for the image and audio codecs: writes are atomic (the old
directory survives a crash), nothing is unpickled, and every problem on load is an
AnygenError that names the file. Loading checks the weights against the config (every
tensor present with its shape, floating where the module's is, nothing extra) from the
safetensors header, then refuses NaN/Inf values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from anygen import weights
from anygen.config import ConfigError, build, to_dict
from anygen.errors import AnygenError, short_repr
from anygen.io import atomic_directory, read_json_file

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_codec(module: torch.nn.Module, directory, kind: str) -> Path:
    """Write `module` (with a dataclass `.config`) as a codec directory of `kind` ("image"/"audio")."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu().clone() for k, v in module.state_dict().items()}
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "class": type(module).__name__,
            "config": _jsonable(to_dict(module.config))}
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


def load_codec(directory, kind: str, config_cls: type, make: Callable[[object], torch.nn.Module],
               map_location: str = "cpu") -> torch.nn.Module:
    """Read a directory written by `save_codec`: `make(config)` builds the module, then the weights load."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not directory.is_dir():
        raise AnygenError(f"{directory}: {kind} codec directory not found")
    for p in (config_path, weights_path):
        if not p.is_file():
            raise AnygenError(f"{p}: missing file (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    meta = read_json_file(config_path)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:
        raise AnygenError(f"{config_path}: unsupported {kind} codec format_version {short_repr(version)} "
                          f"(this anygen reads {FORMAT_VERSION})")
    if meta.get("kind", kind) != kind:
        raise AnygenError(f"{config_path}: not an {kind} codec (kind {short_repr(meta.get('kind'))})")
    try:
        cfg = build(config_cls, meta.get("config") or {})
    except ConfigError as e:
        raise AnygenError(f"{config_path}: invalid codec config: {e}") from None
    specs = weights.safetensors_specs([weights_path])  # header only: refused before any tensor is read
    module = make(cfg)
    where = str(weights_path)
    weights.check_tensors([([k], v) for k, v in module.state_dict().items()], specs, where, strict=True)
    try:
        state = load_file(str(weights_path), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise AnygenError(f"{weights_path}: cannot read weights ({e})") from None
    weights.check_finite(state.items(), where)
    module.load_state_dict(state)
    return module.eval()
