"""Preprocessing: amplitude/units, rate, frequency content, notch, channel picks, windows and drop reasons."""

from __future__ import annotations

import dataclasses

import mne
import numpy as np
import pytest

from shards.corpora.bonn import BONN_SFREQ
from shards.preprocess import (
    NoEEGError,
    PreprocessConfig,
    Segment,
    Signal,
    cut_windows,
    preprocess_raw,
)
from shards.readers import read_dreams_excerpt, read_raw


def _raw(names, sfreq, seconds, components=((10.0, 50.0),), types="eeg", seed=0):
    """RawArray whose channels are sums of sinusoids ``(freq Hz, amplitude µV)`` plus a small noise floor."""
    t = np.arange(int(round(seconds * sfreq))) / sfreq
    rng = np.random.default_rng(seed)
    x = sum(amp * np.sin(2 * np.pi * f * t) for f, amp in components)
    data = np.stack([x + rng.normal(0, 0.5, t.size) for _ in names]) * 1e-6
    return mne.io.RawArray(data, mne.create_info(list(names), sfreq, types), verbose="error")


def _amplitude_at(x: np.ndarray, sfreq: float, freq: float) -> float:
    """Least-squares amplitude of a sinusoid at ``freq`` in ``x [T]``."""
    t = np.arange(x.size) / sfreq
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.hypot(*coef))


@pytest.mark.parametrize("orig", [128.0, BONN_SFREQ, 160.0, 200.0, 256.0, 512.0])
def test_sinusoid_survives_with_amplitude_rate_and_phase(orig):
    raw = _raw(["EEG Fp1-REF", "EEG Cz-REF"], orig, 30.0)
    sig = preprocess_raw(raw, PreprocessConfig(), source="synthetic")
    assert sig.channels == ["FP1", "CZ"]
    assert sig.sfreq == 200.0 and sig.orig_sfreq == orig
    assert sig.data.dtype == np.float32
    assert sig.data.shape == (2, int(np.ceil(raw.n_times * 200.0 / orig)))
    mid = sig.data[:, 1000:-1000]  # away from filter edges
    # 50 µV in units of 100 µV is 0.5, and zero-phase filtering + resampling keep it in place in time.
    t = np.arange(sig.data.shape[1]) / 200.0
    expected = 0.5 * np.sin(2 * np.pi * 10.0 * t)[1000:-1000]
    assert np.abs(mid - expected).max() < 0.03
    assert _amplitude_at(mid[0], 200.0, 10.0) == pytest.approx(0.5, rel=0.01)
    spectrum = np.abs(np.fft.rfft(mid[0]))
    assert np.fft.rfftfreq(mid.shape[1], 1 / 200.0)[spectrum.argmax()] == pytest.approx(10.0, abs=0.1)


def test_units_are_microvolts_over_100_without_clipping():
    raw = _raw(["C3"], 200.0, 20.0, components=((5.0, 2000.0),))  # 2 mV: huge, must not be clipped
    sig = preprocess_raw(raw, PreprocessConfig(notch=None))
    assert _amplitude_at(sig.data[0, 800:-800], 200.0, 5.0) == pytest.approx(20.0, rel=0.01)


def test_notch_removes_mains_and_keeps_alpha():
    raw = _raw(["O1", "O2"], 256.0, 30.0, components=((10.0, 30.0), (50.0, 30.0)))
    notched = preprocess_raw(raw, PreprocessConfig(notch=50.0)).data[0, 1000:-1000]
    plain = preprocess_raw(raw, PreprocessConfig(notch=None)).data[0, 1000:-1000]
    assert _amplitude_at(plain, 200.0, 50.0) == pytest.approx(0.3, rel=0.02)
    assert _amplitude_at(notched, 200.0, 50.0) < 0.3 / 100  # > 40 dB down
    assert _amplitude_at(notched, 200.0, 10.0) == pytest.approx(0.3, rel=0.01)


def test_band_pass_removes_drift_and_high_frequency():
    raw = _raw(["CZ"], 512.0, 60.0, components=((0.02, 500.0), (10.0, 20.0), (120.0, 50.0)))
    sig = preprocess_raw(raw, PreprocessConfig())
    mid = sig.data[0, 4000:-4000]
    assert _amplitude_at(mid, 200.0, 10.0) == pytest.approx(0.2, rel=0.02)
    assert abs(mid.mean()) < 0.05  # 500 µV drift at 0.02 Hz is gone (5 in these units)
    assert np.abs(np.fft.rfft(mid))[np.fft.rfftfreq(mid.size, 1 / 200.0) > 80].max() < 0.01 * mid.size


def test_low_rate_clamps_h_freq_and_skips_notch_with_notes():
    sig = preprocess_raw(_raw(["C3-A1"], 50.0, 60.0, components=((10.0, 40.0),)), PreprocessConfig())
    assert any("h_freq lowered to 22.5 Hz" in n and "25 Hz" in n for n in sig.notes), sig.notes
    assert any("notch at 50 Hz skipped" in n for n in sig.notes), sig.notes
    assert _amplitude_at(sig.data[0, 2000:-2000], 200.0, 10.0) == pytest.approx(0.4, rel=0.02)
    sig = preprocess_raw(_raw(["AF3"], 128.0, 30.0), PreprocessConfig())
    assert sig.notes == ["h_freq lowered to 57.6 Hz: below Nyquist of 64 Hz"]


def test_fir_method_agrees_with_iir():
    raw = _raw(["FZ", "PZ"], 256.0, 60.0, components=((10.0, 50.0), (50.0, 20.0)))
    iir = preprocess_raw(raw, PreprocessConfig(filter_method="iir")).data[:, 2000:-2000]
    fir = preprocess_raw(raw, PreprocessConfig(filter_method="fir")).data[:, 2000:-2000]
    assert np.abs(iir - fir).max() < 0.02


@pytest.mark.parametrize("orig", [128.0, BONN_SFREQ, 160.0, 200.0, 256.0])
def test_fft_method_matches_time_domain_iir(orig):
    # The default "fft" path applies the Butterworth cascade's |H|^2 in the frequency domain; in the interior
    # it must give what the forward-backward IIR gives (both zero-phase; the "iir" path's low-pass edge is a
    # Kaiser FIR when it resamples, and at odd rates such as Bonn's the FFT grid may run up to 0.05 samples
    # off by the end: hence 3% of the 0.5-unit tone, not float precision), and at the edges (mirror padding in
    # both) be no worse than 0.06 (12% of the 0.5-unit tone) in the first and last 3 s.
    raw = _raw(["C3", "C4"], orig, 30.0, components=((10.0, 50.0), (50.0, 20.0), (30.0, 10.0)))
    fft = preprocess_raw(raw, PreprocessConfig(filter_method="fft")).data
    iir = preprocess_raw(raw, PreprocessConfig(filter_method="iir")).data
    assert fft.shape == iir.shape and fft.dtype == np.float32
    assert np.abs(fft - iir)[:, 1000:-1000].max() < 0.015
    tone = preprocess_raw(_raw(["C3"], orig, 30.0), PreprocessConfig(filter_method="fft")).data[0]
    err = np.abs(tone - 0.5 * np.sin(2 * np.pi * 10.0 * np.arange(tone.size) / 200.0))
    # The very last output sample may lie up to one input period past the last input sample: skip it.
    assert err[:600].max() < 0.06 and err[-600:-1].max() < 0.06


def test_fft_plan_lengths_and_timing_bound():
    from shards.filters import MAX_DRIFT_SAMPLES as _MAX_DRIFT_SAMPLES, fft_plan as _fft_plan, is_smooth as _smooth

    # Exact 5/4 grid for 160 -> 200 Hz; a fast (5-smooth) grid within the drift bound for Bonn's 173.61 Hz.
    for n, orig in [(20000, 160.0), (4097, BONN_SFREQ), (3840, 128.0), (15360, 256.0)]:
        n_out = int(np.ceil(n * 200.0 / orig))
        n_fft, m_fft, pad = _fft_plan(n, orig, 200.0, n_out)
        assert _smooth(n_fft) and _smooth(m_fft)
        assert abs(m_fft / n_fft - 200.0 / orig) * n_out <= _MAX_DRIFT_SAMPLES
        assert pad >= 3 * orig - 1 and n_fft - n - pad >= 3 * orig - 1  # >= 3 s of mirror on both sides
        assert (pad * m_fft) % n_fft == 0  # output sample 0 sits exactly on input sample 0
    assert _fft_plan(20000, 160.0, 200.0, 25000)[1] * 4 == _fft_plan(20000, 160.0, 200.0, 25000)[0] * 5


def test_channel_selection_reports_every_drop():
    names = ["EEG Fp1-REF", "EEG FP1-LE", "EOG1", "CQ_AF3", "EEG T3-REF", "Status", "X7", "Cz"]
    raw = _raw(names, 256.0, 12.0)
    sig = preprocess_raw(raw, PreprocessConfig(), source="rec.edf")
    assert sig.channels == ["FP1", "T7", "CZ"]
    assert sig.data.shape[0] == 3
    assert sig.dropped_channels == {
        "EEG FP1-LE": "duplicate of FP1 (kept 'EEG Fp1-REF')",
        "EOG1": "non-eeg: EOG",
        "CQ_AF3": "non-eeg: contact quality",
        "Status": "non-eeg: trigger/marker",
        "X7": "unknown name",
    }


def test_file_channel_type_wins_over_name():
    raw = _raw(["Fp1", "Fp2", "Cz"], 200.0, 12.0)
    raw.set_channel_types({"Fp1": "eog"}, verbose="error")
    sig = preprocess_raw(raw)
    assert sig.channels == ["FP2", "CZ"] and sig.dropped_channels == {"Fp1": "non-eeg: channel type eog"}


def test_explicit_channel_map_for_unknown_position():
    raw = _raw(["EEG"], BONN_SFREQ, 23.6)
    with pytest.raises(NoEEGError):
        preprocess_raw(raw)
    sig = preprocess_raw(raw, channel_map={"EEG": "EEG"})
    assert sig.channels == ["EEG"]
    with pytest.raises(ValueError, match="NOT-A-CHANNEL"):
        preprocess_raw(raw, channel_map={"EEG": "NOT-A-CHANNEL"})


def test_no_eeg_error_names_source_and_channels():
    raw = _raw(["EOG1", "ECG", "TIME_STAMP_s"], 128.0, 12.0)
    with pytest.raises(NoEEGError, match=r"rec42\.edf: no usable EEG channel among 3 channels: 'EOG1' \(non-eeg: EOG\)"):
        preprocess_raw(raw, source="rec42.edf")
    assert issubclass(NoEEGError, ValueError)


def test_flat_channels_are_dropped_and_all_flat_is_no_eeg():
    raw = _raw(["C3", "C4"], 200.0, 20.0)
    raw._data[1] = 3e-6  # a disconnected electrode at a constant offset
    sig = preprocess_raw(raw)
    assert sig.channels == ["C3"]
    assert sig.dropped_channels["C4"].startswith("flat channel")
    raw._data[0] = 0.0
    with pytest.raises(NoEEGError, match="flat channel"):
        preprocess_raw(raw, source="flat.edf")


def test_nan_gap_only_drops_windows_that_touch_it():
    raw = _raw(["C3", "C4"], 250.0, 60.0)
    raw._data[0, 250 * 25 : 250 * 26] = np.nan  # 25 s .. 26 s
    cfg = PreprocessConfig(window_s=10.0)
    sig = preprocess_raw(raw, cfg)
    assert any("NaN" in n for n in sig.notes)
    windows, drops = cut_windows(sig, None, cfg)
    assert drops == {"nan": 1}
    assert [w.onset_s for w in windows] == [0.0, 10.0, 30.0, 40.0, 50.0]
    assert all(np.isfinite(w.eeg).all() for w in windows)


# ----------------------------------------------------------------------------------------------- windows


def _signal(n_ch=2, seconds=60.0, sfreq=200.0, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 0.2, (n_ch, int(seconds * sfreq))).astype(np.float32)  # 20 µV noise
    return Signal(data=data, channels=["C3", "C4"][:n_ch], sfreq=sfreq, source="sig")


def test_windows_count_stride_and_exact_slices():
    sig = _signal(seconds=60.0)
    cfg = PreprocessConfig(window_s=10.0, stride_s=5.0)
    windows, drops = cut_windows(sig, None, cfg)
    assert len(windows) == 11 and not drops  # (60 - 10) / 5 + 1
    for i, w in enumerate(windows):
        assert w.index == i and w.start == i * 1000 and w.onset_s == i * 5.0
        assert w.eeg.shape == (2, 2000) and w.eeg.dtype == np.float32
        np.testing.assert_array_equal(w.eeg, sig.data[:, w.start : w.start + 2000])
        assert w.label is None and w.label_name is None
    windows, _ = cut_windows(sig, None, PreprocessConfig(window_s=10.0))
    assert [w.start for w in windows] == [0, 2000, 4000, 6000, 8000, 10000]


def test_segments_labels_and_short_segments():
    sig = _signal(seconds=60.0)
    cfg = PreprocessConfig(window_s=4.0)
    segments = [
        Segment(0.0, 12.0, 0, "rest"),       # 3 windows
        Segment(12.0, 4.1, 1, "left"),       # 1 window
        Segment(20.0, 3.9, 2, "right"),      # short
        Segment(58.0, 10.0, 1, "left"),      # runs past the end: 2 s left -> short
    ]
    windows, drops = cut_windows(sig, segments, cfg)
    assert [(w.start, w.label, w.label_name) for w in windows] == [
        (0, 0, "rest"), (800, 0, "rest"), (1600, 0, "rest"), (2400, 1, "left"),
    ]
    assert drops == {"short": 2}
    assert [w.index for w in windows] == [0, 1, 2, 3]


def test_window_drop_reasons():
    sig = _signal(seconds=50.0)
    sig.data[0, 2500] = 7.0  # 700 µV spike in window 1
    sig.data[1, 4000:6000] = 0.3  # channel C4 flat (a dropout at a constant value) for all of window 2
    sig.data[0, 6100] = np.nan  # window 3
    sig.data[1, 8000] = np.inf  # window 4
    cfg = PreprocessConfig(window_s=10.0, max_abs_uv=500.0, flat_uv=1.0)
    windows, drops = cut_windows(sig, None, cfg)
    assert [w.start for w in windows] == [0]
    assert drops == {"amplitude": 1, "flat": 1, "nan": 2}
    # Both bounds are parameters; None disables them.
    windows, drops = cut_windows(sig, None, dataclasses.replace(cfg, max_abs_uv=None, flat_uv=None))
    assert [w.start for w in windows] == [0, 2000, 4000] and drops == {"nan": 2}


def test_cut_windows_rejects_rate_mismatch_and_bad_segments():
    sig = _signal()
    with pytest.raises(ValueError, match="200.0 Hz but the config expects 250"):
        cut_windows(sig, None, PreprocessConfig(sfreq=250.0))
    with pytest.raises(ValueError, match="invalid segment"):
        cut_windows(sig, [Segment(0.0, float("nan"))], PreprocessConfig())


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(sfreq=0), "sfreq must be a positive number"),
    (dict(h_freq=100.0), "h_freq=100.0 must be below the Nyquist rate 100.0"),
    (dict(l_freq=80.0, h_freq=70.0), "l_freq=80.0 must be below h_freq=70.0"),
    (dict(window_s=-1.0), "window_s must be a positive number"),
    (dict(window_s=0.001), "shorter than one sample"),
    (dict(stride_s=float("nan")), "stride_s must be a positive number"),
    (dict(max_abs_uv="100"), "max_abs_uv must be a positive number"),
    (dict(filter_method="butter"), "filter_method must be 'fft', 'iir' or 'fir'"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreprocessConfig(**kwargs)


def test_config_is_frozen_and_defaults_match_design():
    cfg = PreprocessConfig()
    assert (cfg.sfreq, cfg.l_freq, cfg.h_freq, cfg.notch, cfg.window_s) == (200.0, 0.1, 75.0, 50.0, 10.0)
    assert cfg.window_samples == 2000 and cfg.stride_samples == 2000
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sfreq = 100.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- real data


def test_dreams_text_and_edf_preprocess_identically(shared_data):
    folder = shared_data / "sleep/dreams_spindles"
    text = preprocess_raw(read_dreams_excerpt(folder / "excerpt3.txt"))
    edf = preprocess_raw(read_raw(folder / "excerpt3.edf"))
    assert text.channels == ["C3"] and edf.channels == ["O1", "C3", "FP1"]
    assert text.data.shape == (1, 360000) and edf.data.shape == (3, 360000)
    np.testing.assert_allclose(text.data[0], edf.data[1], atol=1e-4)
    assert 0.05 < float(edf.data[1].std()) < 0.5  # 5..50 µV of sleep EEG in 100-µV units


def test_shared_recordings_preprocess(shared_data):
    raw = read_raw(shared_data / "motor_imagery/eegmmidb/S001/S001R04.edf")
    sig = preprocess_raw(raw)
    assert sig.data.shape == (64, 25000) and sig.channels[:3] == ["FC5", "FC3", "FC1"] and not sig.dropped_channels
    raw = read_raw(shared_data / "emotion/mental_stress_emotiv/horror_video/recording_18.edf")
    sig = preprocess_raw(raw)
    assert sig.channels == ["AF3", "T7", "PZ", "T8", "AF4"] and len(sig.dropped_channels) == 26
    assert (np.abs(sig.data.mean(axis=1)) < 0.5).all()  # Emotiv's ~4000 µV (40 units) offset is gone
    bonn = sorted((shared_data / "seizure/bonn/S").glob("*.txt"))[0]
    sig = preprocess_raw(read_raw(bonn, sfreq=BONN_SFREQ), channel_map={"EEG": "EEG"})
    windows, drops = cut_windows(sig, [Segment(0.0, sig.duration_s, 1, "seizure")], PreprocessConfig(max_abs_uv=None))
    assert sig.channels == ["EEG"] and len(windows) == 2 and windows[0].label == 1
    with pytest.raises(NoEEGError, match="test.bdf"):
        preprocess_raw(read_raw(shared_data / "unlabeled/eeglab/test.bdf"))
