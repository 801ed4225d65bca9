"""An exclusive lock on an output folder, held by the one process that writes into it.

Shard builds (``shards.buildlock``) and training runs (pretraining, tokenizer training, finetuning) take an
``flock`` on a lock file in their output folder, with the holder's PID and host written into it, so that two
processes never write the same checkpoints, shards or config into one folder (a second pretraining run into
a busy ``train.out_dir`` once exited 0 with the first run's weights under its own config). A lock whose
recorded PID is gone from this host (its process died, a descendant that inherited the descriptor holds it)
is stale: it is moved aside and a fresh one taken. The lock file is opened without following a symbolic
link, so a link planted at its name cannot redirect the PID write onto another file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO

from runtime.atomic import LinkedPathError

__all__ = ["FolderLockedError", "acquire"]


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(f: IO[str]) -> tuple[int | None, str | None]:
    f.seek(0)
    try:
        pid_text, _, host = f.read().strip().partition(" ")
        return int(pid_text), host or None
    except ValueError:
        return None, None


def _open(path: Path) -> IO[str]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LinkedPathError(f"lock file {path} is a symbolic link (to {os.readlink(path)}); the suite never "
                                  "writes through a link in an output folder: remove it and re-run") from None
        raise
    return os.fdopen(fd, "r+")


def acquire(path: Path, *, busy: Callable[[str], str] | None = None,
            error: type[FolderLockedError] = FolderLockedError) -> IO[str]:
    """Take the lock at ``path`` (creating it) and write our PID into it; returns the open file (close it, or
    exit, to release the lock).

    Raises ``error`` with ``busy(held_by)`` (e.g. " by PID 123 on host") as its message when a live process holds
    the lock, and :class:`runtime.atomic.LinkedPathError` when ``path`` is a symbolic link.
    """
    busy = busy or (lambda held_by: f"{path.parent} is in use (lock {path.name} is held{held_by})")
    for _ in range(3):
        f = _open(path)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError:
            locked = False
        if locked:
            if os.path.lexists(path) and os.lstat(path).st_ino == os.fstat(f.fileno()).st_ino:
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
                f.flush()
                return f
            f.close()  # the file we locked was moved aside (stale) meanwhile: lock the new one
            continue
        pid, host = _holder(f)
        if pid is not None and host == socket.gethostname() and not _alive(pid):
            # Held by descendants of a dead process (its PID is gone): they write nothing, so set it aside.
            if os.lstat(path).st_ino == os.fstat(f.fileno()).st_ino:
                os.replace(path, path.with_name(f"{path.name}.stale-{pid}"))
            f.close()
            continue
        f.close()
        raise error(busy(f" by PID {pid} on {host}" if pid is not None else ""))
    raise error(f"could not take the lock {path} after removing a stale one; re-run the command")
