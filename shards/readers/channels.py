"""Channel positions from a montage file next to a recording, and channel types from the vocabulary."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import mne

from shards import formats
from shards.positions import recorded_positions
from shards.readers.errors import ReadError
from shards.vocabulary import classify_channels

__all__ = ["apply_montage_file", "set_types_from_vocabulary"]

# MNE channel type for each non-EEG family reported by shards.vocabulary.
_FAMILY_TYPE = {
    "EOG": "eog",
    "EMG": "emg",
    "ECG": "ecg",
    "respiration": "resp",
    "trigger/marker": "stim",
}
# Types a file may state that we never override: they come from a format that knows (FIF, BrainVision).
_KEEP_TYPES = {"eog", "emg", "ecg", "resp", "stim", "bio", "syst", "chpi", "exci", "ias", "gsr", "temperature"}


def apply_montage_file(raw: mne.io.BaseRaw, path: Path) -> None:
    """Electrode positions from the montage file next to the recording (:func:`shards.formats.montage_file`),
    where the recording has channels the vocabulary cannot name and no positions of its own, so that those are
    placed by position (``17`` at FC3).

    Channels match montage labels by name, case ignored; the others keep no position. The file's own positions
    always win, and a recording whose channels all have known names never looks. An unreadable montage file is a
    ReadError naming it: the recording would otherwise lose channels without a word.
    """
    unnamed = any(canonical is None and reason.startswith("unknown name")
                  for canonical, reason in classify_channels(raw.ch_names))
    if not unnamed or recorded_positions(raw.info):
        return
    try:
        found = formats.montage_file(path)
    except ValueError as err:
        raise ReadError(path, str(err)) from None
    if found is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no fiducials: MNE assumes the head frame, as we do
            montage = _read_montage(found)
            labels = {name.lower() for name in montage.ch_names}
            # MNE gives positions to EEG-typed channels only; a unit-less BrainVision channel is "misc" until then.
            misc = {n: "eeg" for n, t in zip(raw.ch_names, raw.get_channel_types()) if t == "misc" and n.lower() in labels}
            if misc:
                raw.set_channel_types(misc, on_unit_change="ignore", verbose="error")
            try:
                raw.set_montage(montage, match_case=False, on_missing="ignore", verbose="error")
            except ValueError:  # names equal but for case within the recording or the file: match exactly
                raw.set_montage(montage, on_missing="ignore", verbose="error")
    except Exception as err:  # noqa: BLE001 - MNE's montage readers raise many kinds on a bad file
        msg = " ".join(str(err).split())[:200]
        raise ReadError(found, f"montage file of {path.name} is unreadable ({type(err).__name__}: {msg})") from err


def _read_montage(path: Path) -> mne.channels.DigMontage:
    """``mne.channels.read_custom_montage``, which knows lower-case endings only (``CAP.ELC`` read via a link)."""
    if path.suffix == path.suffix.lower():
        return mne.channels.read_custom_montage(path)
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / ("montage" + path.suffix.lower())
        link.symlink_to(path.absolute())
        return mne.channels.read_custom_montage(link)


def set_types_from_vocabulary(raw: mne.io.BaseRaw) -> None:
    """Give non-EEG and unknown channels a non-"eeg" type so ``raw.pick("eeg")`` is meaningful."""
    types = raw.get_channel_types()
    mapping = {}
    for name, ch_type, (canonical, reason) in zip(raw.ch_names, types, classify_channels(raw.ch_names)):
        if ch_type in _KEEP_TYPES:
            continue
        if canonical is not None:
            if ch_type == "misc":  # e.g. BrainVision channels without a unit: the name says EEG
                mapping[name] = "eeg"
            continue
        if reason.startswith("non-eeg: "):
            new = _FAMILY_TYPE.get(reason.removeprefix("non-eeg: "), "misc")
        else:
            new = "misc"
        if new != ch_type:
            mapping[name] = new
    if mapping:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw.set_channel_types(mapping, on_unit_change="ignore", verbose="error")
