"""Read raw EEG recordings of any supported format into a preloaded :class:`mne.io.BaseRaw`.

Which formats exist, which file of a multi-file recording is its header and which optional package a format
needs is :mod:`shards.formats`' table; this module dispatches through it to MNE's ``mne.io.read_raw_*``
functions, to our text adapters (Bonn, DREAMS ``excerptN.txt``, YASA snippets) and to ``pyxdf`` for XDF.
Every failure (missing, truncated or corrupt file, a symlink loop, a sidecar instead of a header, an unknown
format, a missing optional package, an invalid sampling rate or physical range) is raised as
:class:`ReadError` naming the file and the reason, so a shard build can record the skip and go on.

Where a recording has no electrode positions of its own, a montage file next to it (same name, or the folder's only
one: :func:`shards.formats.montage_file`) gives them, so that numbered channels can be placed by position.

Channel names are kept exactly as in the file; only the channel *types* are set from
:func:`shards.vocabulary.classify_channels` where the format does not say (EDF calls everything "eeg"),
so ``raw.pick("eeg")`` keeps the channels that map to the vocabulary. Canonical renaming is
:mod:`shards.preprocess`'s job.

Length (over 450 lines): the one place where every format's quirks meet ReadError: header checks (EDF/BDF),
unit and width corrections of MNE readers (EDF units, Neuroscan CNT, BCI2000, eXimia), montage files, XDF and
the text adapters. Each block is short and self-contained; splitting them would spread one contract over several
modules.
"""

from __future__ import annotations

import errno
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

import mne
import numpy as np

from shards import formats
from shards.formats import Format
from shards.positions import recorded_positions
from shards.vocabulary import classify_channels

__all__ = [
    "ReadError",
    "check_path",
    "read_raw",
    "read_text_signal",
    "read_dreams_excerpt",
    "read_yasa_snippet",
    "SUPPORTED_EXTENSIONS",
    "BONN_SFREQ",
    "DREAMS_EXCERPT_S",
]

# Sampling rates a header may state without being corrupt (a hypnogram channel at 1/30 Hz lives next to EEG in
# one EDF, but MNE reports the file at its highest rate). Deliberately looser than shards.sample.MIN_SFREQ (25 Hz,
# the lowest rate a build keeps): reading answers "is this header intact?", so a valid 10-Hz file still reads, and
# the build and finetune.predict then refuse it with the sample contract's rule and message (check_sfreq).
HEADER_MIN_SFREQ = 1.0
HEADER_MAX_SFREQ = 100_000.0

BONN_SFREQ = 173.61  # Andrzejak et al. 2001: 4097 samples in 23.6 s
DREAMS_EXCERPT_S = 1800.0  # every DREAMS spindle excerpt is 30 min

SUPPORTED_EXTENSIONS = tuple(dict.fromkeys(e for f in formats.FORMATS if f.reader for e in f.extensions))

# An EDF/BDF physical minimum/maximum beyond this (in any unit: V, mV, µV, nV) is header corruption: MNE
# would turn it into an infinite gain and a recording of NaN/overflow with zero usable windows.
MAX_PHYSICAL_RANGE = 1e9

# MNE channel type for each non-EEG family reported by shards.vocabulary.
_FAMILY_TYPE = {
    "EOG": "eog",
    "EMG": "emg",
    "ECG": "ecg",
    "respiration": "resp",
    "trigger/marker": "stim",
}
# Types a file may state that we never override: they come from a format that knows (FIF, BrainVision).
_KEEP_TYPES = {"eog", "emg", "ecg", "resp", "stim", "bio", "syst", "chpi", "exci", "ias", "gsr", "temperature"}


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


def _format(path: Path) -> Format:
    """The table entry for ``path``, or a ReadError saying why there is none or why it cannot be read here."""
    fmt = formats.detect(path)
    if fmt is None:
        ext = formats.extension(path)
        owners = formats.sidecar_of(path)
        first = formats.first_split_part(path) if ext in (".fif", ".fif.gz") else None
        if first is not None:
            raise ReadError(path, f"a continuation part of the split FIF recording {first.name}: read that file "
                                  "(MNE reads every part through the first)")
        if ext in formats.MONTAGE_EXTENSIONS:
            raise ReadError(path, f"an electrode-position (montage) file ({ext}), not a recording: read_raw applies it "
                                  "to the recording of the same name in its folder (or to all, if it is the only one)")
        if owners:
            headers = ", ".join(f"{o.name} {'/'.join(o.extensions)}" for o in owners)
            raise ReadError(path, f"a sidecar file ({ext}), not a recording: read its header file ({headers})")
        raise ReadError(path, f"unknown format {ext or '(no extension)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    if fmt.folder and not path.is_dir():
        raise ReadError(path, f"{fmt.name} recordings are folders, this is a file")
    if not fmt.folder and not path.is_file():
        raise ReadError(path, "not a regular file")
    if fmt.reader is None:
        raise ReadError(path, fmt.note)
    package = formats.missing_package(fmt)
    if package is not None:
        raise ReadError(path, f"{fmt.name} files need the optional package {package!r}: pip install {package}")
    return fmt


def read_raw(path: str | os.PathLike, *, sfreq: float | None = None, ch_name: str | None = None) -> mne.io.BaseRaw:
    """Read one recording, preloaded, with its original channel names and types set from the vocabulary.

    ``path`` is the recording's header file (or folder), see :data:`shards.formats.FORMATS`.
    ``sfreq``/``ch_name`` are only used for headerless text files (``.txt``/``.asc``): DREAMS excerpts and
    YASA snippets carry their rate, other text needs ``sfreq``. Raises :class:`ReadError` for a missing,
    truncated or corrupt file, a sidecar, an unknown extension, a missing optional package or an invalid
    sampling rate.
    """
    path = Path(path)
    check_path(path)
    fmt = _format(path)
    if not fmt.folder and path.stat().st_size == 0:
        raise ReadError(path, "file is empty")
    ext = formats.extension(path)
    if fmt.reader == "text":
        raw = _read_text_any(path, sfreq=sfreq, ch_name=ch_name)
    elif fmt.reader == "xdf":
        raw = _read_xdf(path)
    else:
        if ext in (".edf", ".bdf"):
            _check_edf_header(path, bytes_per_sample=3 if ext == ".bdf" else 2)
        raw = _read_mne(path, fmt)
        if ext in (".edf", ".bdf"):
            _fix_edf_units(raw)
        if fmt.reader == "read_raw_bci2k":
            _fix_bci2000(raw, path)
        if fmt.scale != 1.0:
            raw.apply_function(lambda x: x * fmt.scale, picks="eeg", channel_wise=False)
    _check_sfreq(path, raw.info["sfreq"])
    if raw.n_times == 0 or len(raw.ch_names) == 0:
        raise ReadError(path, "recording holds no samples")
    if fmt.reader != "text":  # text adapters hold one EEG channel and type it themselves
        _apply_montage_file(raw, path)
        _set_types_from_vocabulary(raw)
    return raw


def _apply_montage_file(raw: mne.io.BaseRaw, path: Path) -> None:
    """Electrode positions from the montage file next to the recording (:func:`shards.formats.montage_file`),
    where the recording has channels the vocabulary cannot name and no positions of its own, so that those are
    placed by position (``17`` at FC3).

    Channels match montage labels by name, case ignored; the others keep no position. The file's own positions
    always win, and a recording whose channels all have known names never looks. An unreadable montage file is a
    ReadError naming it: the recording would otherwise lose channels without a word.
    """
    unnamed = any(canonical is None and reason.startswith("unknown name")
                  for canonical, reason in classify_channels(raw.ch_names))
    if not unnamed or recorded_positions(raw.info):
        return
    try:
        found = formats.montage_file(path)
    except ValueError as err:
        raise ReadError(path, str(err)) from None
    if found is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no fiducials: MNE assumes the head frame, as we do
            montage = _read_montage(found)
            labels = {name.lower() for name in montage.ch_names}
            # MNE gives positions to EEG-typed channels only; a unit-less BrainVision channel is "misc" until then.
            misc = {n: "eeg" for n, t in zip(raw.ch_names, raw.get_channel_types()) if t == "misc" and n.lower() in labels}
            if misc:
                raw.set_channel_types(misc, on_unit_change="ignore", verbose="error")
            try:
                raw.set_montage(montage, match_case=False, on_missing="ignore", verbose="error")
            except ValueError:  # names equal but for case within the recording or the file: match exactly
                raw.set_montage(montage, on_missing="ignore", verbose="error")
    except Exception as err:  # noqa: BLE001 - MNE's montage readers raise many kinds on a bad file
        msg = " ".join(str(err).split())[:200]
        raise ReadError(found, f"montage file of {path.name} is unreadable ({type(err).__name__}: {msg})") from err


def _read_montage(path: Path) -> mne.channels.DigMontage:
    """``mne.channels.read_custom_montage``, which knows lower-case endings only (``CAP.ELC`` read via a link)."""
    if path.suffix == path.suffix.lower():
        return mne.channels.read_custom_montage(path)
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / ("montage" + path.suffix.lower())
        link.symlink_to(path.absolute())
        return mne.channels.read_custom_montage(link)


def _read_mne(path: Path, fmt: Format) -> mne.io.BaseRaw:
    try:
        with warnings.catch_warnings():
            # MNE warns about things we handle ourselves (unit scaling, channel name deduplication,
            # highpass/lowpass header fields); the builder reports what matters.
            warnings.simplefilter("ignore")
            if fmt.reader == "read_raw_cnt":
                return _read_neuroscan_cnt(path)
            return getattr(mne.io, fmt.reader)(path, preload=True, verbose="error", **fmt.kwargs)
    except ReadError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # MNE raises ValueError, RuntimeError, OSError, struct/index errors on bad files
        msg = " ".join(str(err).split())
        if "picks" in msg and "no channels" in msg:
            reason = "no signal channels (annotations only?)"
        else:
            reason = f"cannot read {fmt.name} file ({type(err).__name__}: {msg[:300] or 'no message'})"
        raise ReadError(path, reason) from err


def _bci2000_list(params: dict[str, list[str]], name: str, n: int) -> list[str] | None:
    """A BCI2000 list parameter (``... ChannelNames= 3 Fp1 Cz O2 // comment``) as its ``n`` values."""
    values = params.get(name)
    if not values or not values[0].isdigit() or int(values[0]) != n or len(values) < n + 1:
        return None
    return values[1 : n + 1]


def _fix_bci2000(raw: mne.io.BaseRaw, path: Path) -> None:
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


def _read_neuroscan_cnt(path: Path) -> mne.io.BaseRaw:
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


def _read_xdf(path: Path) -> mne.io.BaseRaw:
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


def _check_sfreq(path: Path, sfreq: float) -> None:
    if not (isinstance(sfreq, (int, float)) and math.isfinite(sfreq) and HEADER_MIN_SFREQ <= sfreq <= HEADER_MAX_SFREQ):
        expected = f"{HEADER_MIN_SFREQ:g}..{HEADER_MAX_SFREQ:g} Hz"
        raise ReadError(path, f"invalid sampling rate {sfreq!r} Hz in header (expected {expected})")


def _check_edf_header(path: Path, bytes_per_sample: int) -> None:
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


def _fix_edf_units(raw: mne.io.BaseRaw) -> None:
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
        raw._data[i] *= want / applied[i]


def _edf_units(path: Path) -> dict[str, str]:
    """Physical dimension per channel label from an EDF/BDF header (labels as MNE names them)."""
    with open(path, "rb") as f:
        head = f.read(256)
        n = int(head[252:256].decode("ascii").strip())
        sig = f.read(256 * n)
    labels = [sig[16 * i : 16 * (i + 1)].decode("latin-1").strip() for i in range(n)]
    dims = [sig[n * 96 + 8 * i : n * 96 + 8 * (i + 1)].decode("latin-1").strip() for i in range(n)]
    return dict(zip(labels, dims))


def _set_types_from_vocabulary(raw: mne.io.BaseRaw) -> None:
    """Give non-EEG and unknown channels a non-"eeg" type so ``raw.pick("eeg")`` is meaningful."""
    types = raw.get_channel_types()
    mapping = {}
    for name, ch_type, (canonical, reason) in zip(raw.ch_names, types, classify_channels(raw.ch_names)):
        if ch_type in _KEEP_TYPES:
            continue
        if canonical is not None:
            if ch_type == "misc":  # e.g. BrainVision channels without a unit: the name says EEG
                mapping[name] = "eeg"
            continue
        if reason.startswith("non-eeg: "):
            new = _FAMILY_TYPE.get(reason.removeprefix("non-eeg: "), "misc")
        else:
            new = "misc"
        if new != ch_type:
            mapping[name] = new
    if mapping:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw.set_channel_types(mapping, on_unit_change="ignore", verbose="error")


# ------------------------------------------------------------------------------------------- text formats


def _parse_numbers(path: Path, text: str, skip_lines: int = 0) -> np.ndarray:
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


def _read_text(path: Path) -> str:
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
    values = _parse_numbers(path, _read_text(path), skip_lines=skip_lines)
    info = mne.create_info([ch_name], sfreq, ch_types="eeg")
    return mne.io.RawArray((values * unit_scale)[np.newaxis, :], info, verbose="error")


def read_dreams_excerpt(path: str | os.PathLike) -> mne.io.RawArray:
    """DREAMS spindles ``excerptN.txt``: ``[C3-A1]`` header line, then one µV sample per line, 30 min.

    The sampling rate is (samples / 1800 s), rounded to a whole Hz: the files are 100, 200 or 50 Hz, and
    excerpt 6 holds 140 extra samples (200.08 Hz by division) that are a surplus tail, not a different rate.
    """
    path = Path(path)
    if not path.is_file():
        raise ReadError(path, "file not found")
    text = _read_text(path)
    first = text.split("\n", 1)[0].strip()
    match = re.fullmatch(r"\[(.+)\]", first)
    if match is None:
        raise ReadError(path, f"not a DREAMS excerpt: first line {first[:40]!r} is not a [channel] name")
    values = _parse_numbers(path, text, skip_lines=1)
    sfreq = float(round(values.size / DREAMS_EXCERPT_S))
    if sfreq < HEADER_MIN_SFREQ or abs(values.size / DREAMS_EXCERPT_S - sfreq) > 0.01 * sfreq:
        raise ReadError(path, f"{values.size} samples do not make a 1800-s excerpt at a whole-Hz rate")
    info = mne.create_info([match.group(1).strip()], sfreq, ch_types="eeg")
    return mne.io.RawArray((values * 1e-6)[np.newaxis, :], info, verbose="error")


_SFREQ_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)\s*hz", re.IGNORECASE)


def read_yasa_snippet(path: str | os.PathLike, ch_name: str = "EEG") -> mne.io.RawArray:
    """YASA's text snippets (``yasa_N2_spindles_15sec_200Hz.txt``): µV per line, rate in the file name."""
    path = Path(path)
    match = _SFREQ_IN_NAME.search(path.stem)
    if match is None:
        raise ReadError(path, "sampling rate unknown: no '<rate>Hz' in the file name")
    return read_text_signal(path, float(match.group(1)), ch_name)


def _read_text_any(path: Path, *, sfreq: float | None, ch_name: str | None) -> mne.io.BaseRaw:
    if sfreq is not None:
        return read_text_signal(path, sfreq, ch_name or "EEG")
    with open(path, "rb") as f:
        first = f.readline(200).strip()
    if first.startswith(b"[") and first.endswith(b"]"):
        return read_dreams_excerpt(path)
    if _SFREQ_IN_NAME.search(path.stem):
        return read_yasa_snippet(path, ch_name or "EEG")
    raise ReadError(path, "sampling rate unknown for a headerless text file: pass sfreq=")
