"""EEGMAT (mental arithmetic) adapter, its workload label space, and the published split.

Real files: ``../shared/data/workload/eegmat`` (subjects 02-27; skipped when absent). The published split
needs all 36 subjects, so its positive case runs on fake window metadata.
"""

from __future__ import annotations

import json
import math
import random
import tarfile

import numpy as np
import pytest

from finetune.config import FinetuneConfig
from finetune.splits import PUBLISHED_SPLITS, kfold_split, published_split, split_windows
from shards.corpora import LabelError, get_corpus
from shards.corpora.eegmat import read_subject_info
from shards.preprocess import PreprocessConfig, preprocess_raw
from shards.vocabulary import classify_channel

SCALP = ["FP1", "FP2", "F3", "F4", "F7", "F8", "T7", "T8", "C3", "C4", "P7", "P8", "P3", "P4", "O1", "O2", "FZ", "CZ", "PZ"]


@pytest.fixture(scope="module")
def eegmat_root(shared_data):
    return shared_data / "workload" / "eegmat"


# ------------------------------------------------------------------------------------------ adapter
def test_find_lists_both_conditions_of_every_shared_subject_with_subject_info(eegmat_root):
    adapter = get_corpus("eegmat")
    assert adapter.task == "emotion" and adapter.label_names == ("rest", "arithmetic")
    recs = adapter.find(eegmat_root)
    assert len(recs) == 52 and [r.recording for r in recs[:3]] == ["Subject02_1", "Subject02_2", "Subject03_1"]
    assert sorted({r.subject for r in recs}) == [f"Subject{n:02d}" for n in range(2, 28)]
    assert {r.extra["condition"] for r in recs if r.session == "1"} == {"rest"}
    assert {r.extra["condition"] for r in recs if r.session == "2"} == {"arithmetic"}
    by_id = {r.recording: r for r in recs}
    # subject-info.csv: "Subject04,17,F,2010,8.6,0"
    assert by_id["Subject04_2"].subject_info == {"age": 17, "gender": "F", "recording_year": 2010,
                                                 "number_of_subtractions": 8.6, "count_quality": 0}
    assert all(r.subject_info for r in recs)


def test_load_labels_whole_files_and_leaves_reference_and_ecg_out_with_reasons(eegmat_root):
    adapter = get_corpus("eegmat")
    recs = {r.recording: r for r in adapter.find(eegmat_root)}
    for rid, label, seconds in (("Subject02_1", "rest", 182.0), ("Subject02_2", "arithmetic", 62.0)):
        loaded = adapter.load(recs[rid])
        (seg,) = loaded.segments
        assert (seg.label_name, seg.label, seg.onset_s) == (label, adapter.label(label), 0.0)
        assert seg.duration_s == pytest.approx(seconds) and loaded.raw.info["sfreq"] == 500.0
        sig = preprocess_raw(loaded.raw, PreprocessConfig(window_s=5.0, notch=50.0))
        assert list(sig.channels) == SCALP
        assert sig.dropped_channels == {
            "EEG A2-A1": "reference derivation: A2-A1 (reference against reference, not a scalp channel)",
            "ECG ECG": "non-eeg: ECG",
        }
        # µV scale survives the read: resting scalp EEG of a few tens of µV (100 µV units)
        assert 0.02 < float(np.std(sig.data)) < 1.0


def test_reference_derivations_are_not_scalp_channels_but_ear_electrodes_still_are():
    assert classify_channel("EEG A2-A1")[0] is None and classify_channel("M1-M2")[1].startswith("reference derivation")
    assert classify_channel("EEG A1-REF") == ("A1", "eeg")  # an ear electrode against the amplifier reference
    assert classify_channel("C3-A1") == ("C3", "eeg")


def test_subject_info_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "subject-info.csv"
    bad.write_text("Subject,Age,Gender\nSubject00,21,F\n")
    with pytest.raises(LabelError, match=r"subject-info.csv.*missing column"):
        read_subject_info(bad)
    bad.write_text("Subject,Age,Gender,Recording year,Number of subtractions,Count quality\nSubject00,twenty,F,2010,3,1\n")
    with pytest.raises(LabelError, match=r"line 2: Age = 'twenty'"):
        read_subject_info(bad)
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="SubjectNN"):
        get_corpus("eegmat").find(tmp_path)


def test_build_cuts_5s_windows_and_carries_subject_info(eegmat_shards, eegmat_root):
    folder, manifest = eegmat_shards
    adapter = get_corpus("eegmat")
    expected = {"rest": 0, "arithmetic": 0}
    for r in adapter.find(eegmat_root)[:6]:  # subjects 02-04
        (seg,) = adapter.load(r).segments
        expected[seg.label_name] += int(seg.duration_s // 5.0)
    assert manifest["label_counts"] == expected and manifest["totals"]["skipped"] == 0 and manifest["drops"] == {}
    assert manifest["build"]["config"]["window_s"] == 5.0 and manifest["build"]["config"]["sfreq"] == 200.0
    assert manifest["dropped_channels"] == {
        "non-eeg: ECG": {"ECG ECG": 6},
        "reference derivation: A2-A1 (reference against reference, not a scalp channel)": {"EEG A2-A1": 6},
    }
    metas = []
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:
            metas += [json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".json")]
    assert len(metas) == sum(expected.values())
    m = next(m for m in metas if m["subject"] == "Subject03")
    assert m["subject_info"] == {"age": 17, "count_quality": 1, "gender": "F", "number_of_subtractions": 31.0,
                                 "recording_year": 2010}
    assert m["channels"] == SCALP and m["duration_s"] == 5.0 and m["task"] == "emotion"


def test_emotion_recipe_finetunes_on_eegmat_with_the_workload_space(eegmat_shards, tmp_path, one_thread):
    from finetune.train import finetune

    folder, _ = eegmat_shards
    res = finetune(FinetuneConfig(recipe="emotion", checkpoint="none", data=str(folder), out=str(tmp_path / "ft"),
                                  epochs=1, batch_size=32, max_windows=60, progress=False))
    recipe = json.loads((tmp_path / "ft" / "model" / "recipe.json").read_text())["emotion"]
    assert recipe["label_space"] == "workload" and recipe["classes"] == ["rest", "arithmetic"]
    assert recipe["window_s"] == 5.0 and recipe["window_samples"] == 1000
    split = res["results"]["emotion"]["split"]
    assert split["group_key"] == "subject" and split["n_folds"] == 3  # subject-wise folds stay the default
    test = res["results"]["emotion"]["splits"]["test"]
    assert test["n"] > 0 and 0.0 <= test["balanced_accuracy"] <= 1.0 and not math.isnan(test["auroc"])


# -------------------------------------------------------------------------------------- published split
def fake_metas(subjects, windows_per_file=(3, 1), seed=0):
    """Window metadata of EEGMAT-like recordings (two files per subject), in shuffled order."""
    metas = [{"corpus": "eegmat", "subject": s, "recording": f"{s}_{k}", "onset_s": 5.0 * i}
             for s in subjects for k, n in zip((1, 2), windows_per_file) for i in range(n)]
    random.Random(seed).shuffle(metas)
    return metas


def test_published_split_reproduces_00_27_28_31_32_35_on_the_full_set():
    full = [f"Subject{i:02d}" for i in range(36)]
    metas = fake_metas(full)
    s = published_split(metas)
    side = {}
    for name, idx in (("train", s.train), ("val", s.val), ("test", s.test)):
        for i in idx:
            side.setdefault(metas[i]["subject"], set()).add(name)
    assert all(len(v) == 1 for v in side.values())  # a subject never on two sides
    assert sorted(k for k, v in side.items() if v == {"train"}) == full[:28]
    assert sorted(k for k, v in side.items() if v == {"val"}) == full[28:32]
    assert sorted(k for k, v in side.items() if v == {"test"}) == full[32:]
    assert (s.train.size, s.val.size, s.test.size) == (28 * 4, 4 * 4, 4 * 4)
    assert s.groups["test"] == tuple(f"eegmat/Subject{i}" for i in range(32, 36))
    assert s.describe()["val_protocol"].startswith("published")
    # the same windows in another order give the same subjects on each side
    again = fake_metas(full, seed=1)
    s2 = published_split(again)
    assert sorted({again[i]["subject"] for i in s2.test}) == full[32:]
    assert PUBLISHED_SPLITS["eegmat"].subjects == tuple(full)


def test_published_split_on_the_shared_subjects_names_the_missing_ones():
    with pytest.raises(ValueError, match=r"10 of its 36 subjects are missing: Subject00, Subject01, Subject28, .*Subject35\. "):
        published_split(fake_metas([f"Subject{i:02d}" for i in range(2, 28)]))
    with pytest.raises(ValueError, match="not in the protocol: Subject36"):
        published_split(fake_metas([f"Subject{i:02d}" for i in range(37)]))
    with pytest.raises(ValueError, match="corpus 'bonn' has no published split"):
        published_split([{"corpus": "bonn", "subject": "Z001"}])
    with pytest.raises(ValueError, match="one corpus"):
        published_split([{"corpus": "eegmat", "subject": "Subject00"}, {"corpus": "bonn", "subject": "Z001"}])
    assert FinetuneConfig(split="published").split == "published" and FinetuneConfig().split == "kfold"


def test_subject_folds_on_the_shared_subjects_stay_the_default():
    metas = fake_metas([f"Subject{i:02d}" for i in range(2, 28)])
    labels = [0 if m["recording"].endswith("_1") else 1 for m in metas]
    s = split_windows(metas, labels)
    assert s.group_key == "subject" and s.n_folds == 5
    assert not set(s.groups["train"]) & set(s.groups["test"])


def test_kfold_with_fewer_windows_per_class_than_folds_still_splits_by_group():
    # every class has fewer members than folds: sklearn's StratifiedGroupKFold refuses this
    s = kfold_split(["a", "b", "c", "d"], [0, 1, 1, 0], n_folds=4, fold=1, seed=3)
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == [0, 1, 2, 3]
    assert len({*s.groups["train"], *s.groups["val"], *s.groups["test"]}) == 4 and s.n_folds == 4
