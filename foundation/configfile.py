"""Frozen dataclass configs read from TOML files and overridden on the command line.

Every entry point of the suite (``pretrain/run.py``, ``tokenizer/run.py``, ``finetune/run.py``)
takes its settings the same way, with precedence **CLI > file > dataclass defaults**::

    accelerate launch pretrain/run.py --config pretrain/configs/base.toml --optim.lr 3e-4

Nested dataclasses map to TOML tables (``[optim]``) and to dotted flags (``--optim.lr``).
An unknown key, in a file or on the command line, is an error that names the key: a typo must
never silently fall back to a default and waste a training run.

It lives in ``foundation`` because that is the one package every other model-side package
imports; it has no model code in it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match the config dataclass."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _nested_dataclass(tp: Any) -> type | None:
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
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, base: T | None = None, where: str = "") -> T:
    """Build ``cls`` from a (possibly partial) mapping; keys not in ``data`` keep ``base``'s values.

    Raises:
        ConfigError: naming the first unknown key or mistyped value, with its dotted path.
    """
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' in {cls.__name__}; "
            f"known keys: {', '.join(sorted(types_))}"
        )
    base = base if base is not None else cls()
    changes = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        nested = _nested_dataclass(types_[key])
        current = getattr(base, key)
        if nested is not None and isinstance(value, dict):
            changes[key] = from_dict(nested, value, base=current if current is not None else nested(), where=path)
        else:
            changes[key] = _coerce(value, types_[key], path)
    return dataclasses.replace(base, **changes)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for JSON or TOML."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def load_toml(cls: type[T], path: str | Path, *, base: T | None = None) -> T:
    """Read ``path`` into ``cls``; the error names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    try:
        return from_dict(cls, data, base=base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value the way TOML would (numbers, booleans, lists), else a string."""
    lowered = text.strip()
    if lowered in ("none", "None", "null"):
        return None
    try:
        return tomllib.loads(f"v = {lowered}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Apply ``--a.b value`` / ``--a.b=value`` pairs to ``config`` (strict keys)."""
    data: dict[str, Any] = {}
    args = list(overrides)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
                value = "true"  # a bare flag means true
            else:
                i += 1
                value = args[i]
        key = key.replace("-", "_")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_scalar(value)
        i += 1
    return from_dict(type(config), data, base=config)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _describe(cls: type, prefix: str = "", base: Any = None) -> list[str]:
    lines = []
    base = base if base is not None else cls()
    for f in dataclasses.fields(cls):
        value = getattr(base, f.name)
        nested = _nested_dataclass(f.type if not isinstance(f.type, str) else _field_types(cls)[f.name])
        if nested is not None and value is not None:
            lines += _describe(nested, f"{prefix}{f.name}.", value)
        else:
            doc = f.metadata.get("help", "")
            lines.append(f"  --{prefix}{f.name} (default: {value!r}){'  ' + doc if doc else ''}")
    return lines


def parse_cli(cls: type[T], argv: Sequence[str] | None = None, *, prog: str = "", description: str = "",
              default: T | None = None, extra_flags: Sequence[str] = ()) -> tuple[T, dict[str, str]]:
    """Parse ``[--config FILE] [--key value ...]`` into ``cls``.

    ``extra_flags`` are options handled by the caller (e.g. ``--resume``); their values are returned
    in the second item. ``--help`` prints every key with its default and exits.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {prog} [--config FILE.toml] [--key value ...]\n\n{description}\n\noptions:")
        print("  --config FILE  TOML file; its keys override the defaults below")
        for flag in extra_flags:
            print(f"  --{flag}")
        print("\n".join(_describe(cls, base=default)))
        raise SystemExit(0)
    extras: dict[str, str] = {}
    config_file = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name == "config" or name in [f.replace("-", "_") for f in extra_flags]:
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    i += 1
                    value = argv[i]
                else:
                    value = "true"
            if name == "config":
                config_file = value
            else:
                extras[name] = value
        else:
            rest.append(arg)
        i += 1
    config = default if default is not None else cls()
    if config_file is not None:
        config = load_toml(cls, config_file, base=config)
    return apply_overrides(config, rest), extras
