"""YAML values into the schema's types, with a problem per key instead of an exception: a recipe's
mistakes are reported together, each naming its dotted key and the form it expects.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from dpo_recipe.config.schema import SECTIONS
from dpo_recipe.config.vocabulary import suggest


def build_section(cls: type, section: str, values: dict[str, Any], problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            problems.append(f"{dotted}: unknown key{suggest(key, fields)}")
            continue
        converted, error = _convert(value, hints[key])
        if error:
            problems.append(f"{dotted}: expected {error}, got {value!r}")
            continue
        range_error = _check_range(converted, fields[key].metadata)
        if range_error:
            problems.append(f"{dotted}: {range_error}, got {value!r}")
            continue
        kwargs[key] = converted
    return cls(**kwargs)


def _convert(value: Any, hint: Any) -> tuple[Any, str | None]:
    """Coerce a YAML value to a field's type; returns (value, expected-form or None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        return (None, None) if type(None) in options else (None, describe_type(hint))
    for option in options:
        if option is bool and isinstance(value, bool):
            return value, None
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if option is float and not isinstance(value, bool):
            number = _finite_float(value)
            if number is not None:
                return number, None
        if option is str and isinstance(value, str):
            return value, None
        strings = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        if option == dict[str, str] and strings:
            return dict(value), None
        named = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        if option == dict[str, float] and named:
            numbers = {k: _finite_float(v) if not isinstance(v, bool) else None for k, v in value.items()}
            if all(v is not None for v in numbers.values()):
                return numbers, None
        if option == dict[str, Any] and named:
            return dict(value), None
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            if typing.get_origin(item) is dict and all(isinstance(v, dict) for v in value):
                return [dict(v) for v in value], None
            if item is str and all(isinstance(v, str) for v in value):
                return list(value), None
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            if item is float and numbers and all(math.isfinite(v) for v in value):
                return [float(v) for v in value], None
    return None, describe_type(hint)


def _finite_float(value: Any) -> float | None:
    """A number, or None: YAML reads ``.nan`` and ``.inf`` as floats, and no recipe key means either.

    NaN passes every range check (all comparisons are false) and only fails later, in torch's
    optimizer or numpy's plotting, after the model has loaded; so it is refused here.
    """
    if isinstance(value, str):
        try:  # YAML 1.1 reads "5e-6" (no dot) as a string
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def describe_type(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    lists = {
        list[str]: "a list of strings",
        list[float]: "a list of finite numbers",
        dict[str, str]: "a mapping of names to names",
        dict[str, float]: "a mapping of names to finite numbers",
        dict[str, Any]: "a mapping of names to values",
        list[dict[str, Any]]: "a list of mappings",
    }
    parts = [names.get(o) or lists[o] for o in options]
    return " or ".join(parts)


def _check_range(value: Any, meta: Any) -> str | None:
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"expected one of {', '.join(meta['choices'])}"
    if "min" in meta and value < meta["min"]:
        return f"must be >= {meta['min']}"
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        return f"must be > {meta['min_exclusive']}"
    if "max" in meta and value > meta["max"]:
        return f"must be <= {meta['max']}"
    if "max_exclusive" in meta and value >= meta["max_exclusive"]:
        return f"must be < {meta['max_exclusive']}"
    return None


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every recipe key, for docs and the CLI."""
    rows = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append((f"{section}.{f.name}", describe_type(hints[f.name]), repr(default), f.metadata["help"]))
    return rows
