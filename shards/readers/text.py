"""Headerless text recordings: one number per line, read fast and checked line by line on failure."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import mne
import numpy as np

from shards.readers.errors import HEADER_MAX_SFREQ, HEADER_MIN_SFREQ, ReadError

__all__ = ["parse_numbers", "read_text", "read_text_signal"]


def parse_numbers(path: Path, text: str, skip_lines: int = 0) -> np.ndarray:
    """One float per line -> ``[T]`` float64, fast (np.fromstring's C parser, ~20x np.loadtxt)."""
    body = text
    for _ in range(skip_lines):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy signals a parse stop this way
        try:
            values = np.fromstring(body, dtype=np.float64, sep=" ")
        except (DeprecationWarning, ValueError):
            values = None
    n_lines = len(body.split())
    if values is None or values.size != n_lines:
        for lineno, line in enumerate(body.splitlines(), start=1 + skip_lines):
            try:
                float(line)
            except ValueError:
                if line.strip():
                    raise ReadError(path, f"line {lineno}: {line.strip()[:40]!r} is not a number") from None
        raise ReadError(path, "expected one number per line")
    if values.size == 0:
        raise ReadError(path, "no samples")
    return values


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="latin-1")
    except OSError as err:
        raise ReadError(path, f"cannot read ({err.strerror or err})") from err


def read_text_signal(
    path: str | os.PathLike, sfreq: float, ch_name: str, unit_scale: float = 1e-6, *, skip_lines: int = 0
) -> mne.io.RawArray:
    """One sample per line -> single-channel ``RawArray`` ``[1, T]`` in volts.

    ``unit_scale`` converts file values to volts (default 1e-6: values are µV). Bonn's files hold the A/D
    counts of a 12-bit converter; the literature treats them as µV and so do we (their amplitude range,
    tens to hundreds, is consistent with µV). The channel gets type "eeg"; give ``ch_name`` the real name
    when known, or map it explicitly in preprocessing (e.g. to the vocabulary's position-less "EEG").
    """
    path = Path(path)
    if not path.is_file():
        raise ReadError(path, "file not found")
    if not (isinstance(sfreq, (int, float)) and math.isfinite(sfreq) and HEADER_MIN_SFREQ <= sfreq <= HEADER_MAX_SFREQ):
        raise ReadError(path, f"invalid sampling rate {sfreq!r} Hz")
    values = parse_numbers(path, read_text(path), skip_lines=skip_lines)
    info = mne.create_info([ch_name], sfreq, ch_types="eeg")
    return mne.io.RawArray((values * unit_scale)[np.newaxis, :], info, verbose="error")
