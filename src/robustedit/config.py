"""Typed dataclass configs: built from dicts / YAML, unknown keys rejected, ``--set a.b=c`` overrides.

Every hyperparameter is a dataclass field with ``metadata={"help": ...}``; nested dataclasses
are nested mappings. Values in overrides are parsed as YAML scalars (``3``, ``0.5``, ``true``,
``[5, 10]``), so a float in a file or on the command line is a float, not a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from robustedit.errors import UserError

C = TypeVar("C")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, known: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UserError(f"unknown config key {where}{key!r}.{hint} Known keys: {', '.join(sorted(known))}.")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"config {where} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError:
                continue
        raise UserError(f"config {where}: {value!r} does not fit {tp}")
    if tp is float:
        # YAML reads "1e-3" (no dot) as a string; accept numeric strings, refuse bools and the rest.
        if isinstance(value, bool):
            raise UserError(f"config {where} must be a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise UserError(f"config {where} must be a number, got {value!r}")
        if not math.isfinite(number):  # nan or inf would surface as a NaN model minutes later
            raise UserError(f"config {where} must be a finite number, got {value!r}")
        return number
    if tp in (int, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise UserError(f"config {where} must be {tp.__name__}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config {where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [v if inner is Any else _coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value


def from_dict(cls: type[C], data: dict | None, prefix: str = "") -> C:
    """Build ``cls`` from a mapping; unknown keys and wrong types are one-line errors."""
    data = dict(data or {})
    types = _field_types(cls)
    for key in data:
        if key not in types:
            raise _unknown(key, list(types), prefix)
    kwargs = {k: _coerce(v, types[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"invalid config{' ' + prefix.rstrip('.') if prefix else ''}: {e}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(pairs: list[str]) -> dict:
    """``["a.b=1", "c=[5, 10]"]`` → ``{"a": {"b": 1}, "c": [5, 10]}``."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # where the parser gave up (0-based)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"config file {p} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of keys to values")
    return data
