"""PhysioNet "EEG During Mental Arithmetic Tasks" (EEGMAT 1.0.0; Zyma et al., Data 4(1):14, 2019).

Layout: ``SubjectNN_1.edf`` (resting EEG before the task, ~3 min) and ``SubjectNN_2.edf`` (serial
subtraction, 60 s) for NN = 00..35, plus ``subject-info.csv``. 19 EEG channels of the 10-20 system
against linked ears, 500 Hz, artifact-cleaned by the authors. The file suffix is the label: ``rest`` /
``arithmetic`` (the task condition, kept under its own names; see the emotion recipe's ``workload``
label space for why it is not folded into calm/stress).

Two channels are not scalp EEG and are left out on purpose, each with its reason in the manifest:
- ``EEG A2-A1``: one ear reference against the other (a reference derivation). The vocabulary's rule
  "X-A1 is electrode X" would otherwise file it as A2; :func:`shards.vocabulary.classify_channel` reports
  ``reference derivation: A2-A1``.
- ``ECG ECG``: the electrocardiogram (``non-eeg: ECG``).

``subject-info.csv`` (age, gender, recording year, number of subtractions in the 4 minutes, count quality
1 = good / 0 = bad) goes into every sample's JSON as ``subject_info``; a folder without the file builds
without it. The published foundation-model protocol (CBraMod, REVE, NeurIPT) cuts 5-s windows at 200 Hz,
sorts the files and takes subjects 00-27 / 28-31 / 32-35 as train / validation / test: the window is the
default here and :func:`finetune.splits.published_split` reproduces the split.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found
from shards.readers import read_raw

CONDITIONS = {"1": "rest", "2": "arithmetic"}
SUBJECT_INFO = "subject-info.csv"
_NAME = re.compile(r"^Subject(\d{2})_([12])\.edf$", re.IGNORECASE)
# csv column -> (sample JSON key, type)
_COLUMNS: dict[str, tuple[str, type]] = {
    "Age": ("age", int),
    "Gender": ("gender", str),
    "Recording year": ("recording_year", int),
    "Number of subtractions": ("number_of_subtractions", float),
    "Count quality": ("count_quality", int),
}


def read_subject_info(path: Path) -> dict[str, dict[str, Any]]:
    """``SubjectNN`` -> ``{age, gender, recording_year, number_of_subtractions, count_quality}``.

    Raises:
        LabelError: naming the file (and line) when a column is missing or a value does not parse.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("Subject", *_COLUMNS) if c not in header]
        if missing:
            raise LabelError(path, f"missing column(s) {missing}; found {header}")
        out: dict[str, dict[str, Any]] = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            info = {}
            for column, (key, kind) in _COLUMNS.items():
                try:
                    info[key] = kind(row[column])
                except ValueError:
                    raise LabelError(path, f"line {line}: {column} = {row[column]!r} is not {kind.__name__}") from None
            out[row["Subject"]] = info
    return out


@register
class EEGMAT(Adapter):
    name = "eegmat"
    task = "emotion"  # the emotion recipe's family (mental stress / workload); label space "workload"
    label_names = ("rest", "arithmetic")
    mains_hz = 50.0  # recorded in Kyiv
    # The published protocol: 5-s windows at 200 Hz (the default rate), consecutive; labelled benchmark,
    # so no amplitude bound (see base.py).
    preprocess_overrides = {"window_s": 5.0, "stride_s": 5.0, "max_abs_uv": None}

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        table = root / SUBJECT_INFO
        info = read_subject_info(table) if table.is_file() else {}
        recs = []
        for path in sorted(root.iterdir()):
            m = _NAME.match(path.name)
            if not m or not path.is_file():
                continue
            subject = f"Subject{m.group(1)}"
            recs.append(self.recording(root, path, f"{subject}_{m.group(2)}", subject=subject, session=m.group(2),
                                       subject_info=info.get(subject), condition=CONDITIONS[m.group(2)]))
        return require_found(recs, root, self.name, "SubjectNN_{1,2}.edf")

    def load(self, rec: Recording) -> Loaded:
        raw = read_raw(rec.path)
        return Loaded(raw, self.whole(raw, rec.extra["condition"]))
