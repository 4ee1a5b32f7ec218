"""Safety checks on model directories and weight files, run before and after loading.

Nothing here unpickles or imports code from a checkpoint:

- `safetensors_files(directory)`: the directory's weight files, which must be safetensors:
  pickle-capable weight files (`pytorch_model.bin`, `*.pt`, ...) beside them, or a
  `model.safetensors.index.json` naming anything but a `.safetensors` file in the directory,
  are refused before any loader sees the directory;
- `refuse_remote_code(directory)`: a config that asks transformers to import code shipped
  with the checkpoint (`auto_map`) is refused;
- `safetensors_specs(files)`: each tensor's dtype and shape, read from the headers only;
- `check_tensors(expected, specs, where)`: every tensor the model needs is there, with its
  shape, and floating-point where the model's is;
- `check_finite(tensors, where)`: no NaN or Inf in the loaded floating-point tensors;
- `open_pretrained(directory, cls)`: a transformers class from local safetensors with all of the
  above (released checkpoints, pretrained image tokenizers); `processor_setting` reads one
  integer of a directory's processor_config.json.

Every problem is one AnygenError naming the file and the tensor or key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from anygen.errors import AnygenError, short_repr
from anygen.io import read_json_file

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# weight files that torch/transformers would unpickle (.bin, .pt, ...) or that belong to other
# frameworks' loaders; a directory holding one is refused rather than trusting which file gets opened
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtype names of floating-point tensors
# files where transformers reads auto_map
REMOTE_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def safetensors_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors weight files of a transformers-style directory (single file or index + shards)."""
    directory = Path(directory)
    unsafe = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in UNSAFE_WEIGHT_SUFFIXES)
    if unsafe:
        raise AnygenError(f"{unsafe[0]}: weights that are not safetensors are never loaded "
                          f"(pickled weights can run code); keep only .safetensors files in the directory")
    index = directory / INDEX_FILE
    if not index.exists():
        if not (directory / WEIGHTS_FILE).is_file():
            raise AnygenError(f"no {WEIGHTS_FILE} (weights must be safetensors)")
        return [directory / WEIGHTS_FILE]
    data = read_json_file(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise AnygenError(f"{INDEX_FILE}: expected a non-empty 'weight_map' object")
    names = sorted({str(v) for v in weight_map.values()})
    for name in names:
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise AnygenError(f"{INDEX_FILE}: weight file {short_repr(name)} is not a .safetensors file "
                              "in the directory")
        if not (directory / name).is_file():
            raise AnygenError(f"{INDEX_FILE}: weight file {name} is missing")
    return [directory / name for name in names]


def refuse_remote_code(directory: str | os.PathLike) -> None:
    """Refuse a directory whose config or tokenizer config names code to import (`auto_map`)."""
    for name in REMOTE_CODE_CONFIGS:
        path = Path(directory) / name
        if path.exists():
            data = read_json_file(path)
            if isinstance(data, dict) and "auto_map" in data:
                raise AnygenError(f"{path}: 'auto_map' asks to run code shipped with the checkpoint; "
                                  "anygen never runs checkpoint code (remove auto_map to use a built-in class)")


def safetensors_specs(files: Iterable[Path]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} from the files' headers; no tensor data is read."""
    from safetensors import SafetensorError, safe_open

    specs = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensor = f.get_slice(name)
                    specs[name] = (tensor.get_dtype(), tuple(tensor.get_shape()))
        except (SafetensorError, OSError, ValueError) as e:
            reason = " ".join(str(e).split())
            raise AnygenError(f"{path}: cannot read weights, not a safetensors file ({reason})") from None
    return specs


def check_tensors(expected: Iterable[tuple[Sequence[str], torch.Tensor]], specs: Mapping[str, tuple],
                  where: str, strict: bool = False) -> None:
    """Each (names, tensor) the model needs is in `specs` under one of `names` (tied weights have
    several), with the tensor's shape and, when the tensor is floating-point, a floating dtype.
    `strict` also refuses tensors the model does not have."""
    found = set()
    for names, tensor in expected:
        name = next((n for n in names if n in specs), None)
        if name is None:
            raise AnygenError(f"{where}: tensor {names[0]} is missing")
        found.add(name)
        dtype, shape = specs[name]
        if shape != tuple(tensor.shape):
            raise AnygenError(f"{where}: tensor {name} has shape {shape}, the config needs {tuple(tensor.shape)} "
                              "(tensor shapes differ)")
        if tensor.is_floating_point() and dtype not in FLOAT_DTYPES:
            raise AnygenError(f"{where}: tensor {name} is {dtype}, expected floating-point weights")
    extra = sorted(set(specs) - found)
    if strict and extra:
        raise AnygenError(f"{where}: unexpected tensor {extra[0]} (the weights do not fit the config)")


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """Refuse a NaN or Inf in any floating-point tensor, naming the first such tensor."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise AnygenError(f"{where}: tensor {name} holds NaN or Inf values")


def tied_groups(module: torch.nn.Module) -> list[tuple[list[str], torch.Tensor]]:
    """(names, parameter) per distinct parameter: a tied weight is one entry with all its names."""
    groups: dict[int, tuple[list[str], torch.Tensor]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), ([], param))[0].append(name)
    return list(groups.values())


def processor_setting(directory: str | os.PathLike, key: str, default: int, minimum: int = 1) -> int:
    """An integer processor setting from the directory's processor_config.json (else `default`)."""
    path = Path(directory) / "processor_config.json"
    data = read_json_file(path) if path.is_file() else {}
    value = data.get(key) if isinstance(data, dict) else None
    if value is None:
        return default
    if type(value) is not int or value < minimum:
        raise AnygenError(f"{path}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def open_pretrained(directory: str | os.PathLike, cls, dtype: torch.dtype = torch.float32):
    """`cls.from_pretrained(directory)` from local safetensors only, never running checkpoint code."""
    directory = Path(directory)
    files = safetensors_files(directory)
    refuse_remote_code(directory)
    try:
        model, info = cls.from_pretrained(str(directory), local_files_only=True, use_safetensors=True, dtype=dtype,
                                          trust_remote_code=False, output_loading_info=True)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise AnygenError(f"{directory}: cannot load the {cls.__name__} weights ({type(e).__name__}: {msg})") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise AnygenError(f"{files[0].name}: tensor {missing[0]} is missing")
    check_finite(model.named_parameters(), files[0].name)
    return model.eval()
