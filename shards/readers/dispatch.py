"""Read raw EEG recordings of any supported format into an :class:`mne.io.BaseRaw` (large ones left on disk).

Which formats exist, which file of a multi-file recording is its header and which optional package a format
needs is :mod:`shards.formats`' table; this module dispatches through it to MNE's ``mne.io.read_raw_*``
functions, to the text readers (one number per line, DREAMS ``excerptN.txt``, YASA snippets) and to
``pyxdf`` for XDF.
Every failure (missing, truncated or corrupt file, a symlink loop, a sidecar instead of a header, an unknown
format, a missing optional package, an invalid sampling rate or physical range) is raised as
:class:`ReadError` naming the file and the reason, so a shard build can record the skip and go on.

Where a recording has no electrode positions of its own, a montage file next to it (same name, or the folder's only
one: :func:`shards.formats.montage_file`) gives them, so that numbered channels can be placed by position.

Channel names are kept exactly as in the file; only the channel *types* are set from
:func:`shards.vocabulary.classify_channels` where the format does not say (EDF calls everything "eeg"),
so ``raw.pick("eeg")`` keeps the channels that map to the vocabulary. Canonical renaming is
:mod:`shards.preprocess`'s job.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mne

from shards import formats
from shards.formats import Format
from shards.readers.channels import apply_montage_file, set_types_from_vocabulary
from shards.readers.dreams import read_dreams_excerpt
from shards.readers.edf import check_edf_header, fix_edf_units
from shards.readers.errors import ReadError, check_header_sfreq, check_path
from shards.readers.text import read_text_signal
from shards.readers.vendor import fix_bci2000, read_neuroscan_cnt
from shards.readers.xdf import read_xdf
from shards.readers.yasa import SFREQ_IN_NAME, read_yasa_snippet

__all__ = ["read_raw", "SUPPORTED_EXTENSIONS", "PRELOAD_MAX_BYTES"]

SUPPORTED_EXTENSIONS = tuple(dict.fromkeys(e for f in formats.FORMATS if f.reader for e in f.extensions))


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


# Channels x samples x 8 bytes above which read_raw leaves a recording on disk (MNE reads it lazily) and the
# build and predict process it in blocks (shards.streaming): a 10-hour EDF would be 1.1 GB in float64.
PRELOAD_MAX_BYTES = 64 * 2**20


def read_raw(path: str | os.PathLike, *, sfreq: float | None = None, ch_name: str | None = None,
             preload: bool | None = None) -> mne.io.BaseRaw:
    """Read one recording with its original channel names and types set from the vocabulary.

    ``preload``: True reads the samples into memory, False leaves them on disk where the format allows it, None
    (default) preloads recordings up to :data:`PRELOAD_MAX_BYTES` in float64 and leaves larger ones on disk.
    Formats whose samples this module corrects in memory (BCI2000, Neuroscan CNT, eXimia) and text/XDF files
    are always preloaded.
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
        raw = read_xdf(path)
    else:
        if ext in (".edf", ".bdf"):
            check_edf_header(path, bytes_per_sample=3 if ext == ".bdf" else 2)
        raw = _read_mne(path, fmt, preload)
        if ext in (".edf", ".bdf"):
            fix_edf_units(raw)
        if fmt.reader == "read_raw_bci2k":
            fix_bci2000(raw, path)
        if fmt.scale != 1.0:
            raw.apply_function(lambda x: x * fmt.scale, picks="eeg", channel_wise=False)
    check_header_sfreq(path, raw.info["sfreq"])
    if raw.n_times == 0 or len(raw.ch_names) == 0:
        raise ReadError(path, "recording holds no samples")
    if fmt.reader != "text":  # text adapters hold one EEG channel and type it themselves
        apply_montage_file(raw, path)
        set_types_from_vocabulary(raw)
    return raw


def _read_mne(path: Path, fmt: Format, preload: bool | None) -> mne.io.BaseRaw:
    try:
        with warnings.catch_warnings():
            # MNE warns about things we handle ourselves (unit scaling, channel name deduplication,
            # highpass/lowpass header fields); the builder reports what matters.
            warnings.simplefilter("ignore")
            if fmt.reader == "read_raw_cnt":
                return read_neuroscan_cnt(path)
            in_memory = fmt.reader == "read_raw_bci2k" or fmt.scale != 1.0  # corrected in memory after reading
            raw = getattr(mne.io, fmt.reader)(path, preload=bool(preload) or in_memory, verbose="error", **fmt.kwargs)
            size = raw.n_times * len(raw.ch_names) * 8
            if not raw.preload and (preload or (preload is None and size <= PRELOAD_MAX_BYTES)):
                raw.load_data(verbose="error")
            return raw
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


def _read_text_any(path: Path, *, sfreq: float | None, ch_name: str | None) -> mne.io.BaseRaw:
    if sfreq is not None:
        return read_text_signal(path, sfreq, ch_name or "EEG")
    with open(path, "rb") as f:
        first = f.readline(200).strip()
    if first.startswith(b"[") and first.endswith(b"]"):
        return read_dreams_excerpt(path)
    if SFREQ_IN_NAME.search(path.stem):
        return read_yasa_snippet(path, ch_name or "EEG")
    raise ReadError(path, "sampling rate unknown for a headerless text file: pass sfreq=")
