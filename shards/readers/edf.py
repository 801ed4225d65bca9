"""EDF/BDF: the fixed header checked against the file before MNE reads it, and the physical units MNE misreads."""

from __future__ import annotations

import math
from pathlib import Path

import mne
import numpy as np

from shards.readers.errors import HEADER_MAX_SFREQ, ReadError

__all__ = ["MAX_PHYSICAL_RANGE", "check_edf_header", "fix_edf_units"]

# An EDF/BDF physical minimum/maximum beyond this (in any unit: V, mV, µV, nV) is header corruption: MNE
# would turn it into an infinite gain and a recording of NaN/overflow with zero usable windows.
MAX_PHYSICAL_RANGE = 1e9


def check_edf_header(path: Path, bytes_per_sample: int) -> None:
    """Validate the fixed EDF/BDF header against the file size before handing it to MNE.

    MNE reads a truncated EDF without complaint when the record count is -1 and otherwise can fail deep
    inside with an index error; a record duration of 0 gives it an infinite sampling rate. Checking the
    header here turns all of these into a clear reason.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256:
            raise ReadError(path, f"truncated header: {len(head)} of 256 bytes")
        try:
            n_header = int(head[184:192].decode("ascii").strip())
            n_records = int(head[236:244].decode("ascii").strip())
            duration = float(head[244:252].decode("ascii").strip())
            n_signals = int(head[252:256].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise ReadError(path, "not an EDF/BDF file (header fields are not numbers)") from None
        if n_signals <= 0 or n_header != 256 * (n_signals + 1):
            raise ReadError(path, f"corrupt header: {n_signals} signals but header size {n_header} bytes")
        sig = f.read(256 * n_signals)
        if len(sig) < 256 * n_signals:
            raise ReadError(path, f"truncated header: {256 + len(sig)} of {n_header} bytes")
    labels = [sig[16 * i : 16 * (i + 1)].decode("latin-1").strip() for i in range(n_signals)]
    if all(label in ("EDF Annotations", "BDF Annotations") for label in labels):
        raise ReadError(path, "no signal channels (EDF+ annotations only; read them with mne.read_annotations)")
    if not math.isfinite(duration) or duration <= 0:
        raise ReadError(path, f"invalid sampling rate: data record duration {duration!r} s in header")
    off = n_signals * 216  # label 16 + transducer 80 + dim 8 + 4 x min/max 8 + prefilter 80
    try:
        spr = [int(sig[off + 8 * i : off + 8 * (i + 1)].decode("ascii").strip()) for i in range(n_signals)]
    except (UnicodeDecodeError, ValueError):
        raise ReadError(path, "corrupt header: samples-per-record fields are not integers") from None
    if any(s <= 0 for s in spr):
        raise ReadError(path, f"invalid sampling rate: a signal has {min(spr)} samples per record")
    _check_edf_ranges(path, sig, labels)
    top = max(spr) / duration
    if top > HEADER_MAX_SFREQ:
        raise ReadError(path, f"invalid sampling rate {top:g} Hz in header (record {duration:g} s, {max(spr)} samples)")
    record_bytes = sum(spr) * bytes_per_sample
    if n_records == -1:
        if (size - n_header) < record_bytes:
            raise ReadError(path, "no complete data record")
        return
    if n_records <= 0:
        raise ReadError(path, f"header declares {n_records} data records")
    expected = n_header + n_records * record_bytes
    if size < expected:
        got = (size - n_header) / record_bytes
        raise ReadError(
            path, f"truncated: header declares {n_records} data records ({expected} bytes), file has {size} bytes "
            f"({max(got, 0):.1f} records)"
        )


def _check_edf_ranges(path: Path, sig: bytes, labels: list[str]) -> None:
    """Physical and digital minimum/maximum of every signal: finite numbers, the physical ones within ±1e9.

    A zero range (minimum == maximum) is left to MNE and the flat-channel check: it is one dead channel, not
    a corrupt file.
    """
    n = len(labels)

    def field(offset: int, i: int) -> str:
        return sig[n * offset + 8 * i : n * offset + 8 * (i + 1)].decode("latin-1").strip()

    for i, label in enumerate(labels):
        if label in ("EDF Annotations", "BDF Annotations"):
            continue
        try:
            pmin, pmax = float(field(104, i)), float(field(112, i))
            dmin, dmax = float(field(120, i)), float(field(128, i))
        except ValueError:
            raise ReadError(path, f"corrupt header: signal {i} ({label!r}) physical/digital minimum or maximum "
                                  "is not a number") from None
        if not all(math.isfinite(v) and abs(v) <= MAX_PHYSICAL_RANGE for v in (pmin, pmax)):
            raise ReadError(path, f"corrupt header: signal {i} ({label!r}) physical minimum/maximum "
                                  f"{field(104, i)!r}/{field(112, i)!r} (expected finite values within "
                                  f"±{MAX_PHYSICAL_RANGE:g})")
        if not all(math.isfinite(v) for v in (dmin, dmax)):
            raise ReadError(path, f"corrupt header: signal {i} ({label!r}) digital minimum/maximum "
                                  f"{field(120, i)!r}/{field(128, i)!r} (expected integers)")


# MNE (1.13) scales only exactly-spelled "uV"/"µV"/"mV" units; DREAMS and other PSG exporters write "UV" or
# "MV", which MNE then treats as volts (a 20 µV signal read as 20 V). Undo that per channel.
_CASELESS_SCALE = {"uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "mv": 1e-3, "nv": 1e-9, "v": 1.0}


def fix_edf_units(raw: mne.io.BaseRaw) -> None:
    extras = getattr(raw, "_raw_extras", None)
    orig_units = getattr(raw, "_orig_units", None)
    if not extras or "units" not in extras[0]:
        return
    applied = np.asarray(extras[0]["units"], float)
    if applied.shape[0] != len(raw.ch_names):
        return
    header_units = _edf_units(Path(raw.filenames[0]))
    types = raw.get_channel_types()
    for i, name in enumerate(raw.ch_names):
        unit = header_units.get(name)
        if unit is None and orig_units:
            unit = orig_units.get(name)
        want = _CASELESS_SCALE.get((unit or "").strip().lower())
        if want is None or types[i] == "stim" or math.isclose(applied[i], want, rel_tol=1e-9):
            continue
        if raw.preload:
            raw._data[i] *= want / applied[i]
        else:  # left on disk (a long recording): MNE applies _cals as it reads each block
            raw._cals[i] *= want / applied[i]


def _edf_units(path: Path) -> dict[str, str]:
    """Physical dimension per channel label from an EDF/BDF header (labels as MNE names them)."""
    with open(path, "rb") as f:
        head = f.read(256)
        n = int(head[252:256].decode("ascii").strip())
        sig = f.read(256 * n)
    labels = [sig[16 * i : 16 * (i + 1)].decode("latin-1").strip() for i in range(n)]
    dims = [sig[n * 96 + 8 * i : n * 96 + 8 * (i + 1)].decode("latin-1").strip() for i in range(n)]
    return dict(zip(labels, dims))
