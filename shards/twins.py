"""Twin recordings: one recording present twice in a corpus, found by what the build would write.

A clinical export puts the same EEG in a folder twice (a Nihon Kohden ``.EEG`` next to the ``.EDF`` exported
from it, a BrainVision copy of an EDF, the same file under two names); sharded twice, every window of it would be
in the training data twice, and possibly on both sides of a split. File names and headers cannot tell: an export
renames channels, re-scales the samples to its own digital range and drops the acquisition's own fields.
What the build writes can: after preprocessing the twins give the same windows.

:class:`ContentProbe` takes a recording's windows as the writer encodes them (float16, 100 µV units, canonical
channels) and keeps a fingerprint:

- ``key``: a digest of the canonical channel set, the rate, the window length and every window's onset: the
  same duration, rate, channels and windowing;
- ``probe``: :data:`PROBE_SIZE` sample values spread over the recording (window ``k`` gives the sample at
  position ``k * 7919 mod T`` of channel ``k mod C``, channels in canonical order, so the channel order of the
  file does not matter).

Two recordings are twins when their keys are equal and every probe value agrees within :data:`ATOL` (1 µV)
plus :data:`RTOL`: far above the rounding of a re-quantised export (an EDF's 16-bit step over a ±3.2 mV range is
0.1 µV), far below the difference of two different recordings of one montage and length (EEGMMIDB's runs
differ by tens of µV at every probe). :class:`TwinIndex` is the build's memory of the recordings kept so far.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ContentProbe", "TwinIndex", "PROBE_SIZE", "ATOL", "RTOL"]

PROBE_SIZE = 32
ATOL = 0.01  # 1 µV in the shards' 100-µV units
RTOL = 0.01


class ContentProbe:
    """Fingerprint of one recording's windows (module doc), fed window by window."""

    def __init__(self, channels: Sequence[str], sfreq: float) -> None:
        self.channels = list(channels)
        self.order = sorted(range(len(self.channels)), key=lambda i: self.channels[i])
        self.sfreq = float(sfreq)
        self.onsets: list[float] = []
        self.values: list[float] = []
        self.length = 0

    def add(self, eeg: np.ndarray, onset_s: float) -> None:
        """One window ``eeg [C, T]`` as it is written (float16) and its onset."""
        k = len(self.values)
        c, t = eeg.shape
        self.length = t
        self.onsets.append(round(float(onset_s), 3))
        self.values.append(float(eeg[self.order[k % c], (k * 7919) % t]))

    def result(self) -> dict[str, Any] | None:
        """``{"key", "probe"}``, or None for a recording without windows."""
        if not self.values:
            return None
        layout = {"channels": sorted(self.channels), "sfreq": self.sfreq, "samples": self.length,
                  "onsets": self.onsets}
        key = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:32]
        picks = np.unique(np.linspace(0, len(self.values) - 1, PROBE_SIZE).round().astype(int))
        return {"key": key, "probe": [round(self.values[i], 5) for i in picks]}


class TwinIndex:
    """The fingerprints (``summary["content"]``) of the recordings a build has kept, to find a later twin."""

    def __init__(self) -> None:
        self.by_key: dict[str, list[tuple[np.ndarray, Mapping[str, Any]]]] = {}

    def add(self, summary: Mapping[str, Any]) -> None:
        content = summary.get("content")
        if summary.get("skipped") or not isinstance(content, Mapping) or "key" not in content:
            return
        self.by_key.setdefault(str(content["key"]), []).append((np.asarray(content["probe"], float), summary))

    def twin_of(self, summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The summary of a kept recording with the same samples as ``summary``'s, or None."""
        content = summary.get("content")
        if summary.get("skipped") or not isinstance(content, Mapping) or "key" not in content:
            return None
        probe = np.asarray(content["probe"], float)
        for other, kept in self.by_key.get(str(content["key"]), ()):
            if other.shape == probe.shape and np.allclose(probe, other, atol=ATOL, rtol=RTOL):
                return kept
        return None
