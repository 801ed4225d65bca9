"""benchmarks/shift.py: a tiny model finetuned on real EEGMAT windows (subjects 02-04) labels held-out raw
recordings (subject 05) under every default shift, and the Emotiv stress set across datasets."""

from __future__ import annotations

import json
import warnings

import edfio
import mne
import numpy as np
import pytest

from benchmarks.shift import (
    CORRESPONDENCES,
    NO_SHIFT,
    Shift,
    cross_dataset_shift,
    default_shifts,
    evaluate_shifts,
    held_out,
    write_recording,
)
from finetune.config import FinetuneConfig
from finetune.predict import predict_file
from shards.readers import read_raw

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
METRIC_KEYS = {"balanced_accuracy", "cohen_kappa", "weighted_f1", "accuracy", "n", "confusion_matrix", "auroc", "auc_pr"}


@pytest.fixture(scope="module")
def model_dir(eegmat_shards, tmp_path_factory):
    """A tiny EEGMamba finetuned for 3 steps on 60 real windows of subjects 02-04 (from scratch)."""
    import torch

    from finetune.train import finetune

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("shift_model")
    finetune(FinetuneConfig(recipe="emotion", checkpoint="none", data=str(eegmat_shards[0]), out=str(out), epochs=1,
                            batch_size=8, max_windows=60, progress=False, seed=1))
    torch.set_num_threads(threads)
    return out / "model"


@pytest.fixture(scope="module")
def subject05(shared_data):
    return held_out("eegmat", shared_data / "workload" / "eegmat", subjects=["Subject05"])


def test_every_default_shift_labels_the_held_out_files_and_returns_metrics(model_dir, subject05, one_thread):
    assert [r.recording for r in subject05] == ["Subject05_1", "Subject05_2"]
    res = evaluate_shifts(model_dir, subject05)
    names = [s.name for s in default_shifts()]
    assert list(res["shifts"]) == names and names[0] == "none"
    assert res["classes"] == ["rest", "arithmetic"] and res["window_s"] == 5.0
    # whole 5-s windows of the 182-s rest and 62-s arithmetic files; 2 s and 10 s for the window shifts
    expected_windows = {"window_x0.5": 91 + 31, "window_x2": 18 + 6}
    for name, r in res["shifts"].items():
        if name == "standard_1020":  # EEGMAT is 19-channel 10-20 already: nothing to keep out
            assert not r["applicable"] and r["windows"] is None
            assert set(r["skipped"]) == {"Subject05_1", "Subject05_2"}
            continue
        assert r["applicable"] and r["skipped"] == {} and r["left_out"] == {}, name
        assert r["n_windows"] == expected_windows.get(name, 36 + 12), name
        assert set(r["windows"]) == METRIC_KEYS and r["windows"]["n"] == r["n_windows"]
        assert np.asarray(r["windows"]["confusion_matrix"]).sum() == r["n_windows"]
        assert 0.0 <= r["windows"]["balanced_accuracy"] <= 1.0 and 0.0 <= r["windows"]["auroc"] <= 1.0
        # one label per recording: the per-recording vote is scored too
        assert r["recordings"]["n"] == 2 and set(r["recordings"]) == METRIC_KEYS
        assert [p["y"] for p in r["per_recording"]] == [0, 1]
        assert json.dumps(r)  # JSON-friendly for the benchmark report
    # the same signal stored in volts is read back as the same signal
    for a, b in zip(res["shifts"]["none"]["per_recording"], res["shifts"]["units_volts"]["per_recording"]):
        np.testing.assert_allclose(a["mean_probability"], b["mean_probability"], atol=1e-4)


def test_volts_and_microvolts_files_of_a_2x_signal_give_identical_predictions(model_dir, subject05, tmp_path,
                                                                              one_thread):
    raw = subject05[1].load()
    (double,) = [s for s in default_shifts() if s.name == "amplitude_x2"]
    shifted = double.transform(raw)
    uv = write_recording(shifted, tmp_path / "uv", units="uV")
    volts = write_recording(shifted, tmp_path / "volts", units="V")
    # the headers really declare different units, and hold numbers 1e6 apart
    e_uv, e_v = edfio.read_edf(uv), edfio.read_edf(volts)
    assert e_uv.signals[0].physical_dimension == "uV" and e_v.signals[0].physical_dimension == "V"
    assert e_uv.signals[0].data.std() == pytest.approx(1e6 * e_v.signals[0].data.std(), rel=1e-3)
    a, b = predict_file(model_dir, uv), predict_file(model_dir, volts)
    assert len(a) == len(b) == 12
    assert [r["label"] for r in a] == [r["label"] for r in b]
    np.testing.assert_allclose([r["probability"] for r in a], [r["probability"] for r in b], atol=1e-4)
    # read back: both are the doubled signal in volts, within 16-bit quantisation
    ra, rb = read_raw(uv), read_raw(volts)
    eeg = mne.pick_types(ra.info, eeg=True)
    assert np.abs(ra.get_data()[eeg] - rb.get_data()[eeg]).max() < 0.01e-6
    n = ra.n_times
    np.testing.assert_allclose(ra.get_data()[eeg], 2 * raw.get_data()[eeg][:, :n], atol=0.01e-6)


def test_rates_edf_cannot_hold_go_to_fif(tmp_path):
    raw = mne.io.RawArray(np.random.default_rng(0).normal(0, 2e-5, (1, 4097)), mne.create_info(["EEG"], 173.61, "eeg"),
                          verbose="error")
    path = write_recording(raw, tmp_path / "bonn_like")
    assert path.suffix == ".fif"
    back = mne.io.read_raw_fif(path, preload=True, verbose="error")
    np.testing.assert_allclose(back.get_data(), raw.get_data(), rtol=1e-6)
    edf = write_recording(raw.copy().resample(200.0, verbose="error"), tmp_path / "whole")
    assert edf.suffix == ".edf" and read_raw(edf).n_times == 23 * 200  # whole 1-s records: 0.6 s tail cut


def test_eegmat_model_labels_the_emotiv_stress_set_across_datasets(model_dir, shared_data, one_thread):
    root = shared_data / "emotion" / "mental_stress_emotiv"
    res = cross_dataset_shift(model_dir, "mental_stress", root, subjects=["01", "02"])
    assert res["target"] == "mental_stress" and res["class_map"] == CORRESPONDENCES[("workload", "mental_stress")]
    r = res["shifts"]["none"]
    # both subjects have a horror-video (stress -> arithmetic) and a relaxing-music (calm -> rest) recording
    assert r["n_recordings"] == 4 and r["left_out"] == {} and r["recordings"]["n"] == 4
    assert sorted(p["y"] for p in r["per_recording"]) == [0, 0, 1, 1]
    assert set(r["windows"]) == METRIC_KEYS and r["windows"]["n"] == r["n_windows"] > 20
    with pytest.raises(KeyError, match="no class correspondence"):
        cross_dataset_shift(model_dir, "bonn", shared_data / "seizure" / "bonn")


def test_bad_selection_and_shift_names_are_errors(model_dir, subject05, shared_data):
    with pytest.raises(ValueError, match=r"no subject\(s\) \['Subject99'\]"):
        held_out("eegmat", shared_data / "workload" / "eegmat", subjects=["Subject99"])
    with pytest.raises(ValueError, match="repeat"):
        evaluate_shifts(model_dir, subject05, [NO_SHIFT, Shift("none", "again")])


def _rows(model_dir, shared_data, cross_dataset):
    from benchmarks.shift import shift_rows

    (double,) = [s for s in default_shifts() if s.name == "amplitude_x2"]
    rows = shift_rows(task="eegmat", method="scratch", model_dir=model_dir, data_root=shared_data,
                      shifts=[NO_SHIFT, double], cross_dataset=cross_dataset)
    for r in rows:
        assert r["task"] == "eegmat" and r["method"] == "scratch" and set(r["metrics"]) == METRIC_KEYS
        assert r["recording_metrics"]["n"] == r["n_recordings"]
    return rows


def test_shift_rows_hold_out_the_models_own_test_subjects(model_dir, shared_data, one_thread):
    recipe = json.loads((model_dir / "recipe.json").read_text())["emotion"]
    (test_group,) = recipe["split"]["groups"]["test"]  # one of subjects 02-04, never trained on
    rows = _rows(model_dir, shared_data, cross_dataset=False)
    assert [r["shift"] for r in rows] == ["none", "amplitude_x2"]
    assert rows[0]["held_out"] == [test_group.split("/")[1]] and rows[0]["n_recordings"] == 2


@pytest.mark.slow
def test_shift_rows_add_the_cross_dataset_row(model_dir, shared_data, one_thread):
    rows = _rows(model_dir, shared_data, cross_dataset=True)
    assert [r["shift"] for r in rows] == ["none", "amplitude_x2", "cross_dataset:mental_stress"]
    assert rows[2]["n_recordings"] == 32 and "pretraining" in rows[2]["target_note"]
