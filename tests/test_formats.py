"""Every raw format of shards.formats: a real file per format read by read_raw and checked against MNE's own
reader (names, rate, duration, sample values), sidecars never counted, clear errors for missing optional
packages and formats MNE cannot read, and one `recordings` build over a folder holding one file per format."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mne
import numpy as np
import pytest

from shards import formats
from shards.corpora import get_corpus
from shards.preprocess import PreprocessConfig, preprocess_raw
from shards.readers import ReadError, read_raw

FORMATS_DIR = "formats"
PERSYST = "formats/Persyst/sub-pt1_ses-02_task-monitor_acq-ecog_run-01_clip2.lay"
CHANLOC = "formats/EEGLAB/test_raw_chanloc.set"
NEUROSCAN = "formats/CNT/scan41_short.cnt"
ANT = "formats/antio/CA_208/test_CA_208.cnt"
CURRY7 = "formats/curry/test_bdf_stim_channel Curry 7.dap"
CURRY8 = "formats/curry/test_bdf_stim_channel Curry 8.cdt"
EEGMMIDB = "motor_imagery/eegmmidb/S001/S001R04.edf"
EXIMIA_CAL = 0.07629510948348212  # µV per count of an eXimia EEG channel (MNE's calibration)


def same_as_mne(ours: mne.io.BaseRaw, theirs: mne.io.BaseRaw, n_ch: int, sfreq: float, n_times: int) -> None:
    assert ours.ch_names == theirs.ch_names and len(ours.ch_names) == n_ch
    assert ours.info["sfreq"] == sfreq == theirs.info["sfreq"]
    assert ours.n_times == theirs.n_times == n_times
    picks = np.arange(0, n_ch, max(1, n_ch // 7))
    np.testing.assert_allclose(ours.get_data(picks=picks, stop=500), theirs.get_data(picks=picks, stop=500), rtol=1e-6)


def needs(package: str) -> None:
    if formats.missing_package(formats.Format("x", (), None, package=package)):
        pytest.skip(f"optional package {package} is not installed (pip install -e '.[formats]')")


# --------------------------------------------------------------------------- shared files, per format
@pytest.mark.parametrize("rel, mne_reader, n_ch, sfreq, n_times, package", [
    (PERSYST, mne.io.read_raw_persyst, 83, 200.0, 847, None),
    (CHANLOC, mne.io.read_raw_eeglab, 61, 128.0, 385, None),
    (ANT, mne.io.read_raw_ant, 88, 1000.0, 4025, "antio"),
    (CURRY7, mne.io.read_raw_curry, 3, 500.0, 5000, "curryreader"),
    (CURRY8, mne.io.read_raw_curry, 3, 500.0, 5000, "curryreader"),
])
def test_shared_format_reads_like_mne(shared_data, rel, mne_reader, n_ch, sfreq, n_times, package):
    if package:
        needs(package)
    ours = read_raw(shared_data / rel)
    theirs = mne_reader(shared_data / rel, preload=True, verbose="error")
    same_as_mne(ours, theirs, n_ch, sfreq, n_times)


def test_persyst_scalp_leads_are_eeg(shared_data):
    raw = read_raw(shared_data / PERSYST)
    assert raw.ch_names[:4] == ["FP1", "FP2", "F3", "F4"]
    eeg = raw.get_data(picks="eeg") * 1e6
    assert np.isfinite(eeg).all() and 1 < np.median(np.std(eeg, axis=1)) < 1000  # µV-scale, not volts


def test_neuroscan_cnt_with_zero_sample_header_gets_the_plausible_width(shared_data):
    """scan41_short.cnt claims 0 samples: MNE alone fails; int16 gives EEG in µV, int32 gives volts (garbage)."""
    path = shared_data / NEUROSCAN
    with pytest.raises(RuntimeError, match="data_format"):
        mne.io.read_raw_cnt(path, preload=True, verbose="error")
    ours = read_raw(path)
    int16 = mne.io.read_raw_cnt(path, data_format="int16", preload=True, verbose="error")
    same_as_mne(ours, int16, 128, 400.0, 3070)
    assert 10 < np.median(np.abs(ours.get_data())) * 1e6 < 100
    int32 = mne.io.read_raw_cnt(path, data_format="int32", preload=True, verbose="error")
    assert np.median(np.abs(int32.get_data())) > 1.0  # volts: why int32 is rejected


def test_bare_mne_error_becomes_read_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.cnt"
    bad.write_bytes(b"Version 3.0" + b"\x00" * 2000)
    with pytest.raises(ReadError, match=r"bad\.cnt: .*Neuroscan CNT"):
        read_raw(bad)


@pytest.mark.parametrize("package, rel", [("antio", ANT), ("curryreader", CURRY8)])
def test_missing_optional_package_is_named_in_one_line(shared_data, monkeypatch, package, rel):
    monkeypatch.setitem(sys.modules, package, None)  # importlib.util.find_spec -> None: "not installed"
    with pytest.raises(ReadError) as err:
        read_raw(shared_data / rel)
    assert f"pip install {package}" in str(err.value) and "\n" not in str(err.value)


def test_folder_and_xdf_formats_name_their_package(tmp_path, monkeypatch):
    for package in ("mffpy", "pyxdf", "pymef"):
        monkeypatch.setitem(sys.modules, package, None)
    (tmp_path / "rec.mff").mkdir()
    (tmp_path / "rec.xdf").write_bytes(b"XDF:" + b"\x00" * 64)
    (tmp_path / "rec.mefd").mkdir()
    for name, package in (("rec.mff", "mffpy"), ("rec.xdf", "pyxdf"), ("rec.mefd", "pymef")):
        with pytest.raises(ReadError, match=f"rec.{name.split('.')[1]}: .*optional package '{package}'"):
            read_raw(tmp_path / name)


@pytest.mark.parametrize("name", ["study.erd", "patient.e", "night.TRC"])
def test_formats_mne_cannot_read_say_how_to_convert(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x01" * 512)
    with pytest.raises(ReadError, match="MNE cannot read .*EDF"):
        read_raw(tmp_path / name)


# --------------------------------------------------------------------------- files we write ourselves
@pytest.fixture(scope="module")
def eegmmidb_10s(shared_data) -> mne.io.BaseRaw:
    raw = mne.io.read_raw_edf(shared_data / EEGMMIDB, preload=True, verbose="error").crop(0, 10 - 1 / 160)
    raw.set_annotations(None)
    return raw


@pytest.mark.parametrize("fmt, name, mne_reader", [
    ("edf", "run.edf", mne.io.read_raw_edf),
    ("brainvision", "run.vhdr", mne.io.read_raw_brainvision),
    ("eeglab", "run.set", mne.io.read_raw_eeglab),
])
def test_exported_recording_reads_like_mne_and_like_the_source(eegmmidb_10s, tmp_path, fmt, name, mne_reader):
    mne.export.export_raw(tmp_path / name, eegmmidb_10s, fmt=fmt, verbose="error")
    ours = read_raw(tmp_path / name)
    same_as_mne(ours, mne_reader(tmp_path / name, preload=True, verbose="error"), 64, 160.0, 1600)
    # The export keeps the real signal (EDF quantises to 16 bits over its physical range: ~0.1 µV here).
    np.testing.assert_allclose(ours.get_data(), eegmmidb_10s.get_data(), atol=0.5e-6)


def test_eximia_written_from_the_spec(eegmmidb_10s, tmp_path):
    """eXimia .nxe: headerless int16, 64 channels multiplexed, 1450 Hz (MNE's fixed layout)."""
    counts = np.round(eegmmidb_10s.get_data()[:, :1450] * 1e6 / EXIMIA_CAL).astype("<i2")  # [64, T] µV -> counts
    (tmp_path / "rec.nxe").write_bytes(counts.T.tobytes())
    ours = read_raw(tmp_path / "rec.nxe")
    theirs = mne.io.read_raw_eximia(tmp_path / "rec.nxe", preload=True, verbose="error")
    assert ours.ch_names == theirs.ch_names and ours.ch_names[4:7] == ["Fp1", "Fpz", "Fp2"]
    assert ours.info["sfreq"] == theirs.info["sfreq"] == 1450.0 and ours.n_times == theirs.n_times == 1450
    # MNE labels the calibrated counts volts; they are µV (a 16-bit converter spanning +-2.5 mV): ours are volts.
    np.testing.assert_allclose(ours.get_data(picks="eeg"), theirs.get_data(picks="eeg") * 1e-6, rtol=1e-9)
    np.testing.assert_allclose(ours.get_data(picks="eeg"), eegmmidb_10s.get_data()[4:, :1450], atol=0.04e-6)


def write_bci2000(path: Path, counts: np.ndarray, sfreq: float, names: list[str], gain_uv: float) -> None:
    """A BCI2000 .dat file from its specification: text header (states, parameters), then per sample the
    int16 values of every channel and a 2-byte state vector (Running, StimulusCode)."""
    n = len(names)
    lines = ["[ State Vector Definition ] ", "Running 1 0 0 0", "StimulusCode 8 0 0 1", "[ Parameter Definition ] ",
             f"Source:Signal%20Properties:DataIOFilter int SourceCh= {n} 16 1 % // number of channels",
             f"Source:Signal%20Properties:DataIOFilter floatlist SourceChOffset= {n} {' '.join(['0'] * n)} 0 % %",
             f"Source:Signal%20Properties:DataIOFilter floatlist SourceChGain= {n} {' '.join([f'{gain_uv}muV'] * n)} 1 % %",
             f"Source:Signal%20Properties:DataIOFilter list ChannelNames= {n} {' '.join(names)} % % % // names",
             f"Source:Signal%20Properties:DataIOFilter float SamplingRate= {sfreq:g}Hz 256Hz 0.0 % // rate", ""]
    body = "\r\n".join(lines) + "\r\n"
    first = "HeaderLen= {:6d} SourceCh= %d StatevectorLen= 2 DataFormat= int16\r\n" % n
    header = (first.format(len(first.format(0)) + len(body)) + body).encode()
    frames = np.zeros((counts.shape[1], 2 * n + 2), np.uint8)
    frames[:, : 2 * n] = np.ascontiguousarray(counts.T, "<i2").view(np.uint8)
    path.write_bytes(header + frames.tobytes())


def test_bci2000_written_from_the_spec(eegmmidb_10s, tmp_path):
    """MNE 1.13 names BCI2000 channels EEG1.. and returns A/D counts; ours has the header's names and µV gain."""
    counts = np.round(eegmmidb_10s.get_data() * 1e6 / 0.1).astype(np.int16)  # 0.1 µV per count
    write_bci2000(tmp_path / "S001R04.dat", counts, 160.0, eegmmidb_10s.ch_names, 0.1)
    ours = read_raw(tmp_path / "S001R04.dat")
    theirs = mne.io.read_raw_bci2k(tmp_path / "S001R04.dat", preload=True, verbose="error")
    assert theirs.ch_names[:2] == ["EEG1", "EEG2"] and ours.ch_names[:64] == eegmmidb_10s.ch_names
    assert ours.info["sfreq"] == theirs.info["sfreq"] == 160.0 and ours.n_times == theirs.n_times == 1600
    np.testing.assert_allclose(ours.get_data(picks="eeg"), theirs.get_data(picks="eeg") * 0.1e-6, rtol=1e-9)
    np.testing.assert_allclose(ours.get_data(picks="eeg"), eegmmidb_10s.get_data(), atol=0.051e-6)


def write_xdf(path: Path, data_uv: np.ndarray, sfreq: float, names: list[str]) -> None:
    """An XDF 1.0 file from its specification: magic, FileHeader, one EEG StreamHeader, one Samples chunk."""
    import struct

    def chunk(tag: int, content: bytes) -> bytes:
        return b"\x04" + struct.pack("<IH", len(content) + 2, tag) + content

    chans = "".join(f"<channel><label>{c}</label><unit>microvolts</unit><type>EEG</type></channel>" for c in names)
    info = (f'<?xml version="1.0"?><info><name>amp</name><type>EEG</type><channel_count>{len(names)}</channel_count>'
            f"<nominal_srate>{sfreq}</nominal_srate><channel_format>float32</channel_format>"
            f"<desc><channels>{chans}</channels></desc></info>").encode()
    samples = bytearray(struct.pack("<I", 1) + b"\x04" + struct.pack("<I", data_uv.shape[1]))
    for t in range(data_uv.shape[1]):
        samples += b"\x08" + struct.pack("<d", t / sfreq) + data_uv[:, t].astype("<f4").tobytes()
    path.write_bytes(b"XDF:" + chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')
                     + chunk(2, struct.pack("<I", 1) + info) + chunk(3, bytes(samples)))


def test_xdf_written_from_the_spec(eegmmidb_10s, tmp_path):
    needs("pyxdf")
    write_xdf(tmp_path / "rec.xdf", eegmmidb_10s.get_data()[:8] * 1e6, 160.0, eegmmidb_10s.ch_names[:8])
    raw = read_raw(tmp_path / "rec.xdf")
    assert raw.ch_names == eegmmidb_10s.ch_names[:8] and raw.info["sfreq"] == 160.0 and raw.n_times == 1600
    np.testing.assert_allclose(raw.get_data(), eegmmidb_10s.get_data()[:8], rtol=1e-6, atol=1e-12)


def write_mff(path: Path, data_uv: np.ndarray, sfreq: int) -> None:
    """An EGI MFF folder written by mffpy (EGI's format library): 32 EEG channels + reference, HydroCel 32."""
    from datetime import datetime, timezone

    from mffpy.writer import BinWriter, Writer

    writer = Writer(str(path))
    signal = BinWriter(sampling_rate=sfreq, data_type="EEG")
    signal.add_block(data_uv.astype(np.float32), offset_us=0)
    writer.addbin(signal)
    writer.addxml("fileInfo", recordTime=datetime(2024, 1, 1, tzinfo=timezone.utc))
    writer.add_coordinates_and_sensor_layout("HydroCel GSN 32 1.0")
    writer.write()


def test_egi_mff_written_by_mffpy(eegmmidb_10s, tmp_path):
    needs("mffpy")
    data_uv = np.r_[eegmmidb_10s.get_data()[:32] * 1e6, np.zeros((1, 1600))]  # 32 channels + the vertex reference
    write_mff(tmp_path / "rec.mff", data_uv, 160)
    ours = read_raw(tmp_path / "rec.mff")
    theirs = mne.io.read_raw_egi(tmp_path / "rec.mff", preload=True, verbose="error")
    same_as_mne(ours, theirs, 33, 160.0, 1600)
    assert ours.ch_names[:3] == ["E1", "E2", "E3"]
    np.testing.assert_allclose(ours.get_data()[:32], eegmmidb_10s.get_data()[:32], rtol=1e-6, atol=1e-12)
    # E-numbered channels carry the net's positions: placed where a 10-05 site is within 10 mm.
    sig = preprocess_raw(ours, PreprocessConfig())
    assert sig.placed_channels["E1"].startswith("placed by position at FP1") and len(sig.placed_channels) >= 16


def write_egi_raw(path: Path, data_uv: np.ndarray, sfreq: int, din: np.ndarray) -> None:
    """An EGI simple binary file (Net Station's export) from its specification: big-endian header (version 4 =
    unsegmented float32, date, rate, channels, gain, bits and range 0 = values in µV), one event code, then per
    sample every channel's value and the event track."""
    import struct

    n_ch, n = data_uv.shape
    header = struct.pack(">i6hi5h", 4, 2024, 1, 2, 3, 4, 5, 0, sfreq, n_ch, 0, 0, 0)
    header += struct.pack(">ih", n, 1) + b"DIN1"
    frames = np.r_[data_uv, din[np.newaxis]].T.astype(">f4")  # [T, C + 1]
    path.write_bytes(header + frames.tobytes())


def write_net_sfp(path: Path) -> None:
    """The HydroCel GSN 64 net's positions (MNE's layout) as the .sfp file Net Station exports beside a recording."""
    net = mne.channels.make_standard_montage("GSN-HydroCel-64_1.0").get_positions()
    fiducials = {"FidNz": net["nasion"], "FidT9": net["lpa"], "FidT10": net["rpa"]}
    path.write_text("".join(f"{name}\t{x * 100:.3f}\t{y * 100:.3f}\t{z * 100:.3f}\n"
                            for name, (x, y, z) in {**fiducials, **net["ch_pos"]}.items()))


def test_egi_simple_binary_written_from_the_spec(eegmmidb_10s, tmp_path):
    din = np.zeros(1600)
    din[[160, 800]] = 1.0
    write_egi_raw(tmp_path / "rec.raw", eegmmidb_10s.get_data() * 1e6, 160, din)
    assert formats.detect(tmp_path / "rec.raw").name == "EGI simple binary"
    ours = read_raw(tmp_path / "rec.raw")
    theirs = mne.io.read_raw_egi(tmp_path / "rec.raw", preload=True, verbose="error")
    same_as_mne(ours, theirs, 65, 160.0, 1600)
    assert ours.ch_names[:2] == ["E1", "E2"] and ours.ch_names[64] == "DIN1"
    assert ours.get_channel_types()[64] == "stim"
    np.testing.assert_allclose(ours.get_data()[:64], eegmmidb_10s.get_data(), rtol=1e-6, atol=1e-12)
    (tmp_path / "other.raw").write_bytes(b"\x00\x00\x01\x00" + bytes(64))  # another program's .raw: not EGI
    assert formats.detect(tmp_path / "other.raw") is None
    # Simple binary files carry no positions; the net's .sfp next to them places E1..E64 (as HBN ships them).
    with pytest.raises(ValueError, match="no usable EEG channel"):
        preprocess_raw(ours, PreprocessConfig())
    write_net_sfp(tmp_path / "rec.sfp")
    sig = preprocess_raw(read_raw(tmp_path / "rec.raw"), PreprocessConfig())
    assert len(sig.placed_channels) == 48 and sig.placed_channels["E10"] == "placed by position at FP1 (2.1 mm)"


def test_split_fif_is_one_recording_of_its_full_duration(shared_data, tmp_path):
    """A FIF saved in 2-MB parts (MNE's and BIDS' naming) is one recording, read whole through its first part;
    an unrelated run-1.fif beside run.fif stays a recording of its own."""
    from shards.writer import build

    raw = mne.io.read_raw_edf(shared_data / EEGMMIDB, preload=True, verbose="error")  # 64 x 20000, 125 s
    root = tmp_path / "raw"
    root.mkdir()
    raw.save(root / "run_raw.fif", split_size="2MB", verbose="error")
    raw.save(root / "sub-01_task-imagery_eeg.fif", split_size="2MB", split_naming="bids", verbose="error")
    assert {p.name for p in root.iterdir()} == {f"run_raw{s}.fif" for s in ("", "-1", "-2", "-3", "-4")} | {
        f"sub-01_task-imagery_split-0{i}_eeg.fif" for i in range(1, 6)}
    yasa = mne.io.read_raw_fif(shared_data / "unlabeled/yasa/data_resting_EO_200Hz_raw.fif", verbose="error")
    yasa.save(root / "rest.fif", verbose="error")
    yasa.copy().crop(0, 60 - 1 / 200).save(root / "rest-1.fif", verbose="error")
    with pytest.raises(ReadError, match=r"run_raw-2\.fif: a continuation part of the split FIF recording run_raw\.fif"):
        read_raw(root / "run_raw-2.fif")

    manifest = build("recordings", root, tmp_path / "out", overrides={"max_abs_uv": None}, progress=False)
    got = {r["source"]: (round(r["recording_hours"] * 3600, 3), r["samples"]) for r in manifest["recordings"]}
    # both split recordings are read whole (125 s); the second holds the first's samples, so it is sharded once
    assert got == {"run_raw.fif": (125.0, 12), "sub-01_task-imagery_split-01_eeg.fif": (125.0, 0),
                   "rest.fif": (360.0, 36), "rest-1.fif": (60.0, 6)}
    assert [(d["source"], d["duplicate_of_source"]) for d in manifest["duplicates"]] == [
        ("sub-01_task-imagery_split-01_eeg.fif", "run_raw.fif")]
    whole = read_raw(root / "run_raw.fif")
    np.testing.assert_allclose(whole.get_data(), raw.get_data(), rtol=1e-6, atol=1e-12)  # FIF stores float32


# --------------------------------------------------------------------------- dispatch, sidecars, discovery
def test_header_files_and_sidecars(tmp_path):
    nihon = tmp_path / "pt.EEG"
    nihon.write_bytes(b"EEG-1100A V01.00" + b"\x00" * 100)
    bv_data = tmp_path / "run.eeg"
    bv_data.write_bytes(b"\x00\x01" * 100)
    bci = tmp_path / "s1.dat"
    bci.write_bytes(b"HeaderLen=  1234 SourceCh= 16\r\n")
    ant = tmp_path / "ant.cnt"
    ant.write_bytes(b"RIFF" + b"\x00" * 60)
    assert formats.detect(nihon).name == "Nihon Kohden"
    assert formats.detect(bv_data) is None and formats.sidecar_of(bv_data)[0].name == "BrainVision"
    assert formats.detect(bci).name == "BCI2000"
    assert formats.detect(ant).name == "ANT Neuro CNT"
    for sidecar in ("pt.21E", "pt.PNT", "pt.LOG", "r.vmrk", "r.fdt", "c.cdt.dpa", "c.rs3", "p.head", "x.dat"):
        assert formats.detect(tmp_path / sidecar) is None, sidecar
        assert formats.sidecar_of(tmp_path / sidecar), sidecar
    (tmp_path / "pt.PNT").write_bytes(b"x")
    with pytest.raises(ReadError, match=r"pt\.PNT: a sidecar file \(\.pnt\).*Nihon Kohden \.eeg"):
        read_raw(tmp_path / "pt.PNT")


def test_multi_file_recordings_count_once_by_their_header(shared_data, tmp_path):
    for sub in ("Persyst", "curry", "EEGLAB", "CNT"):
        os.symlink(shared_data / FORMATS_DIR / sub, tmp_path / sub)
    recs = get_corpus("recordings").find(tmp_path)
    assert sorted(r.source for r in recs) == [
        "CNT/scan41_short.cnt", "EEGLAB/test_raw_chanloc.set", "Persyst/" + Path(PERSYST).name,
        "curry/test_bdf_stim_channel Curry 7.dap", "curry/test_bdf_stim_channel Curry 8.cdt",
    ]


# --------------------------------------------------------------------------- issue 14: loops and overflows
def test_symlink_loops_and_dangling_links_are_listed_as_skipped(shared_data, tmp_path):
    from shards.writer import build

    root = tmp_path / "raw"
    (root / "a").mkdir(parents=True)
    os.symlink(shared_data / "unlabeled/eeglab/test.edf", root / "a" / "x.edf")
    os.symlink("..", root / "a" / "up")  # folder loop: a/up/a/up/...
    os.symlink("c.edf", root / "a" / "b.edf")  # file loop: b -> c -> b
    os.symlink("b.edf", root / "a" / "c.edf")
    os.symlink("nowhere.edf", root / "a" / "dangling.edf")
    manifest = build("recordings", root, tmp_path / "out", progress=False)
    skipped = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"a/up", "a/b.edf", "a/c.edf", "a/dangling.edf"}
    assert "symlink loop" in skipped["a/up"] and "symlink loop" in skipped["a/b.edf"]
    assert "broken symlink" in skipped["a/dangling.edf"] and "nowhere.edf" in skipped["a/dangling.edf"]
    assert manifest["totals"]["recordings"] == 1 and manifest["totals"]["samples"] > 0


def test_annexed_brainvision_reads_the_sidecars_next_to_its_link(eegmmidb_10s, tmp_path, annex):
    """A DataLad dataset links each file to its own annex object: the .vhdr's sidecars sit next to the link only."""
    root = tmp_path / "ds"
    root.mkdir()
    mne.export.export_raw(root / "run.vhdr", eegmmidb_10s, fmt="brainvision", verbose="error")
    objects = [annex(root / name, root) for name in ("run.vhdr", "run.vmrk", "run.eeg")]
    assert len({o.parent for o in objects}) == 3
    adapter = get_corpus("recordings")
    (rec,) = adapter.find(root)
    assert rec.source == "run.vhdr" and rec.path == root / "run.vhdr"
    raw = adapter.load(rec).raw
    assert raw.ch_names == eegmmidb_10s.ch_names and raw.n_times == 1600
    np.testing.assert_allclose(raw.get_data(), eegmmidb_10s.get_data(), atol=0.5e-6)


def test_linked_folder_outside_the_root_is_searched(shared_data, tmp_path):
    os.symlink(shared_data / "unlabeled/yasa", tmp_path / "yasa")
    assert [r.source for r in get_corpus("recordings").find(tmp_path)] == ["yasa/data_resting_EO_200Hz_raw.fif"]


def test_edf_with_absurd_physical_range_is_rejected(shared_data, tmp_path):
    data = bytearray((shared_data / "unlabeled/eeglab/test.edf").read_bytes())
    n = int(data[252:256])
    base = 256 + n * 104  # physical minimum of signal 0, then physical maximum at 256 + n * 112
    data[base : base + 8] = b"-1e300  "
    data[256 + n * 112 : 256 + n * 112 + 8] = b"1e300   "
    (tmp_path / "huge.edf").write_bytes(bytes(data))
    with pytest.raises(ReadError, match=r"huge\.edf: corrupt header: signal 0 \('EEG Fp1'\) physical minimum/maximum"):
        read_raw(tmp_path / "huge.edf")


# --------------------------------------------------------------------------- acceptance: one build, every format
def test_build_over_one_recording_of_every_format(shared_data, eegmmidb_10s, tmp_path):
    """`recordings` build over a folder with one file per format: each is sharded, or skipped naming the
    package to install (EGI MFF, XDF when mffpy / pyxdf are absent), or the conversion MNE cannot do."""
    from shards.writer import build

    root = tmp_path / "raw"
    root.mkdir()
    optional = {"rec.mff": "mffpy", "rec.xdf": "pyxdf", Path(ANT).name: "antio", f"curry/{Path(CURRY7).name}": "curryreader",
                f"curry/{Path(CURRY8).name}": "curryreader"}
    missing = {name for name, package in optional.items() if formats.missing_package(formats.Format("", (), "", package=package))}
    if "rec.mff" in missing:
        (root / "rec.mff").mkdir()
    else:
        write_mff(root / "rec.mff", np.r_[eegmmidb_10s.get_data()[:32] * 1e6, np.zeros((1, 1600))], 160)
    if "rec.xdf" in missing:
        (root / "rec.xdf").write_bytes(b"XDF:" + b"\x00" * 64)
    else:
        write_xdf(root / "rec.xdf", eegmmidb_10s.get_data()[:8] * 1e6, 160.0, eegmmidb_10s.ch_names[:8])
    write_bci2000(root / "run.dat", np.round(eegmmidb_10s.get_data() * 1e7).astype(np.int16), 160.0,
                  eegmmidb_10s.ch_names, 0.1)
    for fmt, name in (("edf", "run.edf"), ("brainvision", "run.vhdr"), ("eeglab", "run.set")):
        mne.export.export_raw(root / name, eegmmidb_10s, fmt=fmt, verbose="error")
    eegmmidb_10s.save(root / "run_raw.fif", verbose="error")
    write_egi_raw(root / "egi.raw", eegmmidb_10s.get_data() * 1e6, 160, np.zeros(1600))
    write_net_sfp(root / "egi.sfp")
    counts = np.round(np.tile(eegmmidb_10s.get_data(), 3)[:, :1450 * 3] * 1e6 / EXIMIA_CAL).astype("<i2")  # 3 s
    (root / "run.nxe").write_bytes(counts.T.tobytes())
    for rel in (PERSYST, CHANLOC, NEUROSCAN, ANT, "unlabeled/mne_testing/BDF/multiple_annotation_chans.bdf"):
        os.symlink(shared_data / rel, root / Path(rel).name)
    for sidecar in (Path(PERSYST).with_suffix(".dat"), Path(CHANLOC).with_suffix(".fdt")):
        os.symlink(shared_data / sidecar, root / sidecar.name)
    curry = root / "curry"
    os.symlink(shared_data / "formats/curry", curry)
    (root / "night.TRC").write_bytes(b"\x00" * 512)

    manifest = build("recordings", root, tmp_path / "out", overrides={"window_s": 2.0, "max_abs_uv": None}, progress=False)
    skipped = {s["source"]: s["reason"] for s in manifest["skipped"]}
    # the EEGMMIDB excerpt in five formats is one recording (kept as the first in id order, BCI2000's run.dat), and so
    # is MNE's Curry test recording in its Curry 7 and Curry 8 forms
    twins = {"run.edf": "run.dat", "run.vhdr": "run.dat", "run.set": "run.dat", "run_raw.fif": "run.dat"}
    if f"curry/{Path(CURRY8).name}" not in missing:
        twins[f"curry/{Path(CURRY8).name}"] = f"curry/{Path(CURRY7).name}"
    assert {d["source"]: d["duplicate_of_source"] for d in manifest["duplicates"]} == twins
    assert skipped.keys() == missing | {"night.TRC"} | set(twins)
    for name in missing:
        assert f"pip install {optional[name]}" in skipped[name]
    assert "MNE cannot read Micromed" in skipped["night.TRC"]
    samples = {r["source"]: r["samples"] for r in manifest["recordings"] if not r["skipped"]}
    assert len(samples) == 16 - len(missing) - len(twins) and all(n > 0 for n in samples.values()), samples
    placed = {n for how in manifest["placed_channels"].values() for n in how}
    assert len([n for n in placed if n.isdigit() or n in ("LEFT_EAR", "NA1")]) == 29  # scan41_short.cnt
    assert len([n for n in placed if n[:1] == "E" and n[1:].isdigit() and 32 < int(n[1:]) <= 64]) > 16  # egi.raw
