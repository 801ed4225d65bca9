"""BCI Competition IV dataset 2a (Graz; Brunner et al. 2008): 4-class motor imagery, 9 subjects.

Layout: ``A0sT.gdf`` (training session) and ``A0sE.gdf`` (evaluation session), 22 EEG + 3 EOG channels
at 250 Hz. Cue events 769/770/771/772 = left hand / right hand / feet / tongue in the training files;
the evaluation files only mark cue 783 ("unknown"), their classes are in ``A0sE.mat`` (``classlabel``,
1..4 in cue order) from the organisers' true_labels release, looked for next to the GDF, then anywhere
under the root. Trials flagged 1023 (rejected by the organisers' artifact review) are kept, as in
most benchmarks (BCI-IV 2a papers report on all 288 trials per session).

Window: the 4-s motor-imagery period from cue onset (cue at t=2 s of each trial, imagery until t=6 s),
the span CBraMod/LaBraM-style benchmarks use; one 4-s window per trial.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found
from shards.readers import ReadError, read_raw

CUES = {"769": "left_hand", "770": "right_hand", "771": "feet", "772": "tongue"}
UNKNOWN_CUE = "783"
MI_S = 4.0
# The GDF headers name 19 of the 22 electrodes "EEG-0".."EEG-16"; their positions, in file order, are
# given in the dataset description (Fig. 3 of the competition's desc_2a.pdf).
EEG_CHANNELS = (
    "Fz", "FC3", "FC1", "FCz", "FC2", "FC4", "C5", "C3", "C1", "Cz", "C2",
    "C4", "C6", "CP3", "CP1", "CPz", "CP2", "CP4", "P1", "Pz", "P2", "POz",
)
EOG_CHANNELS = ("EOG-left", "EOG-central", "EOG-right")
_NAME = re.compile(r"^(A0?(\d+))([TE])\.gdf$", re.IGNORECASE)


def read_true_labels(path: Path) -> np.ndarray:
    """``classlabel`` (1..4 per trial) of a true_labels ``A0sE.mat`` / ``A0sT.mat`` file."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["classlabel"])
    except Exception as err:  # scipy raises ValueError/TypeError/OSError for corrupt files
        raise LabelError(path, f"cannot read MATLAB file: {err}") from err
    if "classlabel" not in mat:
        raise LabelError(path, "no variable 'classlabel'")
    labels = np.asarray(mat["classlabel"]).ravel()
    if labels.size == 0 or not np.isin(labels, [1, 2, 3, 4]).all():
        raise LabelError(path, f"'classlabel' must hold class numbers 1..4, got {np.unique(labels)[:8]}")
    return labels.astype(int)


@register
class BCICIV2a(Adapter):
    name = "bciciv2a"
    task = "motor_imagery"
    label_names = ("left_hand", "right_hand", "feet", "tongue")
    mains_hz = 50.0  # Graz, Austria
    preprocess_overrides = {"window_s": MI_S, "stride_s": MI_S, "max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        mats = {p.name.upper(): p for p in sorted(root.rglob("*")) if p.suffix.lower() == ".mat"}
        recs = []
        for path in sorted(root.rglob("*")):
            m = _NAME.match(path.name)
            if not m or not path.is_file():
                continue
            subject, session = f"A{int(m.group(2)):02d}", m.group(3).upper()
            mat_name = f"{m.group(1)}{session}.MAT".upper()
            beside = path.with_name(f"{m.group(1)}{session}.mat")
            labels = beside if beside.is_file() else mats.get(mat_name)
            recs.append(
                self.recording(root, path, f"{subject}{session}", subject=subject, session=session, true_labels=str(labels or ""), sfreq="250")
            )
        return require_found(recs, root, self.name, "A0sT.gdf / A0sE.gdf")

    def load(self, rec: Recording) -> Loaded:
        raw = read_raw(rec.path)
        if len(raw.ch_names) == len(EEG_CHANNELS) + len(EOG_CHANNELS):
            raw.rename_channels(dict(zip(raw.ch_names, EEG_CHANNELS + EOG_CHANNELS)))
            raw.set_channel_types({c: "eog" for c in EOG_CHANNELS})
        else:
            raise ReadError(rec.path, f"expected 25 channels (22 EEG + 3 EOG), got {len(raw.ch_names)}")
        desc = np.array([str(d).strip() for d in raw.annotations.description])
        onsets = raw.annotations.onset - raw.first_time
        cue_idx = np.flatnonzero(np.isin(desc, list(CUES)))
        unknown_idx = np.flatnonzero(desc == UNKNOWN_CUE)
        if cue_idx.size and unknown_idx.size:
            raise LabelError(rec.path, "has both class cues (769-772) and unknown cues (783)")
        if cue_idx.size:
            names = [CUES[d] for d in desc[cue_idx]]
            idx = cue_idx
        elif unknown_idx.size:
            mat = Path(rec.extra["true_labels"]) if rec.extra.get("true_labels") else None
            if mat is None or not mat.is_file():
                raise LabelError(rec.path, f"evaluation cues (783) need the true_labels file {rec.path.stem}.mat, not found")
            classes = read_true_labels(mat)
            if classes.size != unknown_idx.size:
                raise LabelError(mat, f"{classes.size} class labels but {rec.path.name} has {unknown_idx.size} cues (783)")
            names = [self.label_names[c - 1] for c in classes]
            idx = unknown_idx
        else:
            raise LabelError(rec.path, "no cue events (769-772 or 783) in the GDF event table")
        total = raw.n_times / raw.info["sfreq"]
        segs, skipped = [], {}
        for i, name in zip(idx, names):
            if onsets[i] + MI_S > total + 1e-6:
                skipped["cue_past_end"] = skipped.get("cue_past_end", 0) + 1
                continue
            segs.append(self.segment(onsets[i], MI_S, name))
        return Loaded(raw, segs, skipped)
