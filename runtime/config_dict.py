"""Frozen config dataclasses from plain dicts (JSON objects, TOML tables), strictly.

A checkpoint's ``config.json`` and a run's TOML ``[model]`` table are read the same way: every key must
be a field (an unknown key is an error naming it, so a typo never falls back to a default), values are
checked against the field's type, lists become tuples. A table for a config class with a ``from_size``
preset may carry ``size = "base"``: the preset is the base and the table's other keys override it.
The TOML file + command-line layer on top of this is ``runtime.configfile``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, TypeVar

__all__ = ["ConfigError", "from_dict", "to_dict", "has_preset", "given_keys", "field_types", "nested_dataclass"]

# Attribute on a preset config recording which of its fields were set by a table (see given_keys).
_GIVEN = "_eegfm_given_keys"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match the config dataclass."""


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def nested_dataclass(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (also ``X | None``), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn TOML values into the field's type (lists -> tuples) and reject obvious mismatches."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        return type(value)(value) if origin is list else tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is float:
        return _number(value, where)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    """A float field's value: a number, or text that reads as one (``.5``, ``1e-3``); never NaN or inf."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def from_dict(cls: type[T], data: dict[str, Any], *, base: T | None = None, where: str = "") -> T:
    """Build ``cls`` from a (possibly partial) mapping; keys not in ``data`` keep ``base``'s values.

    Raises:
        ConfigError: naming the first unknown key or mistyped value, with its dotted path.
    """
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_) - ({"size"} if has_preset(cls) else set()))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' in {cls.__name__}; "
            f"known keys: {', '.join(sorted(types_))}"
        )
    data = dict(data)
    if has_preset(cls) and "size" in data:
        size = data.pop("size")
        try:
            base = cls.from_size(size)  # type: ignore[attr-defined]
        except ValueError as err:
            raise ConfigError(f"{where + '.' if where else ''}size: {err}") from err
        given = set(types_)  # a preset is a request for every one of its fields
    else:
        given = set(data) | (given_keys(base) or set())
    base = base if base is not None else cls()
    changes = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        nested = nested_dataclass(types_[key])
        current = getattr(base, key)
        if nested is not None and isinstance(value, dict):
            changes[key] = from_dict(nested, value, base=current if current is not None else _default(cls, key, nested),
                                     where=path)
        else:
            changes[key] = _coerce(value, types_[key], path)
    config = dataclasses.replace(base, **changes)
    if has_preset(cls):
        object.__setattr__(config, _GIVEN, frozenset(given))
    return config


def given_keys(config: Any) -> frozenset[str] | None:
    """The fields of a preset config (one with ``from_size``) that its tables set, or None when unknown.

    ``[model] d_model = 96`` gives ``{"d_model"}``; ``size = "base"`` gives every field (the whole preset
    was asked for); a config built in Python or by ``dataclasses.replace`` gives None. A checkpoint
    comparison uses it to check what the user asked for, not the defaults a table was filled in from.
    """
    return getattr(config, _GIVEN, None)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for JSON or TOML."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _default(cls: type, key: str, nested: type) -> Any:
    """What a table fills in when the field is None: the preset named in the field's ``metadata["preset"]``."""
    preset = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("preset")
    return nested.from_size(preset) if preset and has_preset(nested) else nested()


def has_preset(cls: type) -> bool:
    """True for config classes with named sizes (``cls.from_size(name, **overrides)``)."""
    return callable(getattr(cls, "from_size", None))
