"""Holding data to a checkpoint's input contract: convert what can be converted, refuse the rest.

A pretrained checkpoint carries ``contract.json`` (:class:`foundation.contract.InputContract`). Before
finetuning on shards (``finetune/run.py``) or labelling a recording (``python -m finetune.predict``) the
data are compared with it:

* **converted, with one notice line on stderr**: another sampling rate (shard windows are resampled with a
  polyphase filter; recordings are resampled by ``shards.preprocess.preprocess_raw``), other units (a
  recording stored in V, mV or nV is rescaled to µV / 100, which MNE's readers do from the file's
  physical dimension; the notice says which), channel names in another spelling (``EEG Fp1-REF`` ->
  ``FP1`` through ``shards.vocabulary``), channels the pretraining never saw (kept; their spatial
  embeddings are untrained), another filter band (reported, not undone);
* **refused with one ContractError naming the mismatch**: a montage none of whose channels is among the
  contract's pretraining channels (the position-less ``EEG`` channel of single-channel sets counts as
  mappable: it has its own vocabulary id), or channel ids beyond the vocabulary the checkpoint was made with.

Old checkpoints without a contract load with a warning (``foundation.contract.read_contract``) and are
not checked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.contract import ContractError, InputContract, read_contract
from runtime.signal import SFREQ
from shards.dataset import Window
from shards.filters import resample
from shards.vocabulary import CHANNELS, canonical_name

__all__ = [
    "ContractError",
    "check_montage",
    "conform_tasks",
    "conform_windows",
    "contract_of",
    "data_contract",
    "notice",
    "recording_conversions",
    "resample_windows",
]

# Channels that map without a position: their own vocabulary id, never an error (Bonn's single channel).
POSITIONLESS = frozenset({CHANNELS[1]})
_UNIT_NAMES = {"v": "V", "mv": "mV", "nv": "nV", "µv": "µV", "uv": "µV", "μv": "µV"}


def notice(message: str) -> None:
    """Say once, on one line of stderr, what was converted."""
    print(f"eegfm contract: {message}", file=sys.stderr, flush=True)


def contract_of(folder: str | Path | None) -> InputContract | None:
    """The contract of a checkpoint folder (None, with a warning, for one made before contracts)."""
    return None if folder is None else read_contract(folder)


def check_montage(channels: Iterable[str], contract: InputContract | None, where: str) -> list[str]:
    """Channels (canonical names) of ``where`` that pretraining never saw; ContractError if none was seen.

    Raises:
        ContractError: no channel of ``where`` is among the contract's pretraining channels, or a channel
            is newer than the checkpoint's vocabulary.
    """
    channels = list(dict.fromkeys(channels))
    if contract is None:
        return []
    if contract.vocabulary_size:
        newer = [c for c in channels if c in CHANNELS and CHANNELS.index(c) >= contract.vocabulary_size]
        if newer:
            raise ContractError(
                f"{where}: channel(s) {newer} were added to the vocabulary after the checkpoint was made "
                f"(its vocabulary has {contract.vocabulary_size} names); it has no embedding for them"
            )
    if not contract.channels:
        return []
    seen = set(contract.channels) | POSITIONLESS
    unseen = [c for c in channels if c not in seen]
    if channels and len(unseen) == len(channels):
        raise ContractError(
            f"{where}: montage {channels} cannot be mapped to the checkpoint's input contract: none of its channels "
            f"is among the {len(contract.channels)} it was pretrained on ({', '.join(contract.channels[:24])}"
            f"{', ...' if len(contract.channels) > 24 else ''}). Rename the channels to 10-20/10-10 names the "
            f"vocabulary knows (shards build --channel-map / preprocess_raw(channel_map=...)), use a checkpoint "
            f"pretrained on this montage, or train from scratch (--checkpoint none)"
        )
    return unseen


def _band(l_freq: float | None, h_freq: float | None) -> str:
    return f"{l_freq if l_freq is not None else 0:g}-{h_freq:g} Hz" if h_freq else (f"> {l_freq:g} Hz" if l_freq else "unfiltered")


def resample_windows(windows: Sequence[Window], sfreq: float) -> list[Window]:
    """Windows resampled to ``sfreq`` with the shard build's own resampler (``shards.filters.resample``:
    polyphase, the same ratio rule and kernel), ``meta['sfreq']`` updated."""
    out = []
    for w in windows:
        src = float(w.meta.get("sfreq", sfreq))
        if src == sfreq:
            out.append(w)
            continue
        data = resample(np.asarray(w.eeg, dtype=np.float32), src, float(sfreq))
        out.append(Window(data.astype(np.float32), {**w.meta, "sfreq": float(sfreq)}))
    return out


def conform_windows(
    contract: InputContract | None, windows: Sequence[Window], preprocessing: Mapping[str, Any], where: str
) -> tuple[list[Window], str | None]:
    """Shard windows brought to the contract, and the one-line description of what changed (or None).

    Args:
        windows: one task's windows. preprocessing: corpus -> the manifest's ``build`` entry.
        where: the shards, for messages.
    Raises:
        ContractError: see :func:`check_montage`.
    """
    windows = list(windows)
    if contract is None or not windows:
        return windows, None
    parts = []
    rates = sorted({float(w.meta.get("sfreq", contract.sfreq)) for w in windows})
    if rates != [contract.sfreq]:
        windows = resample_windows(windows, contract.sfreq)
        parts.append(f"resampled {'/'.join(f'{r:g}' for r in rates)} Hz -> {contract.sfreq:g} Hz")
    unseen = check_montage((c for w in windows for c in w.meta.get("channels", [])), contract, where)
    if unseen:
        parts.append(f"{len(unseen)} channel(s) unseen in pretraining, kept with untrained embeddings: {', '.join(unseen[:8])}"
                     f"{', ...' if len(unseen) > 8 else ''}")
    for corpus, build in sorted(preprocessing.items()):
        cfg = (build or {}).get("config") or {}
        band, want = (cfg.get("l_freq"), cfg.get("h_freq")), (contract.l_freq, contract.h_freq)
        if cfg and contract.h_freq is not None and band != want:
            parts.append(f"{corpus} filtered {_band(*band)}, pretraining {_band(*want)} (not converted)")
    if not parts:
        return windows, None
    return windows, f"{where}: " + "; ".join(parts)


def _units(raw: Any, names: Sequence[str]) -> list[str]:
    units = getattr(raw, "_orig_units", None) or {}
    found = {_UNIT_NAMES.get(str(units.get(n, "")).strip().lower()) for n in names}
    return sorted(u for u in found if u and u != "µV")


def recording_conversions(raw: Any, signal: Any, contract: InputContract | None, source: str,
                          montage: bool = True) -> str | None:
    """One line saying what was converted to read ``source`` under ``contract`` (None: nothing was).

    ``raw`` is the ``mne.io.Raw`` as read, ``signal`` the ``shards.preprocess.Signal`` made from it.
    Raises ContractError for an unmappable montage (:func:`check_montage`), unless ``montage`` is False (a
    single-channel model reads each channel as its own, so the montage is not compared).
    """
    parts = []
    target = contract.sfreq if contract is not None else signal.sfreq
    orig = float(signal.orig_sfreq or raw.info["sfreq"])
    if orig != target:
        parts.append(f"resampled {orig:g} Hz -> {target:g} Hz")
    kept_raw = [n for n in raw.ch_names if n not in signal.dropped_channels]
    units = _units(raw, kept_raw)
    if units:
        parts.append(f"units {'/'.join(units)} -> µV / 100 (from the file's physical dimension)")
    renamed = [(n, canonical_name(n)) for n in kept_raw if canonical_name(n) and canonical_name(n) != n]
    if renamed:
        shown = ", ".join(f"{a} -> {b}" for a, b in renamed[:4])
        parts.append(f"{len(renamed)} channel name(s) mapped ({shown}{', ...' if len(renamed) > 4 else ''})")
    unseen = check_montage(signal.channels, contract, source) if montage else []
    if unseen:
        parts.append(f"{len(unseen)} channel(s) unseen in pretraining: {', '.join(unseen[:8])}")
    return f"{source}: " + "; ".join(parts) if parts else None


def conform_tasks(checkpoint: str | Path | None, tasks: Mapping[str, Any], *, announce: bool = True) -> InputContract | None:
    """Bring every task's windows (``finetune.data.TaskData``) to the checkpoint's contract, in place.

    Prints one notice line per task that needed a conversion (on the main process: ``announce``).
    Returns the contract the finetuned model is saved with: the checkpoint's, else :func:`data_contract`.
    """
    contract = contract_of(checkpoint)
    for data in tasks.values():
        data.windows, line = conform_windows(contract, data.windows, data.preprocessing, data.source)
        if line and announce:
            notice(line)
    return contract if contract is not None else data_contract(tasks)


def data_contract(tasks: Mapping[str, Any]) -> InputContract:
    """The contract a model trained from scratch (or from a contract-less checkpoint) inherits from its data:
    the shards' rate and filters and the channels finetuning saw, so ``finetune.predict`` can check inputs."""
    windows = [w for data in tasks.values() for w in data.windows]
    builds = [(b or {}).get("config") or {} for data in tasks.values() for b in data.preprocessing.values()]
    pre = next((b for b in builds if b), {})
    return InputContract(
        sfreq=float(windows[0].meta.get("sfreq", pre.get("sfreq", SFREQ))) if windows else float(pre.get("sfreq", SFREQ)),
        l_freq=pre.get("l_freq"), h_freq=pre.get("h_freq"), notch=pre.get("notch"), vocabulary_size=len(CHANNELS),
        channels=tuple({c for w in windows for c in w.meta.get("channels", [])}), objective="none (finetuning data only)",
    )
