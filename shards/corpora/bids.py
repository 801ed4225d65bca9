"""BIDS EEG datasets (OpenNeuro, NEMAR / HBN releases): subjects, sessions, tasks and runs from the layout.

Read with ``mne-bids`` (``pip install -e ".[bids]"``): every ``sub-*/[ses-*/]eeg/*_eeg.{edf,bdf,vhdr,set,fif}``
is one recording, read by ``mne_bids.read_raw_bids`` so that ``channels.tsv`` types, ``electrodes.tsv``
positions (used to place unnamed channels, :mod:`shards.positions`) and ``events.tsv`` come with the signal.

Labels: a recording is labelled when its ``events.tsv`` ``trial_type`` values name classes of one recipe
(:data:`TASK_LABELS`: motor imagery ``left_hand``/``right_fist``/..., sleep stages ``W``..``REM`` or
``Sleep stage 2``, ``seizure``/``background``, ``calm``/``stress``/...): the recording's task is that recipe's
task and each such event is a labelled span (an event without a duration lasts :data:`EVENT_S` of its task).
Other events are counted in the manifest's ``label_skips``; a recording whose events name no recipe class is
unlabeled (pretraining data). ``participants.tsv`` columns (age, sex, handedness, group, ...) go into every
sample's JSON as ``subject_info``.

Mains: each recording is notched at the ``PowerLineFrequency`` of its ``*_eeg.json`` (60 Hz in the Americas), the
build's ``notch`` only where the sidecar gives none; the manifest lists the frequency used per recording (``notch_hz``).
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path
from typing import Any

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found
from shards.preprocess import Segment
from shards.readers import ReadError, check_path

__all__ = ["Bids", "TASK_LABELS", "EVENT_S", "label_of", "task_of"]

EXTENSIONS = (".edf", ".bdf", ".vhdr", ".set", ".fif")
# Label names per recipe task, in label-id order (the names the finetune recipes resolve).
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "motor_imagery": ("rest", "left_fist", "right_fist", "both_fists", "both_feet", "left_hand", "right_hand",
                      "feet", "tongue"),
    "sleep": ("W", "N1", "N2", "N3", "REM"),
    "seizure": ("background", "seizure"),
    "emotion": ("calm", "stress", "negative", "neutral", "positive"),
}
# Spellings found in BIDS events.tsv files -> the recipe's name (keys normalised by _key).
_ALIASES = {
    "left": "left_hand", "right": "right_hand", "imagine_left_fist": "left_fist", "imagine_right_fist": "right_fist",
    "wake": "W", "sleep_stage_w": "W", "s0": "W", "sleep_stage_1": "N1", "sleep_stage_n1": "N1", "s1": "N1",
    "sleep_stage_2": "N2", "sleep_stage_n2": "N2", "s2": "N2", "sleep_stage_3": "N3", "sleep_stage_4": "N3",
    "sleep_stage_n3": "N3", "s3": "N3", "s4": "N3", "sleep_stage_r": "REM", "r": "REM", "rem": "REM",
    "ictal": "seizure", "sz": "seizure", "interictal": "background",
}
# Duration of an event given without one (BIDS allows 0 / n/a): a motor-imagery cue, a sleep epoch, ...
EVENT_S = {"motor_imagery": 4.0, "sleep": 30.0, "seizure": 1.0, "emotion": 60.0}
# A task is not recognised from these alone (rest is also what resting-state datasets mark).
_AMBIGUOUS = {"rest", "background", "calm", "neutral"}


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).strip().lower()).strip("_")


def label_of(task: str, description: str) -> str | None:
    """The recipe class ``description`` names within ``task``, or None."""
    key = _key(description)
    by_key = {_key(n): n for n in TASK_LABELS[task]}
    name = by_key.get(key) or _ALIASES.get(key)
    return name if name in TASK_LABELS[task] else None


def task_of(descriptions: list[str]) -> str | None:
    """The recipe task whose classes the events name most often (ignoring rest-like names alone), or None."""
    best, best_n = None, 0
    for task in TASK_LABELS:
        labels = [label_of(task, d) for d in descriptions]
        n = sum(label is not None for label in labels)
        if n > best_n and any(label is not None and label not in _AMBIGUOUS for label in labels):
            best, best_n = task, n
    return best


def _read_tsv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LabelError(path, f"unreadable TSV ({err})") from err


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def participants(root: Path) -> dict[str, dict[str, Any]]:
    """``participants.tsv``: ``sub-XX`` -> its other columns (numbers parsed; ``n/a`` left out); {} without the file.

    Read as BIDS defines the format, not as a spreadsheet's CSV: UTF-8 (a byte-order mark is dropped), LF or
    CRLF line ends, tab-separated, no quoting (a ``"`` is part of its value). A malformed table would silently
    give wrong or no ``subject_info`` (and mne-bids refuses to read every recording of the dataset), so it is a
    :class:`LabelError` naming the line: an empty file, no ``participant_id`` column, a row with another number
    of fields than the header, an empty or non-``sub-`` id, the same id twice.
    """
    path = root / "participants.tsv"
    if not path.is_file():
        return {}
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(path, f"unreadable participants table ({err}); BIDS TSV files are UTF-8") from err
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LabelError(path, "empty file; a BIDS participants table starts with a header line naming participant_id")
    header = [name.strip() for name in lines[0].split("\t")]
    if "participant_id" not in header:
        raise LabelError(path, f"line 1: the header {header} has no participant_id column (tab-separated, as BIDS "
                               "requires)")
    doubled = sorted({h for h in header if header.count(h) > 1})
    if doubled:
        raise LabelError(path, f"line 1: column(s) {doubled} appear twice in the header")
    out: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise LabelError(path, f"line {number}: {len(fields)} tab-separated field(s), the header has {len(header)} "
                                   f"({', '.join(header)})")
        row = dict(zip(header, (f.strip() for f in fields)))
        pid = row.pop("participant_id")
        if not re.fullmatch(r"sub-[A-Za-z0-9]+", pid):
            raise LabelError(path, f"line {number}: participant_id {pid!r} is not of the form sub-<label>")
        if pid in first_line:
            raise LabelError(path, f"line {number}: {pid} is listed again (first on line {first_line[pid]})")
        first_line[pid] = number
        out[pid] = {k: _value(v) for k, v in row.items() if k and v not in ("", "n/a")}
    return out


def _event_names(path: Path) -> list[str]:
    if not path.is_file():
        return []
    rows = _read_tsv(path)
    column = "trial_type" if rows and "trial_type" in rows[0] else "value"
    return [r.get(column) or "" for r in rows if (r.get(column) or "n/a") != "n/a"]


@register
class Bids(Adapter):
    name = "bids"
    task = None  # per recording, from its events
    label_names = ()
    task_label_names = TASK_LABELS
    # The notch of recordings whose *_eeg.json gives no PowerLineFrequency; the others are notched at theirs.
    mains_hz = 50.0
    # Motor-imagery cues are 4 s; longer labelled spans (sleep epochs) give several 4-s windows. Labelled
    # recordings keep every window (see base.py); for a pretraining-only build pass --max_abs_uv 500.
    preprocess_overrides = {"window_s": 4.0, "stride_s": 4.0, "max_abs_uv": None}

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        try:
            import mne_bids
        except ImportError:
            raise ValueError("the bids corpus needs the optional package 'mne-bids': pip install mne-bids") from None
        info = participants(root)
        recs = []
        for bp in mne_bids.find_matching_paths(root, suffixes="eeg", extensions=list(EXTENSIONS), datatypes="eeg"):
            path = Path(bp.fpath)
            events = bp.copy().update(suffix="events", extension=".tsv").fpath
            task = task_of(_event_names(Path(events)))
            subject = f"sub-{bp.subject}"
            recs.append(self.recording(
                root, path, path.name.rsplit(".", 1)[0], subject=subject,
                session=f"ses-{bp.session}" if bp.session else "", task=task, subject_info=info.get(subject),
                bids_task=bp.task or "", run=str(bp.run or ""), events=str(events),
            ))
        return require_found(recs, root, self.name, "sub-*/[ses-*/]eeg/*_eeg.{" + ",".join(e[1:] for e in EXTENSIONS) + "}")

    def load(self, rec: Recording) -> Loaded:
        import mne_bids

        check_path(rec.path)
        try:
            bp = mne_bids.get_bids_path_from_fname(rec.path)  # the link's name: an annex object's says nothing
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = mne_bids.read_raw_bids(bp, verbose="error")
                raw.load_data(verbose="error")
        except Exception as err:  # noqa: BLE001 - mne-bids raises many kinds on bad sidecars or signals
            msg = " ".join(str(err).split())[:300]
            raise ReadError(rec.path, f"cannot read BIDS recording ({type(err).__name__}: {msg})") from err
        line = raw.info.get("line_freq")  # mne-bids: PowerLineFrequency of the sidecar (None for "n/a")
        mains = float(line) if isinstance(line, (int, float)) and math.isfinite(line) and line > 0 else None
        if rec.task is None:
            return Loaded(raw, None, mains_hz=mains)
        segments, skipped = [], {}
        for ann in raw.annotations:
            desc = str(ann["description"])
            label = label_of(rec.task, desc)
            if label is None:
                skipped[f"event_{desc}"] = skipped.get(f"event_{desc}", 0) + 1
                continue
            duration = float(ann["duration"]) or EVENT_S[rec.task]
            names = TASK_LABELS[rec.task]
            # Onsets count from the measurement start when the annotations have an origin, from the first sample
            # otherwise; segments count from the first sample.
            start = float(ann["onset"]) - (raw.first_time if raw.annotations.orig_time is not None else 0.0)
            segments.append(Segment(start, duration, names.index(label), label))
        if not segments:
            raise LabelError(rec.extra["events"], f"no {rec.task} events left in the recording")
        return Loaded(raw, segments, skipped, mains_hz=mains)
