"""SEED (SJTU Emotion EEG Dataset; Zheng & Lu 2015): 15 subjects x 3 sessions x 15 film clips.

Layout: ``Preprocessed_EEG/{subject}_{YYYYMMDD}.mat`` holding 15 arrays ``{initials}_eeg1`` ..
``{initials}_eeg15`` (62 x n, µV, already down-sampled to 200 Hz and band-passed 0-75 Hz) and
``Preprocessed_EEG/label.mat`` (``label``: one of -1/0/1 per clip, the same for every session). Each
clip is one recording (``{subject}_{date}_t{k:02d}``) so trials are filtered and windowed separately:
gluing them would put filter edges and a clip boundary inside windows.
"""

from __future__ import annotations

import re
from pathlib import Path

import mne
import numpy as np
import scipy.io

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found
from shards.readers import ReadError

# SEED's release stores its EEG down-sampled to 200 Hz (a fact of the corpus, not the suite's rate).
SEED_SFREQ = 200.0
# Channel order of the 62-channel ESI NeuroScan cap used for SEED (channel_62_pos.locs of the release).
CHANNELS = (
    "FP1", "FPZ", "FP2", "AF3", "AF4", "F7", "F5", "F3", "F1", "FZ", "F2", "F4", "F6", "F8",
    "FT7", "FC5", "FC3", "FC1", "FCZ", "FC2", "FC4", "FC6", "FT8",
    "T7", "C5", "C3", "C1", "CZ", "C2", "C4", "C6", "T8",
    "TP7", "CP5", "CP3", "CP1", "CPZ", "CP2", "CP4", "CP6", "TP8",
    "P7", "P5", "P3", "P1", "PZ", "P2", "P4", "P6", "P8",
    "PO7", "PO5", "PO3", "POZ", "PO4", "PO6", "PO8", "CB1", "O1", "OZ", "O2", "CB2",
)
LABELS = {-1: "negative", 0: "neutral", 1: "positive"}
_SESSION = re.compile(r"^(\d+)_(\d{8})\.mat$")
_TRIAL = re.compile(r"^[A-Za-z]+_eeg(\d+)$")


def read_labels(path: Path) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(path, variable_names=["label"])
    except Exception as err:
        raise LabelError(path, f"cannot read MATLAB file: {err}") from err
    if "label" not in mat:
        raise LabelError(path, "no variable 'label'")
    labels = np.asarray(mat["label"]).ravel()
    if not np.isin(labels, list(LABELS)).all():
        raise LabelError(path, f"'label' must hold -1/0/1, got {np.unique(labels)}")
    return labels.astype(int)


@register
class SEED(Adapter):
    name = "seed"
    task = "emotion"
    label_names = ("negative", "neutral", "positive")
    mains_hz = 50.0  # Shanghai
    preprocess_overrides = {"max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path in sorted(root.rglob("*.mat")):
            m = _SESSION.match(path.name)
            if not m:
                continue
            subject, date = m.group(1), m.group(2)
            label_file = str(path.with_name("label.mat"))
            try:
                names = [name for name, *_ in scipy.io.whosmat(path)]
            except Exception:  # unreadable: list the file once so load() reports why it is skipped
                names = None
            trials = sorted((int(t.group(1)), n) for n in names or () if (t := _TRIAL.match(n)))
            if names is not None and not trials:
                continue  # a readable .mat without trial arrays: ExtractedFeatures/ (de_LDS1, ...) etc.
            if not trials:
                recs.append(self.recording(root, path, f"{subject}_{date}", subject=subject, session=date, key="", trial="0", labels=label_file))
                continue
            for k, key in trials:
                recs.append(
                    self.recording(
                        root, path, f"{subject}_{date}_t{k:02d}", subject=subject, session=date, key=key, trial=str(k), labels=label_file
                    )
                )
        return require_found(recs, root, self.name, "{subject}_{YYYYMMDD}.mat")

    def load(self, rec: Recording) -> Loaded:
        key, trial = rec.extra["key"], int(rec.extra["trial"])
        if not key:
            raise ReadError(rec.path, "no trial arrays named like 'xxx_eeg1'..'xxx_eeg15' (or not a MATLAB file)")
        labels = read_labels(Path(rec.extra["labels"]))
        if not 1 <= trial <= labels.size:
            raise LabelError(rec.extra["labels"], f"{labels.size} labels but {rec.path.name} has trial {trial} ({key})")
        try:
            data = scipy.io.loadmat(rec.path, variable_names=[key])[key]
        except Exception as err:
            raise ReadError(rec.path, f"cannot read {key!r}: {err}") from err
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] != len(CHANNELS):
            raise ReadError(rec.path, f"{key!r} has shape {data.shape}, expected ({len(CHANNELS)}, n_samples)")
        info = mne.create_info(list(CHANNELS), SEED_SFREQ, "eeg")
        raw = mne.io.RawArray(data * 1e-6, info, verbose="error")  # µV -> V, MNE's unit
        return Loaded(raw, self.whole(raw, LABELS[int(labels[trial - 1])]))
