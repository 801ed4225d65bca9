"""Frozen dataclass configs read from TOML files and overridden on the command line.

Every training entry point (``pretrain/run.py``, ``python -m pretrain.train_tokenizer``,
``finetune/run.py``) takes its settings the same way, with precedence **CLI > file > dataclass defaults**::

    accelerate launch pretrain/run.py --config pretrain/configs/base.toml --optim.lr 3e-4

Nested dataclasses map to TOML tables (``[optim]``) and to dotted flags (``--optim.lr``); a flag is spelled
as its key, with underscores (``--optim.grad_accum``; ``--optim.grad-accum`` is read too, with a notice:
``runtime.cli_spelling``). ``--help`` lists the keys grouped by section (a config class may name groups of
its own fields in a ``HELP_GROUPS`` class variable: first field -> title). A section
may be a model's own config class (``[model]`` is ``EEGMambaConfig``): ``size = "base"`` picks its
preset and the other keys override fields. An unknown key, in a file or on the command line, is an
error that names the key: a typo must never silently fall back to a default and waste a training run.
The strict dict -> dataclass reading is ``runtime.config_dict`` (checkpoints use it too).
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtime.cli_spelling import canonical_spelling
from runtime.config_dict import ConfigError, field_types, nested_dataclass, from_dict, has_preset, to_dict

__all__ = ["ConfigError", "from_dict", "to_dict", "load_toml", "apply_overrides", "parse_cli", "option"]

T = TypeVar("T")


def option(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose ``text`` shows up in ``--help``."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


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
    groups = getattr(cls, "HELP_GROUPS", {})
    for f in dataclasses.fields(cls):
        value = getattr(base, f.name)
        nested = nested_dataclass(f.type if not isinstance(f.type, str) else field_types(cls)[f.name])
        if f.name in groups:
            lines += ["", f"{groups[f.name]}:"]
        if nested is not None and value is not None:
            if not prefix:  # a top-level section: its own group, titled by its TOML table
                doc = (nested.__doc__ or "").strip().split("\n")[0]
                lines += ["", f"[{f.name}]{' ' + doc if doc else ''}"]
            if has_preset(nested):
                lines.append(f"  --{prefix}{f.name}.size NAME  preset of {nested.__name__}.from_size; the keys below override it")
            lines += _describe(nested, f"{prefix}{f.name}.", value)
        else:
            doc = f.metadata.get("help", "")
            lines.append(f"  --{prefix}{f.name} (default: {value!r}){'  ' + doc if doc else ''}")
    return lines


def parse_cli(cls: type[T], argv: Sequence[str] | None = None, *, prog: str = "", description: str = "",
              default: T | None = None, extra_flags: Mapping[str, str] | Sequence[str] = ()) -> tuple[T, dict[str, str]]:
    """Parse ``[--config FILE] [--key value ...]`` into ``cls``.

    ``extra_flags`` are options handled by the caller (e.g. ``--resume``), as names or name -> help; their
    values are returned in the second item. ``--help`` prints every key with its default, grouped, and exits.
    """
    argv = canonical_spelling(sys.argv[1:] if argv is None else argv, prog=prog)
    helps = dict(extra_flags) if isinstance(extra_flags, Mapping) else dict.fromkeys(extra_flags, "")
    if "-h" in argv or "--help" in argv:
        print(f"usage: {prog} [--config FILE.toml] [--key value ...]\n\n{description}\n")
        print("Keys are spelled as in the TOML file (underscores); precedence: command line > --config file > "
              "defaults.\n\nrun:")
        print("  --config FILE  TOML file; its keys override the defaults below")
        for flag, text in helps.items():
            print(f"  --{flag}{'  ' + text if text else ''}")
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
        if name == "config" or name in [f.replace("-", "_") for f in helps]:
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
