"""The one table of raw EEG file formats: extension -> reader, header file vs sidecars, optional package.

Every place that asks "is this file a recording, and how is it read?" asks this module:
:func:`shards.readers.read_raw` dispatches through :func:`detect`, and the ``recordings`` corpus adapter
lists a file only when :func:`detect` names a format for it. A multi-file recording is named by its header
file (BrainVision ``.vhdr``, EEGLAB ``.set``, Persyst ``.lay``, Curry ``.cdt`` / ``.dap``, Nihon Kohden
``.EEG``, the first file of a split FIF: :func:`first_split_part`); its other files are *sidecars* and never
count as recordings of their own. Extensions that two formats share, or that other software uses too, are told
apart by their first bytes (``.cnt``: Neuroscan vs ANT Neuro's RIFF; ``.eeg``: a Nihon Kohden header vs
BrainVision samples; ``.dat``: a BCI2000 header vs Curry / Persyst / BrainVision samples; ``.raw``: EGI's
simple binary version word).

The formats are those MNE (>= 1.13) reads with a ``mne.io.read_raw_*`` function and that hold EEG, plus our
own text adapters and XDF (via ``pyxdf``). A few clinical formats MNE cannot read (Natus/XLTEK ``.erd``,
NicoletOne ``.e``, Micromed ``.TRC``) are listed too, so that a build names them with the way out instead
of passing over them in silence.

Electrode-position files (:data:`MONTAGE_EXTENSIONS`, read by ``mne.channels.read_custom_montage``) are
sidecars of every format: :func:`montage_file` names the one that goes with a recording, and
:func:`shards.readers.read_raw` places the recording's channels with it when the recording itself has none.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Format", "FORMATS", "MONTAGE_EXTENSIONS", "detect", "extension", "first_split_part", "montage_file",
           "sidecar_of", "missing_package", "recording_extensions"]


def _head(path: Path, n: int = 32) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _is_riff(path: Path) -> bool:
    return _head(path, 4) in (b"RIFF", b"RF64")


def _is_neuroscan_cnt(path: Path) -> bool:
    return not _is_riff(path)


def _is_nihon(path: Path) -> bool:
    try:
        from mne.io.nihon.nihon import _valid_headers
    except ImportError:  # pragma: no cover - MNE moved its private list: fall back to the family prefixes
        return _head(path, 16)[:4] in (b"EEG-", b"QI-4", b"DAE-")
    return _head(path, 16).decode("latin-1") in _valid_headers


def _is_bci2000(path: Path) -> bool:
    return _head(path, 16).startswith((b"HeaderLen=", b"BCI2000V"))


def _is_egi_raw(path: Path) -> bool:
    """EGI simple binary: a big-endian int32 version 2-7 first (bits 1-2: int16/float32/float64, bit 0: segmented)."""
    head = _head(path, 4)
    return len(head) == 4 and int.from_bytes(head, "big") in range(2, 8)


_NEUROMAG_PART = re.compile(r"^(?P<base>.+)-(?P<n>\d+)(?P<ext>\.fif(?:\.gz)?)$", re.IGNORECASE)
_BIDS_PART = re.compile(r"_split-(?P<n>\d+)_", re.IGNORECASE)


def first_split_part(path: str | Path) -> Path | None:
    """The first file of the split FIF recording that ``path`` continues, else None.

    MNE splits a recording over 2 GB (or ``split_size``) into ``name.fif``, ``name-1.fif``, ``name-2.fif``... (BIDS:
    ``..._split-01_eeg.fif``, ``_split-02_``...) and reads every part through the first. A file is a continuation
    when the first part's name exists next to it and the file itself refers back to a previous part (FIF block
    FIFFB_REF, role "previous file"), so ``run.fif`` beside an unrelated ``run-1.fif`` stay two recordings.
    """
    path = Path(path)
    m = _NEUROMAG_PART.match(path.name)
    b = _BIDS_PART.search(path.name)
    if m and int(m["n"]) >= 1:
        first = path.with_name(m["base"] + m["ext"])
    elif b and int(b["n"]) >= 2:
        first = path.with_name(f"{path.name[:b.start()]}_split-{1:0{len(b['n'])}d}_{path.name[b.end():]}")
    else:
        return None
    return first if first.is_file() and _refers_back(path) else None


def _refers_back(path: Path) -> bool:
    """Whether the FIF file names a previous part of its recording (MNE writes this into every continuation)."""
    try:
        from mne._fiff.constants import FIFF
        from mne._fiff.open import fiff_open
        from mne._fiff.tag import read_tag
        from mne._fiff.tree import dir_tree_find
    except ImportError:  # pragma: no cover - MNE moved its private FIF reader: trust the file names
        return True
    try:
        fid, tree, _ = fiff_open(path, verbose="error")
        with fid:
            roles = [int(read_tag(fid, ent.pos).data[0]) for block in dir_tree_find(tree, FIFF.FIFFB_REF)
                     for ent in block["directory"] if ent.kind == FIFF.FIFF_REF_ROLE]
        return FIFF.FIFFV_ROLE_PREV_FILE in roles
    except Exception:  # noqa: BLE001 - not a readable FIF: not a continuation; reading it says what is wrong
        return False


@dataclass(frozen=True)
class Format:
    """One raw format.

    extensions: lower-case endings of the file (or folder) that names a recording; sidecars: endings of the
    companion files that belong to it; reader: ``mne.io`` function name, "text" / "xdf" for our own readers,
    None when nothing here reads it (``note`` says what to do); package: the optional pip package it needs;
    folder: the recording is a folder (EGI ``.mff``, MEF3 ``.mefd``); sniff: a test of the first bytes when
    another format shares the extension; kwargs: passed to the reader; discover: the ``recordings`` adapter
    lists it (text files need a rate and are read by the corpus adapters instead); scale: multiplies the
    reader's EEG values where its unit is off (see eXimia).
    """

    name: str
    extensions: tuple[str, ...]
    reader: str | None
    sidecars: tuple[str, ...] = ()
    package: str | None = None
    folder: bool = False
    sniff: Callable[[Path], bool] | None = None
    kwargs: Mapping[str, object] = field(default_factory=dict)
    discover: bool = True
    note: str = ""
    scale: float = 1.0


# Order matters only where an extension is shared: the first format whose sniff accepts the file wins.
FORMATS: tuple[Format, ...] = (
    Format("EDF/EDF+", (".edf",), "read_raw_edf"),
    Format("BDF/BDF+ (BioSemi)", (".bdf",), "read_raw_bdf"),
    Format("GDF", (".gdf",), "read_raw_gdf"),
    # Continuation parts of a split recording (name-1.fif, _split-02_) are sidecars of its first part.
    Format("FIF (MNE / Elekta)", (".fif", ".fif.gz"), "read_raw_fif", sniff=lambda p: first_split_part(p) is None),
    Format("EEGLAB", (".set",), "read_raw_eeglab", sidecars=(".fdt",)),
    Format("BrainVision", (".vhdr", ".ahdr"), "read_raw_brainvision", sidecars=(".vmrk", ".amrk", ".eeg", ".dat")),
    Format("Neuroscan CNT", (".cnt",), "read_raw_cnt", sniff=_is_neuroscan_cnt),
    Format("ANT Neuro CNT", (".cnt",), "read_raw_ant", package="antio", sniff=_is_riff),
    Format("Curry 8", (".cdt",), "read_raw_curry", sidecars=(".cdt.dpa", ".cdt.cef", ".cdt.ceo"),
           package="curryreader"),
    Format("Curry 7", (".dap",), "read_raw_curry", sidecars=(".dat", ".rs3", ".cef", ".ceo"), package="curryreader"),
    Format("Persyst", (".lay",), "read_raw_persyst", sidecars=(".dat",)),
    Format("Nihon Kohden", (".eeg",), "read_raw_nihon", sidecars=(".21e", ".pnt", ".log"), sniff=_is_nihon),
    Format("BCI2000", (".dat",), "read_raw_bci2k", sniff=_is_bci2000),
    Format("EGI simple binary", (".raw",), "read_raw_egi", sniff=_is_egi_raw),
    Format("EGI MFF", (".mff",), "read_raw_egi", package="mffpy", folder=True),
    # MNE 1.13 calibrates eXimia samples to 0.0763 per count but labels them volts: a 16-bit converter at that
    # step spans +-2.5, which is +-2.5 mV for an EEG amplifier (+-2.5 V would be 1000x any scalp signal).
    Format("eXimia", (".nxe",), "read_raw_eximia", scale=1e-6),
    Format("NeuroElectrics NEDF", (".nedf",), "read_raw_nedf", package="defusedxml"),
    Format("Nicolet (.data)", (".data",), "read_raw_nicolet", sidecars=(".head",), kwargs={"ch_type": "eeg"}),
    Format("Blackrock NSx", tuple(f".ns{i}" for i in range(1, 7)), "read_raw_nsx", sidecars=(".nev",)),
    Format("MEF3", (".mefd",), "read_raw_mef", package="pymef", folder=True),
    Format("XDF (Lab Streaming Layer)", (".xdf", ".xdfz"), "xdf", package="pyxdf"),
    Format("text, one sample per line (Bonn, DREAMS, YASA)", (".txt", ".asc"), "text", discover=False),
    Format("Natus / XLTEK", (".erd",), None, sidecars=(".etc", ".snc", ".stc", ".ent", ".epo", ".vtc", ".eeg"),
           note="MNE cannot read Natus/XLTEK .erd; export the study to EDF in NeuroWorks and shard the EDF"),
    Format("NicoletOne / Natus .e", (".e",), None,
           note="MNE cannot read NicoletOne .e files; export to EDF in NicVue/Natus or convert with FieldTrip"),
    Format("Micromed", (".trc",), None,
           note="MNE cannot read Micromed .TRC files; convert to EDF (e.g. with neo's MicromedIO or the vendor tool)"),
)

_MAX_DOTS = max(ext.count(".") for f in FORMATS for ext in f.extensions + f.sidecars)


def extension(path: str | Path) -> str:
    """The longest known ending of ``path``'s name, lower case (``.fif.gz``, ``.cdt.dpa``), else its suffix."""
    name = Path(path).name.lower()
    known = {e for f in FORMATS for e in f.extensions + f.sidecars}
    parts = name.split(".")
    for k in range(min(_MAX_DOTS, len(parts) - 1), 0, -1):
        ext = "." + ".".join(parts[-k:])
        if ext in known and len(name) > len(ext):
            return ext
    return Path(name).suffix


def detect(path: str | Path) -> Format | None:
    """The format whose header file (or folder) ``path`` is, or None (a sidecar or an unknown file)."""
    path = Path(path)
    ext = extension(path)
    for fmt in FORMATS:
        if ext in fmt.extensions and (fmt.sniff is None or fmt.sniff(path)):
            return fmt
    return None


def sidecar_of(path: str | Path) -> list[Format]:
    """Formats that ``path`` is a companion file of (by its ending), e.g. ``.vmrk`` -> [BrainVision]."""
    ext = extension(path)
    return [f for f in FORMATS if ext in f.sidecars]


def missing_package(fmt: Format) -> str | None:
    """The optional package ``fmt`` needs and that is not installed, else None."""
    if fmt.package and importlib.util.find_spec(fmt.package) is None:
        return fmt.package
    return None


def recording_extensions() -> tuple[str, ...]:
    """Every ending the ``recordings`` adapter looks for."""
    return tuple(dict.fromkeys(e for f in FORMATS if f.discover for e in f.extensions))


# Electrode-position files mne.channels.read_custom_montage reads (ASA .elc, BESA/EGI .sfp, BrainVision .bvef,
# EEGLAB .loc/.locs/.eloc, CSD toolbox .csd, BESA spherical .elp). Left out although MNE reads them, as endings
# other files share: .txt (our text signals), .csv/.tsv (participants, events, channels tables), .xyz.
MONTAGE_EXTENSIONS = (".elc", ".sfp", ".bvef", ".loc", ".locs", ".eloc", ".csd", ".elp")


def montage_file(path: str | Path) -> Path | None:
    """The electrode-position file that goes with the recording ``path``, or None.

    In the recording's folder: the montage file with the recording's name (``rec.edf`` -> ``rec.elc``; case
    ignored), else the folder's only montage file, unless its name is that of another recording there (one cap
    file for a folder of recordings is common; a file named for one recording is that recording's alone).
    ValueError naming the files when several carry the recording's name.
    """
    path = Path(path)
    stem = _stem(path)
    try:
        found = sorted(p for p in path.parent.iterdir()
                       if p.suffix.lower() in MONTAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
    except OSError:
        return None
    same = [p for p in found if p.stem.lower() == stem]
    if len(same) > 1:
        raise ValueError(f"several montage files carry the name of {path.name} ({', '.join(p.name for p in same)}): "
                         "keep one")
    if same or len(found) != 1:
        return same[0] if same else None
    only = found[0]
    named_for_another = any(p != path and _stem(p) == only.stem.lower() and detect(p) is not None
                            for p in path.parent.iterdir())
    return None if named_for_another else only


def _stem(path: Path) -> str:
    """The name without its format ending, lower case: ``Run 1.vhdr`` -> ``run 1``, ``a_raw.fif.gz`` -> ``a_raw``."""
    return path.name[: len(path.name) - len(extension(path))].lower()
