"""Channel vocabulary: stable ids, alias table, non-EEG rejection, real recordings' channel names."""

from __future__ import annotations

import pytest

from shards.vocabulary import (
    CHANNELS,
    PAD_ID,
    VOCAB_SIZE,
    canonical_name,
    channel_id,
    channel_ids,
    classify_channel,
    classify_channels,
)


def test_ids_are_pinned():
    # These ids are baked into trained checkpoints: if this test fails, someone reordered CHANNELS.
    pinned = {
        "<PAD>": 0, "EEG": 1, "FP1": 2, "FPZ": 3, "FP2": 4, "F7": 17, "FZ": 21, "T7": 39, "C3": 41, "CZ": 43,
        "T8": 47, "P7": 61, "PZ": 65, "O1": 82, "O2": 84, "IZ": 86, "A1": 337, "A2": 338, "M1": 339,
        "M2": 340, "FP1-F7": 349, "P4-O2": 369, "FT10-T8": 375,
    }
    assert {name: channel_id(name) for name in pinned} == pinned
    assert VOCAB_SIZE == len(CHANNELS) >= 376
    assert PAD_ID == 0 and CHANNELS[PAD_ID] == "<PAD>"


def test_vocabulary_is_unique_upper_case():
    assert len(set(CHANNELS)) == len(CHANNELS)
    assert all(name == name.upper() for name in CHANNELS)


def test_channel_id_errors_name_the_channel():
    with pytest.raises(KeyError, match="'Fp1'.*canonical_name.*'FP1'"):
        channel_id("Fp1")
    with pytest.raises(KeyError, match="NOPE"):
        channel_ids(["FP1", "NOPE"])
    assert channel_ids(["FP1", "CZ", "O2"]) == [2, 43, 84]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Fp1", "FP1"), ("fp1", "FP1"), ("FP1", "FP1"), ("EEG Fp1", "FP1"), ("EEG Fp1-REF", "FP1"),
        ("EEG FP1-REF", "FP1"), ("FP1-LE", "FP1"), ("EEG FP1-LE", "FP1"), ("Fp1-AVG", "FP1"), ("FP1-AR", "FP1"),
        ("Fp1.", "FP1"), ("Fc5.", "FC5"), ("C3..", "C3"), ("Cz..", "CZ"), ("T10.", "T10"), ("Iz..", "IZ"),
        ("C3-A1", "C3"), ("CZ-A1", "CZ"), ("F4-A1", "F4"), ("CZ-A2", "CZ"), ("O1-M2", "O1"), ("FP1-A1", "FP1"),
        ("T3", "T7"), ("T4", "T8"), ("T5", "P7"), ("T6", "P8"), ("EEG T3", "T7"), ("EEG T6-REF", "P8"),
        ("T4-A2", "T8"), ("FPz", "FPZ"), ("POz", "POZ"), ("TP9", "TP9"), ("AFF1h", "AFF1H"), ("A1", "A1"),
        ("EEG A2-REF", "A2"), ("M1", "M1"), ("POL Fp2", "FP2"), ("EEG T1-REF", "T1"),
        # TUH TCP / CHB-MIT bipolar pairs, with old names modernised inside the pair.
        ("FP1-F7", "FP1-F7"), ("EEG FP1-F7", "FP1-F7"), ("F7-T3", "F7-T7"), ("T3-T5", "T7-P7"),
        ("T5-O1", "P7-O1"), ("A1-T3", "A1-T7"), ("C4-T4", "C4-T8"), ("fz-cz", "FZ-CZ"), ("T8-P8-0", "T8-P8"),
        ("T8-P8-1", "T8-P8"), ("FT9-FT10", "FT9-FT10"),
    ],
)
def test_alias_table(raw, canonical):
    assert canonical_name(raw) == canonical
    assert classify_channel(raw) == (canonical, "eeg")


@pytest.mark.parametrize(
    ("raw", "family"),
    [
        ("EOG", "EOG"), ("EOG1", "EOG"), ("EOG2-A1", "EOG"), ("Eog", "EOG"), ("EEG LOC-REF", "EOG"),
        ("EMG", "EMG"), ("EMG1", "EMG"), ("Chin", "EMG"), ("ECG", "ECG"), ("EKG1-REF", "ECG"), ("Ekg2", "ECG"),
        ("RESP", "respiration"), ("NAF1", "respiration"), ("VTH", "respiration"), ("SpO2", "oximetry/pulse"),
        ("SAO2", "oximetry/pulse"), ("PULSE", "oximetry/pulse"), ("Trigger", "trigger/marker"),
        ("STI 014", "trigger/marker"), ("Status", "trigger/marker"), ("EDF Annotations", "trigger/marker"),
        ("MarkerIndex", "trigger/marker"), ("TIME_STAMP_s", "time stamp/counter"),
        ("OR_TIME_STAMP_ms", "time stamp/counter"), ("COUNTER", "time stamp/counter"),
        ("INTERPOLATED", "time stamp/counter"), ("CQ.AF3", "contact quality"), ("CQ_AF3", "contact quality"),
        ("CQ_T7", "contact quality"), ("EQ_Pz", "contact quality"), ("RAW_CQ", "contact quality"),
        ("CQ_OVERALL", "contact quality"), ("acc1", "motion"), ("GYROX", "motion"), ("BATTERY", "device status"),
        ("BATTERY_PERCENT", "device status"), ("PHOTIC-REF", "photic/derived"), ("hypnogram", "scoring"),
    ],
)
def test_non_eeg_is_rejected_with_its_family(raw, family):
    assert canonical_name(raw) is None
    assert classify_channel(raw) == (None, f"non-eeg: {family}")


@pytest.mark.parametrize("raw", ["EEG", "", "X7", "EEG 26-REF", "F3-F7", "Fp1Fp2", "EEG FP1 FP2", "Cz-Pz-Oz"])
def test_unknown_names_are_none_never_a_near_miss(raw):
    canonical, reason = classify_channel(raw)
    assert canonical is None
    assert reason.startswith("unknown name")


def test_special_entries_are_never_produced_by_aliases():
    for raw in ["EEG", "eeg", "<PAD>", "PAD"]:
        assert canonical_name(raw) is None


def test_biosemi_abc_layout_is_not_mistaken_for_ears():
    names = [f"A{i}" for i in range(1, 17)] + ["Status"]
    result = classify_channels(names)
    assert all(c is None for c, _ in result)
    assert "BioSemi" in result[0][1]
    # The same labels next to 10-20 names are ears (MNE's testing BDF: A1/A2 with C3, Fz, ...).
    assert [c for c, _ in classify_channels(["A1", "A2", "C3", "F3", "Fz", "EOG"])] == ["A1", "A2", "C3", "F3", "FZ", None]


def _read_names(path):
    import mne

    if path.suffix == ".edf":
        return mne.io.read_raw_edf(path, preload=False, verbose="error").ch_names
    if path.suffix == ".bdf":
        return mne.io.read_raw_bdf(path, preload=False, verbose="error").ch_names
    return mne.io.read_raw(path, preload=False, verbose="error").ch_names


# Every shared recording: the canonical names its EEG channels must map to; everything else must drop.
EXPECTED = {
    "emotion/mental_stress_emotiv/horror_video/recording_18.edf": ["AF3", "T7", "PZ", "T8", "AF4"],
    "sleep/dreams_spindles/excerpt3.edf": ["O1", "C3", "FP1"],
    "unlabeled/mne_testing/BDF/multiple_annotation_chans.bdf":
        ["A1", "A2", "C3", "C4", "F3", "FZ", "F4", "P3", "PZ", "P4", "O1", "O2"],
    "unlabeled/eeglab/eeglab_data.set": [
        "FPZ", "F3", "FZ", "F4", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "C4", "CZ", "T8", "CP5", "CP1", "CP2",
        "CP6", "P7", "P3", "PZ", "P4", "P8", "PO7", "PO3", "POZ", "PO4", "PO8", "O1", "OZ", "O2",
    ],
    "unlabeled/eeglab/test.edf":
        ["FP1", "FP2", "T7", "T8", "P7", "P8", "F7", "F8", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2"],
    "unlabeled/eeglab/test.bdf": [],
    "unlabeled/eeglab/testbva.vhdr": [
        "FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "F7", "F8", "T7", "T8", "P7", "P8", "FZ",
        "CZ", "PZ", "FC1", "FC2", "CP1", "CP2", "FC5", "FC6", "CP5", "CP6", "TP9", "TP10",
    ],
    "unlabeled/yasa/data_resting_EO_200Hz_raw.fif": ["F4", "CZ"],
}


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_shared_recordings_map_exactly(shared_data, rel):
    names = _read_names(shared_data / rel)
    result = classify_channels(names)
    assert [c for c, _ in result if c is not None] == EXPECTED[rel]
    for name, (canonical, reason) in zip(names, result):
        assert (canonical is None) == (reason != "eeg"), name


def test_emotiv_non_eeg_channels_all_have_a_family(shared_data):
    for path in sorted((shared_data / "emotion/mental_stress_emotiv").rglob("*.edf")):
        result = classify_channels(_read_names(path))
        dropped = [reason for canonical, reason in result if canonical is None]
        assert len(dropped) >= 20, path  # 24 or 26 device channels per file
        # Contact-quality channels embed electrode names; none may leak through as EEG.
        assert all(r.startswith("non-eeg: ") for r in dropped), (path, dropped)
        assert sorted(c for c, _ in result if c) == ["AF3", "AF4", "PZ", "T7", "T8"]


def test_eegmmidb_dotted_names_map_to_64_distinct_positions(shared_data):
    for path in sorted((shared_data / "motor_imagery/eegmmidb").rglob("*.edf")):
        canon = [c for c, _ in classify_channels(_read_names(path))]
        assert None not in canon and len(set(canon)) == 64, path
        assert canon[:3] == ["FC5", "FC3", "FC1"] and canon[-1] == "IZ"


def test_dreams_psg_drops_every_polygraphic_signal(shared_data):
    names = _read_names(shared_data / "sleep/dreams_spindles/excerpt3.edf")
    reasons = dict(zip(names, (r for _, r in classify_channels(names))))
    assert reasons["EOG1-A1"] == "non-eeg: EOG" and reasons["EMG1"] == "non-eeg: EMG"
    assert reasons["ECG"] == "non-eeg: ECG" and reasons["SAO2"] == "non-eeg: oximetry/pulse"
    assert sum(r == "eeg" for r in reasons.values()) == 3
    assert all(r.startswith("non-eeg") for r in reasons.values() if r != "eeg")


def test_model_embeddings_have_a_row_for_every_vocabulary_id():
    # The vocabulary is append-only; the backbone's and tokenizer's default embedding tables leave room
    # for it to grow, so checkpoints keep loading. A vocabulary that outgrows them must fail here first.
    from foundation.model import EEGMambaConfig
    from shards.vocabulary import VOCAB_SIZE
    from tokenizer.vqnsp import VQNSPConfig

    assert VOCAB_SIZE <= EEGMambaConfig().n_channel_ids
    assert VOCAB_SIZE <= VQNSPConfig().n_channel_ids
