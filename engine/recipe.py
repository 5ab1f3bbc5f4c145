"""Recipes: YAML files of overrides and ``--set section.key=value`` strings, coerced into the typed config of
config.py. Unknown keys get the nearest valid key; every value is checked against its field's type (``Literal``
choices included), and errors name the key, the value and the expected type. PyYAML reads YAML 1.1, so ``1e-4``
arrives as a string: float fields accept numeric strings. Only true/false are booleans (the loader drops YAML 1.1's
yes/no/on/off), and bool fields accept nothing else (no 0/1).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import Config, ConfigError, Widths, validate


class _Loader(yaml.SafeLoader):
    """SafeLoader whose only booleans are true/false (YAML 1.2): YAML 1.1's yes/no/on/off stay strings, so a bool
    field given ``no`` is an error naming the key instead of a silent False."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
        return value
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {typ.__name__} fields, got {value!r}")
        return _build(typ, value, key + ".")
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is Widths:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or (text and not re.fullmatch(r"[1-9]\d*(-[1-9]\d*)*", text)):
            raise ConfigError(f"{key}={value!r}: expected layer widths like '2048-2048-1024' (or '' for none)")
        return Widths(text)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, args, strict=True)))
    raise ConfigError(f"{key}: unsupported field type {typ!r}")


def _build(cls: type, values: dict, prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    base = base if base is not None else cls()
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a mapping of {hints[key].__name__} fields, got {value!r}")
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.", current)
        else:
            kwargs[key] = _coerce(prefix + key, value, hints[key])
    return dataclasses.replace(base, **kwargs)


def _parse_override(text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key {key!r} is not of the form section.key")
    value = _yaml(raw) if raw.strip() else ""
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- the YAML recipe at ``path`` <- each ``section.key=value`` override, validated."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = _yaml(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if loaded is None:
            raise ConfigError(f"config file {str(p)!r} is empty: a recipe is a mapping of overrides (write {{}} for "
                              "the defaults)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        values = loaded
    for text in overrides:
        values = _merge(values, _parse_override(text))
    cfg = _build(Config, values)
    validate(cfg)
    return cfg


def from_dict(values: dict) -> Config:
    """Inverse of ``to_dict`` (tuples were stored as lists)."""
    cfg = _build(Config, values)
    validate(cfg)
    return cfg
