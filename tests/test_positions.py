"""Channels placed at standard 10-05 sites by their recorded positions (shards.positions), on real caps whose
true names are known: renaming every channel to "EEG 000".. must bring the same names back."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from shards.positions import montage_sites, place_by_position, recorded_positions
from shards.preprocess import PreprocessConfig, preprocess_raw
from shards.readers import ReadError, read_raw
from shards.vocabulary import canonical_name

CAPS = {  # recording -> (channels with positions, placed back onto their own name)
    "formats/EEGLAB/test_raw_chanloc.set": (61, 61),
    "unlabeled/eeglab/eeglab_data.set": (32, 30),  # + 2 EOG channels (typed EOG: never placed)
    "unlabeled/eeglab/testbva.vhdr": (29, 27),  # TP9/TP10 sit 12.8 mm from their sites: left out, not moved
}


def anonymised(raw: mne.io.BaseRaw) -> tuple[mne.io.BaseRaw, dict[str, str | None]]:
    """The recording with every channel renamed ``EEG 000``...; returns it and new name -> true canonical."""
    raw = raw.copy()
    truth = {f"EEG {i:03d}": canonical_name(n) for i, n in enumerate(raw.ch_names)}
    raw.rename_channels(dict(zip(raw.ch_names, truth)))  # types stay: EOG channels remain EOG
    return raw, truth


@pytest.mark.parametrize("rel", sorted(CAPS))
def test_renamed_caps_are_placed_back_on_their_own_sites(shared_data, rel):
    n_pos, n_back = CAPS[rel]
    raw, truth = anonymised(read_raw(shared_data / rel))
    positions = recorded_positions(raw.info)
    assert len(positions) == n_pos
    eeg = [i for i in positions if raw.get_channel_types()[i] == "eeg"]
    out = place_by_position(positions, {}, eeg, raw.ch_names)
    placed = {raw.ch_names[i]: p for i, p in out.items() if p.canonical is not None}
    assert sum(p.canonical == truth[n] for n, p in placed.items()) == n_back
    assert all(p.canonical == truth[n] for n, p in placed.items())  # never a wrong site
    assert all(p.distance_mm <= 10.0 for p in placed.values())
    for i, p in out.items():
        if p.canonical is None:
            assert "no 10-05 site within 10 mm" in p.reason


@pytest.mark.parametrize("layout, n_back", [
    ("colin27_1020", 88),  # MNE's standard positions on the Colin27 MRI head (digitised-like); 34 on the sphere
    ("spherical_1020", 21),  # MNE's own sphere, 10-20 equator at 72 degrees: 1
    ("easycap-M1", 72),  # a cap file's sphere, equator at 90 degrees
])
def test_layouts_on_each_head_shape_are_placed_back(layout, n_back):
    """An MNE layout renamed to numbers: each channel back on its own site, whichever head shape it was drawn on."""
    montage = mne.channels.make_standard_montage(layout)
    truth = {str(i): canonical_name(n) for i, n in enumerate(montage.ch_names)}
    montage.rename_channels(dict(zip(montage.ch_names, truth)))
    raw = mne.io.RawArray(np.zeros((len(truth), 10)), mne.create_info(list(truth), 100.0, "eeg"), verbose="error")
    raw.set_montage(montage, verbose="error")
    out = place_by_position(recorded_positions(raw.info), {}, list(range(len(truth))), raw.ch_names)
    placed = {raw.ch_names[i]: p.canonical for i, p in out.items() if p.canonical is not None}
    assert sum(c == truth[n] for n, c in placed.items()) == n_back
    # The only others: O9/O10, drawn on I1/I2 in these layouts; T3-T6 (= T7, P7, T8, P8) find their site taken.
    assert {(truth[n], c) for n, c in placed.items() if c != truth[n]} <= {("O9", "I1"), ("O10", "I2")}


def test_named_channels_anchor_the_rest(shared_data):
    raw = read_raw(shared_data / "formats/EEGLAB/test_raw_chanloc.set")
    truth = [canonical_name(n) for n in raw.ch_names]
    anchors = {i: truth[i] for i in range(0, 61, 2)}
    out = place_by_position(recorded_positions(raw.info), anchors, list(range(1, 61, 2)), raw.ch_names)
    assert all(out[i].canonical == truth[i] for i in range(1, 61, 2))


def test_preprocess_keeps_placed_channels_with_their_distance(shared_data):
    raw, truth = anonymised(read_raw(shared_data / "unlabeled/eeglab/eeglab_data.set"))
    sig = preprocess_raw(raw, PreprocessConfig())
    assert len(sig.channels) == 30
    assert all(truth[raw_name] == sig.channels[k] for k, raw_name in enumerate(
        n for n in raw.ch_names if n in sig.placed_channels))
    assert sig.placed_channels["EEG 000"].startswith(f"placed by position at {truth['EEG 000']} (")
    eog = {n: r for n, r in sig.dropped_channels.items() if truth[n] is None}
    assert len(eog) == 2 and all(r == "unknown name" for r in eog.values())  # typed EOG: not placed
    assert all(raw.get_channel_types()[raw.ch_names.index(n)] == "eog" for n in eog)


def test_a_placed_channel_that_is_flat_is_only_dropped(shared_data):
    """Placed by position, then flat for the whole recording: dropped as flat, not also listed as placed."""
    raw, truth = anonymised(read_raw(shared_data / "unlabeled/eeglab/eeglab_data.set"))
    raw._data[raw.ch_names.index("EEG 002")] = 3e-6  # a dead electrode: constant 3 µV
    sig = preprocess_raw(raw, PreprocessConfig())
    assert sig.dropped_channels["EEG 002"].startswith("flat channel (peak-to-peak 0 µV")
    assert "EEG 002" not in sig.placed_channels and truth["EEG 002"] not in sig.channels
    assert len(sig.channels) == len(sig.placed_channels) == 29
    assert not set(sig.placed_channels) & set(sig.dropped_channels)


def test_a_channel_moved_off_the_head_stays_out(shared_data):
    raw, truth = anonymised(read_raw(shared_data / "formats/EEGLAB/test_raw_chanloc.set"))
    raw.info["chs"][5]["loc"][:3] = [0.0, 0.0, -0.09]  # under the head
    out = place_by_position(recorded_positions(raw.info), {}, list(range(61)), raw.ch_names)
    assert out[5].canonical is None and out[5].distance_mm > 50
    assert sum(p.canonical == truth[raw.ch_names[i]] for i, p in out.items()) == 60


def test_biosemi_abc_labels_with_a_named_cap(shared_data):
    """test.bdf is a BioSemi recording labelled A1..A16: unknown without a cap, placed with biosemi16."""
    raw = read_raw(shared_data / "unlabeled/eeglab/test.bdf")
    with pytest.raises(ValueError, match="no usable EEG channel"):
        preprocess_raw(raw, PreprocessConfig())
    sig = preprocess_raw(raw, PreprocessConfig(montage="biosemi16"))
    cap = mne.channels.make_standard_montage("biosemi16").ch_names
    assert sig.channels == [canonical_name(n) for n in cap]
    assert sig.placed_channels["A1"] == "placed by the biosemi16 cap layout at FP1"
    assert len(montage_sites(raw.ch_names, "biosemi16")[0]) == 16


def test_a_cap_option_keeps_other_recordings_placed_by_their_positions(shared_data):
    raw, truth = anonymised(read_raw(shared_data / "formats/EEGLAB/test_raw_chanloc.set"))
    sig = preprocess_raw(raw, PreprocessConfig(montage="biosemi64"))
    assert len(sig.placed_channels) == len(sig.channels) == 60
    assert all(truth[n] in how for n, how in sig.placed_channels.items())
    assert sig.dropped_channels == {"EEG 000": "flat channel (peak-to-peak 0 µV over the recording)"}  # a zero row


def test_unknown_montage_is_rejected():
    with pytest.raises(ValueError, match="biosemi64"):
        PreprocessConfig(montage="biosemi65")


def test_positions_need_a_head_shaped_cloud():
    assert place_by_position({0: np.array([0.0, 0.0, 0.09])}, {}, [0], ["X"]) == {}


# --------------------------------------------------------------------------- a montage file next to the recording
EEGMMIDB = "motor_imagery/eegmmidb/S001/S001R04.edf"


def numbered_run(shared_data) -> tuple[mne.io.BaseRaw, dict[str, str]]:
    """10 s of an EEGMMIDB run with its 64 channels renamed "1".."64"; returns it and number -> true site."""
    raw = mne.io.read_raw_edf(shared_data / EEGMMIDB, preload=True, verbose="error").crop(0, 10 - 1 / 160)
    raw.set_annotations(None)
    truth = {str(i + 1): canonical_name(n) for i, n in enumerate(raw.ch_names)}
    raw.rename_channels(dict(zip(raw.ch_names, truth)))
    return raw, truth


def standard_positions(truth: dict[str, str]) -> tuple[dict[str, np.ndarray], dict]:
    """MNE's standard_1005 positions (the Colin27 head, MRI frame, metres) of each numbered channel's true site,
    and the montage's fiducials."""
    pos = mne.channels.make_standard_montage("colin27_1005").get_positions()  # = standard_1005 (renamed in MNE 1.13)
    by_name = {name.upper(): xyz for name, xyz in pos["ch_pos"].items()}
    return {number: by_name[site] for number, site in truth.items()}, pos


def write_elc(path, positions: dict[str, np.ndarray], fiducials: dict) -> None:
    """An ASA electrode file (ANT Neuro's Xensor digitiser writes these): millimetres, Nz/LPA/RPA first."""
    rows = [("Nz", fiducials["nasion"]), ("LPA", fiducials["lpa"]), ("RPA", fiducials["rpa"]), *positions.items()]
    lines = ["# ASA electrode file", "ReferenceLabel\tavg", "UnitPosition\tmm", f"NumberPositions=\t{len(rows)}",
             "Positions", *(" ".join(f"{1000 * v:.3f}" for v in xyz) for _, xyz in rows), "Labels",
             *(name for name, _ in rows)]
    path.write_text("\n".join(lines) + "\n")


def write_sfp(path, positions: dict[str, np.ndarray]) -> None:
    """A BESA / EGI surface-point file: label and x y z in cm per line, no fiducials."""
    path.write_text("".join(f"{name}\t{x * 100:.4f}\t{y * 100:.4f}\t{z * 100:.4f}\n"
                            for name, (x, y, z) in positions.items()))


@pytest.mark.parametrize("montage_name", ["rec.elc", "cap.sfp"])
def test_montage_file_next_to_the_recording_places_numbered_channels(shared_data, tmp_path, montage_name):
    """rec.edf with channels "1".."64" and their standard_1005 positions in rec.elc (same name) or cap.sfp (the
    folder's only montage file): every channel lands on its true site in the manifest; the montage file is no
    recording. other.edf shares the folder with rec.elc, a file named for another recording: not placed."""
    from shards.writer import build

    raw, truth = numbered_run(shared_data)
    root = tmp_path / "raw"
    root.mkdir()
    mne.export.export_raw(root / "rec.edf", raw, fmt="edf", verbose="error")
    positions, pos = standard_positions(truth)
    if montage_name.endswith(".elc"):
        write_elc(root / montage_name, positions, pos)
        (root / "other.edf").write_bytes((root / "rec.edf").read_bytes())
    else:
        head = mne.transforms.apply_trans(mne.channels.compute_native_head_t(
            mne.channels.make_dig_montage(ch_pos=positions, nasion=pos["nasion"], lpa=pos["lpa"], rpa=pos["rpa"],
                                          coord_frame="mri")), np.array(list(positions.values())))
        write_sfp(root / montage_name, dict(zip(positions, head)))
    with pytest.raises(ReadError, match="montage"):
        read_raw(root / montage_name)

    manifest = build("recordings", root, tmp_path / "out", overrides={"window_s": 2.0}, progress=False)
    placed = {name: how for how, names in manifest["placed_channels"].items() for name in names}
    sites = {name: how.removeprefix("placed by position at ").split(" (")[0] for name, how in placed.items()}
    assert sites == truth  # all 64, each on its own site
    # The recording's 64 sites fit another sphere than the template's 343: measured median 4.3 mm, max 5.3 mm.
    assert max(float(how.split("(")[1].split(" mm")[0]) for how in placed.values()) < 6.0
    used = [r["source"] for r in manifest["recordings"] if not r["skipped"]]
    assert used == ["rec.edf"] and manifest["channel_sets"][0]["channels"] == [truth[str(i)] for i in range(1, 65)]
    if montage_name.endswith(".elc"):
        (skip,) = manifest["skipped"]
        assert skip["source"] == "other.edf" and "no usable EEG channel" in skip["reason"]


def test_a_broken_montage_file_costs_only_the_recordings_that_need_it(shared_data, tmp_path):
    """named.edf (10-20 names) never looks at montage files; numbered.edf needs cap.elc, which is broken: skipped
    naming it."""
    from shards.writer import build

    numbered, _ = numbered_run(shared_data)
    named = mne.io.read_raw_edf(shared_data / EEGMMIDB, preload=True, verbose="error").crop(0, 10 - 1 / 160)
    named.set_annotations(None)
    root = tmp_path / "raw"
    root.mkdir()
    mne.export.export_raw(root / "numbered.edf", numbered, fmt="edf", verbose="error")
    mne.export.export_raw(root / "named.edf", named, fmt="edf", verbose="error")
    (root / "cap.elc").write_text("# ASA electrode file, cut short by a copy\nNumberPositions=\t64\n")
    manifest = build("recordings", root, tmp_path / "out", overrides={"window_s": 2.0}, progress=False)
    assert [r["source"] for r in manifest["recordings"] if not r["skipped"]] == ["named.edf"]
    (skip,) = manifest["skipped"]
    assert skip["source"] == "numbered.edf" and "cap.elc: montage file of numbered.edf is unreadable" in skip["reason"]
