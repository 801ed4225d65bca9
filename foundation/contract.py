"""The input contract of a checkpoint: what the backbone was trained to read, and on what.

A pretrained EEGMamba folder holds ``contract.json`` beside ``config.json`` / ``model.safetensors``. It
says which sampling rate, units, filter band, patch and window length the weights expect, which channel
vocabulary their spatial-embedding rows index (and which channel names were actually seen in pretraining),
and how they were trained (objective, steps, hours of data per corpus). A checkpoint without it fails
silently on the wrong rate, units or montage; with it, ``finetune/contract.py`` converts what the suite can
convert (resampling, unit rescaling, channel-name mapping) and refuses what it cannot, naming the mismatch.

This module only describes and stores the contract (no shard or recording code: ``foundation`` imports
nothing of the suite but ``runtime``, whose ``runtime.signal`` holds the rate, patch length and units). ``pretrain`` writes it at export; ``finetune`` compares against it.

Example::

    contract = InputContract(sfreq=200.0, channels=("C3", "C4"), objective="masked_stft", steps=1200)
    contract.save("ckpt/")                       # ckpt/contract.json
    read_contract("ckpt/")                       # InputContract, or None (with a warning) for old folders
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.signal import PATCH_SAMPLES, SFREQ, UNITS, check_sfreq

__all__ = ["CONTRACT_NAME", "FORMAT", "UNITS", "ContractError", "InputContract", "read_contract"]

CONTRACT_NAME = "contract.json"
FORMAT = "eegfm-contract/1"


class ContractError(ValueError):
    """Data the checkpoint cannot read, or a contract file that is not one (the message names which)."""


@dataclass(frozen=True)
class InputContract:
    """What a checkpoint expects as input, and what it was trained on.

    Fields:
        sfreq: sampling rate in Hz of every input. units: value scale (``"100uV"`` = µV / 100).
        l_freq, h_freq, notch: band-pass edges and mains notch in Hz applied to the training data (None = off).
        patch_samples: samples per token (1 s at ``sfreq``). window_s: crop length the backbone was trained on
            (the shortest, ``data.crop_s``, when windows also trained at ``data.longer_crops_s``).
        vocabulary_size: number of names in the append-only channel vocabulary when the checkpoint was made
            (ids below it keep their meaning in every later vocabulary: it is the vocabulary's version).
        channels: canonical names seen in pretraining (their spatial embeddings are trained), sorted.
        objective: pretraining objective name. steps: optimiser steps. data_hours: hours of EEG streamed from.
        corpora: per corpus ``{"name", "hours", "shards", "preprocess"}`` as recorded from its manifest.
    """

    sfreq: float = SFREQ
    units: str = UNITS
    l_freq: float | None = None
    h_freq: float | None = None
    notch: float | None = None
    patch_samples: int = PATCH_SAMPLES
    window_s: float | None = None
    vocabulary_size: int = 0
    channels: tuple[str, ...] = ()
    objective: str = ""
    steps: int = 0
    data_hours: float = 0.0
    corpora: tuple[dict[str, Any], ...] = ()
    format: str = FORMAT

    def __post_init__(self) -> None:
        try:  # the rule every rate the suite reads passes: a contract of 1e9 Hz would ask for 290-GiB windows
            check_sfreq(self.sfreq, what="as InputContract.sfreq")
        except ValueError as err:
            raise ContractError(str(err)) from None
        if self.units != UNITS:
            raise ContractError(f"InputContract.units must be {UNITS!r} (µV / 100), got {self.units!r}")
        if self.format != FORMAT:
            raise ContractError(f"InputContract.format {self.format!r} is not {FORMAT!r} (a newer suite wrote it?)")
        object.__setattr__(self, "channels", tuple(sorted(set(self.channels))))
        object.__setattr__(self, "corpora", tuple(dict(c) for c in self.corpora))

    @property
    def patch_s(self) -> float:
        return self.patch_samples / self.sfreq

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channels"] = list(self.channels)
        data["corpora"] = [dict(c) for c in self.corpora]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "contract") -> "InputContract":
        """Strict: unknown keys are an error (a contract silently half-read is worse than none)."""
        if not isinstance(data, dict):
            raise ContractError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("channels", "corpora"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except (TypeError, ContractError) as err:
            raise ContractError(f"{where}: {err}") from None

    def save(self, folder: str | Path) -> Path:
        """Write ``{folder}/contract.json``; returns its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONTRACT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    def summary(self) -> str:
        """One line for logs and notices."""
        band = f"{self.l_freq or 0:g}-{self.h_freq:g} Hz" if self.h_freq else (f">{self.l_freq:g} Hz" if self.l_freq else "unfiltered")
        return (f"{self.sfreq:g} Hz, {self.units}, {band}, {self.patch_samples}-sample patches, "
                f"{len(self.channels)} pretraining channels, vocabulary of {self.vocabulary_size}")


def read_contract(folder: str | Path, *, warn: bool = True) -> InputContract | None:
    """The contract of a checkpoint folder, or None for a folder written before contracts existed.

    Raises:
        ContractError: ``contract.json`` exists but is not valid JSON or not a contract.
    """
    folder = Path(folder)
    path = folder / CONTRACT_NAME
    if not path.is_file():
        if warn:
            warnings.warn(
                f"checkpoint {folder} has no {CONTRACT_NAME} (written before input contracts): assuming the "
                f"suite's defaults (200 Hz, µV / 100); sampling rate, units and montage cannot be checked",
                stacklevel=2,
            )
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ContractError(f"{path} is not valid JSON: {err}") from err
    return InputContract.from_dict(data, where=str(path))

