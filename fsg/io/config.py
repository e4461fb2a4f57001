"""Strict YAML -> frozen dataclasses.

Plain PyYAML reads `1e-4` as a string and lets a duplicate key win silently; recipes here are read with
a loader that fixes both, and that refuses aliases expanding past `MAX_YAML_NODES` values (a 600-byte "billion
laughs" document would otherwise expand without end). Validation names the dotted key on every error: an unknown
key (with the closest valid one), a wrong type, a missing required value, a number out of its range. A value
echoed in a message is cut to `ECHO_CHARS` characters.

Numbers: every float must be finite (NaN and inf are refused) unless its field allows inf; a field declares its
allowed values next to its type, as an interval in the annotation, so the range lives with the field:

    lr: Annotated[float, "(0, inf)"] = 1e-3          # finite and > 0
    augment: Annotated[float, "[0, 1]"] = 0.0
    s_tmax: Annotated[float, "[0, inf]"] = inf       # a closed `inf]` admits inf itself
    keep_ckpts: Annotated[int, "[1, inf) or -1"] = 2 # alternatives: intervals or single values

A field typed as a Union of dataclasses is a tagged union: each member has a `Literal` field (the tag:
`name` or `arch` where the member has one, else its first `Literal` field) and the mapping's value of that
field picks the member. Written out, the tag comes first.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import reprlib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from fsg.errors import UserError


class ConfigError(UserError):
    """A recipe that does not match its schema."""


MAX_YAML_NODES = 100_000     # values of a document with its aliases expanded; shipped recipes have a few hundred
ECHO_CHARS = 80              # the longest echo of a user's value in a message


def show(value: Any) -> str:
    """repr of a user's value for a message, at most ECHO_CHARS characters (never the whole of a large value)."""
    echo = reprlib.Repr()
    echo.maxlevel, echo.maxlist, echo.maxtuple, echo.maxdict = 3, 8, 8, 8
    echo.maxstring = echo.maxother = ECHO_CHARS
    text = echo.repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


def _expanded_size(node, sizes: dict[int, int], active: set[int]) -> int:
    """Values in `node` with every alias expanded, counted once per node through `sizes` (linear in the nodes)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise ConfigError(f"recursive YAML alias (line {node.start_mark.line + 1})")
    children = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    active.add(key)
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, active)
        if total > MAX_YAML_NODES:
            break
    active.discard(key)
    sizes[key] = total
    return total


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and alias bombs, and reads `1e-4` as a float."""

    def construct_document(self, node):
        if _expanded_size(node, {}, set()) > MAX_YAML_NODES:
            raise ConfigError(f"its aliases expand to more than {MAX_YAML_NODES:,} values (refused: an alias bomb?)")
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {show(key)} (line {key_node.start_mark.line + 1})")
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
    if get_origin(tp) is Annotated:
        return _type_name(get_args(tp)[0])
    return getattr(tp, "__name__", str(tp))


_INTERVAL = re.compile(r"^([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])$")


def _number_text(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else f"{v:g}"


@dataclasses.dataclass(frozen=True)
class Interval:
    """Allowed numbers between two bounds, each open or closed; NaN lies in none."""

    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool

    def __contains__(self, x: float) -> bool:
        return (self.lo <= x if self.lo_closed else self.lo < x) and (x <= self.hi if self.hi_closed else x < self.hi)

    def __str__(self) -> str:
        """As a message writes it: `> 0`, `>= 1` for a half-line, else `[0, 1)`."""
        if self.hi == math.inf and not self.hi_closed and self.lo != -math.inf:
            return f"{'>=' if self.lo_closed else '>'} {_number_text(self.lo)}"
        lo, hi = _number_text(self.lo), _number_text(self.hi)
        return f"{'[' if self.lo_closed else '('}{lo}, {hi}{']' if self.hi_closed else ')'}"


@functools.lru_cache(maxsize=None)
def parse_range(spec: str) -> tuple[Interval | float, ...]:
    """A field's allowed values, `"(0, inf)"`, `"[0, 1]"` or `"[1, inf) or -1"`: intervals and single values."""
    parts: list[Interval | float] = []
    for alt in spec.split(" or "):
        alt = alt.strip()
        m = _INTERVAL.match(alt)
        if m:
            parts.append(Interval(float(m[2]), float(m[3]), m[1] == "[", m[4] == "]"))
        else:
            parts.append(float(alt))         # a single allowed value (ValueError: a mistake in the schema itself)
    return tuple(parts)


def _check_range(spec: str, value, path: str, inner) -> None:
    """A ConfigError naming `path` and the range when the number `value` lies outside `spec`."""
    parts = parse_range(spec)
    if any(value in p if isinstance(p, Interval) else value == p for p in parts):
        return
    finite = inner is float and not any(isinstance(p, Interval) and math.inf in p for p in parts)
    kind = "an integer" if inner is int else "a finite number" if finite else "a number"
    words = [str(p) if isinstance(p, Interval) else f"{p:g}" for p in parts]
    ranges = " or ".join(w if w[0] in "<>" else (f"in {w}" if w[0] in "[(" else w) for w in words)
    raise ConfigError(f"{path}: must be {kind} {ranges}, got {show(value)}")


_NONFINITE_WORDS = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _number(value, path: str) -> float:
    """A float from a YAML number; `nan`/`inf` written without YAML's dot (`--set train.lr=nan`) count as numbers
    too, so that the range check refuses them by name rather than as a wrong type."""
    if isinstance(value, str) and value.strip().lower() in _NONFINITE_WORDS:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a number, got {show(value)}")
    return float(value)


def _convert(tp, value, path: str):
    """Check/convert one value against a type hint; `path` is the dotted key for messages."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:                          # a number with its allowed range
        inner, *specs = get_args(tp)
        converted = _number(value, path) if inner is float else _convert(inner, value, path)
        for spec in specs:
            if isinstance(spec, str):
                _check_range(spec, converted, path, inner)
        return converted
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
        raise ConfigError(f"{path}: expected {' or '.join(_type_name(m) for m in members)}, got {show(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{path}: must be one of {choices}, got {show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {show(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {show(value)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {show(value)}")
        return value
    if tp is float:
        number = _number(value, path)
        if not math.isfinite(number):
            raise ConfigError(f"{path}: must be a finite number, got {show(number)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {show(value)}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path, got {show(value)}")
        return Path(value)
    raise TypeError(f"unsupported type {tp!r} at {path}")


def _convert_tagged(members, value, path: str):
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {show(value)}")
    tag, _ = _tag_field(members[0])
    choices = {}
    for m in members:
        for t in _tag_field(m)[1]:
            choices[t] = m
    if tag not in value:
        raise ConfigError(f"{path}.{tag}: required (one of {', '.join(map(repr, choices))})")
    member = choices.get(value[tag]) if isinstance(value[tag], str) else None
    if member is None:
        raise ConfigError(f"{path}.{tag}: must be one of {', '.join(map(repr, choices))}, got {show(value[tag])}")
    return from_dict(member, value, path)


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass `cls` from a mapping, recursively; every error names the dotted key."""
    where = path or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {show(data)}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            name = str(key) if len(str(key)) <= ECHO_CHARS else show(key)
            close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.0)
            hint = f" (closest valid key: '{prefix}{close[0]}')" if close else ""
            raise ConfigError(f"unknown key '{prefix}{name}'{hint}")
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
