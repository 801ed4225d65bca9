"""XDF (Lab Streaming Layer recordings) through ``pyxdf``: the EEG stream as a RawArray in volts."""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np

from shards.readers.errors import ReadError

__all__ = ["read_xdf"]


def read_xdf(path: Path) -> mne.io.BaseRaw:
    """The EEG stream of an XDF file (the one with most channels if several) as a RawArray in volts."""
    import pyxdf

    try:
        streams, _ = pyxdf.load_xdf(str(path), dejitter_timestamps=False)
    except Exception as err:  # noqa: BLE001 - pyxdf raises many kinds on corrupt files
        raise ReadError(path, f"cannot read XDF file ({type(err).__name__}: {err})") from err
    eeg = [s for s in streams if _xdf_field(s["info"], "type").lower() == "eeg"
           and float(_xdf_field(s["info"], "nominal_srate") or 0) > 0 and np.size(s["time_series"]) > 0]
    if not eeg:
        kinds = sorted({_xdf_field(s["info"], "type") or "?" for s in streams})
        raise ReadError(path, f"no EEG stream with a nominal rate (streams: {', '.join(kinds) or 'none'})")
    stream = max(eeg, key=lambda s: np.shape(s["time_series"])[1])
    data = np.asarray(stream["time_series"], dtype=np.float64).T  # [C, T]
    names, scales = [], []
    try:
        chans = stream["info"]["desc"][0]["channels"][0]["channel"]
    except (KeyError, IndexError, TypeError):
        chans = []
    for i in range(data.shape[0]):
        ch = chans[i] if i < len(chans) else {}
        names.append(_xdf_field(ch, "label") or f"EEG{i + 1:03d}")
        unit = _xdf_field(ch, "unit").strip().lower()
        scales.append({"v": 1.0, "volts": 1.0, "mv": 1e-3, "millivolts": 1e-3, "nv": 1e-9}.get(unit, 1e-6))  # µV default
    info = mne.create_info(names, float(_xdf_field(stream["info"], "nominal_srate")), ch_types="eeg")
    return mne.io.RawArray(data * np.asarray(scales)[:, None], info, verbose="error")


def _xdf_field(node, key: str) -> str:
    """pyxdf stores every XML field as a one-element list."""
    try:
        value = node[key]
    except (KeyError, TypeError):
        return ""
    return str(value[0] if isinstance(value, list) and value else value or "")
