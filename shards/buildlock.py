"""The lock that keeps two processes from building the same part into one folder, and what keeps it honest.

An exclusive ``flock`` on ``{out}/{corpus}/.build[-part-III-of-NNN].lock``, with the holder's PID and host
written into the file. Two ways a dead build could keep the lock, and how each is closed:

- forked worker processes inherit the lock's file descriptor, and an ``flock`` lives until every
  descriptor of it is closed: :func:`worker_init` closes the workers' copy first thing, and ties each
  worker's life to the build process (Linux ``PR_SET_PDEATHSIG``, else a thread watching the parent PID),
  so ``kill -9`` of the build process alone leaves no worker behind;
- a lock held although the PID in it is gone from this host (a worker of an older build that missed
  both): :func:`acquire` moves the stale lock file aside and takes a fresh one, so the re-run resumes
  (``runtime.folder_lock``, the lock every output folder of the suite takes).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO

from runtime import folder_lock
from runtime.folder_lock import FolderLockedError

_PR_SET_PDEATHSIG = 1


class BuildLockedError(FolderLockedError):
    """Another live build of the same part holds the lock."""


def acquire(path: Path) -> IO[str]:
    """Take the lock at ``path`` (creating it) and write our PID into it; returns the open file (close to release).

    Raises :class:`BuildLockedError` naming the folder, the lock file and the PID holding it when a live
    build holds it (``runtime.folder_lock``, which also sets a stale lock aside and refuses a linked lock file).
    """
    return folder_lock.acquire(path, error=BuildLockedError, busy=lambda held_by: (
        f"another build of this part is running in {path.parent} (lock {path.name} is held{held_by}); "
        f"wait for it to finish or stop it, then re-run the same command to resume"))


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
