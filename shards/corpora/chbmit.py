"""CHB-MIT Scalp EEG Database (Shoeb 2009; PhysioNet): pediatric long-term EEG with seizure onsets.

Layout: ``chbNN/chbNN_MM.edf`` (256 Hz, bipolar double-banana channels like "FP1-F7") plus one
``chbNN/chbNN-summary.txt`` per patient listing, per file, ``File Name:``, ``Number of Seizures in
File:`` and ``Seizure Start Time: X seconds`` / ``Seizure End Time:`` (``Seizure 1 Start Time:`` in
later patients). chb21 is the same patient as chb01 recorded 1.5 years later, so its subject is
"chb01": a subject-wise split must not put them on both sides. Seizure spans are label "seizure", the rest of each file "background".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import mne

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found, sidecar
from shards.readers import read_raw

SAME_PATIENT = {"chb21": "chb01"}  # per the CHB-MIT release notes
_EDF = re.compile(r"^(chb\d+[a-z]?)_\w+\.edf$", re.IGNORECASE)
_FILE = re.compile(r"^File Name:\s*(\S+)\s*$", re.IGNORECASE)
_COUNT = re.compile(r"^Number of Seizures in File:\s*(\S+)\s*$", re.IGNORECASE)
_TIME = re.compile(r"^Seizure(?:\s+\d+)?\s+(Start|End)\s+Time:\s*(\S+)\s*(?:seconds?|secs?|s)?\s*$", re.IGNORECASE)


@dataclass
class FileEntry:
    declared: int | None = None
    seizures: list[tuple[float, float]] = field(default_factory=list)
    line: int = 0


def read_summary(path: Path) -> dict[str, FileEntry]:
    """File name -> seizure spans (start_s, end_s) from a ``chbNN-summary.txt``; LabelError on malformed lines."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as err:
        raise LabelError(path, f"cannot read summary: {err}") from err
    entries: dict[str, FileEntry] = {}
    current: tuple[str, FileEntry] | None = None
    pending_start: float | None = None

    def close(at: int) -> None:
        if current is None:
            return
        name, entry = current
        if pending_start is not None:
            raise LabelError(path, f"line {at}: seizure starting at {pending_start} s in {name} has no end time")
        if entry.declared is not None and entry.declared != len(entry.seizures):
            raise LabelError(
                path, f"line {entry.line}: {name} declares {entry.declared} seizures but lists {len(entry.seizures)}"
            )

    for i, raw_line in enumerate(lines, start=1):
        line = raw_line.strip()
        if m := _FILE.match(line):
            close(i)
            current = (m.group(1), FileEntry(line=i))
            pending_start = None
            entries[m.group(1)] = current[1]
        elif m := _COUNT.match(line):
            if current is None:
                raise LabelError(path, f"line {i}: seizure count before any 'File Name:'")
            try:
                current[1].declared = int(m.group(1))
            except ValueError:
                raise LabelError(path, f"line {i}: seizure count {m.group(1)!r} is not an integer") from None
        elif m := _TIME.match(line):
            if current is None:
                raise LabelError(path, f"line {i}: seizure time before any 'File Name:'")
            try:
                t = float(m.group(2))
            except ValueError:
                raise LabelError(path, f"line {i}: seizure time {m.group(2)!r} is not a number of seconds") from None
            if m.group(1).lower() == "start":
                if pending_start is not None:
                    raise LabelError(path, f"line {i}: new seizure start before the end of the one at {pending_start} s")
                pending_start = t
            else:
                if pending_start is None:
                    raise LabelError(path, f"line {i}: seizure end time without a start time")
                if t <= pending_start:
                    raise LabelError(path, f"line {i}: seizure ends at {t} s, not after its start {pending_start} s")
                current[1].seizures.append((pending_start, t))
                pending_start = None
        elif line.lower().startswith("seizure") and "time" in line.lower():
            raise LabelError(path, f"line {i}: cannot parse seizure time line {line!r}")
    close(len(lines))
    return entries


def merge_duplicate_channels(raw: mne.io.BaseRaw) -> None:
    """Drop CHB-MIT's repeated derivations and dummy channels, in place.

    Some files list "T8-P8" twice; MNE renames the copies "T8-P8-0", "T8-P8-1". Both carry the same
    signal, so the first is kept under the real name and the rest dropped. Placeholder channels
    named "-" (MNE: "--0", "--1", ...) and "." hold no EEG.
    """
    groups: dict[str, list[str]] = {}
    for ch in raw.ch_names:
        m = re.fullmatch(r"(.*)-(\d+)", ch)
        groups.setdefault(m.group(1) if m else ch, []).append(ch)
    drop, rename = [], {}
    for base, chans in groups.items():
        if base.strip("-. ") == "":
            drop += chans
        elif len(chans) > 1 and base not in raw.ch_names:  # MNE's "-0", "-1" copies of one name
            rename[chans[0]] = base
            drop += chans[1:]
    if drop:
        raw.drop_channels(drop)
    if rename:
        raw.rename_channels(rename)


@register
class CHBMIT(Adapter):
    name = "chbmit"
    task = "seizure"
    label_names = ("background", "seizure")
    mains_hz = 60.0  # Boston Children's Hospital
    preprocess_overrides = {"window_s": 4.0, "stride_s": 4.0, "max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path in sorted(root.rglob("*")):
            m = _EDF.match(path.name)
            if not m or not path.is_file():
                continue
            patient = m.group(1).lower()
            summary = path.with_name(f"{patient}-summary.txt")
            if not summary.is_file():  # chb17 is split into chb17a/b/c files sharing chb17-summary.txt
                summary = path.with_name(f"{re.sub(r'[a-z]$', '', patient)}-summary.txt")
            subject = SAME_PATIENT.get(re.sub(r"[a-z]$", "", patient), re.sub(r"[a-z]$", "", patient))
            recs.append(self.recording(root, path, path.stem, subject=subject, session=path.stem, summary=str(summary), sfreq="256"))
        return require_found(recs, root, self.name, "chbNN/chbNN_MM.edf")

    def load(self, rec: Recording) -> Loaded:
        summary = sidecar(rec, "summary", "summary file")
        entries = read_summary(summary)
        entry = entries.get(rec.path.name)
        if entry is None:
            raise LabelError(summary, f"no 'File Name: {rec.path.name}' entry")
        raw = read_raw(rec.path)
        merge_duplicate_channels(raw)
        total = raw.n_times / raw.info["sfreq"]
        segs, t = [], 0.0
        for start, end in sorted(entry.seizures):
            if end > total + 1.0:
                raise LabelError(summary, f"line {entry.line}: seizure {start}-{end} s ends after {rec.path.name} ({total:.1f} s)")
            end = min(end, total)
            if start > t:
                segs.append(self.segment(t, start - t, "background"))
            segs.append(self.segment(start, end - start, "seizure"))
            t = max(t, end)
        if total > t:
            segs.append(self.segment(t, total - t, "background"))
        return Loaded(raw, segs)
