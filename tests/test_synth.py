"""shards.synth: determinism, channel names, labels, physiology, and learnability from the shards."""

from __future__ import annotations

from collections import Counter

import mne
import numpy as np
import pytest
from scipy.signal import welch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shards.dataset import load_windows
from shards.synth import LABEL_NAMES, TASKS, channel_names, simulate, simulate_recording
from shards.vocabulary import canonical_name


def test_simulate_is_deterministic_and_seeded(tmp_path):
    a = simulate(tmp_path / "a", n_subjects=2, duration_s=48, seed=5)
    b = simulate(tmp_path / "b", n_subjects=2, duration_s=48, seed=5)
    c = simulate(tmp_path / "c", n_subjects=2, duration_s=48, seed=6)
    assert [p.name for p in a] == [f"sub-{s:02d}_task-{t}.edf" for s in (1, 2) for t in sorted(TASKS)]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert all(x.read_bytes() != z.read_bytes() for x, z in zip(a, c))


def test_edf_files_read_back_with_names_rates_units_and_annotations(synth_raw):
    rates = set()
    for path in sorted(synth_raw.glob("*.edf"))[:12]:
        raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
        rates.add(raw.info["sfreq"])
        names = raw.ch_names
        assert len(names) == 21
        canon = [canonical_name(n) for n in names]
        assert None not in canon[:19] and canon[19:] == [None, None]  # EOG, ECG are not EEG
        assert len(set(canon[:19])) == 19
        eeg_uv = raw.get_data(picks=list(range(19))) * 1e6
        rms = eeg_uv.std(axis=1)
        assert (rms > 5).all() and (rms < 150).all(), rms  # realistic scalp amplitudes, in volts in the file
        task = path.stem.split("_task-")[1]
        descs = set(raw.annotations.description)
        assert descs <= set(LABEL_NAMES[task]) and len(descs) >= 2
    assert rates == {256.0, 250.0, 200.0}
    assert {"EEG Fp1-REF", "EEG T3-REF"} <= set(channel_names(0)) and "T5" in channel_names(2)


def _band(x, sfreq, lo, hi):
    f, p = welch(x, sfreq, nperseg=int(2 * sfreq), axis=-1)
    return p[..., (f >= lo) & (f < hi)].mean(axis=-1)


def _seg_data(raw, segs, name):
    sf = raw.info["sfreq"]
    parts = [raw.get_data()[:, int(o * sf):int((o + d) * sf)] for o, d, n in segs if n == name]
    return parts


def test_physiology_alpha_spindles_slow_waves_erd_seizure():
    raw, segs = simulate_recording("sleep", 3, duration_s=150, seed=0)  # style 0 names
    sf = raw.info["sfreq"]
    cz = raw.ch_names.index("EEG Cz-REF")
    o1 = raw.ch_names.index("EEG O1-REF")
    w, n2, n3 = (np.hstack(_seg_data(raw, segs, s)) for s in ("W", "N2", "N3"))
    assert _band(n2[cz], sf, 11, 16) > 2 * _band(w[cz], sf, 11, 16)  # spindles
    assert _band(n3[cz], sf, 0.5, 2) > 5 * _band(w[cz], sf, 0.5, 2)  # slow waves
    assert _band(w[o1], sf, 8, 12) > 3 * _band(n3[o1], sf, 8, 12)  # posterior alpha in wake

    raw, segs = simulate_recording("motor_imagery", 2, duration_s=160, seed=0)
    sf = raw.info["sfreq"]
    c3, c4 = raw.ch_names.index("C3"), raw.ch_names.index("C4")
    left, right = (_seg_data(raw, segs, s) for s in ("left_hand", "right_hand"))
    mu = lambda parts, ch: np.mean([_band(p[ch], sf, 8, 13) for p in parts])  # noqa: E731
    assert mu(left, c4) < 0.6 * mu(right, c4)  # ERD contralateral to the imagined hand
    assert mu(right, c3) < 0.6 * mu(left, c3)

    raw, segs = simulate_recording("seizure", 3, duration_s=64, seed=0)
    bg, sz = (np.hstack(_seg_data(raw, segs, s)) for s in ("background", "seizure"))
    assert sz.std() > 3 * bg[:19].std()
    sf = raw.info["sfreq"]
    spec = _band(sz[:19], sf, 2, 4.5).mean() / _band(sz[:19], sf, 8, 13).mean()
    assert spec > 10  # rhythmic ~3 Hz discharges dominate


def _features(windows, bands, channels=None):
    rows = []
    for w in windows:
        x = w.eeg
        if channels is not None:
            x = x[[w.meta["channels"].index(c) for c in channels]]
        rows.append(np.concatenate([np.log(_band(x, w.meta["sfreq"], lo, hi) + 1e-8) for lo, hi in bands]))
    return np.array(rows)


@pytest.mark.parametrize("task,channels,bands", [
    ("motor_imagery", ["C3", "CZ", "C4"], [(8, 13), (18, 25)]),
    ("seizure", None, [(1, 4), (4, 8), (8, 13)]),
    ("emotion", ["F3", "F4", "FP1", "FP2", "FZ"], [(8, 13), (18, 26)]),
])
def test_labels_are_learnable_on_held_out_subjects(synth_shards, task, channels, bands):
    """A band-power logistic regression trained on the train subjects beats chance on the others."""
    windows = [w for w in load_windows(synth_shards) if w.meta["task"] == task and w.meta["label"] is not None]
    train = [w for w in windows if _split_of(synth_shards, w) == "train"]
    held = [w for w in windows if _split_of(synth_shards, w) != "train"]
    assert len({w.meta["subject"] for w in held}) >= 2 and not ({w.meta["subject"] for w in held} & {w.meta["subject"] for w in train})
    y_tr = np.array([w.meta["label"] for w in train])
    y_te = np.array([w.meta["label"] for w in held])
    assert set(Counter(y_te)) == set(Counter(y_tr)) == {0, 1}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(_features(train, bands, channels), y_tr)
    bacc = balanced_accuracy_score(y_te, clf.predict(_features(held, bands, channels)))
    assert bacc >= 0.8, f"{task}: balanced accuracy {bacc:.2f} on held-out subjects"


_SPLITS: dict = {}


def _split_of(folder, w):
    if folder not in _SPLITS:
        from shards.dataset import read_manifest

        _SPLITS[folder] = read_manifest(folder)["splits"]["subjects"]
    return _SPLITS[folder][w.meta["subject"]]
