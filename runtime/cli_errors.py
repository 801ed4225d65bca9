"""One-line errors for the suite's command-line entry points; the traceback only on request.

``python -m shards build``, ``finetune/run.py``, ``python -m finetune.predict`` and ``pretrain/run.py``
print a bad input as one line that names the file and the fix, and exit non-zero. ``--debug`` or the
environment variable ``EEGFM_DEBUG=1`` lets the exception through with its traceback. It lives in
``runtime`` because every entry point may import that package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping

__all__ = ["DEBUG_ENV", "debug_requested", "run_cli"]

DEBUG_ENV = "EEGFM_DEBUG"
#: Errors that mean bad input or a stopped run, not a bug: files, values, keys, the NaN guard.
USER_ERRORS = (RuntimeError, ValueError, OSError, KeyError)


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given, or ``EEGFM_DEBUG`` set to anything but empty / 0."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(prog: str, body: Callable[[], int], *, debug: bool = False,
            exit_codes: Mapping[type[BaseException], int] | None = None,
            errors: tuple[type[BaseException], ...] = ()) -> int:
    """``body()``'s exit status; a user error becomes ``{prog}: error: <one line>`` on stderr and exit 2.

    ``exit_codes`` maps exception types to other statuses (e.g. the NaN guard's 3); ``errors`` adds
    exception types beyond ``USER_ERRORS`` (e.g. ``shards.readers.ReadError``). An empty ``prog`` prints
    ``error: ...`` alone.
    """
    try:
        return body()
    except USER_ERRORS + errors as err:
        if debug_requested(debug):
            raise
        code = next((c for kind, c in (exit_codes or {}).items() if isinstance(err, kind)), 2)
        text = " ".join(str(err.args[0] if isinstance(err, KeyError) and err.args else err).split())
        print(f"{prog + ': ' if prog else ''}error: {text} (--debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return code
