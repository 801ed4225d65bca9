"""Corpus adapters on the real recordings in ../shared/data (skipped when that folder is absent).

Label counts are checked against the label files themselves, read independently of the adapters.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pytest

from shards.corpora import CORPORA, LabelError, get_corpus
from shards.corpora.base import Adapter, Recording, register, safe_id
from shards.readers import ReadError
from shards.vocabulary import canonical_name


def label_counts(loaded) -> Counter:
    return Counter(s.label_name for s in loaded.segments)


# --------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_adapter_and_names_known_ones_on_error():
    expected = {"bonn", "dreams", "eegmmidb", "mental_stress", "recordings", "tueg", "tuab", "tuev",
                "sleep_edf", "chbmit", "bciciv2a", "seed"}
    assert expected <= set(CORPORA)
    for name, adapter in CORPORA.items():
        assert adapter.name == name and get_corpus(name) is adapter
        assert isinstance(adapter.label_names, tuple)
        assert (adapter.task is None) == (adapter.label_names == ()) or name == "eegmmidb"
    with pytest.raises(KeyError, match=r"unknown corpus 'nope'.*bonn.*seed"):
        get_corpus("nope")


def test_register_rejects_bad_and_duplicate_names():
    with pytest.raises(ValueError, match="name"):
        @register
        class Bad(Adapter):
            name = "has.dot"
    with pytest.raises(ValueError, match="registered twice"):
        @register
        class Twin(Adapter):
            name = "bonn"
    assert type(CORPORA["bonn"]).__name__ == "Bonn"


def test_safe_id():
    assert safe_id("eeglab/test.edf") == "eeglab_test_edf"
    assert safe_id("sub-01_ses-02") == "sub-01_ses-02"
    with pytest.raises(ValueError):
        safe_id("...")


@pytest.mark.parametrize("name", sorted({"bonn", "dreams", "eegmmidb", "mental_stress", "recordings", "tueg",
                                          "tuab", "tuev", "sleep_edf", "chbmit", "bciciv2a", "seed"}))
def test_find_names_missing_and_empty_roots(name, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent"))):
        get_corpus(name).find(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        get_corpus(name).find(tmp_path)


def check_ids(recs: list[Recording], corpus: str) -> None:
    ids = [r.recording for r in recs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for r in recs:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", r.recording), r.recording
        assert r.corpus == corpus and r.path.is_absolute() and r.path.is_file()
        assert r.path.as_posix().endswith(r.source)


# ---------------------------------------------------------------------------------------------- bonn
def test_bonn_500_segments_100_seizures(shared_data):
    adapter = get_corpus("bonn")
    root = shared_data / "seizure" / "bonn"
    recs = adapter.find(root)
    check_ids(recs, "bonn")
    assert len(recs) == 500
    assert Counter(r.session for r in recs) == {s: 100 for s in "ZONFS"}
    assert len({r.subject for r in recs}) == 500
    labels = Counter()
    for r in recs:
        loaded = adapter.load(r)
        (seg,) = loaded.segments
        assert loaded.raw.ch_names == ["EEG"] and loaded.raw.info["sfreq"] == pytest.approx(173.61)
        assert seg.onset_s == 0.0 and seg.duration_s == pytest.approx(4097 / 173.61)
        assert adapter.label_names[seg.label] == seg.label_name
        assert (seg.label_name == "seizure") == (r.session == "S")
        labels[seg.label_name] += 1
    assert labels == {"seizure": 100, "non_seizure": 400}
    assert adapter.preprocess_overrides["max_abs_uv"] is None
    assert adapter.find(root) == recs  # deterministic
    # the position-less channel survives preprocessing only through the adapter's explicit map
    from shards.preprocess import PreprocessConfig, preprocess_raw

    signal = preprocess_raw(adapter.load(recs[0]).raw, PreprocessConfig(notch=50.0), channel_map=adapter.channel_map)
    assert signal.channels == ["EEG"] and signal.data.shape == (1, round(4097 / 173.61 * 200))


def test_bonn_bad_file_raises_read_error(tmp_path):
    (tmp_path / "S").mkdir()
    (tmp_path / "S" / "S001.txt").write_text("12\nnot-a-number\n")
    (tmp_path / "S" / "notes.txt").write_text("ignored")
    (tmp_path / "z").mkdir()  # lower-case folder and .TXT as in some mirrors
    (tmp_path / "z" / "Z007.TXT").write_text("1\n" * 4097)
    adapter = get_corpus("bonn")
    rec, good = adapter.find(tmp_path)
    with pytest.raises(ReadError, match="S001.txt"):
        adapter.load(rec)
    assert (good.recording, good.session, good.source) == ("Z007", "Z", "z/Z007.TXT")
    assert adapter.load(good).segments[0].label_name == "non_seizure"


# -------------------------------------------------------------------------------------------- dreams
RK_TO_STAGE = {5: "W", 4: "REM", 3: "N1", 2: "N2", 1: "N3", 0: "N3"}


def test_dreams_label_counts_equal_hypnograms(shared_data):
    adapter = get_corpus("dreams")
    root = shared_data / "sleep" / "dreams_spindles"
    recs = adapter.find(root)
    check_ids(recs, "dreams")
    assert [r.recording for r in recs] == [f"excerpt{i}" for i in range(1, 7)]
    for r in recs:
        codes = [int(x) for x in (root / f"Hypnogram_{r.recording}.txt").read_text().split()[1:]]
        assert len(codes) == 360
        loaded = adapter.load(r)
        expected = Counter(RK_TO_STAGE[c] for c in codes if c in RK_TO_STAGE)
        assert label_counts(loaded) == expected
        assert sum(loaded.skipped.values()) == sum(c not in RK_TO_STAGE for c in codes)
        onsets = [s.onset_s for s in loaded.segments]
        assert onsets == sorted(onsets) and all(s.duration_s == 5.0 for s in loaded.segments)
        assert loaded.segments[-1].onset_s + 5.0 <= loaded.raw.n_times / loaded.raw.info["sfreq"] + 1e-6
        assert canonical_name(loaded.raw.ch_names[0]) in {"C3", "CZ"}


def test_dreams_bad_hypnograms(tmp_path):
    (tmp_path / "excerpt1.txt").write_text("[C3-A1]\n" + "1.0\n" * (100 * 1800))
    adapter = get_corpus("dreams")
    (rec,) = adapter.find(tmp_path)
    with pytest.raises(LabelError, match="Hypnogram_excerpt1.txt.*missing"):
        adapter.load(rec)
    hyp = tmp_path / "Hypnogram_excerpt1.txt"
    hyp.write_text("[Hypnogram]\n" + "2\n" * 300)
    with pytest.raises(LabelError, match="300 epochs"):
        adapter.load(rec)
    hyp.write_text("[Hypnogram]\n" + "2\n" * 10 + "S2\n" + "2\n" * 349)
    with pytest.raises(LabelError, match="line 12"):
        adapter.load(rec)
    hyp.write_text("[Hypnogram]\n" + "2\n" * 350 + "-1\n" * 6 + "5\n" * 4)
    loaded = adapter.load(rec)
    assert label_counts(loaded) == {"N2": 350, "W": 4}
    assert loaded.skipped == {"stage_code_-1": 6}
    assert [s.onset_s for s in loaded.segments if s.label_name == "W"] == [356 * 5.0, 357 * 5.0, 358 * 5.0, 359 * 5.0]


# ------------------------------------------------------------------------------------------ eegmmidb
def test_eegmmidb_labels_match_mne_annotations(shared_data):
    adapter = get_corpus("eegmmidb")
    recs = adapter.find(shared_data / "motor_imagery" / "eegmmidb")
    check_ids(recs, "eegmmidb")
    assert [r.session for r in recs] == ["R03", "R04", "R05", "R06", "R07", "R08", "R09", "R10", "R11", "R13"]
    assert {r.subject for r in recs} == {"S001"}
    for r in recs:
        run = int(r.session[1:])
        assert r.task == ("motor_imagery" if run % 2 == 0 else "motor_execution")
        ann = mne.read_annotations(r.path)
        mne_counts = Counter(ann.description)
        loaded = adapter.load(r)
        got = label_counts(loaded)
        t1, t2 = ("left_fist", "right_fist") if run in (3, 4, 7, 8, 11, 12) else ("both_fists", "both_feet")
        assert got == {"rest": mne_counts["T0"], t1: mne_counts["T1"], t2: mne_counts["T2"]}
        assert sum(got.values()) == 30
        np.testing.assert_allclose([s.onset_s for s in loaded.segments], ann.onset)
        np.testing.assert_allclose([s.duration_s for s in loaded.segments], ann.duration)
        assert loaded.raw.info["sfreq"] == 160.0 and len(loaded.raw.ch_names) == 64
        assert "Fc5" in loaded.raw.ch_names and canonical_name("Fc5") == "FC5"  # trailing dots stripped
    assert adapter.mains_hz == 60.0 and adapter.preprocess_overrides["window_s"] == 4.0


def test_eegmmidb_baseline_runs_are_unlabeled(tmp_path):
    raw = mne.io.RawArray(np.zeros((2, 1600)), mne.create_info(["Fc5.", "Cz.."], 160.0, "eeg"), verbose="error")
    (tmp_path / "S002").mkdir()
    mne.export.export_raw(tmp_path / "S002" / "S002R01.edf", raw, fmt="edf", verbose="error")
    adapter = get_corpus("eegmmidb")
    (rec,) = adapter.find(tmp_path)
    assert (rec.recording, rec.subject, rec.session, rec.task) == ("S002R01", "S002", "R01", None)
    loaded = adapter.load(rec)
    assert loaded.segments is None and loaded.raw.ch_names == ["Fc5", "Cz"]


# ------------------------------------------------------------------------------------- mental stress
def test_mental_stress_labels_subjects_and_channels(shared_data):
    adapter = get_corpus("mental_stress")
    root = shared_data / "emotion" / "mental_stress_emotiv"
    recs = adapter.find(root)
    check_ids(recs, "mental_stress")
    n_stress = len(list((root / "horror_video").glob("recording_*.edf")))
    n_calm = len(list((root / "relaxing_music").glob("recording_*.edf")))
    assert (n_stress, n_calm) == (17, 15) and len(recs) == 32
    by_subject: dict[str, set] = {}
    labels = Counter()
    for r in recs:
        loaded = adapter.load(r)
        (seg,) = loaded.segments
        labels[seg.label_name] += 1
        assert seg.label_name == {"horror_video": "stress", "relaxing_music": "calm"}[r.session]
        assert seg.duration_s == pytest.approx(loaded.raw.n_times / 128.0)
        assert 50 <= seg.duration_s <= 7 * 60 + 5  # "1 to 7 minutes" per the README (one lasts 57 s)
        eeg = [canonical_name(c) for c in loaded.raw.ch_names if canonical_name(c)]
        assert eeg == ["AF3", "T7", "PZ", "T8", "AF4"]
        by_subject.setdefault(r.subject, set()).add(seg.label_name)
    assert labels == {"stress": 17, "calm": 15}
    assert len(by_subject) == 17
    assert sum(v == {"stress", "calm"} for v in by_subject.values()) == 15  # same NN = same person in both


# ---------------------------------------------------------------------------------------- recordings
def test_recordings_folder_of_unlabeled_files(shared_data):
    adapter = get_corpus("recordings")
    recs = adapter.find(shared_data / "unlabeled")
    check_ids(recs, "recordings")
    assert [(r.source, r.subject) for r in recs] == [
        ("eeglab/eeglab_data.set", "eeglab"),
        ("eeglab/test.bdf", "eeglab"),
        ("eeglab/test.edf", "eeglab"),
        ("eeglab/testbva.vhdr", "eeglab"),
        ("mne_testing/BDF/multiple_annotation_chans.bdf", "BDF"),
        ("yasa/data_resting_EO_200Hz_raw.fif", "yasa"),
    ]
    assert all(r.task is None for r in recs)
    sizes = {}
    for r in recs:
        loaded = adapter.load(r)
        assert loaded.segments is None
        sizes[r.source] = (len(loaded.raw.ch_names), loaded.raw.info["sfreq"])
    assert sizes["eeglab/eeglab_data.set"] == (32, 128.0)
    assert sizes["eeglab/testbva.vhdr"] == (32, 200.0)
    assert sizes["yasa/data_resting_EO_200Hz_raw.fif"] == (2, 200.0)


def test_recordings_bids_subjects_and_sidecars(tmp_path):
    raw = mne.io.RawArray(np.zeros((1, 256)), mne.create_info(["Cz"], 128.0, "eeg"), verbose="error")
    bids = tmp_path / "sub-07" / "ses-2" / "eeg"
    bids.mkdir(parents=True)
    mne.export.export_raw(bids / "sub-07_ses-2_task-rest_eeg.edf", raw, fmt="edf", verbose="error")
    (tmp_path / "site.a").mkdir()
    mne.export.export_raw(tmp_path / "site.a" / "x.edf", raw, fmt="edf", verbose="error")
    (tmp_path / "site.a" / "x_edf").mkdir()  # not a file
    for junk in ("README.txt", "x.fdt", "x.vmrk", "x.eeg", "chan.locs", "x.json"):
        (tmp_path / "site.a" / junk).write_text("junk")
    (tmp_path / "broken.edf").write_bytes(b"0" * 300)
    recs = get_corpus("recordings").find(tmp_path)
    got = {r.source: (r.recording, r.subject, r.session) for r in recs}
    assert got == {
        "broken.edf": ("broken_edf", tmp_path.name, ""),
        "site.a/x.edf": ("site_a_x_edf", "site.a", ""),
        "sub-07/ses-2/eeg/sub-07_ses-2_task-rest_eeg.edf": ("sub-07_ses-2_eeg_sub-07_ses-2_task-rest_eeg_edf", "sub-07", "ses-2"),
    }
    broken = next(r for r in recs if r.source == "broken.edf")
    with pytest.raises(ReadError, match="broken.edf"):
        get_corpus("recordings").load(broken)


# ------------------------------------------------------------------------ through the writer (end to end)
def expected_windows(adapter_name: str, root: Path) -> Counter:
    """Windows per label the writer must produce when no window is dropped: whole windows per segment."""
    adapter = get_corpus(adapter_name)
    win = adapter.preprocess_overrides["window_s"]
    stride = adapter.preprocess_overrides.get("stride_s") or win
    out = Counter()
    for r in adapter.find(root):
        for s in adapter.load(r).segments:
            out[s.label_name] += int((s.duration_s - win) // stride + 1 + 1e-9) if s.duration_s >= win else 0
    return out


def eegmmidb_annotation_counts(root: Path) -> Counter:
    """T0/T1/T2 counts over all runs, read with MNE, with T1/T2 named by run type."""
    out = Counter()
    for path in sorted(root.glob("S*/S*R*.edf")):
        run = int(path.stem[-2:])
        names = {"T0": "rest", "T1": "left_fist", "T2": "right_fist"} if run in (3, 4, 7, 8, 11, 12) else \
            {"T0": "rest", "T1": "both_fists", "T2": "both_feet"}
        out.update(names[d] for d in mne.read_annotations(path).description)
    return out


@pytest.mark.parametrize("name, sub", [("dreams", "sleep/dreams_spindles"), ("eegmmidb", "motor_imagery/eegmmidb"),
                                       pytest.param("bonn", "seizure/bonn", marks=pytest.mark.slow)])
def test_local_sets_build_with_every_labelled_window(shared_data, tmp_path, name, sub):
    from shards.writer import build

    manifest = build(name, shared_data / sub, tmp_path, progress=False)
    assert manifest["totals"]["skipped"] == 0 and manifest["drops"] == {}
    expected = {"dreams": {"W": 252, "N1": 220, "N2": 1216, "N3": 472},
                "eegmmidb": eegmmidb_annotation_counts(shared_data / sub),
                "bonn": {"seizure": 800, "non_seizure": 3200}}[name]
    assert manifest["label_counts"] == expected
    if name != "eegmmidb":  # EEGMMIDB rest spans 4.2 s and tasks 4.1 s: one 4-s window each, checked above
        assert Counter(manifest["label_counts"]) == expected_windows(name, shared_data / sub)
