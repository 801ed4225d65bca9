"""benchmarks/shift.py: a tiny model finetuned on real EEGMAT windows (subjects 02-04) labels held-out raw
recordings (subject 05) under every default shift, and the Emotiv stress set across datasets."""

from __future__ import annotations

import json
import warnings

import edfio
import mne
import numpy as np
import pytest

from benchmarks.baselines import band_power_features
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
METRIC_KEYS = {"balanced_accuracy", "cohen_kappa", "weighted_f1", "accuracy", "n", "confusion_matrix", "auroc", "auc_pr",
               "predicted_classes", "nll", "proba_spread"}


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


def test_each_shift_transforms_the_signal_as_named(subject05):
    """The transforms themselves, on a real 19-channel recording (a no-op shift would pass the labelling tests)."""
    raw = subject05[1].load()
    raw.crop(0, 20).load_data()
    shifts = {s.name: s for s in default_shifts()}
    eeg = mne.pick_types(raw.info, eeg=True, exclude=[])
    x = raw.get_data()
    assert len(eeg) == 19 and raw.info["sfreq"] == 500
    r256 = shifts["resample_256hz"].transform(raw)
    assert r256.info["sfreq"] == 256 and abs(r256.n_times - 20 * 256) <= 1
    x2 = shifts["amplitude_x2"].transform(raw).get_data()
    np.testing.assert_allclose(x2[eeg], 2 * x[eeg])
    other = [i for i in range(len(raw.ch_names)) if i not in set(eeg)]
    np.testing.assert_array_equal(x2[other], x[other])  # ECG / the A2-A1 derivation keep their gain
    avg = shifts["average_reference"].transform(raw).get_data()
    np.testing.assert_allclose(avg[eeg].mean(axis=0), 0.0, atol=1e-12)
    half = shifts["drop_half_channels"].transform(raw)
    assert [c for c in half.ch_names if c in {raw.ch_names[i] for i in eeg}] == [raw.ch_names[i] for i in eeg[::2]]
    assert shifts["units_volts"].units == "V" and shifts["window_x2"].window_factor == 2.0
    np.testing.assert_array_equal(raw.get_data(), x)  # the transforms never change their input


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
    # the two files quantise the signal differently (16 bits over each header's range): probabilities move by < 2e-3
    np.testing.assert_allclose([r["probability"] for r in a], [r["probability"] for r in b], atol=2e-3)
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


# ------------------------------------------------------------------------- band power under shift
@pytest.fixture(scope="module")
def band_power(eegmat_shards, model_dir):
    """Band power + LR fitted on the shard windows the model was finetuned on (subjects 02-04), as a labeller."""
    from benchmarks.baselines import BandPowerLabeller, band_power_features, fit_band_power, stack_windows
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe

    data = load_task_data(get_recipe("emotion"), str(eegmat_shards[0]), max_windows=60)
    feats = band_power_features(stack_windows(data.windows))
    pipeline = fit_band_power(feats, data.labels, feats, data.labels)
    return BandPowerLabeller.fit_on(pipeline, data.windows, data.recipe.classes)


def test_recording_windows_are_the_windows_predict_file_labels(model_dir, shared_data, one_thread):
    from finetune.predict import recording_windows

    path = shared_data / "workload" / "eegmat" / "Subject05_2.edf"
    rec = recording_windows(model_dir, path)
    rows = predict_file(model_dir, path)
    assert rec.x.shape == (12, 19, 1000) and rec.x.dtype == np.float32 and rec.sfreq == 200.0  # 62 s -> 5-s windows
    assert rec.onsets_s == [r["onset_s"] for r in rows] == [5.0 * i for i in range(12)]
    assert rec.task == "emotion" and rec.classes == ["rest", "arithmetic"] == list(rows[0]["probabilities"])
    assert len(rec.channels) == 19 and "FP1" in rec.channels
    # shorter windows for the window shifts, the same as predict_file's
    short = predict_file(model_dir, path, window_s=2.0)
    assert recording_windows(model_dir, path, window_s=2.0).onsets_s == [r["onset_s"] for r in short]
    with pytest.raises(KeyError, match="has no task 'sleep'"):
        recording_windows(model_dir, path, task="sleep")


def test_band_power_labeller_puts_each_channel_in_its_training_place(band_power, model_dir, subject05, tmp_path):
    from benchmarks.baselines import BANDS, band_power_features
    from finetune.predict import recording_windows

    assert band_power.classes == ("rest", "arithmetic") and len(band_power.channels) == 19
    raw = subject05[1].load()
    (half,) = [s for s in default_shifts() if s.name == "drop_half_channels"]
    full = recording_windows(model_dir, write_recording(raw, tmp_path / "full"))
    dropped = recording_windows(model_dir, write_recording(half.transform(raw), tmp_path / "half"))
    assert len(dropped.channels) == 10 and set(dropped.channels) < set(band_power.channels)
    k = len(BANDS)
    f_full, f_half = band_power.features(full.x, full.channels), band_power.features(dropped.x, dropped.channels)
    assert f_full.shape == f_half.shape == (12, 19 * k)
    np.testing.assert_allclose(f_full, band_power_features(full.x[:, [full.channels.index(c) for c in band_power.channels]]))
    mean = band_power.pipeline[0].mean_
    for i, c in enumerate(band_power.channels):
        cols = slice(i * k, (i + 1) * k)
        if c in dropped.channels:  # the same channel's features as in the full recording
            np.testing.assert_allclose(f_half[:, cols], f_full[:, cols], atol=1e-6)
        else:  # imputed with the training mean: 0 after standardisation, no weight in the logits
            np.testing.assert_array_equal(f_half[:, cols], np.broadcast_to(mean[cols], (12, k)))
            assert np.abs(band_power.pipeline[0].transform(f_half)[:, cols]).max() < 1e-12
            assert np.abs(f_full[:, cols] - mean[cols]).max() > 0.05  # the recording's own value differs
    # channel order and channels training never saw do not matter
    perm = np.random.default_rng(0).permutation(10)
    extra = np.concatenate([dropped.x[:, perm], dropped.x[:, :1]], axis=1)
    np.testing.assert_array_equal(band_power.features(extra, [dropped.channels[p] for p in perm] + ["ECG"]), f_half)
    # the labeller's probabilities are the pipeline's on these features, in class order
    rows = band_power(model_dir, tmp_path / "half.edf", task="emotion", window_s=5.0)
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in rows], band_power.pipeline.predict_proba(f_half))
    assert [r["onset_s"] for r in rows] == dropped.onsets_s and [r["label_name"] for r in rows] == [
        band_power.classes[int(p.argmax())] for p in band_power.pipeline.predict_proba(f_half)]


def test_band_power_shift_rows_on_the_held_out_subject(band_power, model_dir, subject05, one_thread):
    from benchmarks.baselines import BandPowerLabeller

    shifts = [s for s in default_shifts() if s.name in ("none", "amplitude_x2", "drop_half_channels")]
    res = evaluate_shifts(model_dir, subject05, shifts, labeller=band_power)
    assert list(res["shifts"]) == ["none", "amplitude_x2", "drop_half_channels"]
    for name, r in res["shifts"].items():
        assert r["applicable"] and r["skipped"] == {} and r["n_windows"] == 36 + 12, name
        assert set(r["windows"]) == METRIC_KEYS and r["recordings"]["n"] == 2
    # band power is log power: twice the amplitude adds log10(4) to every feature, which changes predictions
    none, x2 = (res["shifts"][n]["per_recording"] for n in ("none", "amplitude_x2"))
    assert any(abs(a["mean_probability"][0] - b["mean_probability"][0]) > 1e-3 for a, b in zip(none, x2))
    # the "none" row is the recordings' own labels through the labeller (re-written EDF: 16-bit quantisation)
    direct = band_power(model_dir, subject05[1].load().filenames[0], task="emotion", window_s=5.0)
    np.testing.assert_allclose(none[1]["mean_probability"], np.mean([list(r["probabilities"].values()) for r in direct], 0),
                               atol=1e-3)
    with pytest.raises(ValueError, match="2 channel lists"):
        BandPowerLabeller.fit_on(band_power.pipeline, [_window(["FP1", "FP2"]), _window(["FP1", "CZ"])], ["a", "b"])
    # one channel under two names (DREAMS: C3 or CZ): by position, as the in-distribution baseline stacks them
    single = BandPowerLabeller.fit_on(band_power.pipeline, [_window(["C3"]), _window(["CZ"])], ["a", "b"])
    assert single.positional and single.channels == ("C3|CZ",)
    x = np.random.default_rng(0).standard_normal((3, 1, 1000))
    np.testing.assert_array_equal(single.features(x, ["PZ"]), band_power_features(x))
    with pytest.raises(ValueError, match="trained on one channel"):
        single.features(np.zeros((3, 2, 1000)), ["C3", "CZ"])


def _window(channels):
    from shards.sample import Window

    return Window(np.zeros((len(channels), 10), np.float32), {"channels": channels})
