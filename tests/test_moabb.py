"""The moabb corpus adapter: MOABB's paradigms as labelled windows, one window per trial, offline.

MOABB's own offline ``FakeDataset`` for the paradigm mapping (motor imagery, P300 with a sub-second epoch, SSVEP),
and MOABB's ``PhysionetMI`` reading the real EEGMMIDB runs of ../shared/data laid out as MNE's eegbci downloader
keeps them (skipped when absent): the labels of the windows are checked against the EDF annotations.
"""

from __future__ import annotations

import importlib.util
import logging

import mne
import numpy as np
import pytest

if importlib.util.find_spec("moabb") is None:
    pytest.skip("moabb is not installed (pip install -e '.[moabb]')", allow_module_level=True)

from moabb.datasets.fake import FakeDataset  # noqa: E402

from shards.corpora import get_corpus  # noqa: E402
from shards.corpora.moabb import MoabbCorpus  # noqa: E402
from shards.dataset import load_windows  # noqa: E402
from shards.writer import build  # noqa: E402


@pytest.mark.parametrize("paradigm, events, interval, task, window_s", [
    ("imagery", ("left_hand", "right_hand", "feet"), None, "motor_imagery", 3.0),
    ("p300", ("Target", "NonTarget"), (0.0, 0.8), "p300", 1.0),
    ("ssvep", ("13", "17", "21"), None, "ssvep", 3.0),
])
def test_fake_dataset_paradigms_one_window_per_trial(tmp_path, paradigm, events, interval, task, window_s):
    ds = FakeDataset(event_list=events, n_sessions=1, n_runs=2, n_subjects=2, paradigm=paradigm, duration=60,
                     n_events=12, seed=7)
    if interval is not None:
        ds.interval = list(interval)  # a P300 epoch: shorter than one patch of the model
    corpus = MoabbCorpus(ds)
    assert corpus.task == task and corpus.label_names == events
    assert corpus.preprocess_overrides["window_s"] == window_s
    manifest = build(corpus, tmp_path, tmp_path / "out", progress=False, split=(0.5, 0.5, 0.0))
    # FakeDataset: 12 events evenly from sample 1 to (60 s - interval end), classes in turn; a trial whose window
    # would run past the 60-s run has none (the P300 window of 1 s outlasts its 0.8-s epoch)
    stop = int((60 - ds.interval[1]) * 128) - 1
    onsets = np.linspace(1, stop, 12).astype(int) / 128.0 + ds.interval[0]
    n = int((onsets + window_s <= 60.0).sum())
    assert n == (11 if paradigm == "p300" else 12)
    labels = [events[k % len(events)] for k in range(n)]
    assert manifest["corpus"] == "moabb_FakeDataset" and manifest["totals"]["recordings"] == 4
    assert manifest["totals"]["samples"] == 4 * n and not manifest["skipped"] and not manifest["duplicates"]
    assert manifest["label_counts"] == {e: 4 * labels.count(e) for e in events}
    windows = load_windows(tmp_path / "out" / "moabb_FakeDataset")
    by_rec: dict[str, list] = {}
    for w in windows:
        by_rec.setdefault(w.meta["recording"], []).append(w.meta)
    assert sorted(by_rec) == [f"FakeDataset_sub-{s}_ses-0_run-{r}" for s in (1, 2) for r in (0, 1)]
    for rec, metas in by_rec.items():
        metas.sort(key=lambda m: m["onset_s"])
        assert [m["label_name"] for m in metas] == labels, rec
        np.testing.assert_allclose([m["onset_s"] for m in metas], onsets[:n], atol=0.01)
        assert {m["duration_s"] for m in metas} == {window_s} and {m["task"] for m in metas} == {task}
        assert metas[0]["channels"] == ["C3", "CZ", "C4"] and metas[0]["subject"] == rec.split("_")[1]


def test_corpus_names_and_missing_datasets():
    assert get_corpus("moabb:BNCI2014_001").name == "moabb_BNCI2014_001"
    assert get_corpus("moabb:BNCI2014_001").label_names == ("left_hand", "right_hand", "feet", "tongue")
    with pytest.raises(KeyError, match=r"moabb:NoSuchSet: no MOABB dataset of that name; known: .*BNCI2014_001"):
        get_corpus("moabb:NoSuchSet")
    with pytest.raises(KeyError, match="names no dataset; usage: moabb:DATASET"):
        get_corpus("moabb:")


@pytest.fixture()
def eegbci_layout(shared_data, tmp_path):
    """The EEGMMIDB runs of subject 1 where MNE's eegbci downloader (and MOABB's PhysionetMI) keeps them."""
    src = shared_data / "motor_imagery" / "eegmmidb" / "S001"
    folder = tmp_path / "mne_data" / "MNE-eegbci-data" / "files" / "eegmmidb" / "1.0.0" / "S001"
    folder.mkdir(parents=True)
    for run in (4, 6, 8, 10):
        (folder / f"S001R{run:02d}.edf").symlink_to(src / f"S001R{run:02d}.edf")
    return tmp_path / "mne_data", src


def _physionet(subjects):
    from moabb.datasets import PhysionetMI

    ds = PhysionetMI(imagined=True)
    ds.hand_runs, ds.feet_runs = [4, 8], [6, 10]  # the runs on disk (12 and 14 are not in ../shared/data)
    ds.subject_list = subjects
    return ds


def test_physionet_mi_read_by_moabb_from_local_eegmmidb_runs(eegbci_layout, tmp_path, caplog):
    root, src = eegbci_layout
    caplog.set_level(logging.WARNING, logger="shards.corpora.moabb")
    manifest = build(MoabbCorpus(_physionet([1, 2])), root, tmp_path / "out", progress=False)
    assert f"moabb_PhysionetMI: subject(s) 2 not downloaded under {root.resolve()}: left out" in caplog.text
    recs = {r["recording"]: r for r in manifest["recordings"]}
    assert sorted(recs) == [f"PhysionetMI_sub-1_ses-0_run-{k}" for k in range(4)]
    windows = load_windows(tmp_path / "out" / "moabb_PhysionetMI")
    assert len(windows[0].meta["channels"]) == 64 and windows[0].meta["channels"][:3] == ["FC5", "FC3", "FC1"]
    # MOABB's runs 0-3 are the hand runs 4, 8 then the feet runs 6, 10; T0/T1/T2 as MOABB names them
    names = {4: ("rest", "left_hand", "right_hand"), 8: ("rest", "left_hand", "right_hand"),
             6: ("rest", "hands", "feet"), 10: ("rest", "hands", "feet")}
    total = 0
    for k, run in enumerate((4, 8, 6, 10)):
        raw = mne.io.read_raw_edf(src / f"S001R{run:02d}.edf", verbose="error")
        # every annotation but the T0 on the first sample, which MOABB's stim channel cannot mark (a step from 0)
        truth = [(round(float(a["onset"]), 2), names[run][int(a["description"][1])]) for a in raw.annotations
                 if a["onset"] > 0]
        assert raw.annotations.onset[0] == 0.0 and len(raw.annotations) == 30
        got = sorted((round(w.meta["onset_s"], 2), w.meta["label_name"]) for w in windows
                     if w.meta["recording"] == f"PhysionetMI_sub-1_ses-0_run-{k}")
        assert got == truth, run
        assert recs[f"PhysionetMI_sub-1_ses-0_run-{k}"]["samples"] == len(truth) == 29
        total += len(truth)
    assert manifest["totals"]["samples"] == total == 116
    assert manifest["label_counts"] == {"feet": 16, "hands": 14, "left_hand": 16, "rest": 56, "right_hand": 14}


def test_no_subject_on_disk_is_one_error_and_nothing_is_downloaded(eegbci_layout, tmp_path):
    root, _ = eegbci_layout
    with pytest.raises(FileNotFoundError, match=r"moabb_PhysionetMI: no subject of MOABB's PhysionetMI is "
                                                r"downloaded under .*mne_data"):
        build(MoabbCorpus(_physionet([2])), root, tmp_path / "out", progress=False)
    assert not (root / "MNE-eegbci-data" / "files" / "eegmmidb" / "1.0.0" / "S002").exists() or not any(
        (root / "MNE-eegbci-data" / "files" / "eegmmidb" / "1.0.0" / "S002").iterdir())
