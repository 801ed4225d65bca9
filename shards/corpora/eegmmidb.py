"""PhysioNet EEG Motor Movement/Imagery Database (Schalk et al. 2004), 109 subjects x 14 runs.

Layout: ``SNNN/SNNNRkk.edf`` (EDF+, 64 channels, 160 Hz) with annotations T0 (rest), T1, T2 (~4.1 s
each). What T1/T2 mean depends on the run: runs 3,7,11 real and 4,8,12 imagined left/right fist;
runs 5,9,13 real and 6,10,14 imagined both fists/feet; runs 1,2 are eyes-open/closed baselines,
listed unlabeled (they are resting EEG, useful for pretraining, but no T0/T1/T2 trial structure).
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found
from shards.readers import read_raw

_NAME = re.compile(r"^S(\d{3})R(\d{2})\.edf$", re.IGNORECASE)
LEFT_RIGHT = {3, 4, 7, 8, 11, 12}
FISTS_FEET = {5, 6, 9, 10, 13, 14}
IMAGINED = {4, 6, 8, 10, 12, 14}
BASELINE = {1, 2}
EVENT_S = 4.1  # nominal trial length (the EDF+ annotations say 4.1-4.2 s)


def run_task(run: int) -> str | None:
    if run in BASELINE:
        return None
    return "motor_imagery" if run in IMAGINED else "motor_execution"


def event_labels(run: int) -> dict[str, str]:
    """Annotation description -> label name for one run."""
    if run in LEFT_RIGHT:
        return {"T0": "rest", "T1": "left_fist", "T2": "right_fist"}
    if run in FISTS_FEET:
        return {"T0": "rest", "T1": "both_fists", "T2": "both_feet"}
    raise ValueError(f"run {run} has no T1/T2 events")


@register
class EEGMMIDB(Adapter):
    name = "eegmmidb"
    task = "motor_imagery"
    label_names = ("rest", "left_fist", "right_fist", "both_fists", "both_feet")
    mains_hz = 60.0  # recorded in the USA (Wadsworth Center, BCI2000)
    preprocess_overrides = {"window_s": 4.0, "stride_s": 4.0, "max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path in sorted(root.rglob("*")):
            m = _NAME.match(path.name)
            if not m or not path.is_file():
                continue
            subject, run = f"S{m.group(1)}", int(m.group(2))
            if not 1 <= run <= 14:
                continue
            recs.append(
                self.recording(root, path, f"{subject}R{run:02d}", subject=subject, session=f"R{run:02d}", task=run_task(run), run=str(run))
            )
        return require_found(recs, root, self.name, "SNNN/SNNNRkk.edf")

    def load(self, rec: Recording) -> Loaded:
        raw = read_raw(rec.path)
        # PhysioNet pads names to 4 characters with dots ("Fc5.", "Cz.."), as MNE's eegbci.standardize knows.
        raw.rename_channels({c: c.rstrip(".") for c in raw.ch_names if c.endswith(".") and c.rstrip(".")})
        run = int(rec.extra["run"])
        if run in BASELINE:
            return Loaded(raw, None)
        names = event_labels(run)
        segs, skipped = [], {}
        for ann in raw.annotations:
            desc = str(ann["description"]).strip()
            label = names.get(desc)
            if label is None:
                skipped[f"annotation_{desc}"] = skipped.get(f"annotation_{desc}", 0) + 1
                continue
            segs.append(self.segment(ann["onset"], ann["duration"] or EVENT_S, label))
        if not segs:
            raise LabelError(rec.path, "no T0/T1/T2 annotations in this task run")
        segs.sort(key=lambda s: s.onset_s)
        return Loaded(raw, segs, skipped)
