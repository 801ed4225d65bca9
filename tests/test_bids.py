"""The bids corpus adapter on a small BIDS tree written by mne_bids.write_raw_bids from real EEGMMIDB runs."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pytest

mne_bids = pytest.importorskip("mne_bids", reason="the bids extra is not installed (pip install -e '.[bids]')")

from shards.corpora import get_corpus  # noqa: E402
from shards.corpora.bids import label_of, task_of  # noqa: E402

RUNS = {"S001R04.edf": ("01", "imagery", "1"), "S001R08.edf": ("01", "imagery", "2"), "S001R06.edf": ("02", "feet", "1")}
NAMES = {"S001R04.edf": {"T0": "rest", "T1": "left_fist", "T2": "right_fist"},
         "S001R08.edf": {"T0": "rest", "T1": "left_fist", "T2": "right_fist"},
         "S001R06.edf": {"T0": "rest", "T1": "both_fists", "T2": "both_feet"}}


@pytest.fixture(scope="module")
def bids_root(shared_data, tmp_path_factory) -> Path:
    """Three EEGMMIDB runs as a BIDS dataset: sub-01 task-imagery runs 1-2 (left/right fist), sub-02 task-feet
    (both fists/feet), plus one resting run whose events name no recipe class; participants.tsv has extra columns."""
    root = tmp_path_factory.mktemp("bids")
    for name, (sub, task, run) in RUNS.items():
        raw = mne.io.read_raw_edf(shared_data / "motor_imagery/eegmmidb/S001" / name, verbose="error")
        raw.annotations.rename(NAMES[name])
        bp = mne_bids.BIDSPath(subject=sub, task=task, run=run, datatype="eeg", root=root)
        mne_bids.write_raw_bids(raw, bp, overwrite=True, verbose="error")
    raw = mne.io.read_raw_edf(shared_data / "motor_imagery/eegmmidb/S001/S001R03.edf", verbose="error")
    raw.set_annotations(mne.Annotations([10.0, 40.0], [5.0, 5.0], ["eyes_open", "eyes_closed"]))
    mne_bids.write_raw_bids(raw, mne_bids.BIDSPath(subject="02", task="rest", datatype="eeg", root=root),
                            overwrite=True, verbose="error")
    with open(root / "participants.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["participant_id", "age", "sex", "handedness", "group"])
        w.writerow(["sub-01", "42", "F", "R", "n/a"])
        w.writerow(["sub-02", "n/a", "M", "L", "control"])
    return root


def test_find_reads_subjects_sessions_tasks_runs_and_participants(bids_root):
    recs = get_corpus("bids").find(bids_root)
    got = {r.recording: (r.subject, r.task, r.extra["bids_task"], r.extra["run"]) for r in recs}
    assert got == {
        "sub-01_task-imagery_run-1_eeg": ("sub-01", "motor_imagery", "imagery", "1"),
        "sub-01_task-imagery_run-2_eeg": ("sub-01", "motor_imagery", "imagery", "2"),
        "sub-02_task-feet_run-1_eeg": ("sub-02", "motor_imagery", "feet", "1"),
        "sub-02_task-rest_eeg": ("sub-02", None, "rest", ""),
    }
    info = {r.subject: dict(r.subject_info) for r in recs}
    assert info == {"sub-01": {"age": 42, "sex": "F", "handedness": "R"},
                    "sub-02": {"sex": "M", "handedness": "L", "group": "control"}}


def test_events_become_labelled_segments_equal_to_the_annotations(bids_root, shared_data):
    adapter = get_corpus("bids")
    recs = {r.recording: r for r in adapter.find(bids_root)}
    loaded = adapter.load(recs["sub-02_task-feet_run-1_eeg"])
    want = mne.read_annotations(shared_data / "motor_imagery/eegmmidb/S001/S001R06.edf")
    assert [s.label_name for s in loaded.segments] == [NAMES["S001R06.edf"][d] for d in want.description]
    np.testing.assert_allclose([s.onset_s for s in loaded.segments], want.onset, atol=1e-3)
    np.testing.assert_allclose([s.duration_s for s in loaded.segments], want.duration, atol=1e-3)
    assert loaded.raw.info["sfreq"] == 160.0 and len(loaded.raw.ch_names) == 64
    rest = adapter.load(recs["sub-02_task-rest_eeg"])
    assert rest.segments is None


def test_build_writes_labels_and_participant_fields(bids_root, shared_data, tmp_path):
    from shards.dataset import load_windows
    from shards.writer import build

    manifest = build("bids", bids_root, tmp_path, progress=False)
    assert manifest["totals"]["skipped"] == 0
    want = Counter()
    for name in RUNS:
        ann = mne.read_annotations(shared_data / "motor_imagery/eegmmidb/S001" / name)
        want.update(NAMES[name][d] for d in ann.description)
    labels = manifest["label_counts"]
    assert {k: v for k, v in labels.items() if k != "unlabeled"} == dict(want)  # one 4-s window per ~4.1-s cue
    assert labels["unlabeled"] == 125 // 4
    windows = load_windows(str(tmp_path / "bids" / "*.tar"))
    sub1 = [w for w in windows if w.meta["subject"] == "sub-01"]
    assert sub1 and all(w.meta["subject_info"] == {"age": 42, "sex": "F", "handedness": "R"} for w in sub1)
    assert {w.meta["task"] for w in windows} == {"motor_imagery", None}


def test_task_recognition_from_event_names():
    assert task_of(["Sleep stage W", "Sleep stage 2", "Sleep stage R"]) == "sleep"
    assert label_of("sleep", "Sleep stage 4") == "N3"
    assert task_of(["left", "right", "left"]) == "motor_imagery"
    assert task_of(["rest", "rest"]) is None  # a resting-state marker alone is no recipe
    assert task_of(["stimulus/S 1", "response"]) is None


# --------------------------------------------------------------------------- DataLad / OpenNeuro datasets
REST_RUN = "motor_imagery/eegmmidb/S001/S001R03.edf"


@pytest.fixture(scope="module")
def annexed_60hz(shared_data, tmp_path_factory, annex) -> Path:
    """One EEGMMIDB run (recorded in the USA) as an OpenNeuro-style BIDS dataset: ``PowerLineFrequency`` 60 in its
    ``_eeg.json`` and the EDF a git-annex link (``sub-01/eeg/sub-01_task-rest_eeg.edf -> ../../.git/annex/objects/
    .../SHA256E-s...--....edf``), as ``datalad get`` leaves every data file."""
    root = tmp_path_factory.mktemp("annexed")
    raw = mne.io.read_raw_edf(shared_data / REST_RUN, verbose="error")
    raw.info["line_freq"] = 60
    mne_bids.write_raw_bids(raw, mne_bids.BIDSPath(subject="01", task="rest", datatype="eeg", root=root),
                            overwrite=True, verbose="error")
    annex(root / "sub-01/eeg/sub-01_task-rest_eeg.edf", root)
    return root


def test_annexed_recording_is_read_through_its_link(annexed_60hz, shared_data):
    """Resolving the link gives mne-bids a file named SHA256E-s..--...edf ("segment with multiple hyphens")."""
    adapter = get_corpus("bids")
    (rec,) = adapter.find(annexed_60hz)
    assert rec.path == annexed_60hz / "sub-01/eeg/sub-01_task-rest_eeg.edf" and rec.path.is_symlink()
    loaded = adapter.load(rec)
    want = mne.io.read_raw_edf(shared_data / REST_RUN, preload=True, verbose="error")
    assert loaded.raw.ch_names == want.ch_names and loaded.raw.info["sfreq"] == 160.0
    np.testing.assert_array_equal(loaded.raw.get_data(), want.get_data())


def test_each_recording_is_notched_at_its_own_power_line_frequency(annexed_60hz, shared_data, tmp_path):
    """EEGMMIDB was recorded in New York: PowerLineFrequency 60 must put the notch at 60 Hz, not at the build's 50."""
    from shards.dataset import load_windows
    from shards.preprocess import PreprocessConfig, preprocess_raw
    from shards.writer import build

    manifest = build("bids", annexed_60hz, tmp_path, progress=False)
    assert manifest["build"]["config"]["notch"] == 50.0  # the build's notch, for recordings that state none
    (rec,) = manifest["recordings"]
    assert rec["notch_hz"] == 60.0 and rec["samples"] == 31
    shards = np.stack([w.eeg for w in load_windows(str(tmp_path / "bids" / "*.tar"))])  # [31, 64, 800]
    raw = mne.io.read_raw_edf(shared_data / REST_RUN, preload=True, verbose="error")
    cfg = PreprocessConfig(notch=60.0, window_s=4.0, max_abs_uv=None)
    want = preprocess_raw(raw, cfg).data[:, : 31 * 800].reshape(64, 31, 800).transpose(1, 0, 2)
    np.testing.assert_allclose(shards, want, atol=2e-3, rtol=2e-3)  # float16 in the shards
    # The recording's line noise is gone: 60-Hz power in the 4-s windows 2% of what a 50-Hz notch leaves (measured).
    at50 = preprocess_raw(raw, PreprocessConfig(notch=50.0, window_s=4.0)).data

    def power_60(x):
        spec = np.abs(np.fft.rfft(x, axis=-1)) ** 2
        freqs = np.fft.rfftfreq(x.shape[-1], 1 / 200.0)
        return spec[..., np.abs(freqs - 60.0) < 0.3].sum()

    at50 = at50[:, : 31 * 800].reshape(64, 31, 800).transpose(1, 0, 2)
    assert power_60(shards.astype(np.float64)) < 0.05 * power_60(at50)
