"""Readers: every shared recording with its real names/rate/units; text adapters; every bad input."""

from __future__ import annotations

import time
from pathlib import Path

import mne
import numpy as np
import pytest

from shards.corpora.bonn import BONN_SFREQ
from shards.readers import (
    ReadError,
    read_dreams_excerpt,
    read_raw,
    read_text_signal,
    read_yasa_snippet,
)

# rel path -> (sfreq, n_channels, first channel names, n channels typed "eeg" after reading)
SHARED = {
    "unlabeled/yasa/data_resting_EO_200Hz_raw.fif": (200.0, 2, ["F4-A1", "CZ-A2"], 2),
    "unlabeled/mne_testing/BDF/multiple_annotation_chans.bdf": (125.0, 19, ["EMG", "EOG", "A1", "A2", "C3"], 12),
    "unlabeled/eeglab/eeglab_data.set": (128.0, 32, ["FPz", "EOG1", "F3"], 30),
    "unlabeled/eeglab/testbva.vhdr": (200.0, 32, ["Fp1", "Fp2", "F3"], 29),
    "unlabeled/eeglab/test.edf": (256.0, 16, ["EEG Fp1", "EEG Fp2", "EEG T3"], 16),
    "unlabeled/eeglab/test.bdf": (256.0, 17, ["A1", "A2", "A3"], 0),
    "emotion/mental_stress_emotiv/horror_video/recording_18.edf": (128.0, 31, ["TIME_STAMP_s", "TIME_STAMP_ms"], 5),
    "sleep/dreams_spindles/excerpt3.edf": (50.0, 20, ["O1-A1", "EMG1", "ECG"], 3),
    "motor_imagery/eegmmidb/S001/S001R04.edf": (160.0, 64, ["Fc5.", "Fc3.", "Fc1."], 64),
    "sleep/dreams_spindles/excerpt1.txt": (100.0, 1, ["C3-A1"], 1),
    "sleep/dreams_spindles/excerpt2.txt": (200.0, 1, ["CZ-A1"], 1),
    "sleep/dreams_spindles/excerpt3.txt": (50.0, 1, ["C3-A1"], 1),
    "sleep/yasa_N3_30sec_100Hz.txt": (100.0, 1, ["EEG"], 1),
}


@pytest.mark.parametrize("rel", sorted(SHARED))
def test_shared_recordings_read_with_real_names(shared_data, rel):
    sfreq, n_ch, first, n_eeg = SHARED[rel]
    raw = read_raw(shared_data / rel)
    assert raw.preload
    assert raw.info["sfreq"] == pytest.approx(sfreq)
    assert len(raw.ch_names) == n_ch
    assert raw.ch_names[: len(first)] == first
    assert raw.get_channel_types().count("eeg") == n_eeg
    data = raw.get_data(picks="eeg") if n_eeg else None
    if data is not None:
        # Real EEG in volts: finite, not flat, and not off by 1e6 (µV read as V).
        std_uv = data.std(axis=1) * 1e6
        assert np.isfinite(data).all()
        assert (std_uv > 0.5).all() and (std_uv < 5000).all(), std_uv


def test_every_shared_binary_recording_reads(shared_data):
    paths = [p for p in shared_data.rglob("*") if p.suffix.lower() in (".edf", ".bdf", ".fif", ".set", ".vhdr")]
    assert len(paths) >= 50
    for path in paths:
        if path.name.endswith("Hypnogram.edf"):
            with pytest.raises(ReadError, match="annotations only"):
                read_raw(path)
            continue
        raw = read_raw(path)
        assert raw.n_times > 0 and len(raw.ch_names) > 0, path


def test_non_eeg_channels_get_non_eeg_types(shared_data):
    raw = read_raw(shared_data / "unlabeled/mne_testing/BDF/multiple_annotation_chans.bdf")
    types = dict(zip(raw.ch_names, raw.get_channel_types()))
    assert types["EOG"] == "eog" and types["EMG"] == "emg" and types["ECG"] == "ecg"
    assert types["Trigger"] == "stim" and types["acc1"] == "misc"
    assert types["A1"] == "eeg" and types["C3"] == "eeg"
    raw = read_raw(shared_data / "emotion/mental_stress_emotiv/relaxing_music/recording_02.edf")
    assert raw.copy().pick("eeg").ch_names == ["AF3", "T7", "Pz", "T8", "AF4"]


def test_dreams_text_and_edf_agree_in_microvolts(shared_data):
    # Same excerpt in two formats: the EDF labels its unit "UV", which MNE 1.13 reads as volts (x 1e6).
    folder = shared_data / "sleep/dreams_spindles"
    text = read_dreams_excerpt(folder / "excerpt3.txt").get_data()[0]
    edf = read_raw(folder / "excerpt3.edf").get_data(picks=["C3-A1"])[0]
    assert text.shape == edf.shape == (90000,)
    assert np.abs(text - edf).max() < 1e-9  # < 0.001 µV: the text holds 4 decimals of µV
    assert 10e-6 < edf.std() < 40e-6  # tens of µV of sleep EEG


@pytest.mark.parametrize(("n", "sfreq", "n_times"), [(1, 100.0, 180000), (2, 200.0, 360000), (3, 50.0, 90000),
                                                     (6, 200.0, 360140)])
def test_dreams_excerpt_rates(shared_data, n, sfreq, n_times):
    raw = read_dreams_excerpt(shared_data / f"sleep/dreams_spindles/excerpt{n}.txt")
    assert raw.info["sfreq"] == sfreq and raw.n_times == n_times


def test_text_reading_is_fast(shared_data):
    start = time.perf_counter()
    raw = read_raw(shared_data / "sleep/dreams_spindles/excerpt2.txt")
    elapsed = time.perf_counter() - start
    assert raw.n_times == 360000
    assert elapsed < 2.0, f"{elapsed:.2f} s for 360k lines (np.loadtxt takes ~1 s)"


def test_yasa_and_bonn_text(shared_data):
    raw = read_yasa_snippet(shared_data / "sleep/yasa_N2_spindles_15sec_200Hz.txt")
    assert raw.info["sfreq"] == 200.0 and raw.n_times == 3000
    bonn = sorted((shared_data / "seizure/bonn/Z").glob("*.txt"))[0]
    raw = read_raw(bonn, sfreq=BONN_SFREQ, ch_name="EEG")
    assert raw.info["sfreq"] == pytest.approx(173.61) and raw.n_times == 4097
    first = float(bonn.read_text().split()[0])
    assert raw.get_data()[0, 0] == pytest.approx(first * 1e-6)  # counts treated as µV
    with pytest.raises(ReadError, match="sampling rate unknown"):
        read_raw(bonn)


# ----------------------------------------------------------------------------------------- synthetic files


def _write_edf(path: Path, sfreq: float = 256.0, seconds: int = 10, names=("Fp1", "Cz", "EOG")) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.normal(0, 20e-6, (len(names), int(sfreq * seconds)))
    raw = mne.io.RawArray(data, mne.create_info(list(names), sfreq, "eeg"), verbose="error")
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    return data


def test_synthetic_edf_round_trip(tmp_path):
    data = _write_edf(tmp_path / "ok.edf")
    raw = read_raw(tmp_path / "ok.edf")
    assert raw.ch_names == ["Fp1", "Cz", "EOG"]
    assert raw.get_channel_types() == ["eeg", "eeg", "eog"]
    assert np.abs(raw.get_data() - data).max() < 0.05e-6  # EDF's 16-bit quantisation


def test_upper_case_unit_is_microvolts(tmp_path):
    path = tmp_path / "uv.edf"
    data = _write_edf(path)
    blob = bytearray(path.read_bytes())
    ns = int(blob[252:256])  # 3 signals + the EDF+ annotation signal
    for i in range(3):
        off = 256 + ns * 96 + 8 * i
        assert blob[off : off + 2] == b"uV"
        blob[off : off + 8] = b"UV      "
    path.write_bytes(bytes(blob))
    assert np.abs(read_raw(path).get_data() - data).max() < 0.05e-6


def test_missing_file(tmp_path):
    with pytest.raises(ReadError) as info:
        read_raw(tmp_path / "nope.edf")
    assert info.value.path.endswith("nope.edf") and info.value.reason == "file not found"
    assert str(info.value) == f"{tmp_path / 'nope.edf'}: file not found"


def test_truncated_edf(tmp_path):
    path = tmp_path / "cut.edf"
    _write_edf(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ReadError, match=r"cut\.edf: truncated: header declares 10 data records"):
        read_raw(path)
    path.write_bytes(blob[:200])
    with pytest.raises(ReadError, match="truncated header"):
        read_raw(path)


def test_garbage_edf(tmp_path):
    path = tmp_path / "garbage.edf"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ReadError, match="garbage.edf: not an EDF/BDF file"):
        read_raw(path)
    (tmp_path / "empty.bdf").write_bytes(b"")
    with pytest.raises(ReadError, match="empty"):
        read_raw(tmp_path / "empty.bdf")
    (tmp_path / "garbage.set").write_bytes(b"\x00" * 300)
    with pytest.raises(ReadError, match="garbage.set: cannot read EEGLAB file"):
        read_raw(tmp_path / "garbage.set")


def test_unknown_extension(tmp_path):
    path = tmp_path / "x.abc"  # (.xyz is an electrode-position file: see test_positions.py)
    path.write_text("1\n2\n")
    with pytest.raises(ReadError, match=r"x\.abc: unknown format '\.abc'"):
        read_raw(path)


@pytest.mark.parametrize(("field", "value", "match"), [
    (slice(244, 252), b"0       ", "invalid sampling rate: data record duration 0.0"),
    (slice(244, 252), b"-1      ", "invalid sampling rate: data record duration -1.0"),
    (slice(244, 252), b"1e-7    ", "invalid sampling rate 2.56e\\+09 Hz"),
    (slice(244, 252), b"nan     ", "invalid sampling rate: data record duration nan"),
])
def test_wrong_sampling_rate_in_header(tmp_path, field, value, match):
    path = tmp_path / "rate.edf"
    _write_edf(path)
    blob = bytearray(path.read_bytes())
    blob[field] = value
    path.write_bytes(bytes(blob))
    with pytest.raises(ReadError, match=match):
        read_raw(path)


def test_zero_samples_per_record(tmp_path):
    path = tmp_path / "spr.edf"
    _write_edf(path)
    blob = bytearray(path.read_bytes())
    ns = int(blob[252:256])
    off = 256 + ns * 216
    blob[off : off + 8] = b"0       "
    path.write_bytes(bytes(blob))
    with pytest.raises(ReadError, match="a signal has 0 samples per record"):
        read_raw(path)


def test_bad_text(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1\n2\nthree\n4\n")
    with pytest.raises(ReadError, match=r"bad.txt: line 3: 'three' is not a number"):
        read_text_signal(path, 100.0, "EEG")
    with pytest.raises(ReadError, match="invalid sampling rate"):
        read_text_signal(path, 0.0, "EEG")
    dreams = tmp_path / "excerpt9.txt"
    dreams.write_text("[C3-A1]\n" + "1.0\n" * 1000)
    with pytest.raises(ReadError, match="1800-s excerpt"):
        read_dreams_excerpt(dreams)
    ok = tmp_path / "fine.txt"
    ok.write_text(" 1.5\n-2.25\n3e1\n")
    np.testing.assert_allclose(read_text_signal(ok, 10.0, "EEG", unit_scale=1.0).get_data()[0], [1.5, -2.25, 30.0])


def test_read_error_rebuilds_from_path_and_reason():
    # Worker processes send errors back to the parent by reconstruction (__reduce__); copy uses the same path.
    import copy

    err = copy.copy(ReadError("/data/a.edf", "truncated"))
    assert (err.path, err.reason, str(err)) == ("/data/a.edf", "truncated", "/data/a.edf: truncated")


def test_header_rate_bounds_are_looser_than_the_sample_contract(shared_data, tmp_path):
    """A 10-Hz EDF is intact (read_raw reads it) but below the rate a build keeps (shards.sample.check_sfreq)."""
    from shards import readers, sample

    assert not hasattr(readers, "MIN_SFREQ")  # one name, one meaning: the contract's 25 Hz lives in shards.sample
    assert readers.HEADER_MIN_SFREQ < 10.0 < sample.MIN_SFREQ
    raw = mne.io.read_raw_edf(shared_data / "motor_imagery/eegmmidb/S001/S001R04.edf", preload=True, verbose="error")
    slow = raw.crop(0, 60 - 1 / 160).resample(10.0, verbose="error")
    mne.export.export_raw(tmp_path / "slow.edf", slow, fmt="edf", verbose="error")
    got = read_raw(tmp_path / "slow.edf")
    assert got.info["sfreq"] == 10.0 and got.n_times == 600
    with pytest.raises(ValueError, match=r"slow\.edf: sampling rate 10 Hz .* \(expected 25-100000 Hz\)"):
        sample.check_sfreq(got.info["sfreq"], str(tmp_path / "slow.edf"))
