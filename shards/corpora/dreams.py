"""DREAMS Spindles database (Devuyst et al., University of Mons): 30-min sleep excerpts.

Layout: ``excerptN.txt`` (first line ``[C3-A1]``, then one sample per line; rate = (lines-1)/1800 s)
next to ``Hypnogram_excerptN.txt`` (header line, then one R&K stage per 5-s epoch). ``excerpt3.edf``
(a PSG copy of excerpt 3) is ignored so that excerpt is not counted twice.
"""

from __future__ import annotations

import re
from pathlib import Path

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found, sidecar
from shards.preprocess import Segment
from shards.readers import read_dreams_excerpt

EPOCH_S = 5.0
# R&K codes of the DREAMS hypnograms -> AASM label names (S3 + S4 = N3).
STAGES = {5: "W", 4: "REM", 3: "N1", 2: "N2", 1: "N3", 0: "N3"}
_EXCERPT = re.compile(r"^excerpt(\d+)\.txt$", re.IGNORECASE)


def read_hypnogram(path: Path) -> list[int]:
    """Stage codes of a DREAMS ``Hypnogram_excerptN.txt`` (one per 5-s epoch, header skipped)."""
    try:
        lines = Path(path).read_text(errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(path, f"cannot read hypnogram: {err}") from err
    if not lines or not lines[0].strip().startswith("["):
        raise LabelError(path, "expected a header line like '[Hypnogram]' first")
    codes = []
    for i, line in enumerate(lines[1:], start=2):
        text = line.strip()
        if not text:
            continue
        try:
            codes.append(int(float(text)))
        except ValueError:
            raise LabelError(path, f"line {i}: expected an integer stage code, got {text!r}") from None
    if not codes:
        raise LabelError(path, "hypnogram has no epochs")
    return codes


def stage_segments(codes: list[int], epoch_s: float, names: tuple[str, ...]) -> tuple[list[Segment], dict[str, int]]:
    """One Segment per scored epoch; codes outside 0..5 (movement / unscored) are skipped and counted."""
    segs, skipped = [], {}
    for i, code in enumerate(codes):
        stage = STAGES.get(code)
        if stage is None:
            key = f"stage_code_{code}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        segs.append(Segment(i * epoch_s, epoch_s, names.index(stage), stage))
    return segs, skipped


@register
class Dreams(Adapter):
    name = "dreams"
    task = "sleep"
    label_names = ("W", "N1", "N2", "N3", "REM")
    mains_hz = 50.0
    preprocess_overrides = {"window_s": EPOCH_S, "stride_s": EPOCH_S, "max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path in sorted(root.iterdir()):
            m = _EXCERPT.match(path.name)
            if not m:
                continue
            n = m.group(1)
            hyp = path.with_name(f"Hypnogram_excerpt{n}.txt")
            rid = f"excerpt{n}"
            recs.append(self.recording(root, path, rid, subject=rid, session="1", hypnogram=str(hyp)))
        return require_found(recs, root, self.name, "excerptN.txt")

    def load(self, rec: Recording) -> Loaded:
        hyp = sidecar(rec, "hypnogram", "hypnogram")
        codes = read_hypnogram(hyp)
        raw = read_dreams_excerpt(rec.path)
        duration = raw.n_times / raw.info["sfreq"]
        n_fit = int(round(duration / EPOCH_S))
        if len(codes) != n_fit:
            raise LabelError(hyp, f"{len(codes)} epochs of {EPOCH_S:g} s but {rec.path.name} lasts {duration:.1f} s ({n_fit} epochs)")
        segs, skipped = stage_segments(codes, EPOCH_S, self.label_names)
        return Loaded(raw, segs, skipped)
