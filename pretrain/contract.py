"""The input contract of a pretraining run, built from its shards' manifests and written at export.

``write_run_contract(export_dir, corpora, objective, config, steps, patch_size)`` is the one call the
trainer's export makes: it reads each corpus's ``manifest.json`` (preprocessing, hours per shard, channel
sets) and writes ``{export_dir}/contract.json`` (:class:`foundation.contract.InputContract`).

What it records, and the approximations: hours are summed over the manifests' entries for exactly the
shard files the run streamed (e.g. only ``train-*``), reading the manifest of every folder a corpus's glob
reaches; channels are the union of the corpus's channel sets (the manifest keeps them per corpus, not per
split). The filter band and notch are the corpora's only where they all agree, else None (a mix of 50 Hz
and 60 Hz notches has no single notch); each corpus keeps its own in ``corpora[i]["preprocess"]``, with
None for a key its folders disagree on. Remote corpora (``pipe:`` / URLs) have no local manifest: their
hours, channels and filters are unknown and left out of the agreement, and a contract with no channels
skips the montage check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foundation.contract import InputContract
from pretrain.data import Corpus
from runtime.signal import PATCH_SAMPLES, SFREQ
from shards.dataset import read_manifest
from shards.vocabulary import CHANNELS

__all__ = ["run_contract", "write_run_contract"]


def _agreed(configs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each key's value where every config has the same one, else None ({} for no config)."""
    keys = sorted(set().union(*configs)) if configs else []
    return {k: configs[0].get(k) if all(c.get(k) == configs[0].get(k) for c in configs) else None for k in keys}


def _corpus_entry(corpus: Corpus) -> tuple[dict[str, Any], set[str]]:
    """The corpus's contract entry and channel names, from the manifest of every folder its shards lie in."""
    entry: dict[str, Any] = {"name": corpus.name, "shards": len(corpus.urls), "weight": corpus.weight,
                             "hours": None, "preprocess": None}
    by_folder: dict[Path, set[str]] = {}
    for url in corpus.urls:
        if not (url.startswith("pipe:") or "://" in url):
            by_folder.setdefault(Path(url).parent, set()).add(Path(url).name)
    hours, configs, channels, names = 0.0, [], set(), []
    for folder, files in by_folder.items():
        try:
            manifest = read_manifest(folder)
        except FileNotFoundError:
            continue
        hours += sum(float(s.get("hours", 0.0)) for s in manifest.get("shards", []) if s.get("name") in files)
        config = (manifest.get("build") or {}).get("config")
        if config:
            # A recording that stated its own mains (BIDS PowerLineFrequency) was notched there instead.
            stated = {r["notch_hz"] for r in manifest.get("recordings", []) if r.get("notch_hz") is not None}
            if stated and stated != {config.get("notch")}:
                config = {**config, "notch": None}
            configs.append(config)
        channels |= {c for cs in manifest.get("channel_sets", []) for c in cs.get("channels", [])}
        names.append(manifest.get("corpus", corpus.name))
    if not names:  # remote, or no manifest anywhere
        return entry, set()
    entry["hours"] = round(hours, 4)
    entry["preprocess"] = _agreed(configs) or None
    entry["corpus"] = names[0]
    return entry, channels


def run_contract(corpora: Sequence[Corpus], *, objective: str, steps: int, crop_s: float | None,
                 patch_size: int = PATCH_SAMPLES) -> InputContract:
    """The contract of a run over ``corpora``.

    Hours and channels come from the manifest of every folder the corpora's shards lie in. The filter band,
    notch and rate are recorded only where every corpus (and every folder of one) whose manifest records
    them agrees: corpora built with different notches (50 Hz in Europe, 60 Hz in America) give
    ``notch=None``, and the per-corpus values stay in ``corpora[i]["preprocess"]``.
    """
    entries, channels = [], set()
    for corpus in corpora:
        entry, names = _corpus_entry(corpus)
        entries.append(entry)
        channels |= names
    pre = _agreed([e["preprocess"] for e in entries if e["preprocess"]])
    hours = [e["hours"] for e in entries if e["hours"] is not None]
    return InputContract(
        sfreq=float(pre.get("sfreq") or SFREQ), l_freq=pre.get("l_freq"), h_freq=pre.get("h_freq"), notch=pre.get("notch"),
        patch_samples=patch_size, window_s=crop_s, vocabulary_size=len(CHANNELS), channels=tuple(channels),
        objective=objective, steps=int(steps), data_hours=round(sum(hours), 4), corpora=tuple(entries),
    )


def write_run_contract(export_dir: str | Path, corpora: Sequence[Corpus], objective: Any, config: Any, steps: int,
                       patch_size: int = PATCH_SAMPLES) -> Path:
    """Write ``{export_dir}/contract.json`` for a finished run; returns its path."""
    contract = run_contract(corpora, objective=str(getattr(objective, "name", type(objective).__name__)), steps=steps,
                            crop_s=getattr(getattr(config, "data", None), "crop_s", None), patch_size=patch_size)
    return contract.save(export_dir)
