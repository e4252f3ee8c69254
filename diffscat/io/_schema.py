"""One config schema mechanism for every command (`simulate`, `plan`, `fit`, `batch-fit`).

A section is a dict of `Key`s (type, default, allowed values, bounds, a one-line description). `check_section`
validates a TOML table against it — unknown keys, wrong types, values out of range or not among the choices
raise `ConfigError` naming `section.key` and the value — and returns the table with defaults filled in.
`describe_sections` renders the same schema as text for `--help` and the docs, so what is checked and what is
documented cannot drift apart. Checks that need more than one key (ranges, "exactly one of") stay as small
functions next to the command that owns the section.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "Key", "check_keys", "get", "numbers", "check_section", "describe_sections"]

_NUM = (int, float)
KINDS = ("number", "int", "str", "bool", "list", "table", "any")


class ConfigError(ValueError):
    """A config key is missing, unknown, of the wrong type or out of range (the message names it)."""


def _is_num(v) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _fmt(v) -> str:
    return repr(v) if not isinstance(v, dict) else "{...}"


def check_keys(d: dict, allowed, path: str) -> None:
    """`d` is a table whose keys are all in `allowed` (ConfigError naming `[path]` and the unknown keys)."""
    if not isinstance(d, dict):
        raise ConfigError(f"[{path}] must be a table, got {_fmt(d)}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        names = [f"{path}.{k}" if path.isidentifier() else k for k in unknown]  # [model] -> model.foo
        raise ConfigError(
            f"unknown key(s) in [{path}]: {', '.join(names)} (allowed: {', '.join(sorted(allowed))})"
        )


def get(d: dict, key: str, path: str, kind: str, *, required=False, default=None, positive=False, min_=None):
    """Fetch and type-check `d[key]`; `kind` in number | int | str | bool | list | table | any."""
    full = f"{path}.{key}"
    if key not in d:
        if required:
            raise ConfigError(f"missing key {full}")
        return default
    v = d[key]
    ok = {
        "number": _is_num(v),
        "int": isinstance(v, int) and not isinstance(v, bool),
        "str": isinstance(v, str),
        "bool": isinstance(v, bool),
        "list": isinstance(v, list),
        "table": isinstance(v, dict),
        "any": True,
    }[kind]
    if not ok:
        raise ConfigError(f"{full} = {_fmt(v)} has the wrong type: expected {kind}")
    if kind in ("number", "int"):
        if not math.isfinite(v):
            raise ConfigError(f"{full} = {v!r} must be finite")
        if positive and v <= 0:
            raise ConfigError(f"{full} = {v!r} must be positive")
        if min_ is not None and v < min_:
            raise ConfigError(f"{full} = {v!r} must be >= {min_}")
    return v


def numbers(v, full: str, length: int | None = None, positive=False) -> list[float]:
    """A list of finite numbers (of `length` entries, positive if asked); ConfigError naming `full`."""
    if not isinstance(v, list) or not all(_is_num(x) for x in v):
        raise ConfigError(f"{full} = {_fmt(v)} has the wrong type: expected a list of numbers")
    if length is not None and len(v) != length:
        raise ConfigError(f"{full} = {v!r} must have {length} entries")
    if not all(math.isfinite(x) for x in v):
        raise ConfigError(f"{full} = {v!r} must be finite")
    if positive and any(x <= 0 for x in v):
        raise ConfigError(f"{full} = {v!r} must be positive")
    return [float(x) for x in v]


_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its kind (number | int | str | bool | list | table | any), default (absent: optional
    with no default), whether it is required, the allowed values, bounds, and a one-line description with units.

    `kind` may be a tuple of kinds (e.g. `("str", "list")` for `beam_center = "auto"` or `[cy, cx]`).
    """

    kind: str | tuple[str, ...]
    doc: str = ""
    default: Any = _MISSING
    required: bool = False
    choices: tuple | None = None
    positive: bool = False
    min: int | float | None = None

    def __post_init__(self):
        kinds = (self.kind,) if isinstance(self.kind, str) else tuple(self.kind)
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ValueError(f"Key kind must be among {KINDS}, got {bad}")

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def check(self, d: dict, key: str, path: str):
        """The validated value of `d[key]` (or the default); ConfigError naming `path.key`."""
        if key not in d:
            if self.required:
                raise ConfigError(f"missing key {path}.{key}" + (f" ({self.doc})" if self.doc else ""))
            return self.default if self.has_default else None
        kinds = (self.kind,) if isinstance(self.kind, str) else tuple(self.kind)
        errors = []
        for kind in kinds:
            try:
                v = get(d, key, path, kind, positive=self.positive, min_=self.min)
                break
            except ConfigError as e:
                errors.append(e)
        else:
            if len(kinds) == 1:
                raise errors[0]
            raise ConfigError(
                f"{path}.{key} = {_fmt(d[key])} has the wrong type: expected {' or '.join(kinds)}"
            )
        if self.choices is not None and isinstance(v, str | int | float | bool) and v not in self.choices:
            raise ConfigError(
                f"{path}.{key} = {v!r} must be one of {', '.join(repr(c) for c in self.choices)}"
            )
        return v


def check_section(d: Mapping | None, schema: Mapping[str, Key], path: str) -> dict:
    """Validate table `d` (None = absent, i.e. empty) against `schema`; returns a new dict holding every given
    key plus the defaults of the absent ones. Unknown keys, types, choices and bounds raise ConfigError."""
    d = {} if d is None else d
    check_keys(d, schema, path)
    out = dict(d)
    for key, spec in schema.items():
        v = spec.check(d, key, path)
        if key in d or spec.has_default:
            out[key] = v
    return out


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def describe_sections(schemas: Mapping[str, Mapping[str, Key]]) -> str:
    """The schemas as TOML-like text: `[section]` then `key = default   # kind; choices; description`."""
    lines = []
    for sec, schema in schemas.items():
        lines.append(f"[{sec}]")
        width = max((len(k) for k in schema), default=0)
        for key, spec in schema.items():
            kinds = spec.kind if isinstance(spec.kind, str) else " | ".join(spec.kind)
            val = (
                _toml(spec.default) if spec.has_default else ("(required)" if spec.required else "(optional)")
            )
            extra = f"; one of {', '.join(map(str, spec.choices))}" if spec.choices else ""
            lines.append(
                f"  {key:<{width}} = {val:<11} # {kinds}{extra}{'; ' + spec.doc if spec.doc else ''}"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
