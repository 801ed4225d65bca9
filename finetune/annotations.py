"""A recording's window labels as the events EEG tools read: MNE ``Annotations`` (``.fif``/``.txt``) and a BIDS
``events.tsv`` with its ``events.json``.

``finetune.predict`` gives one row per window; here consecutive windows with the same label become one span
(:func:`label_spans`), the form a hypnogram or a list of detected seizures takes in MNE and BIDS:

- a window covers ``[onset, onset + window_s)``, cut at the next window's onset when windows overlap
  (``--stride_s`` shorter than the window), so spans never overlap and tile the labelled part of the recording;
- a window that could not be labelled (NaN/inf samples, a non-finite model output) becomes a span described
  ``BAD_no_label``: MNE leaves ``BAD``-described spans out of epochs and averages, and mne-bids reads it back
  as such; its reason is in the ``skipped`` column of the TSV;
- onsets are seconds from the first sample of the recording (``orig_time=None``), so
  ``raw.set_annotations(mne.read_annotations(path))`` puts them on the recording they came from.

The TSV adds ``probability`` (mean over the span's windows of the probability of its label) and ``n_windows``;
``events.json`` describes every column, as BIDS asks for columns it does not define.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mne
import numpy as np

__all__ = ["Span", "label_spans", "to_annotations", "write_annotations", "write_events_tsv", "NO_LABEL"]

NO_LABEL = "BAD_no_label"


@dataclass(frozen=True)
class Span:
    """Consecutive windows with one label: ``onset_s`` and ``duration_s`` in seconds from the first sample,
    ``label_name`` (None: no label, ``skipped`` says why), the mean ``probability`` of that label, ``n_windows``."""

    onset_s: float
    duration_s: float
    label_name: str | None
    probability: float | None
    n_windows: int
    skipped: str | None = None

    @property
    def description(self) -> str:
        return self.label_name if self.label_name is not None else NO_LABEL


def label_spans(rows: Sequence[Mapping[str, Any]], window_s: float) -> list[Span]:
    """Merge ``finetune.predict`` rows (any order) into spans of one label (module doc)."""
    rows = sorted(rows, key=lambda r: r["onset_s"])
    spans: list[Span] = []
    probs: list[float] = []
    for i, r in enumerate(rows):
        start = float(r["onset_s"])
        end = start + window_s
        if i + 1 < len(rows):
            end = min(end, float(rows[i + 1]["onset_s"]))
        name, why = r.get("label_name"), r.get("skipped") or None
        last = spans[-1] if spans else None
        if last is not None and last.label_name == name and last.skipped == why and \
                abs(last.onset_s + last.duration_s - start) < 1e-6:
            probs.append(r.get("probability"))
            spans[-1] = Span(last.onset_s, end - last.onset_s, name, _mean(probs), last.n_windows + 1, why)
            continue
        probs = [r.get("probability")]
        spans.append(Span(start, end - start, name, _mean(probs), 1, why))
    return spans


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def to_annotations(spans: Sequence[Span]) -> mne.Annotations:
    """``mne.Annotations`` of the spans (``orig_time=None``: onsets count from the recording's first sample)."""
    return mne.Annotations([s.onset_s for s in spans], [s.duration_s for s in spans],
                           [s.description for s in spans], orig_time=None)


def write_annotations(spans: Sequence[Span], *paths: str | Path) -> list[Path]:
    """Save the spans as MNE annotations, one file per path (``*_annot.fif``, ``.txt`` or ``.csv``)."""
    annotations = to_annotations(spans)
    out = []
    for path in paths:
        annotations.save(Path(path), overwrite=True, verbose="error")
        out.append(Path(path))
    return out


def write_events_tsv(spans: Sequence[Span], path: str | Path, *, classes: Sequence[str], model: str,
                     task: str) -> tuple[Path, Path]:
    """BIDS ``events.tsv`` (``onset duration trial_type probability n_windows skipped``, ``n/a`` where empty) and
    its ``events.json`` sidecar (``path`` with ``.json``); returns both paths."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["onset", "duration", "trial_type", "probability", "n_windows", "skipped"])
        for s in spans:
            writer.writerow([f"{s.onset_s:.3f}", f"{s.duration_s:.3f}", s.description,
                             "n/a" if s.probability is None else f"{s.probability:.4f}", s.n_windows,
                             s.skipped or "n/a"])
    levels = {c: f"windows the model labelled {c}" for c in classes}
    levels[NO_LABEL] = "windows without a label (see the skipped column)"
    sidecar = {
        "onset": {"Description": "start of the span, in seconds from the first sample of the recording", "Units": "s"},
        "duration": {"Description": "length of the span: consecutive windows with the same label", "Units": "s"},
        "trial_type": {"Description": f"the label of model {model} (task {task}) for every window of the span",
                       "Levels": levels},
        "probability": {"Description": "mean over the span's windows of the model's probability of its label"},
        "n_windows": {"Description": "number of model windows merged into the span"},
        "skipped": {"Description": "why the span's windows have no label (n/a for labelled spans)"},
    }
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return path, json_path
