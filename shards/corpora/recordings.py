"""Generic unlabeled "folder of recordings": every EEG file under a root, for pretraining corpora.

Every format :func:`shards.readers.read_raw` reads counts (EDF/EDF+, BDF, GDF, FIF, EEGLAB .set,
BrainVision .vhdr, Neuroscan .cnt). Multi-file formats count once, by their header: ``.set`` (its
``.fdt`` is a sidecar), ``.vhdr`` (``.eeg``/``.dat`` + ``.vmrk``); readmes, montages (``.locs``) and
other sidecars are not recordings. The subject is BIDS ``sub-XX`` when the path has one, else the
name of the folder holding the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.corpora.base import Adapter, Loaded, Recording, check_root, register, require_found
from shards.readers import read_raw

EXTENSIONS = (".edf", ".bdf", ".gdf", ".fif", ".fif.gz", ".set", ".vhdr", ".cnt")
_BIDS = re.compile(r"^(sub|ses)-([A-Za-z0-9]+)")


def recording_suffix(path: Path) -> str | None:
    """The recording extension of ``path`` (lower case) or None for sidecars and other files."""
    name = path.name.lower()
    for ext in EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def bids_entities(rel: Path) -> dict[str, str]:
    """``{"sub": "01", "ses": "02"}`` from folder/file names like ``sub-01/ses-02/eeg/sub-01_..``."""
    found: dict[str, str] = {}
    for part in rel.parts:
        for token in part.split("_"):
            m = _BIDS.match(token)
            if m and m.group(1) not in found:
                found[m.group(1)] = m.group(2)
    return found


@register
class Recordings(Adapter):
    name = "recordings"
    task = None
    label_names = ()
    mains_hz = 50.0  # unknown in general; 50 Hz covers most of the world (override per corpus)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path in sorted(root.rglob("*")):
            ext = recording_suffix(path)
            if ext is None or not path.is_file() or any(p.startswith(".") for p in path.relative_to(root).parts):
                continue
            rel = path.relative_to(root)
            bids = bids_entities(rel)
            subject = f"sub-{bids['sub']}" if "sub" in bids else (rel.parent.name or root.name)
            session = f"ses-{bids['ses']}" if "ses" in bids else ""
            # The id keeps the folders and the extension: test.edf and test.bdf side by side are two recordings.
            rid = rel.as_posix()[: -len(ext)] + "_" + ext.lstrip(".").replace(".", "_")
            recs.append(self.recording(root, path, rid, subject=subject, session=session, format=ext))
        return require_found(recs, root, self.name, "|".join(f"*{e}" for e in EXTENSIONS))

    def load(self, rec: Recording) -> Loaded:
        return Loaded(read_raw(rec.path), None)
