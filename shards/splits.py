"""Which split a recording's subject belongs to, and which part of a partitioned build a recording is in."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from shards.corpora.base import Recording
from shards.manifest import SPLITS

_OFFICIAL_SPLIT = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                   "dev": "val", "test": "test", "eval": "test", "evaluation": "test"}


def assign_split(rec: Recording, fractions: Sequence[float], seed: int) -> str:
    """Subject-wise split: an official split in ``rec.extra["split"]`` wins, else a hash of subject + seed.

    Every recording of a subject lands in the same split, and adding subjects never moves existing ones.
    """
    official = rec.extra.get("split") if rec.extra else None
    if official:
        try:
            return _OFFICIAL_SPLIT[str(official).lower()]
        except KeyError:
            raise ValueError(f"{rec.source}: unknown official split {official!r}; expected one of {sorted(_OFFICIAL_SPLIT)}") from None
    h = hashlib.sha256(f"{seed}\x00{rec.corpus}\x00{rec.subject}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if u < acc:
            return name
    return SPLITS[max(i for i, f in enumerate(fractions) if f > 0)]


def in_part(rec: Recording, part: tuple[int, int]) -> bool:
    """Deterministic partition by a hash of the recording id: stable when the corpus gains recordings."""
    i, n = part
    if n == 1:
        return True
    h = int.from_bytes(hashlib.sha256(rec.recording.encode()).digest()[:8], "big")
    return h % n == i
