"""Sleep-EDF Expanded (Kemp et al. 2000; PhysioNet): whole-night PSGs with R&K hypnograms.

Layout: ``SC4ssNE0-PSG.edf`` (Sleep Cassette) / ``ST7ssNJ0-PSG.edf`` (Sleep Telemetry) next to the
annotation-only ``SC4ssNxx-Hypnogram.edf`` with the same first 6 characters (study, subject ss, night N;
the last two characters name the scorer and differ). Stages are EDF+ annotations "Sleep stage W/1/2/3/4/R"
(30-s epochs; S3 + S4 = N3); "Sleep stage ?" and "Movement time" carry no label and are counted as skipped.

The cassette recordings last ~20 h, two thirds of it daytime wake; like DeepSleepNet and the
SleepEDF-20/78 benchmarks, wake is kept only from ``trim_wake_s`` (30 min) before the first to 30 min
after the last sleep epoch. Set ``trim_wake_s = None`` on a subclass to keep every epoch.
"""

from __future__ import annotations

import re
from pathlib import Path

import mne

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found
from shards.preprocess import Segment
from shards.readers import read_raw

EPOCH_S = 30.0
STAGES = {
    "Sleep stage W": "W",
    "Sleep stage 1": "N1",
    "Sleep stage 2": "N2",
    "Sleep stage 3": "N3",
    "Sleep stage 4": "N3",
    "Sleep stage R": "REM",
}
UNLABELED = {"Sleep stage ?": "stage_unknown", "Movement time": "movement"}
LABEL_NAMES = ("W", "N1", "N2", "N3", "REM")
_PSG = re.compile(r"^(S[CT]\d{4})[A-Za-z0-9]{2}-PSG\.edf$", re.IGNORECASE)
_HYP = re.compile(r"^(S[CT]\d{4})[A-Za-z0-9]{2}-Hypnogram\.edf$", re.IGNORECASE)


def hypnogram_epochs(
    path: Path, total_s: float | None = None, trim_wake_s: float | None = 1800.0
) -> tuple[list[Segment], dict[str, int]]:
    """30-s stage epochs of a Sleep-EDF ``*-Hypnogram.edf`` as Segments (label index into W,N1,N2,N3,REM).

    ``total_s`` (the PSG length) drops epochs that run past the signal; those and the unlabeled
    "?"/"Movement time" epochs are counted in the returned skip counts.
    """
    try:
        ann = mne.read_annotations(path)
    except Exception as err:  # MNE raises several types for a corrupt EDF+ annotation file
        raise LabelError(path, f"cannot read EDF+ annotations: {err}") from err
    if len(ann) == 0:
        raise LabelError(path, "hypnogram holds no annotations")
    segs, skipped = [], {}

    def skip(reason: str, n: int) -> None:
        skipped[reason] = skipped.get(reason, 0) + n

    for onset, duration, desc in zip(ann.onset, ann.duration, ann.description):
        n = duration / EPOCH_S
        if abs(n - round(n)) > 1e-3 or abs(onset / EPOCH_S - round(onset / EPOCH_S)) > 1e-3:
            raise LabelError(path, f"annotation {desc!r} at {onset} s lasting {duration} s is not on the 30-s epoch grid")
        n = int(round(n))
        stage = STAGES.get(str(desc))
        if stage is None:
            if str(desc) not in UNLABELED:
                raise LabelError(path, f"unknown annotation {desc!r} at {onset} s (expected Sleep stage W/1/2/3/4/R/?)")
            skip(UNLABELED[str(desc)], n)
            continue
        for k in range(n):
            start = float(onset) + k * EPOCH_S
            if total_s is not None and start + EPOCH_S > total_s + 1e-6:
                skip("beyond_recording", 1)
                continue
            segs.append(Segment(start, EPOCH_S, LABEL_NAMES.index(stage), stage))
    if trim_wake_s is not None:
        sleep = [s.onset_s for s in segs if s.label_name != "W"]
        if sleep:
            lo, hi = min(sleep) - trim_wake_s, max(sleep) + EPOCH_S + trim_wake_s
            kept = [s for s in segs if s.label_name != "W" or (s.onset_s >= lo - 1e-6 and s.onset_s + EPOCH_S <= hi + 1e-6)]
            if len(kept) < len(segs):
                skip("wake_trimmed", len(segs) - len(kept))
            segs = kept
    segs.sort(key=lambda s: s.onset_s)
    return segs, skipped


@register
class SleepEDF(Adapter):
    name = "sleep_edf"
    task = "sleep"
    label_names = LABEL_NAMES
    mains_hz = 50.0  # recorded in the Netherlands
    preprocess_overrides = {"window_s": EPOCH_S, "stride_s": EPOCH_S, "max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)
    trim_wake_s: float | None = 1800.0
    # The two EEG derivations are Cz- and Oz-referenced; like "C3-A1" -> C3 they are named by their active
    # electrode (the vocabulary has no FPZ-CZ / PZ-OZ pair entries).
    channel_map = {"EEG Fpz-Cz": "FPZ", "EEG Pz-Oz": "PZ"}

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        files = sorted(p for p in root.rglob("*.edf") if p.is_file()) + sorted(p for p in root.rglob("*.EDF") if p.is_file())
        hyps: dict[str, Path] = {}
        for p in files:
            m = _HYP.match(p.name)
            if m:
                hyps.setdefault(m.group(1).upper(), p)
        recs = []
        for p in files:
            m = _PSG.match(p.name)
            if not m:
                continue
            key = m.group(1).upper()
            hyp = hyps.get(key)
            recs.append(
                self.recording(
                    root, p, p.name[: -len("-PSG.edf")], subject=key[:5], session=key[5],
                    hypnogram=str(hyp) if hyp else "",
                )
            )
        return require_found(recs, root, self.name, "*-PSG.edf")

    def load(self, rec: Recording) -> Loaded:
        if not rec.extra.get("hypnogram"):
            raise LabelError(rec.path, f"no *-Hypnogram.edf starting with {rec.path.name[:6]} next to it")
        raw = read_raw(rec.path)
        segs, skipped = hypnogram_epochs(Path(rec.extra["hypnogram"]), raw.n_times / raw.info["sfreq"], self.trim_wake_s)
        if not segs:
            raise LabelError(rec.extra["hypnogram"], "no scored sleep-stage epoch falls inside the PSG")
        return Loaded(raw, segs, skipped)

