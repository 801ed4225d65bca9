"""Vendor fixes of MNE readers: BCI2000 channel names and calibration, the sample width of Neuroscan CNT files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import mne
import numpy as np

from shards.readers.errors import ReadError

__all__ = ["fix_bci2000", "read_neuroscan_cnt"]


def _bci2000_list(params: dict[str, list[str]], name: str, n: int) -> list[str] | None:
    """A BCI2000 list parameter (``... ChannelNames= 3 Fp1 Cz O2 // comment``) as its ``n`` values."""
    values = params.get(name)
    if not values or not values[0].isdigit() or int(values[0]) != n or len(values) < n + 1:
        return None
    return values[1 : n + 1]


def fix_bci2000(raw: mne.io.BaseRaw, path: Path) -> None:
    """Names and µV calibration from the header, which MNE 1.13's BCI2000 reader leaves out.

    MNE names the channels ``EEG1``..``EEGn`` and returns raw A/D counts as volts; the header's
    ``ChannelNames``, ``SourceChOffset`` and ``SourceChGain`` (µV per count, BCI2000's convention, also
    written ``0.1muV``) give the real names and volts = (counts - offset) x gain x 1e-6.
    """
    with open(path, "rb") as f:
        first = f.readline().decode("latin-1")
        match = re.search(r"HeaderLen=\s*(\d+)", first)
        text = f.read(max(int(match.group(1)) - len(first), 0) if match else 0).decode("latin-1")
    params: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line:
            left, right = line.split("=", 1)
            params[left.split()[-1] if left.split() else ""] = right.split("//")[0].split()
    n = sum(t == "eeg" for t in raw.get_channel_types())
    gains = _bci2000_list(params, "SourceChGain", n)
    offsets = _bci2000_list(params, "SourceChOffset", n) or ["0"] * n
    if gains is not None:
        try:
            scale = np.array([float(g.lower().removesuffix("muv") or 1) for g in gains]) * 1e-6
            offset = np.array([float(o) for o in offsets])
        except ValueError:
            raise ReadError(path, f"BCI2000 header: SourceChGain / SourceChOffset are not numbers ({gains[:3]}...)") from None
        raw._data[:n] = (raw._data[:n] - offset[:, None]) * scale[:, None]
    names = _bci2000_list(params, "ChannelNames", n)
    if names is not None and len(set(names)) == n:
        raw.rename_channels(dict(zip(raw.ch_names[:n], names)))


# Median |sample| that EEG of any kind stays below (DC-coupled amplifiers included): a sample width that
# puts a recording above it is the wrong width.
_PLAUSIBLE_MEDIAN_V = 1e-3


def read_neuroscan_cnt(path: Path) -> mne.io.BaseRaw:
    """Neuroscan CNT, with the sample width worked out when the header cannot say.

    MNE infers 16- vs 32-bit samples from the header's sample count; files whose header claims 0 samples
    (MNE's own ``scan41_short.cnt``) make it fail with "set data_format manually". Then both widths are read
    and the one giving physically plausible EEG is kept: on ``scan41_short.cnt`` int16 gives a median |x| of
    38 µV, int32 2.5 V. Only when exactly one width is plausible is it used; otherwise the error says so.
    """
    try:
        return mne.io.read_raw_cnt(path, preload=True, verbose="error")
    except RuntimeError as err:
        if "data_format" not in str(err):
            raise
    plausible = []
    for data_format in ("int16", "int32"):
        try:
            raw = mne.io.read_raw_cnt(path, data_format=data_format, preload=False, verbose="error")
            head = raw.get_data(stop=min(raw.n_times, int(10 * raw.info["sfreq"])))
        except Exception:  # noqa: BLE001 - a width the file does not fit is simply not plausible
            continue
        median = float(np.median(np.abs(head))) if head.size else math.inf
        if math.isfinite(median) and median < _PLAUSIBLE_MEDIAN_V:
            plausible.append(data_format)
    if len(plausible) != 1:
        raise ReadError(path, "Neuroscan CNT header gives 0 samples and the sample width (int16/int32) cannot be "
                              f"told from the data (plausible: {plausible or 'neither'})")
    return mne.io.read_raw_cnt(path, data_format=plausible[0], preload=True, verbose="error")
