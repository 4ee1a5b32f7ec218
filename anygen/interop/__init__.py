"""Released any-to-any checkpoints (transformers directories) as anygen models.

`adapter_of(directory)` names the adapter module for a directory whose config.json `model_type`
is one anygen translates (`ADAPTERS`), else None; `load(directory, device)` returns the
(model, tokenizer, meta) triple `anygen.api.load_model` builds an `AnyGen` from. Each adapter
(`emu3`, `chameleon`, `janus`) maps the model's special tokens and image layout onto anygen's `Vocab`
through `anygen.interop.base` and wraps its VQ model as an image codec; the sampler, guidance
and API then run unchanged. meta records the tasks the model can do (`"tasks"`) and why it
cannot do the others (`"why_not"`), which `anygen.api.capabilities` turns into one-line errors.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from anygen.interop.base import read_config

from anygen.errors import AnygenError

ADAPTERS = {"emu3": "anygen.interop.emu3", "chameleon": "anygen.interop.chameleon",
            "janus": "anygen.interop.janus"}  # model_type -> module
# released any-to-any families anygen recognises but cannot run yet, and why
NOT_ADAPTED: dict[str, str] = {}


def adapter_of(directory: str | os.PathLike) -> str | None:
    """The adapter module of a transformers directory (by config.json `model_type`), else None; a
    family in `NOT_ADAPTED` is a one-line error saying why."""
    directory = Path(directory)
    if (directory / "anygen_decoder.json").is_file():
        return None
    model_type = read_config(directory).get("model_type")
    if model_type in NOT_ADAPTED:
        raise AnygenError(f"{directory}: {model_type} checkpoints are not supported: {NOT_ADAPTED[model_type]}")
    return ADAPTERS.get(model_type)


def load(directory: str | os.PathLike, device: str = "cpu"):
    """(model, MultimodalTokenizer, meta) of a released checkpoint directory (see `adapter_of`)."""
    module = adapter_of(directory)
    if module is None:
        raise ValueError(f"{directory}: not a released model anygen adapts ({', '.join(ADAPTERS)})")
    return importlib.import_module(module).load(directory, device)
