"""Bonn University epilepsy EEG sets (Andrzejak et al., Phys. Rev. E 64, 061907, 2001).

Layout: ``{Z,O,N,F,S}/<letter>NNN.txt`` (the original archives also use ``.TXT``), one ASCII integer
per line, 4097 samples at 173.61 Hz = 23.6 s, one channel. Z/O: surface EEG of healthy volunteers
(eyes open/closed); N/F: intracranial, seizure-free intervals; S: intracranial, ictal. Label = the set
letter, S = seizure.
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.corpora.base import Adapter, Loaded, Recording, check_root, register, require_found
from shards.readers import read_text_signal

BONN_SFREQ = 173.61  # Andrzejak et al. 2001: 4097 samples in 23.6 s
SETS = ("Z", "O", "N", "F", "S")
_NAME = re.compile(r"^([ZONFS])(\d{3})\.txt$", re.IGNORECASE)


@register
class Bonn(Adapter):
    name = "bonn"
    task = "seizure"
    label_names = ("non_seizure", "seizure")
    mains_hz = 50.0
    # Intracranial ictal EEG reaches thousands of µV: an amplitude bound would drop most of set S.
    # 5-s windows every 2.5 s give 8 windows per 23.6-s segment.
    preprocess_overrides = {"window_s": 5.0, "stride_s": 2.5, "max_abs_uv": None}
    # One electrode of unknown position (surface sets: Z/O; depth/strip contacts: N/F/S): the vocabulary's
    # position-less "EEG" entry.
    channel_map = {"EEG": "EEG"}

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for letter in SETS:
            # Some mirrors unpack the archives into lower-case folders (z/, o/, ...).
            folder = next((root / c for c in (letter, letter.lower()) if (root / c).is_dir()), None)
            if folder is None:
                continue
            for path in sorted(folder.iterdir()):
                m = _NAME.match(path.name)
                if not m or m.group(1).upper() != letter:
                    continue
                rid = f"{letter}{m.group(2)}"
                # The public release carries no patient ids (each set pools 5 people, 100 segments
                # from unknown mixes of them), so the only subject key that never puts one segment on
                # both sides of a split is the segment itself; the session is the set letter so the
                # benchmark can report per set.
                recs.append(self.recording(root, path, rid, subject=rid, session=letter, set=letter))
        return require_found(recs, root, self.name, "{Z,O,N,F,S}/*.txt")

    def load(self, rec: Recording) -> Loaded:
        raw = read_text_signal(rec.path, BONN_SFREQ, "EEG")
        return Loaded(raw, self.whole(raw, "seizure" if rec.extra["set"] == "S" else "non_seizure"))
