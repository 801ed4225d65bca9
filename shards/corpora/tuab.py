"""TUH Abnormal EEG Corpus (TUAB): clinical EEGs labelled normal / abnormal per recording.

Layout (v3.0): ``edf/{train,eval}/{normal,abnormal}/01_tcp_ar/{subject}_sNNN_tNNN.edf``. The official
train/eval split (subject-disjoint) is recorded in ``Recording.extra["split"]`` so the writer can keep
it instead of drawing its own split. 10-s windows as in BIOT/LaBraM/CBraMod's TUAB benchmark.
"""

from __future__ import annotations

from pathlib import Path

from shards.corpora.base import Adapter, Loaded, Recording, check_root, register, require_found
from shards.corpora.tueg import montage_of, tuh_edfs
from shards.readers import read_raw

# Folder names of the official splits; recorded as found, the writer maps them (eval -> test, dev -> val).
SPLITS = ("train", "dev", "eval")


def path_entity(rel: Path, choices) -> str | None:
    """The last folder name of ``rel`` that is one of ``choices`` (case-insensitive)."""
    for part in reversed(rel.parent.parts):
        if part.lower() in choices:
            return part.lower()
    return None


@register
class TUAB(Adapter):
    name = "tuab"
    task = "abnormal"
    label_names = ("normal", "abnormal")
    mains_hz = 60.0
    preprocess_overrides = {"window_s": 10.0, "stride_s": 10.0, "max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path, subject, session in tuh_edfs(root):
            rel = path.relative_to(root)
            label = path_entity(rel, ("normal", "abnormal"))
            split = path_entity(rel, SPLITS)
            if label is None or split is None:
                continue  # not inside {train,eval}/{normal,abnormal}: not part of TUAB's labelled release
            # The id is the TUH file stem, as in TUEG, so overlap with a TUEG pretraining build is visible.
            recs.append(
                self.recording(
                    root, path, path.stem, subject=subject, session=session,
                    label=label, split=split, montage=montage_of(path),
                )
            )
        return require_found(recs, root, self.name, "{train,eval}/{normal,abnormal}/**/*.edf")

    def load(self, rec: Recording) -> Loaded:
        raw = read_raw(rec.path)
        return Loaded(raw, self.whole(raw, rec.extra["label"]))
