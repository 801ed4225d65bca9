"""The input contract of a pretraining run, built from its shards' manifests and written at export.

``write_run_contract(export_dir, corpora, objective, config, steps, patch_size)`` is the one call the
trainer's export makes: it reads each corpus's ``manifest.json`` (preprocessing, hours per shard, channel
sets) and writes ``{export_dir}/contract.json`` (:class:`foundation.contract.InputContract`).

What it records, and the approximations: hours are summed over the manifest's entries for exactly the
shard files the run streamed (e.g. only ``train-*``); channels are the union of the corpus's channel sets
(the manifest keeps them per corpus, not per split). Remote corpora (``pipe:`` / URLs) have no local
manifest: their hours and channels are unknown, and a contract with no channels skips the montage check.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundation.contract import InputContract
from pretrain.data import Corpus
from shards.dataset import read_manifest
from shards.sample import PATCH_SAMPLES, SFREQ
from shards.vocabulary import CHANNELS

__all__ = ["run_contract", "write_run_contract"]


def _corpus_entry(corpus: Corpus) -> tuple[dict[str, Any], set[str]]:
    entry: dict[str, Any] = {"name": corpus.name, "shards": len(corpus.urls), "weight": corpus.weight,
                             "hours": None, "preprocess": None}
    first = corpus.urls[0]
    if first.startswith("pipe:") or "://" in first:
        return entry, set()
    try:
        manifest = read_manifest(Path(first).parent)
    except FileNotFoundError:
        return entry, set()
    names = {Path(u).name for u in corpus.urls}
    entry["hours"] = round(sum(float(s.get("hours", 0.0)) for s in manifest.get("shards", []) if s.get("name") in names), 4)
    entry["preprocess"] = (manifest.get("build") or {}).get("config")
    entry["corpus"] = manifest.get("corpus", corpus.name)
    channels = {c for cs in manifest.get("channel_sets", []) for c in cs.get("channels", [])}
    return entry, channels


def run_contract(corpora: Sequence[Corpus], *, objective: str, steps: int, crop_s: float | None,
                 patch_size: int = PATCH_SAMPLES) -> InputContract:
    """The contract of a run over ``corpora`` (filter band and notch from the first corpus that records one)."""
    entries, channels = [], set()
    for corpus in corpora:
        entry, names = _corpus_entry(corpus)
        entries.append(entry)
        channels |= names
    pre = next((e["preprocess"] for e in entries if e["preprocess"]), None) or {}
    hours = [e["hours"] for e in entries if e["hours"] is not None]
    return InputContract(
        sfreq=float(pre.get("sfreq", SFREQ)), l_freq=pre.get("l_freq"), h_freq=pre.get("h_freq"), notch=pre.get("notch"),
        patch_samples=patch_size, window_s=crop_s, vocabulary_size=len(CHANNELS), channels=tuple(channels),
        objective=objective, steps=int(steps), data_hours=round(sum(hours), 4), corpora=tuple(entries),
    )


def write_run_contract(export_dir: str | Path, corpora: Sequence[Corpus], objective: Any, config: Any, steps: int,
                       patch_size: int = PATCH_SAMPLES) -> Path:
    """Write ``{export_dir}/contract.json`` for a finished run; returns its path."""
    contract = run_contract(corpora, objective=str(getattr(objective, "name", type(objective).__name__)), steps=steps,
                            crop_s=getattr(getattr(config, "data", None), "crop_s", None), patch_size=patch_size)
    return contract.save(export_dir)
