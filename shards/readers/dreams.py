"""The DREAMS spindles database's text excerpts (``excerptN.txt``): a ``[channel]`` line, then 30 min of µV."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mne
import numpy as np

from shards.readers.errors import HEADER_MIN_SFREQ, ReadError
from shards.readers.text import parse_numbers, read_text

__all__ = ["DREAMS_EXCERPT_S", "read_dreams_excerpt"]

DREAMS_EXCERPT_S = 1800.0  # every DREAMS spindle excerpt is 30 min


def read_dreams_excerpt(path: str | os.PathLike) -> mne.io.RawArray:
    """DREAMS spindles ``excerptN.txt``: ``[C3-A1]`` header line, then one µV sample per line, 30 min.

    The sampling rate is (samples / 1800 s), rounded to a whole Hz: the files are 100, 200 or 50 Hz, and
    excerpt 6 holds 140 extra samples (200.08 Hz by division) that are a surplus tail, not a different rate.
    """
    path = Path(path)
    if not path.is_file():
        raise ReadError(path, "file not found")
    text = read_text(path)
    first = text.split("\n", 1)[0].strip()
    match = re.fullmatch(r"\[(.+)\]", first)
    if match is None:
        raise ReadError(path, f"not a DREAMS excerpt: first line {first[:40]!r} is not a [channel] name")
    values = parse_numbers(path, text, skip_lines=1)
    sfreq = float(round(values.size / DREAMS_EXCERPT_S))
    if sfreq < HEADER_MIN_SFREQ or abs(values.size / DREAMS_EXCERPT_S - sfreq) > 0.01 * sfreq:
        raise ReadError(path, f"{values.size} samples do not make a 1800-s excerpt at a whole-Hz rate")
    info = mne.create_info([match.group(1).strip()], sfreq, ch_types="eeg")
    return mne.io.RawArray((values * 1e-6)[np.newaxis, :], info, verbose="error")
