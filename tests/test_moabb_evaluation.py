"""benchmarks/moabb_evaluation.py: the backbone finetuned inside MOABB's evaluations, offline.

The paradigm each MOABB dataset gets and the command line's errors (default suite); the evaluations themselves are
slow (a finetuning per fold, 35-90 s on 2 cores): cross-subject on MOABB's FakeDataset (two subjects, the folds are
MOABB's), within-session on the real EEGMMIDB runs of subject 1 from ../shared/data read by MOABB's PhysionetMI
(skipped when absent).
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("moabb") is None:
    pytest.skip("moabb is not installed (pip install -e '.[moabb]')", allow_module_level=True)
if importlib.util.find_spec("braindecode") is None or importlib.util.find_spec("skorch") is None:
    pytest.skip("the braindecode extra is not installed (pip install -e '.[braindecode]')", allow_module_level=True)

from benchmarks.moabb_evaluation import evaluate, main, make_paradigm, table  # noqa: E402


def test_each_paradigm_gets_moabbs_paradigm_with_its_events(tmp_path, capsys):
    from moabb.datasets import PhysionetMI
    from moabb.datasets.fake import FakeDataset

    mi = make_paradigm(PhysionetMI(), events=None, fmin=1, fmax=45, channels=["C3", "Cz"])
    assert type(mi).__name__ == "MotorImagery" and mi.events == ["left_hand", "right_hand", "feet", "hands"]
    assert mi.n_classes == 4 and mi.filters == [[1, 45]] and mi.channels == ["C3", "Cz"]
    lr = make_paradigm(PhysionetMI(), events=["left_hand", "right_hand"], fmin=8, fmax=32, channels=None)
    assert lr.events == ["left_hand", "right_hand"] and lr.n_classes == 2 and lr.scoring == "roc_auc"
    p300 = make_paradigm(FakeDataset(paradigm="p300", event_list=("Target", "NonTarget")), events=None, fmin=1,
                         fmax=20, channels=None)
    assert type(p300).__name__ == "P300" and p300.filters == [[1, 20]]
    ssvep = make_paradigm(FakeDataset(paradigm="ssvep", event_list=("13", "17")), events=None, fmin=7, fmax=45,
                          channels=None)
    assert type(ssvep).__name__ == "SSVEP" and ssvep.n_classes == 2
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path), "--dataset", "PhysionetMI", "--set", "no_such_attribute=1"])
    assert "--set 'no_such_attribute=1': expected KEY=JSON with KEY an attribute of PhysionetMI" in capsys.readouterr().err


@pytest.mark.slow
def test_cross_subject_on_moabbs_fake_dataset(tmp_path):
    from moabb.datasets.fake import FakeDataset

    ds = FakeDataset(event_list=("left_hand", "right_hand"), n_sessions=1, n_runs=1, n_subjects=2, duration=60,
                     n_events=16, seed=3)
    results = evaluate(ds, tmp_path, evaluation="cross_subject", epochs=1, batch_size=8, work=tmp_path / "w")
    assert sorted(results["pipeline"].unique()) == ["EEGMamba", "TS+LR"]
    # leave one subject out: each subject tested once per pipeline on its 16 epochs
    assert sorted(zip(results["pipeline"], results["subject"].astype(str))) == [
        ("EEGMamba", "1"), ("EEGMamba", "2"), ("TS+LR", "1"), ("TS+LR", "2")]
    assert set(results["samples"]) == {16} and results["score"].between(0, 1).all()
    lines = table(results).splitlines()
    assert lines[0] == "| subject | session | EEGMamba | TS+LR |" and lines[-1].startswith("| mean | | ")
    assert len(lines) == 5


@pytest.mark.slow
def test_within_session_on_local_eegmmidb_runs(shared_data, tmp_path, capsys):
    folder = tmp_path / "mne_data" / "MNE-eegbci-data" / "files" / "eegmmidb" / "1.0.0" / "S001"
    folder.mkdir(parents=True)
    for run in (4, 8):
        (folder / f"S001R{run:02d}.edf").symlink_to(shared_data / "motor_imagery" / "eegmmidb" / "S001" / f"S001R{run:02d}.edf")
    assert main(["--root", str(tmp_path / "mne_data"), "--dataset", "PhysionetMI", "--subjects", "1",
                 "--set", "hand_runs=[4,8]", "--set", "feet_runs=[]", "--events", "left_hand,right_hand",
                 "--channels", "FC3,FCz,FC4,C3,Cz,C4,CP3,CP4", "--epochs", "3", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "PhysionetMI, within_session, 1 evaluation(s) per pipeline, 30 epochs in the first:" in out
    import pandas as pd

    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(results) == 2 and set(results["samples"]) == {30}  # 15 left + 15 right cues of runs 4 and 8
    scores = dict(zip(results["pipeline"], results["score"]))
    assert scores["TS+LR"] > 0.7 and 0.0 <= scores["EEGMamba"] <= 1.0, scores  # ROC AUC, 5-fold within session
