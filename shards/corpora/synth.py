"""The simulated corpus written by :func:`shards.synth.simulate` (the suite's embedded default).

Layout: ``sub-XX_task-TASK.edf`` (EDF+), one recording per subject and task; the labels are the EDF+
annotations (``W``/``N1``/... for sleep, ``left_hand``/``right_hand``, ``background``/``seizure``,
``calm``/``stress``). Unlike the real corpora it mixes four tasks, so the task comes from the file name
and label ids index :data:`shards.synth.LABEL_NAMES` ``[task]``.
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found
from shards.preprocess import Segment
from shards.readers import read_raw
from shards.synth import LABEL_NAMES, MAINS_HZ, TASKS

_NAME = re.compile(r"^sub-(\d+)_task-([a-z_]+)\.edf$")


@register
class Synth(Adapter):
    name = "synth"
    task = None  # per recording
    label_names = ()  # per task: shards.synth.LABEL_NAMES
    task_label_names = LABEL_NAMES
    mains_hz = MAINS_HZ
    # 4-s windows: motor-imagery cues last 4 s and every labelled block is a multiple of 4 s from 0 s.
    preprocess_overrides = {"window_s": 4.0, "stride_s": 4.0}

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path in sorted(root.glob("*.edf")):
            m = _NAME.match(path.name)
            if not m or m.group(2) not in TASKS:
                continue
            subject = f"sub-{int(m.group(1)):02d}"
            recs.append(self.recording(root, path, path.stem, subject=subject, session=m.group(2), task=m.group(2)))
        return require_found(recs, root, self.name, "sub-XX_task-TASK.edf")

    def load(self, rec: Recording) -> Loaded:
        raw = read_raw(rec.path)
        names = LABEL_NAMES[rec.task]
        segments = []
        for ann in raw.annotations:
            desc = ann["description"]
            if desc not in names:
                raise LabelError(rec.path, f"annotation {desc!r} at {ann['onset']:.1f} s is not a {rec.task} label {names}")
            segments.append(Segment(float(ann["onset"]), float(ann["duration"]), names.index(desc), desc))
        if not segments:
            raise LabelError(rec.path, "no labelled annotations")
        return Loaded(raw, segments)
