"""EEG Recordings Dataset for Mental Stress Detection (Mane, Patil, Shinde): Emotiv Insight, 128 Hz.

Layout: ``{horror_video,relaxing_music}/recording_NN.edf``; the folder is the label (horror video =
stress, relaxing music = calm). The same NN in both folders is the same participant, so NN is the
subject and splits by subject keep both of a person's recordings together. The EDFs also carry ~25
non-EEG channels (time stamps, counters, contact quality) that the channel vocabulary drops, leaving
AF3, T7, Pz, T8, AF4.
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.corpora.base import Adapter, Loaded, Recording, check_root, register, require_found
from shards.readers import read_raw

CONDITIONS = {"horror_video": "stress", "relaxing_music": "calm"}
_NAME = re.compile(r"^recording_(\d+)\.edf$", re.IGNORECASE)


@register
class MentalStress(Adapter):
    name = "mental_stress"
    task = "emotion"
    label_names = ("calm", "stress")
    mains_hz = 50.0  # recorded in India
    preprocess_overrides = {"max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for folder, label in CONDITIONS.items():
            if not (root / folder).is_dir():
                continue
            for path in sorted((root / folder).iterdir()):
                m = _NAME.match(path.name)
                if m:
                    nn = f"{int(m.group(1)):02d}"
                    recs.append(self.recording(root, path, f"{folder}_{nn}", subject=nn, session=folder, condition=label, sfreq="128"))
        return require_found(recs, root, self.name, "{horror_video,relaxing_music}/recording_NN.edf")

    def load(self, rec: Recording) -> Loaded:
        raw = read_raw(rec.path)
        return Loaded(raw, self.whole(raw, rec.extra["condition"]))
