"""TUH EEG Events Corpus (TUEV): 1-s events annotated per channel in six classes.

Layout (v2.0): ``edf/{train,eval}/{subject}/{subject}_{NNNNNNNN}.edf`` with a same-name ``.rec`` file of
CSV lines ``channel,start_s,stop_s,code`` (channel = index in the TCP bipolar montage; code 1..6 =
spsw, gped, pled, eyem, artf, bckg). Following BIOT / LaBraM / CBraMod, each event becomes one 5-s
window: the 1-s event with 2 s of context on each side (shifted to stay inside the recording). Rows
that repeat the same (start, stop, code) on several channels become one segment, so one stretch of
signal is not sharded once per channel.
"""

from __future__ import annotations

from pathlib import Path

from shards.corpora.base import Adapter, LabelError, Loaded, Recording, check_root, register, require_found, sidecar
from shards.corpora.tuab import SPLITS, path_entity
from shards.corpora.tueg import tuh_edfs
from shards.readers import read_raw

CODES = {1: "spsw", 2: "gped", 3: "pled", 4: "eyem", 5: "artf", 6: "bckg"}
CONTEXT_S = 2.0


def read_rec(path: Path) -> list[tuple[int, float, float, int]]:
    """Rows (channel, start_s, stop_s, code) of a TUEV ``.rec`` file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(path, f"cannot read event file: {err}") from err
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) != 4:
                raise ValueError
            chan, start, stop, code = int(float(fields[0])), float(fields[1]), float(fields[2]), int(float(fields[3]))
        except ValueError:
            raise LabelError(path, f"line {i}: expected 'channel,start,stop,label' numbers, got {line.strip()!r}") from None
        if code not in CODES:
            raise LabelError(path, f"line {i}: label {code} is not one of 1..6")
        if not 0 <= start < stop:
            raise LabelError(path, f"line {i}: start {start} / stop {stop} is not an interval")
        rows.append((chan, start, stop, code))
    return rows


@register
class TUEV(Adapter):
    name = "tuev"
    task = "events"
    label_names = tuple(CODES.values())
    mains_hz = 60.0
    preprocess_overrides = {"window_s": 5.0, "stride_s": 5.0, "max_abs_uv": None}  # labelled benchmark: keep every window (see base.py)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs = []
        for path, subject, session in tuh_edfs(root):
            split = path_entity(path.relative_to(root), SPLITS)
            extra = {"rec": str(path.with_suffix(".rec"))}
            if split is not None:
                extra["split"] = split
            recs.append(self.recording(root, path, path.stem, subject=subject, session=session, **extra))
        return require_found(recs, root, self.name, "**/{subject}_NNNNNNNN.edf (+ .rec)")

    def load(self, rec: Recording) -> Loaded:
        rec_file = sidecar(rec, "rec", "event file")
        rows = read_rec(rec_file)
        raw = read_raw(rec.path)
        total = raw.n_times / raw.info["sfreq"]
        segs, seen = [], set()
        for _, start, stop, code in rows:
            if (start, stop, code) in seen:
                continue
            seen.add((start, stop, code))
            if stop > total + 1e-6:
                raise LabelError(rec_file, f"event {start}-{stop} s ends after the recording ({total:.1f} s)")
            dur = min(stop - start + 2 * CONTEXT_S, total)
            onset = min(max(start - CONTEXT_S, 0.0), total - dur)
            segs.append(self.segment(onset, dur, CODES[code]))
        segs.sort(key=lambda s: (s.onset_s, s.label))
        return Loaded(raw, segs)
