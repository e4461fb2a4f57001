"""Strict YAML -> frozen dataclasses.

Plain PyYAML reads `1e-4` as a string and lets a duplicate key win silently; recipes here are read with
a loader that fixes both. Validation names the dotted key on every error: an unknown key (with the
closest valid one), a wrong type, a missing required value.

A field typed as a Union of dataclasses is a tagged union: each member has a `Literal` field (the tag:
`name` or `arch` where the member has one, else its first `Literal` field) and the mapping's value of that
field picks the member. Written out, the tag comes first.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from fsg.errors import UserError


class ConfigError(UserError):
    """A recipe that does not match its schema."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads `1e-4` as a float."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key '{key}' (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, where: str = "recipe") -> Any:
    """Parse YAML text with the strict loader; syntax errors become one-line ConfigErrors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML{line}: {problem}") from None


TAG_NAMES = ("name", "arch")     # the tag of a union member, wherever the field sits (a base class puts its fields first)


def _tag_field(cls) -> tuple[str, tuple]:
    hints = get_type_hints(cls)
    literals = [f.name for f in dataclasses.fields(cls) if get_origin(hints[f.name]) is Literal]
    if not literals:
        raise TypeError(f"{cls.__name__} has no Literal tag field")
    name = next((n for n in TAG_NAMES if n in literals), literals[0])
    return name, get_args(hints[name])


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, path: str):
    """Check/convert one value against a type hint; `path` is the dotted key for messages."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        members = get_args(tp)
        if value is None and type(None) in members:
            return None
        members = [m for m in members if m is not type(None)]
        if len(members) == 1:
            return _convert(members[0], value, path)
        if all(dataclasses.is_dataclass(m) for m in members):
            return _convert_tagged(members, value, path)
        for m in members:
            try:
                return _convert(m, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {' or '.join(_type_name(m) for m in members)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{path}: must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path, got {value!r}")
        return Path(value)
    raise TypeError(f"unsupported type {tp!r} at {path}")


def _convert_tagged(members, value, path: str):
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    tag, _ = _tag_field(members[0])
    choices = {}
    for m in members:
        for t in _tag_field(m)[1]:
            choices[t] = m
    if tag not in value:
        raise ConfigError(f"{path}.{tag}: required (one of {', '.join(map(repr, choices))})")
    if value[tag] not in choices:
        raise ConfigError(f"{path}.{tag}: must be one of {', '.join(map(repr, choices))}, got {value[tag]!r}")
    return from_dict(choices[value[tag]], value, path)


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass `cls` from a mapping, recursively; every error names the dotted key."""
    where = path or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.0)
            hint = f" (closest valid key: '{prefix}{close[0]}')" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{prefix}{name}'")
    return cls(**kwargs)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set `a.b.c = value` in nested dicts, creating the intermediate mappings."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a mapping")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `--set a.b=value` overrides; values are parsed as YAML (so `1e-4` is a float)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set expects key=value, got '{item}'")
        set_dotted(data, key.strip(), parse_yaml(raw, where=f"--set {key}") if raw.strip() else "")
    return data


def to_dict(obj) -> Any:
    """Dataclass -> plain dict/list structure suitable for YAML/JSON (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj)]
        names.sort(key=lambda n: n not in TAG_NAMES)          # the tag first (a stable sort keeps the rest in order)
        return {n: to_dict(getattr(obj, n)) for n in names}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def convert(tp, value, path: str):
    """Validate `value` against a type hint (dataclass, tagged union, ...); errors name `path`."""
    return _convert(tp, value, path)
