"""A training run's output folder: one process writes it at a time, and a fresh run never silently reuses one.

:func:`claim` is the first thing a training loop does with its ``out_dir`` (on the main process):

* the folder's lock (``runtime.folder_lock``, ``.run.lock``) is taken for the whole run, so a second run into a
  busy folder stops with one line naming the PID that holds it (two runs into one folder once both exited 0,
  the weights of one under the other's config);
* a fresh run (no checkpoint to resume) into a folder that holds an earlier run's checkpoints or export is
  refused unless ``overwrite`` is set, which first removes that run's outputs (:data:`RUN_OUTPUTS`) and says
  so; what else the folder holds (demo data, a tokenizer trained for it, TensorBoard logs) is kept;
* none of the entries the run writes may be a symbolic link (``runtime.atomic``): a planted
  ``run_config.json`` or ``checkpoints`` link would redirect the run's writes outside the folder.

:func:`claim_output` is the same for a run that writes one output folder whole (finetuning): it also refuses a
folder that is or holds one of the run's inputs, or that holds a training run.
"""

from __future__ import annotations

import atexit
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from runtime import folder_lock
from runtime.atomic import refuse_link, refuse_links
from runtime.folder_lock import FolderLockedError

__all__ = ["LOCK_NAME", "RUN_OUTPUTS", "RunFolderError", "check_output", "claim", "claim_output", "earlier_run",
           "release"]

LOCK_NAME = ".run.lock"
#: What a run writes into its folder; a fresh run with ``overwrite`` removes these (and only these).
RUN_OUTPUTS = ("checkpoints", "model", "probe_best", "run_config.json")
#: Entries of a run folder the run writes into; none may be a link.
WRITTEN = RUN_OUTPUTS + ("logs", LOCK_NAME)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (the message names it and the way out)."""


def earlier_run(out_dir: Path) -> list[str]:
    """The outputs of an earlier run in ``out_dir`` (checkpoints, an export, its config), by name; [] if none."""
    out_dir = Path(out_dir)
    found = []
    if any((out_dir / "checkpoints").glob("step_*")):
        found.append("checkpoints/")
    for name in ("model", "probe_best"):
        if (out_dir / name).is_dir() and any((out_dir / name).iterdir()):
            found.append(f"{name}/")
    if (out_dir / "run_config.json").exists():
        found.append("run_config.json")
    return found


def claim(out_dir: str | Path, *, fresh: bool, overwrite: bool = False, what: str = "training run") -> IO[str]:
    """Lock ``out_dir`` for this run; returns the lock file (closing it, or exiting, releases the lock).

    Args:
        fresh: the run starts from scratch (no checkpoint is resumed).
        overwrite: a fresh run may replace an earlier run's outputs (they are removed first).
    Raises:
        FolderLockedError: another live process holds the folder. RunFolderError: a fresh run into a folder
            with an earlier run, without ``overwrite``. runtime.atomic.LinkedPathError: an entry the run writes
            is a symbolic link.
    """
    out_dir = Path(out_dir)
    refuse_link(out_dir / LOCK_NAME)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier_lock = _HELD.pop(str(out_dir.resolve()), None)
    if earlier_lock is not None:  # a run of this process that failed before it released the folder
        earlier_lock.close()
    lock = folder_lock.acquire(out_dir / LOCK_NAME, busy=lambda held_by: (
        f"another {what} is writing into {out_dir} (lock {LOCK_NAME} is held{held_by}); wait for it to finish or "
        f"stop it, or give this run another --train.out_dir"))
    try:
        refuse_links(out_dir, WRITTEN)
        for name in ("checkpoints", "model", "probe_best"):
            refuse_links(out_dir / name)
        earlier = earlier_run(out_dir) if fresh else []
        if earlier and not overwrite:
            raise RunFolderError(
                f"{out_dir} holds an earlier run ({', '.join(earlier)}) and this run starts fresh: continue it with "
                f"--resume auto, start over in it with --train.overwrite true (removes {', '.join(earlier)}), or give "
                f"this run another --train.out_dir")
        if earlier:
            for name in RUN_OUTPUTS:
                path = out_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            print(f"train.overwrite: removed the earlier run's {', '.join(earlier)} from {out_dir}", file=sys.stderr,
                  flush=True)
    except BaseException:
        lock.close()
        raise
    _HELD[str(out_dir.resolve())] = lock
    return lock


def claim_output(out_dir: str | Path, *, inputs: Mapping[str, str | Path | None], what: str = "finetuning run",
                 flag: str = "--out") -> IO[str]:
    """Lock the output folder of a run that reads ``inputs`` (option -> path) and writes ``out_dir`` whole.

    Refused, before anything is written: an ``out_dir`` that is, or holds, one of the inputs (``finetune/run.py
    --checkpoint RUN/model --out RUN`` would replace the pretrained weights it reads), and one that holds a
    training run's checkpoints or config (a pretraining run folder). An earlier output of the same kind is
    replaced, with a notice. Raises as :func:`claim` does.
    """
    check_output(out_dir, inputs=inputs, what=what, flag=flag)
    out_dir = Path(out_dir)
    target = out_dir.resolve()
    refuse_link(out_dir / LOCK_NAME)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier_lock = _HELD.pop(str(target), None)
    if earlier_lock is not None:
        earlier_lock.close()
    lock = folder_lock.acquire(out_dir / LOCK_NAME, busy=lambda held_by: (
        f"another {what} is writing into {out_dir} (lock {LOCK_NAME} is held{held_by}); wait for it to finish or "
        f"give this run another {flag}"))
    try:
        refuse_links(out_dir)
    except BaseException:
        lock.close()
        raise
    if (out_dir / "model").is_dir():
        print(f"{what}: replacing the outputs of an earlier run in {out_dir}", file=sys.stderr, flush=True)
    _HELD[str(target)] = lock
    return lock


def check_output(out_dir: str | Path, *, inputs: Mapping[str, str | Path | None], what: str = "finetuning run",
                 flag: str = "--out") -> None:
    """The refusals of :func:`claim_output`, without taking the lock (to fail before any work is done)."""
    out_dir = Path(out_dir)
    target = out_dir.resolve()
    for option, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        source = Path(path).resolve()
        if source == target or target in source.parents:
            raise RunFolderError(f"{flag} {out_dir} is or holds the input {option} {path}: the {what} would write over "
                                 f"what it reads; choose another {flag}")
    for name in ("checkpoints", "run_config.json"):
        if (out_dir / name).exists():
            raise RunFolderError(f"{flag} {out_dir} holds a training run ({name}); writing the {what}'s model/ and "
                                 f"config.json there would replace that run's: choose another {flag}")


def release(out_dir: str | Path) -> None:
    """Release this process's lock on ``out_dir`` (a no-op when it holds none)."""
    lock = _HELD.pop(str(Path(out_dir).resolve()), None)
    if lock is not None:
        lock.close()


# The folders this process holds, so that a later run of the same process (a test, a notebook) into a folder
# whose earlier run raised before releasing it takes the lock over instead of finding itself as the holder.
_HELD: dict[str, IO[str]] = {}


@atexit.register
def _release_all() -> None:
    while _HELD:
        _HELD.popitem()[1].close()


# Re-exported so callers catch one family of errors from here.
__all__ += ["FolderLockedError"]
