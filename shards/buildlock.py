"""The lock that keeps two processes from building the same part into one folder, and what keeps it honest.

An exclusive ``flock`` on ``{out}/{corpus}/.build[-part-III-of-NNN].lock``, with the holder's PID and host
written into the file. Two ways a dead build could keep the lock, and how each is closed:

- forked worker processes inherit the lock's file descriptor, and an ``flock`` lives until every
  descriptor of it is closed: :func:`worker_init` closes the workers' copy first thing, and ties each
  worker's life to the build process (Linux ``PR_SET_PDEATHSIG``, else a thread watching the parent PID),
  so ``kill -9`` of the build process alone leaves no worker behind;
- a lock held although the PID in it is gone from this host (a worker of an older build that missed
  both): :func:`acquire` moves the stale lock file aside and takes a fresh one, so the re-run resumes.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


class BuildLockedError(RuntimeError):
    """Another live build of the same part holds the lock."""


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


def _try_flock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def acquire(path: Path) -> IO[str]:
    """Take the lock at ``path`` (creating it) and write our PID into it; returns the open file (close to release).

    Raises :class:`BuildLockedError` naming the folder, the lock file and the PID holding it when a live
    build holds it.
    """
    for _ in range(3):
        f = open(path, "a+")
        if _try_flock(f):
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
                f.flush()
                return f
            f.close()  # the file we locked was moved aside (stale) meanwhile: lock the new one
            continue
        pid, host = _holder(f)
        if pid is not None and host == socket.gethostname() and not _alive(pid):
            # Held by descendants of a dead build (its PID is gone): they write nothing, so set it aside.
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                os.replace(path, path.with_name(f"{path.name}.stale-{pid}"))
            f.close()
            continue
        f.close()
        held_by = f" by PID {pid} on {host}" if pid is not None else ""
        raise BuildLockedError(
            f"another build of this part is running in {path.parent} (lock {path.name} is held{held_by}); "
            f"wait for it to finish or stop it, then re-run the same command to resume")
    raise BuildLockedError(f"could not take the build lock {path} after removing a stale one; re-run the command")


def worker_init(parent_pid: int, lock_fd: int | None) -> None:
    """ProcessPoolExecutor initializer: drop the inherited lock descriptor and die with the build process."""
    if lock_fd is not None:
        try:
            os.close(lock_fd)
        except OSError:
            pass
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            _watch_parent(parent_pid)
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="shards-parent-watch", daemon=True).start()
