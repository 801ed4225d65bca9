"""The one error of every reader, and the checks every format shares: the path exists, the rate is plausible."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

__all__ = ["ReadError", "check_path", "check_header_sfreq", "HEADER_MIN_SFREQ", "HEADER_MAX_SFREQ"]

# Sampling rates a header may state without being corrupt (a hypnogram channel at 1/30 Hz lives next to EEG in
# one EDF, but MNE reports the file at its highest rate). Deliberately looser than shards.sample.MIN_SFREQ (25 Hz,
# the lowest rate a build keeps): reading answers "is this header intact?", so a valid 10-Hz file still reads, and
# the build and finetune.predict then refuse it with the sample contract's rule and message (check_sfreq).
HEADER_MIN_SFREQ = 1.0
HEADER_MAX_SFREQ = 100_000.0


class ReadError(Exception):
    """A recording that cannot be read; ``str(err)`` is ``"path: reason"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # rebuild from (path, reason) when a worker process sends it back to the parent
        return (type(self), (self.path, self.reason))


def check_path(path: str | os.PathLike) -> None:
    """ReadError naming ``path`` when it is missing, a broken symlink or a symlink loop."""
    path = Path(path)
    if path.exists():
        return
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ReadError(path, "symlink loop: the link leads back to itself, no file behind it") from None
        raise ReadError(path, f"broken symlink: its target {os.readlink(path)!r} does not exist")
    raise ReadError(path, "file not found")


def check_header_sfreq(path: Path, sfreq: float) -> None:
    """ReadError naming ``path`` unless ``sfreq`` is a rate an intact header may state."""
    if not (isinstance(sfreq, (int, float)) and math.isfinite(sfreq) and HEADER_MIN_SFREQ <= sfreq <= HEADER_MAX_SFREQ):
        expected = f"{HEADER_MIN_SFREQ:g}..{HEADER_MAX_SFREQ:g} Hz"
        raise ReadError(path, f"invalid sampling rate {sfreq!r} Hz in header (expected {expected})")
