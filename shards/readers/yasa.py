"""YASA's text snippets (``yasa_N2_spindles_15sec_200Hz.txt``): µV per line, the rate in the file name."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mne

from shards.readers.errors import ReadError
from shards.readers.text import read_text_signal

__all__ = ["SFREQ_IN_NAME", "read_yasa_snippet"]

SFREQ_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)\s*hz", re.IGNORECASE)


def read_yasa_snippet(path: str | os.PathLike, ch_name: str = "EEG") -> mne.io.RawArray:
    """YASA's text snippets (``yasa_N2_spindles_15sec_200Hz.txt``): µV per line, rate in the file name."""
    path = Path(path)
    match = SFREQ_IN_NAME.search(path.stem)
    if match is None:
        raise ReadError(path, "sampling rate unknown: no '<rate>Hz' in the file name")
    return read_text_signal(path, float(match.group(1)), ch_name)
