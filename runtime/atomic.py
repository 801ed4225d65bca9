"""File writes into output folders: atomic (a temporary name in the same folder, fsync, rename, fsync the
folder) and never through a symbolic link.

A link planted in an output folder at the name of a file the suite writes (``.build.lock``,
``run_config.json``, a checkpoint's weights) would redirect the write onto its target, anywhere the user may
write. Every write here refuses a destination that is a link (:class:`LinkedPathError`, naming it), creates
its temporary file exclusively and without following links, and renames it over the destination.
:func:`refuse_links` checks the entries of a folder a run is about to write into.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["LinkedPathError", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "atomic_save",
           "fsync_dir", "refuse_link", "refuse_links"]


class LinkedPathError(ValueError):
    """A path the suite would write is a symbolic link (the message names it and where it points)."""


def refuse_link(path: Path) -> None:
    """Raise :class:`LinkedPathError` when ``path`` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise LinkedPathError(f"{path} is a symbolic link (to {os.readlink(path)}); the suite never writes through a "
                              "link in an output folder: remove the link (or choose another output folder)")


def refuse_links(folder: Path, names: Iterable[str] | None = None) -> None:
    """:func:`refuse_link` for ``names`` in ``folder`` (default: every entry below it, recursively)."""
    folder = Path(folder)
    if names is not None:
        for name in names:
            refuse_link(folder / name)
        return
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):  # os.walk does not descend into linked folders
        for name in dirs + files:
            refuse_link(Path(root) / name)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    """A fresh regular file next to ``path``, created exclusively and without following a link."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)  # a leftover of a crashed write (or a planted link): removes the link, not its target
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    return tmp


def atomic_save(write: Callable[[str], None], path: Path) -> None:
    """``write(tmp_name)`` (a library that takes a file name, e.g. safetensors) into a temporary file, then
    rename it to ``path``; ``path`` must not be a link. The temporary file is removed if ``write`` fails."""
    path = Path(path)
    refuse_link(path)
    tmp = _temporary(path)
    try:
        write(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename."""
    def write(name: str) -> None:
        with os.fdopen(os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW), "wb") as f:
            f.write(data)

    atomic_save(write, path)


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path``, atomically and never through a link."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, *, readable: bool = True) -> None:
    """``obj`` as sorted-key JSON, atomically. ``readable``: one top-level key per line and the items of
    top-level lists and dicts one per line, everything below that compact. ``json.dumps(indent=...)`` would
    read the same but runs json's pure-Python encoder, ~0.1 s for a 500-recording manifest; this
    layout lets the C encoder do all the work. ``readable=False``: one line (the resume state file, which
    is rewritten after every shard)."""
    atomic_write_bytes(path, (_json_lines(obj) if readable else json.dumps(obj, sort_keys=True)).encode() + b"\n")


def _json_lines(obj: Any) -> str:
    def dump(x: Any) -> str:
        return json.dumps(x, sort_keys=True, separators=(", ", ": "))

    def block(x: Any, indent: str) -> str:
        if isinstance(x, dict) and x:
            inner = indent + " "
            return "{\n" + ",\n".join(f"{inner}{dump(str(k))}: {dump(x[k])}" for k in sorted(x)) + f"\n{indent}}}"
        if isinstance(x, (list, tuple)) and x:
            inner = indent + " "
            return "[\n" + ",\n".join(f"{inner}{dump(v)}" for v in x) + f"\n{indent}]"
        return dump(x)

    if not isinstance(obj, dict):
        return dump(obj)
    return "{\n" + ",\n".join(f" {dump(str(k))}: {block(obj[k], ' ')}" for k in sorted(obj)) + "\n}"
