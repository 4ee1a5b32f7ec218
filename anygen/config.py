"""Config system: dataclasses are the schema, YAML files are recipes, `a.b=c` are overrides.

A field may declare allowed values with `choice("fsq", "lfq", "vq")`; nested dataclasses
are sections. `build(Cls, data)` validates types, unknown keys and choices, and every
error names the dotted field. Classes may add checks in `__post_init__` raising
`ConfigError` (or `ValueError`, which is re-raised naming the section).

YAML is read with `safe_load` (no tags that build objects); a recipe or override that
expands to more than `MAX_YAML_VALUES` values (an alias "billion laughs" bomb) or is
nested too deeply for the parser is refused, and values quoted in errors are cut short.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from anygen.errors import AnygenError, short_repr

T = TypeVar("T")
MAX_YAML_VALUES = 100_000  # values a recipe may expand to (aliases counted each time they are used)


class ConfigError(AnygenError):
    """An invalid config value, key or file."""


def choice(*allowed, default=dataclasses.MISSING):
    """A dataclass field restricted to `allowed` values (the first is the default)."""
    return dataclasses.field(default=allowed[0] if default is dataclasses.MISSING else default,
                             metadata={"choices": tuple(allowed)})


def check(condition: bool, field: str, message: str) -> None:
    """Raise a ConfigError naming `field` unless `condition` holds (for `__post_init__`)."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def to_dict(cfg) -> dict:
    """A config dataclass as a plain (YAML/JSON-able) dict."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {short_repr(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a section (mapping), got {short_repr(value)}")
        return build(tp, value, prefix=name + ".")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {short_repr(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {short_repr(value)}")
        key_type, value_type = args or (Any, Any)
        return {_coerce(k, key_type, name): _coerce(v, value_type, f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}: expected an integer, got {short_repr(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {short_repr(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {short_repr(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {short_repr(value)}")
        return value
    return value


def build(cls: type[T], data: dict | None = None, prefix: str = "") -> T:
    """Construct the dataclass `cls` from a nested dict, validating every field."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys may be numbers too
    if unknown:
        key = unknown[0] if isinstance(unknown[0], str) and unknown[0].isidentifier() else short_repr(unknown[0])
        raise ConfigError(f"{prefix}{key}: unknown config key (known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        full = prefix + name
        if name not in data:
            if dataclasses.is_dataclass(hints[name]) and f.default_factory is not dataclasses.MISSING:
                try:  # a default section that fails its own checks is named too
                    kwargs[name] = f.default_factory()
                except ConfigError as e:
                    raise ConfigError(f"{full}.{e}") from None
            continue
        value = _coerce(data[name], hints[name], full)
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{full}: invalid value {short_repr(value)} (allowed: {', '.join(map(str, allowed))})")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(f"{prefix}{e}") from None
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`model.n_layers=2` -> (['model', 'n_layers'], 2); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text)}: expected KEY=VALUE, e.g. model.n_layers=2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {short_repr(text)}: empty key")
    try:
        value = load_yaml(raw, f"override {key}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load(text)`, refusing alias bombs and nesting too deep to parse (ConfigError naming `what`)."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{what}: not valid YAML (nested too deeply)") from None
    stack, count = [data], 0
    while stack:  # counts values as the expanded document would hold them, stopping at the limit
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{what}: expands to over {MAX_YAML_VALUES} values (YAML aliases repeated)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a nested dict (a copy); sections are created as needed."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: recipe file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file (expected a YAML recipe)")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] = ()) -> T:
    """Recipe file (optional) + dotted overrides -> validated config dataclass."""
    data = read_yaml(path) if path is not None else {}
    return build(cls, apply_overrides(data, list(overrides)))
