"""TUH EEG Corpus (TUEG, Obeid & Picone 2016): ~25,000 h of clinical EEG, unlabeled (pretraining).

Layout (v2.x): ``.../{subject}/{sNNN_YYYY_MM_DD}/{NN_tcp_ar|tcp_le|...}/{subject}_sNNN_tNNN.edf``; older
releases put a numeric group folder first (``edf/000/00000002/s001_2003_04_08/...``). File names carry
the ids, so they are what we parse: ``{subject}_s{session}_t{token}.edf``. Channels are referential
("EEG FP1-REF", "EEG T3-LE"); the channel vocabulary maps them. Recorded in the USA: 60 Hz mains.

``tuh_recordings`` is shared with the TUAB and TUEV adapters, which use the same naming.
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.corpora.base import Adapter, Loaded, Recording, check_root, register, require_found
from shards.readers import read_raw

_TUH = re.compile(r"^(?P<subject>[A-Za-z0-9]+)_(?P<session>s\d+)_(?P<token>t\d+)$")
_TUH_SHORT = re.compile(r"^(?P<subject>[A-Za-z0-9]+)_(?P<token>\d+)$")  # TUEV: 00002275_00000001


def tuh_ids(path: Path) -> tuple[str, str] | None:
    """(subject, session) from a TUH file name, or None when it does not follow the TUH scheme."""
    m = _TUH.match(path.stem)
    if m:
        return m.group("subject"), m.group("session")
    m = _TUH_SHORT.match(path.stem)
    if m:
        return m.group("subject"), m.group("token")
    return None


def tuh_edfs(root: Path) -> list[tuple[Path, str, str]]:
    """Every TUH-named ``*.edf`` under ``root`` as (path, subject, session), sorted by path."""
    out = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() != ".edf" or not path.is_file():
            continue
        ids = tuh_ids(path)
        if ids is not None:
            out.append((path, *ids))
    return out


def montage_of(path: Path) -> str:
    """The reference folder name ("01_tcp_ar", "02_tcp_le", ...) or "" when absent."""
    for part in reversed(path.parent.parts):
        if "tcp" in part.lower() or part.lower().endswith(("_ar", "_le")):
            return part
    return ""


@register
class TUEG(Adapter):
    name = "tueg"
    task = None
    label_names = ()
    mains_hz = 60.0

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = [
            self.recording(root, path, path.stem, subject=subject, session=session, montage=montage_of(path))
            for path, subject, session in tuh_edfs(root)
        ]
        return require_found(recs, root, self.name, "{subject}_sNNN_tNNN.edf")

    def load(self, rec: Recording) -> Loaded:
        return Loaded(read_raw(rec.path), None)
