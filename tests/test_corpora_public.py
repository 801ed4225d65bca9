"""Adapters for public corpora we do not ship, on small files written here in each corpus's real format.

EDF/EDF+ via MNE's exporter (edfio), GDF 2.20 by a minimal writer following the GDF spec (MNE reads GDF
but has no writer), MATLAB files via scipy.io.savemat, text sidecars as the corpora lay them out. The
Sleep-EDF hypnogram parser also runs on the REAL annotation-only file in ../shared/data when present.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pytest
import scipy.io

from shards.corpora import LabelError, get_corpus
from shards.corpora.bciciv2a import EEG_CHANNELS
from shards.corpora.chbmit import read_summary
from shards.corpora.seed import CHANNELS as SEED_CHANNELS
from shards.corpora.sleep_edf import hypnogram_epochs
from shards.readers import ReadError
from shards.vocabulary import canonical_name


def write_edf(path: Path, ch_names, sfreq: float, seconds: float, annotations=(), seed: int = 0) -> np.ndarray:
    """EDF(+) with Gaussian noise (~20 µV) and ``annotations`` = [(onset, duration, description)]."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 20e-6, (len(ch_names), int(round(sfreq * seconds))))
    raw = mne.io.RawArray(data, mne.create_info(list(ch_names), sfreq, "eeg"), verbose="error")
    if annotations:
        onset, duration, desc = zip(*annotations)
        raw.set_annotations(mne.Annotations(onset, duration, desc))
    path.parent.mkdir(parents=True, exist_ok=True)
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    return data


def segs(loaded) -> list[tuple[float, float, str]]:
    return [(round(s.onset_s, 6), round(s.duration_s, 6), s.label_name) for s in loaded.segments]


TUH_CHANNELS = ["EEG FP1-REF", "EEG FP2-REF", "EEG T3-REF", "EEG C3-REF", "EEG CZ-REF", "EKG1-REF"]


# ----------------------------------------------------------------------------------------------- TUEG
def test_tueg_finds_tuh_files_with_subject_session_montage(tmp_path):
    write_edf(tmp_path / "000/aaaaaaaa/s001_2015_01_01/01_tcp_ar/aaaaaaaa_s001_t000.edf", TUH_CHANNELS, 250, 12)
    write_edf(tmp_path / "000/aaaaaaaa/s001_2015_01_01/01_tcp_ar/aaaaaaaa_s001_t001.edf", TUH_CHANNELS, 250, 8)
    write_edf(tmp_path / "001/aaaaaaab/s002_2016_02_02/02_tcp_le/aaaaaaab_s002_t000.edf", TUH_CHANNELS, 256, 10)
    write_edf(tmp_path / "docs/example.edf", TUH_CHANNELS, 250, 2)  # not a TUH name: not part of the corpus
    adapter = get_corpus("tueg")
    recs = adapter.find(tmp_path)
    assert [(r.recording, r.subject, r.session, r.extra["montage"]) for r in recs] == [
        ("aaaaaaaa_s001_t000", "aaaaaaaa", "s001", "01_tcp_ar"),
        ("aaaaaaaa_s001_t001", "aaaaaaaa", "s001", "01_tcp_ar"),
        ("aaaaaaab_s002_t000", "aaaaaaab", "s002", "02_tcp_le"),
    ]
    assert recs[2].source == "001/aaaaaaab/s002_2016_02_02/02_tcp_le/aaaaaaab_s002_t000.edf"
    assert all(r.task is None for r in recs) and adapter.mains_hz == 60.0
    loaded = adapter.load(recs[0])
    assert loaded.segments is None
    assert loaded.raw.ch_names == TUH_CHANNELS and loaded.raw.n_times == 12 * 250
    assert [canonical_name(c) for c in loaded.raw.ch_names[:5]] == ["FP1", "FP2", "T7", "C3", "CZ"]


# ----------------------------------------------------------------------------------------------- TUAB
def test_tuab_labels_and_official_split(tmp_path):
    edf = tmp_path / "edf"
    write_edf(edf / "train/normal/01_tcp_ar/aaaaaaaa_s001_t000.edf", TUH_CHANNELS, 250, 20)
    write_edf(edf / "train/abnormal/01_tcp_ar/aaaaaaab_s001_t000.edf", TUH_CHANNELS, 250, 20)
    write_edf(edf / "eval/abnormal/01_tcp_ar/aaaaaaac_s002_t001.edf", TUH_CHANNELS, 250, 30)
    write_edf(edf / "eval/normal/01_tcp_ar/aaaaaaad_s001_t000.edf", TUH_CHANNELS, 250, 20)
    write_edf(tmp_path / "extra/aaaaaaae_s001_t000.edf", TUH_CHANNELS, 250, 20)  # outside the labelled tree
    adapter = get_corpus("tuab")
    recs = adapter.find(tmp_path)
    assert [(r.recording, r.subject, r.extra["label"], r.extra["split"]) for r in recs] == [
        ("aaaaaaaa_s001_t000", "aaaaaaaa", "normal", "train"),
        ("aaaaaaab_s001_t000", "aaaaaaab", "abnormal", "train"),
        ("aaaaaaac_s002_t001", "aaaaaaac", "abnormal", "eval"),
        ("aaaaaaad_s001_t000", "aaaaaaad", "normal", "eval"),
    ]
    assert all(r.task == "abnormal" for r in recs)
    loaded = adapter.load(recs[2])
    assert segs(loaded) == [(0.0, 30.0, "abnormal")] and loaded.segments[0].label == 1
    assert adapter.load(recs[0]).segments[0].label == 0
    assert adapter.preprocess_overrides["window_s"] == 10.0


# ----------------------------------------------------------------------------------------------- TUEV
def test_tuev_events_become_5s_windows(tmp_path):
    edf = tmp_path / "edf/train/aaaaaaar/aaaaaaar_00000001.edf"
    write_edf(edf, TUH_CHANNELS, 250, 60)
    edf.with_suffix(".rec").write_text(
        "0,10.0,11.0,6\n"
        "1,10.0,11.0,6\n"  # same event on another channel: one segment
        "2,10.0,11.0,1\n"  # same time, other class: its own segment
        "3,0.0,1.0,4\n"  # 2 s of context would start before 0: shifted to [0, 5]
        "4,59.0,60.0,5\n"  # would run past the end: shifted to [55, 60]
    )
    write_edf(tmp_path / "edf/eval/aaaaaaas/aaaaaaas_00000002.edf", TUH_CHANNELS, 250, 20)  # .rec missing
    adapter = get_corpus("tuev")
    recs = adapter.find(tmp_path)
    assert [(r.recording, r.subject, r.extra["split"]) for r in recs] == [
        ("aaaaaaar_00000001", "aaaaaaar", "train"),
        ("aaaaaaas_00000002", "aaaaaaas", "eval"),
    ]
    loaded = adapter.load(recs[0])
    assert segs(loaded) == [(0.0, 5.0, "eyem"), (8.0, 5.0, "spsw"), (8.0, 5.0, "bckg"), (55.0, 5.0, "artf")]
    assert [s.label for s in loaded.segments] == [3, 0, 5, 4]
    with pytest.raises(LabelError, match=r"aaaaaaas_00000002\.rec.*missing"):
        adapter.load(recs[1])
    edf.with_suffix(".rec").write_text("0,10.0,11.0,6\n0;12;13;6\n")
    with pytest.raises(LabelError, match=r"aaaaaaar_00000001\.rec: line 2"):
        adapter.load(recs[0])
    edf.with_suffix(".rec").write_text("0,10.0,11.0,7\n")
    with pytest.raises(LabelError, match="label 7"):
        adapter.load(recs[0])


# ------------------------------------------------------------------------------------------ Sleep-EDF
SLEEP_EDF_STAGE = {"Sleep stage W": "W", "Sleep stage 1": "N1", "Sleep stage 2": "N2", "Sleep stage 3": "N3",
                   "Sleep stage 4": "N3", "Sleep stage R": "REM"}


def test_sleep_edf_real_hypnogram(shared_data):
    path = shared_data / "sleep/sleep_edf_hypnogram_only/SC4001EC-Hypnogram.edf"
    ann = mne.read_annotations(path)
    expected, unknown = Counter(), 0
    for dur, desc in zip(ann.duration, ann.description):
        if desc in SLEEP_EDF_STAGE:
            expected[SLEEP_EDF_STAGE[desc]] += int(dur // 30)
        else:
            unknown += int(dur // 30)
    epochs, skipped = hypnogram_epochs(path, total_s=None, trim_wake_s=None)
    assert Counter(s.label_name for s in epochs) == expected == {"W": 1997, "N1": 58, "N2": 250, "N3": 220, "REM": 125}
    assert skipped == {"stage_unknown": unknown} and unknown == 230
    onsets = np.array([s.onset_s for s in epochs])
    assert np.all(np.diff(onsets) >= 30) and onsets[0] == 0.0
    # Trimmed to 30 min of wake around sleep: SC4001's 841 epochs in the SleepEDF-20 benchmarks.
    trimmed, skipped = hypnogram_epochs(path, total_s=None)
    counts = Counter(s.label_name for s in trimmed)
    assert counts == {"W": 188, "N1": 58, "N2": 250, "N3": 220, "REM": 125} and sum(counts.values()) == 841
    assert skipped["wake_trimmed"] == 1997 - 188
    sleep = [s.onset_s for s in trimmed if s.label_name != "W"]
    wake = [s.onset_s for s in trimmed if s.label_name == "W"]
    assert min(wake) == min(sleep) - 1800 and max(wake) + 30 == max(sleep) + 30 + 1800


def test_sleep_edf_pairs_psg_with_hypnogram(tmp_path):
    psg_channels = ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"]
    write_edf(tmp_path / "SC4001E0-PSG.edf", psg_channels, 20.0, 7200)
    write_edf(tmp_path / "SC4002E0-PSG.edf", psg_channels, 20.0, 60)  # its hypnogram is missing
    stages = [("Sleep stage W", 0, 3600), ("Sleep stage 1", 3600, 3660), ("Sleep stage 2", 3660, 3900),
              ("Sleep stage 3", 3900, 3960), ("Sleep stage 4", 3960, 4020), ("Sleep stage R", 4020, 4140),
              ("Movement time", 4140, 4170), ("Sleep stage 2", 4170, 4200), ("Sleep stage W", 4200, 7230),
              ("Sleep stage ?", 7230, 7500)]
    write_edf(tmp_path / "hyp" / "SC4001EC-Hypnogram.edf", ["Marker"], 1.0, 7500,
              annotations=[(a, b - a, d) for d, a, b in stages])
    adapter = get_corpus("sleep_edf")
    recs = adapter.find(tmp_path)
    assert [(r.recording, r.subject, r.session) for r in recs] == [("SC4001E0", "SC400", "1"), ("SC4002E0", "SC400", "2")]
    assert recs[0].extra["hypnogram"].endswith("hyp/SC4001EC-Hypnogram.edf") and recs[1].extra["hypnogram"] == ""
    loaded = adapter.load(recs[0])
    counts = Counter(s.label_name for s in loaded.segments)
    # wake kept from 30 min before the first sleep epoch (3600 s) to 30 min after the last (ends 4200 s)
    assert counts == {"W": 120, "N1": 2, "N2": 9, "N3": 4, "REM": 4}
    assert loaded.skipped == {"movement": 1, "beyond_recording": 1, "stage_unknown": 9, "wake_trimmed": 100}
    wake = [s.onset_s for s in loaded.segments if s.label_name == "W"]
    assert wake[0] == 1800.0 and wake[-1] == 5970.0 and all(s.duration_s == 30.0 for s in loaded.segments)
    assert [s.onset_s for s in loaded.segments if s.label_name == "N3"] == [3900.0, 3930.0, 3960.0, 3990.0]
    from shards.preprocess import PreprocessConfig, preprocess_raw

    signal = preprocess_raw(loaded.raw.copy().crop(0, 60), PreprocessConfig(h_freq=9.0), channel_map=adapter.channel_map)
    assert signal.channels == ["FPZ", "PZ"]  # EOG dropped, both EEG derivations kept
    with pytest.raises(LabelError, match=r"SC4002E0-PSG\.edf.*SC4002"):
        adapter.load(recs[1])
    bad = tmp_path / "hyp" / "SC4001EC-Hypnogram.edf"
    bad.write_bytes(b"not an edf file at all")
    with pytest.raises(LabelError, match="SC4001EC-Hypnogram.edf"):
        adapter.load(recs[0])


# -------------------------------------------------------------------------------------------- CHB-MIT
CHB_SUMMARY = """Data Sampling Rate: 256 Hz
*************************

Channels in EDF Files:
**********************
Channel 1: FP1-F7
Channel 2: F7-T7
Channel 3: T8-P8
Channel 4: -
Channel 5: T8-P8

File Name: chb01_01.edf
File Start Time: 11:42:54
File End Time: 11:43:54
Number of Seizures in File: 0

File Name: chb01_03.edf
File Start Time: 13:43:04
File End Time: 13:44:04
Number of Seizures in File: 1
Seizure Start Time: 20 seconds
Seizure End Time: 30 seconds

File Name: chb01_04.edf
File Start Time: 14:43:12
File End Time: 14:44:12
Number of Seizures in File: 2
Seizure 1 Start Time: 5 seconds
Seizure 1 End Time: 10 seconds
Seizure 2 Start Time:  40 seconds
Seizure 2 End Time:  50 seconds
"""
CHB_CHANNELS = ["FP1-F7", "F7-T7", "T8-P8-0", "--0", "T8-P8-1"]  # as MNE names CHB-MIT's duplicates


def test_chbmit_summary_segments_and_duplicate_channels(tmp_path):
    for name in ("chb01_01", "chb01_03", "chb01_04", "chb01_05"):
        write_edf(tmp_path / "chb01" / f"{name}.edf", CHB_CHANNELS, 256, 60)
    (tmp_path / "chb01" / "chb01-summary.txt").write_text(CHB_SUMMARY)
    adapter = get_corpus("chbmit")
    recs = adapter.find(tmp_path)
    assert [(r.recording, r.subject, r.session) for r in recs] == [
        ("chb01_01", "chb01", "chb01_01"), ("chb01_03", "chb01", "chb01_03"),
        ("chb01_04", "chb01", "chb01_04"), ("chb01_05", "chb01", "chb01_05"),
    ]
    assert segs(adapter.load(recs[0])) == [(0.0, 60.0, "background")]
    loaded = adapter.load(recs[1])
    assert segs(loaded) == [(0.0, 20.0, "background"), (20.0, 10.0, "seizure"), (30.0, 30.0, "background")]
    assert loaded.raw.ch_names == ["FP1-F7", "F7-T7", "T8-P8"]
    assert segs(adapter.load(recs[2])) == [
        (0.0, 5.0, "background"), (5.0, 5.0, "seizure"), (10.0, 30.0, "background"),
        (40.0, 10.0, "seizure"), (50.0, 10.0, "background"),
    ]
    with pytest.raises(LabelError, match=r"chb01-summary\.txt: no 'File Name: chb01_05\.edf'"):
        adapter.load(recs[3])


@pytest.mark.parametrize(
    "text, match",
    [
        ("File Name: a.edf\nNumber of Seizures in File: 1\n\nFile Name: b.edf\n", r"line 1: a\.edf declares 1 seizures but lists 0"),
        ("File Name: a.edf\nNumber of Seizures in File: 1\nSeizure Start Time: abc seconds\n", r"line 3: seizure time 'abc'"),
        ("File Name: a.edf\nSeizure End Time: 10 seconds\n", r"line 2: seizure end time without a start"),
        ("File Name: a.edf\nSeizure Start Time: 10 seconds\nFile Name: b.edf\n", r"line 3: seizure starting at 10.0 s in a\.edf has no end"),
        ("Seizure Start Time: 10 seconds\n", r"line 1: seizure time before any 'File Name:'"),
        ("File Name: a.edf\nSeizure Start Time 10 s\n", r"line 2: cannot parse seizure time line"),
    ],
)
def test_chbmit_malformed_summary_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "chb09-summary.txt"
    path.write_text(text)
    with pytest.raises(LabelError, match=match) as err:
        read_summary(path)
    assert str(path) in str(err.value)


def test_chbmit_malformed_summary_fails_only_that_recording(tmp_path):
    write_edf(tmp_path / "chb02" / "chb02_01.edf", CHB_CHANNELS, 256, 10)
    (tmp_path / "chb02" / "chb02-summary.txt").write_text("File Name: chb02_01.edf\nNumber of Seizures in File: 2\n")
    write_edf(tmp_path / "chb03" / "chb03_01.edf", CHB_CHANNELS, 256, 10)  # no summary at all
    write_edf(tmp_path / "chb21" / "chb21_01.edf", CHB_CHANNELS, 256, 10)
    adapter = get_corpus("chbmit")
    recs = adapter.find(tmp_path)
    assert [r.recording for r in recs] == ["chb02_01", "chb03_01", "chb21_01"]
    assert recs[2].subject == "chb01"  # chb21 is chb01's patient again: one subject for the split
    with pytest.raises(LabelError, match="chb02-summary.txt: line 1: chb02_01.edf declares 2 seizures but lists 0"):
        adapter.load(recs[0])
    with pytest.raises(LabelError, match="chb03-summary.txt.*missing"):
        adapter.load(recs[1])


# ------------------------------------------------------------------------------------------ BCI-IV 2a
BCI_GDF_CHANNELS = ["EEG-Fz", "EEG-0", "EEG-1", "EEG-2", "EEG-3", "EEG-4", "EEG-5", "EEG-C3", "EEG-6", "EEG-Cz",
                    "EEG-7", "EEG-C4", "EEG-8", "EEG-9", "EEG-10", "EEG-11", "EEG-12", "EEG-13", "EEG-14", "EEG-Pz",
                    "EEG-15", "EEG-16", "EOG-left", "EOG-central", "EOG-right"]


def write_gdf(path: Path, ch_names, sfreq: int, digital: np.ndarray, events, uv_per_bit: float = 0.5) -> None:
    """A minimal GDF 2.20 file: int16 samples [C, T], 1-s records, event table mode 3.

    ``events``: [(sample index 0-based, type code, duration in samples)]. Layout per the GDF 2.x spec
    (Schlögl 2006): 256-byte fixed header, 256 bytes per channel of variable header, data records
    (per record: each channel's samples in turn), then the event table.
    """
    n_ch, n_times = digital.shape
    assert n_times % sfreq == 0
    n_rec = n_times // sfreq
    fixed = bytearray(256)
    fixed[0:8] = b"GDF 2.20"
    fixed[8:8 + 8] = b"X X     "
    struct.pack_into("<H", fixed, 184, n_ch + 1)  # header length in 256-byte blocks
    struct.pack_into("<q", fixed, 236, n_rec)
    struct.pack_into("<II", fixed, 244, 1, 1)  # record duration 1/1 s
    struct.pack_into("<H", fixed, 252, n_ch)

    def block(fmt: str, values) -> bytes:
        return b"".join(struct.pack("<" + fmt, v) for v in values)

    digmax = 32767.0
    var = b"".join([
        b"".join(n.encode().ljust(16, b"\0") for n in ch_names),
        b"\0" * 80 * n_ch,  # transducer
        b"uV".ljust(6, b"\0") * n_ch,  # obsolete text unit
        block("H", [4275] * n_ch),  # physical dimension code: µV
        block("d", [-digmax * uv_per_bit] * n_ch), block("d", [digmax * uv_per_bit] * n_ch),
        block("d", [-digmax] * n_ch), block("d", [digmax] * n_ch),
        b"\0" * 68 * n_ch,  # reserved
        block("f", [100.0] * n_ch), block("f", [0.5] * n_ch), block("f", [50.0] * n_ch),  # low/high pass, notch
        block("i", [sfreq] * n_ch),  # samples per record
        block("i", [3] * n_ch),  # data type 3 = int16
        b"\0" * 12 * n_ch,  # electrode xyz
        b"\0" * 20 * n_ch,  # impedance etc (GDF >= 2.19)
    ])
    assert len(var) == 256 * n_ch
    records = digital.astype("<i2").reshape(n_ch, n_rec, sfreq).transpose(1, 0, 2).tobytes()
    pos, typ, dur = zip(*events)
    n_ev = len(events)
    table = bytes([3]) + n_ev.to_bytes(3, "little") + struct.pack("<f", float(sfreq))
    table += block("I", [p + 1 for p in pos]) + block("H", typ) + block("H", [0] * n_ev) + block("I", dur)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(fixed) + var + records + table)


def bci_events(cues: list[tuple[float, int]], sfreq: int = 250) -> list[tuple[int, int, int]]:
    """Trial start (768) 2 s before each cue, the cue itself (1.25 s), as in the 2a files."""
    out = []
    for t, code in cues:
        out += [(int((t - 2) * sfreq), 768, 6 * sfreq), (int(t * sfreq), code, int(1.25 * sfreq))]
    return sorted(out)


def test_bciciv2a_gdf_cues_and_true_labels(tmp_path):
    sfreq, seconds = 250, 60
    rng = np.random.default_rng(0)
    digital = rng.integers(-200, 200, (25, sfreq * seconds))
    train = bci_events([(4, 769), (14, 770), (24, 771), (34, 772), (58, 769)])  # last cue: MI runs past the end
    train.append((int(22 * sfreq), 1023, 2000))  # a trial the organisers marked rejected
    write_gdf(tmp_path / "A01T.gdf", BCI_GDF_CHANNELS, sfreq, digital, sorted(train))
    write_gdf(tmp_path / "A01E.gdf", BCI_GDF_CHANNELS, sfreq, digital, bci_events([(4, 783), (14, 783), (24, 783)]))
    (tmp_path / "true_labels").mkdir()
    scipy.io.savemat(tmp_path / "true_labels" / "A01E.mat", {"classlabel": np.array([[4], [1], [3]], dtype=np.uint8)})
    write_gdf(tmp_path / "A02E.gdf", BCI_GDF_CHANNELS, sfreq, digital, bci_events([(4, 783), (14, 783)]))
    scipy.io.savemat(tmp_path / "A02E.mat", {"classlabel": np.array([[1], [2], [3]])})
    write_gdf(tmp_path / "A03E.gdf", BCI_GDF_CHANNELS, sfreq, digital, bci_events([(4, 783)]))
    adapter = get_corpus("bciciv2a")
    recs = adapter.find(tmp_path)
    assert [(r.recording, r.subject, r.session) for r in recs] == [
        ("A01E", "A01", "E"), ("A01T", "A01", "T"), ("A02E", "A02", "E"), ("A03E", "A03", "E")]
    assert recs[0].extra["true_labels"].endswith("true_labels/A01E.mat") and recs[3].extra["true_labels"] == ""

    loaded = adapter.load(recs[1])
    assert segs(loaded) == [(4.0, 4.0, "left_hand"), (14.0, 4.0, "right_hand"), (24.0, 4.0, "feet"), (34.0, 4.0, "tongue")]
    assert loaded.skipped == {"cue_past_end": 1}
    raw = loaded.raw
    assert raw.info["sfreq"] == 250 and raw.ch_names == list(EEG_CHANNELS) + ["EOG-left", "EOG-central", "EOG-right"]
    assert raw.get_channel_types()[-3:] == ["eog"] * 3
    # the GDF physical scaling (0.5 µV per bit, code 4275 = µV) comes back in volts
    np.testing.assert_allclose(raw.get_data()[:, :500], digital[:, :500] * 0.5e-6, atol=1e-9)
    assert [canonical_name(c) for c in raw.ch_names[:22]] == [c.upper() for c in EEG_CHANNELS]

    assert segs(adapter.load(recs[0])) == [(4.0, 4.0, "tongue"), (14.0, 4.0, "left_hand"), (24.0, 4.0, "feet")]
    with pytest.raises(LabelError, match=r"A02E\.mat: 3 class labels but A02E\.gdf has 2 cues"):
        adapter.load(recs[2])
    with pytest.raises(LabelError, match=r"A03E\.gdf.*A03E\.mat, not found"):
        adapter.load(recs[3])


# ----------------------------------------------------------------------------------------------- SEED
def test_seed_trials_labels_and_channels(tmp_path):
    folder = tmp_path / "Preprocessed_EEG"
    folder.mkdir()
    rng = np.random.default_rng(1)
    trials = {f"djc_eeg{k}": rng.normal(0, 30, (62, 200 * (3 + k))) for k in (1, 2, 3)}
    scipy.io.savemat(folder / "1_20131027.mat", trials)
    scipy.io.savemat(folder / "2_20140404.mat", {f"jl_eeg{k}": rng.normal(0, 30, (62, 400)) for k in (3, 1, 2)})
    scipy.io.savemat(folder / "label.mat", {"label": np.array([[1, 0, -1]])})
    (tmp_path / "ExtractedFeatures").mkdir()  # same file names, features only: not recordings
    scipy.io.savemat(tmp_path / "ExtractedFeatures" / "1_20131027.mat", {"de_LDS1": np.zeros((62, 5, 5))})
    adapter = get_corpus("seed")
    recs = adapter.find(tmp_path)
    assert [(r.recording, r.subject, r.session, r.extra["key"]) for r in recs] == [
        ("1_20131027_t01", "1", "20131027", "djc_eeg1"), ("1_20131027_t02", "1", "20131027", "djc_eeg2"),
        ("1_20131027_t03", "1", "20131027", "djc_eeg3"), ("2_20140404_t01", "2", "20140404", "jl_eeg1"),
        ("2_20140404_t02", "2", "20140404", "jl_eeg2"), ("2_20140404_t03", "2", "20140404", "jl_eeg3"),
    ]
    got = []
    for r in recs[:3]:
        loaded = adapter.load(r)
        got += segs(loaded)
        np.testing.assert_allclose(loaded.raw.get_data(), trials[r.extra["key"]] * 1e-6)
        assert loaded.raw.ch_names == list(SEED_CHANNELS) and loaded.raw.info["sfreq"] == 200.0
    assert got == [(0.0, 4.0, "positive"), (0.0, 5.0, "neutral"), (0.0, 6.0, "negative")]
    assert len(SEED_CHANNELS) == 62 and [canonical_name(c) for c in SEED_CHANNELS] == list(SEED_CHANNELS)


def test_seed_bad_files_fail_alone(tmp_path):
    scipy.io.savemat(tmp_path / "3_20140101.mat", {"ab_eeg1": np.zeros((61, 400)), "ab_eeg2": np.zeros((62, 400))})
    (tmp_path / "4_20140101.mat").write_bytes(b"garbage")
    scipy.io.savemat(tmp_path / "label.mat", {"label": np.array([[1]])})
    adapter = get_corpus("seed")
    recs = adapter.find(tmp_path)
    assert [r.recording for r in recs] == ["3_20140101_t01", "3_20140101_t02", "4_20140101"]
    with pytest.raises(ReadError, match=r"3_20140101\.mat.*shape \(61, 400\)"):
        adapter.load(recs[0])
    with pytest.raises(LabelError, match=r"label\.mat: 1 labels but 3_20140101\.mat has trial 2"):
        adapter.load(recs[1])
    with pytest.raises(ReadError, match=r"4_20140101\.mat"):
        adapter.load(recs[2])


def test_chbmit_through_the_writer_skips_only_the_bad_recording(tmp_path):
    from shards.writer import build

    raw_root = tmp_path / "raw"
    for name in ("chb01_01", "chb01_03", "chb01_04", "chb01_05"):
        write_edf(raw_root / "chb01" / f"{name}.edf", CHB_CHANNELS, 256, 60)
    (raw_root / "chb01" / "chb01-summary.txt").write_text(CHB_SUMMARY)
    manifest = build("chbmit", raw_root, tmp_path / "out", progress=False)
    # 4-s windows inside each span: chb01_01 15 bg; _03 5 + 7 bg, 2 sz; _04 1 + 7 + 2 bg, 1 + 2 sz
    assert manifest["label_counts"] == {"background": 37, "seizure": 5}
    (skip,) = manifest["skipped"]
    assert skip["recording"] == "chb01_05" and "no 'File Name: chb01_05.edf' entry" in skip["reason"]
    assert "chb01-summary.txt" in skip["reason"]


def test_label_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(LabelError("/x/chb01-summary.txt", "line 3: bad")))
    assert isinstance(err, LabelError) and err.reason == "line 3: bad" and str(err) == "/x/chb01-summary.txt: line 3: bad"
