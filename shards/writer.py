"""Raw corpus -> WebDataset tars + manifest: the build, its resume bookkeeping and its worker processes.

What a sample is lives in :mod:`shards.sample`, how a shard file is encoded in :mod:`shards.shardfile`,
the folder layout and the manifest in :mod:`shards.manifest`, splits and parts in :mod:`shards.splits`.

Guarantees and how they are met:

- Deterministic: recordings are processed in id order and results are consumed in that order whatever
  the worker completion order; tar members get a fixed mtime/owner/mode; ``.npy`` and JSON bytes are
  canonical. Shard boundaries depend only on that ordered stream, so the same input and parameters give
  byte-identical tars for any ``workers``.
- Atomic: a shard is written to a hidden temporary name in the same folder, fsynced and renamed.
- Resumable: every shard holds whole recordings. When a shard is closed the state file (written
  atomically after the rename) records it with the summaries of the recordings it consumed. A restarted
  build skips those recordings and continues the shard numbering; the shard that was open when the build
  died is rebuilt from its recordings. Shards already in the state file are never rewritten.
- Bad input never stops a build: a recording whose load / preprocessing fails is logged with its file and
  reason, recorded under ``skipped`` in the manifest and the build goes on.
- No recording twice: a recording whose windows are those of one kept earlier in the build (an export next to
  its original, :mod:`shards.twins`) is not written; it is listed as skipped, ``duplicate of ...``, and under the
  manifest's ``duplicates``. The first in id order is kept, so the choice does not depend on ``workers``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from runtime.atomic import atomic_write_json, refuse_links
from shards import buildlock
from shards.corpora import get_corpus
from shards.corpora.base import Adapter, Recording, safe_id
from shards.manifest import (FORMAT, SPLITS, WRITER_REVISION, check_layout, check_parts, check_subject_splits, jsonable,
                             make_manifest, manifest_name, part_suffix, read_json, shard_name)
from shards.preprocess import PreprocessConfig
from shards.readers import check_path
from shards.sample import check_sfreq, encode_sample, npy_bytes
from shards.shardfile import OpenShard, RecordingEncoder, RecordingResult, tar_header
from shards.streaming import StreamedSignal, iter_windows, preprocess_recording
from shards.splits import assign_split, in_part
from shards.twins import ContentProbe, TwinIndex

log = logging.getLogger("shards.writer")

# Re-exported: the public names of the write side, importable from here as before the split.
__all__ = ["build", "BuildMismatchError", "process_recording", "resolve_config", "RecordingResult", "assign_split",
           "in_part", "encode_sample", "npy_bytes", "tar_header", "atomic_write_json", "make_manifest", "shard_name"]


class BuildMismatchError(ValueError):
    """The output folder holds a build of the same part with other parameters or by another revision of this
    writer: it is neither resumed nor reused, and nothing in it is changed (a caller that owns the folder, such
    as the benchmark, may delete it and build again)."""


# ---------------------------------------------------------------------------------------------------
# one recording -> samples (runs in worker processes)


def _dropped_channels(signal) -> list[tuple[str, str]]:
    """Normalise ``Signal.dropped_channels`` (mapping name -> reason, or (name, reason) pairs) to pairs."""
    dropped = getattr(signal, "dropped_channels", None) or {}
    if isinstance(dropped, Mapping):
        return [(str(k), str(v)) for k, v in dropped.items()]
    out = []
    for d in dropped:
        out.append((str(d[0]), str(d[1])) if isinstance(d, (tuple, list)) else (str(d), "dropped"))
    return out


def process_recording(adapter: Adapter, rec: Recording, config: PreprocessConfig, split: str,
                      spool_dir: Path | None = None, spool_name: str = ".spool-") -> RecordingResult:
    """Load, preprocess and window one recording. Never raises for bad input: the summary says ``skipped``.

    A recording too long to hold in memory (``shards.streaming``) is preprocessed in blocks and its samples are
    written to a spool file ``{spool_dir}/{spool_name}{recording}-*`` (default folder: the system's temporary one),
    not returned as bytes.
    """
    summary: dict[str, Any] = {
        "recording": rec.recording, "subject": rec.subject, "session": rec.session, "source": rec.source,
        "task": rec.task, "split": split, "samples": 0, "hours": 0.0, "recording_hours": 0.0,
        "channels": [], "labels": {}, "drops": {}, "dropped_channels": [], "label_skips": {}, "skipped": None,
    }
    try:
        signal, segments, config = _preprocess(adapter, rec, config, summary)
        summary["channels"] = list(signal.channels)
        windows, drops = iter_windows(signal, segments, config)
        encoder = RecordingEncoder(rec, list(signal.channels), float(signal.sfreq))
        if isinstance(signal, StreamedSignal):
            return _spooled(windows, drops, encoder, summary, spool_dir, spool_name + rec.recording,
                            ContentProbe(signal.channels, float(signal.sfreq)))
        windows = list(windows)
    except Exception as e:  # noqa: BLE001 - any failure of one recording must not stop the build
        reason = f"{type(e).__name__}: {e}"
        if str(rec.path) not in reason and rec.source not in reason:
            reason = f"{rec.source}: {reason}"
        summary.update(skipped=reason, channels=[], samples=0, hours=0.0, labels={}, drops={})
        summary.pop("sha256", None)
        return RecordingResult([], summary)

    summary["drops"] = dict(sorted(Counter(drops).items()))
    labels: Counter = Counter()
    if windows:
        f16, first = _float16_span(signal.data, windows, len(signal.channels), rec.source)
    pieces: list[bytes] = []
    durations = []
    probe = ContentProbe(signal.channels, float(signal.sfreq))
    for k, w in enumerate(windows):
        n = w.eeg.shape[1]
        eeg = f16[:, w.start - first: w.start - first + n]  # a view; tobytes() below is the only copy
        label = None if w.label is None else int(w.label)
        durations.append(encoder.encode(pieces, k, eeg, float(w.onset_s), label, w.label_name))
        probe.add(eeg, w.onset_s)
        labels[w.label_name if label is not None else "unlabeled"] += 1
    summary["samples"] = len(windows)
    summary["hours"] = sum(durations) / 3600.0
    summary["labels"] = dict(sorted(labels.items()))
    summary["content"] = probe.result()  # the twin check of the build (shards.twins)
    if pieces:  # of its tar members' bytes, hashed here in the worker: lets inspect name a damaged recording
        digest = hashlib.sha256()
        for piece in pieces:
            digest.update(piece)
        summary["sha256"] = digest.hexdigest()
    return RecordingResult(pieces, summary)


def _preprocess(adapter: Adapter, rec: Recording, config: PreprocessConfig, summary: dict[str, Any]):
    """``(signal, segments, config)`` of one recording (the config with the recording's own mains notch);
    fills the summary's rate, label skips, notch and channel drops."""
    check_path(rec.path)  # missing file, dangling link or symlink loop: ReadError saying which
    loaded = adapter.load(rec)
    raw = loaded.raw
    sfreq = check_sfreq(raw.info["sfreq"])
    expected = (rec.extra or {}).get("sfreq")
    if expected is not None and abs(float(expected) - sfreq) > 1e-3 * float(expected):
        raise ValueError(f"sampling rate {sfreq:g} Hz in the header, the corpus specifies {float(expected):g} Hz")
    summary["recording_hours"] = raw.n_times / sfreq / 3600.0
    summary["label_skips"] = dict(getattr(loaded, "skipped", {}) or {})
    # Explicit raw-name -> canonical mappings for names the vocabulary cannot know (Bonn's "EEG").
    channel_map = getattr(loaded, "channel_map", None) or getattr(adapter, "channel_map", None)
    mains = getattr(loaded, "mains_hz", None)
    if mains is not None and config.notch is not None:  # the recording's own mains (BIDS PowerLineFrequency)
        config = dataclasses.replace(config, notch=float(mains))
        summary["notch_hz"] = config.notch
    signal = preprocess_recording(raw, config, source=rec.source, channel_map=channel_map)
    summary["dropped_channels"] = _dropped_channels(signal)
    summary["placed_channels"] = sorted((getattr(signal, "placed_channels", None) or {}).items())
    return signal, loaded.segments, config


def spool_prefix(part: tuple[int, int]) -> str:
    """Name prefix of a build part's spool files (hidden; a re-run removes its own part's leftovers)."""
    return f".spool{part_suffix(part)}-"


def _spooled(windows, drops: Counter, encoder: RecordingEncoder, summary: dict[str, Any], spool_dir: Path | None,
             prefix: str, probe: ContentProbe) -> RecordingResult:
    """Encode a streamed recording's windows into a spool file, one window at a time (bounded memory)."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f"{prefix}-", suffix=".tar-part",
                                dir=None if spool_dir is None else str(spool_dir))
    digest, labels, durations, size = hashlib.sha256(), Counter(), [], 0
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            for k, w in enumerate(windows):
                pieces: list[bytes] = []
                label = None if w.label is None else int(w.label)
                eeg = w.eeg.astype(np.float16)
                durations.append(encoder.encode(pieces, k, eeg, float(w.onset_s), label, w.label_name))
                probe.add(eeg, w.onset_s)
                labels[w.label_name if label is not None else "unlabeled"] += 1
                for piece in pieces:
                    f.write(piece)
                    digest.update(piece)
                    size += len(piece)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    summary.update(samples=len(durations), hours=sum(durations) / 3600.0, labels=dict(sorted(labels.items())),
                   drops=dict(sorted(Counter(drops).items())), content=probe.result())
    if not durations:
        Path(name).unlink(missing_ok=True)
        return RecordingResult([], summary)
    summary["sha256"] = digest.hexdigest()
    return RecordingResult([], summary, spool=name, spool_bytes=size)


def _float16_span(data: np.ndarray, windows, n_channels: int, source: str) -> tuple[np.ndarray, int]:
    """``data[:, first:last]`` as float16 ``[C, last - first]``, the span the kept windows cover, and ``first``.

    One conversion per recording rather than one per window: overlapping windows (stride < window) would
    otherwise convert the shared samples twice. Relies on the ``Window`` contract
    ``w.eeg == signal.data[:, w.start:w.start + n]``, checked cheaply on the first window.
    """
    if data.shape[0] != n_channels:
        raise RuntimeError(f"{source}: signal has {data.shape[0]} rows for {n_channels} channels")
    first = min(w.start for w in windows)
    last = max(w.start + w.eeg.shape[1] for w in windows)
    w0 = windows[0]
    d0 = w0.eeg
    if d0.shape[0] != n_channels or not np.shares_memory(d0, data[:, w0.start: w0.start + d0.shape[1]]):
        raise RuntimeError(f"{source}: window 0 is not signal.data[:, start:start + n] "
                           f"({d0.shape[0]} rows for {n_channels} channels)")
    return data[:, first:last].astype(np.float16), first


def _worker(args) -> RecordingResult:
    return process_recording(*args)



# ---------------------------------------------------------------------------------------------------
# build


def resolve_config(adapter: Adapter, config: PreprocessConfig | None, overrides: Mapping[str, Any] | None) -> PreprocessConfig:
    """Defaults (or ``config``) <- the corpus's mains notch and adapter overrides <- user ``overrides``."""
    cfg = config if config is not None else PreprocessConfig()
    adapter_over: dict[str, Any] = {}
    if getattr(adapter, "mains_hz", None) is not None:
        adapter_over["notch"] = float(adapter.mains_hz)
    adapter_over.update(dict(getattr(adapter, "preprocess_overrides", {}) or {}))
    fields = {f.name for f in dataclasses.fields(cfg)}
    for source, over in (("adapter " + adapter.name, adapter_over), ("user", overrides or {})):
        unknown = sorted(set(over) - fields)
        if unknown:
            raise ValueError(f"{source} preprocessing overrides name unknown PreprocessConfig fields {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(cfg, **{**adapter_over, **dict(overrides or {})})


def _ordered_results(adapter, jobs, config, workers, lock_fd: int | None = None,
                     spool: tuple[Path | None, str] = (None, ".spool-")) -> Iterator[RecordingResult]:
    """Results in job order; with workers > 1 a bounded number of recordings are in flight.

    Workers die with this process and do not keep the build lock (``lock_fd``, our descriptor of it, is
    closed in forked workers): see :mod:`shards.buildlock`.
    """
    if workers <= 1:
        for rec, split in jobs:
            yield process_recording(adapter, rec, config, split, *spool)
        return
    ctx = multiprocessing.get_context()
    inherited = lock_fd if ctx.get_start_method() == "fork" else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=buildlock.worker_init,
                             initargs=(os.getpid(), inherited)) as pool:
        pending: deque = deque()
        it = iter(jobs)
        for rec, split in it:
            pending.append(pool.submit(_worker, (adapter, rec, config, split, *spool)))
            if len(pending) >= 2 * workers:
                break
        for rec, split in it:
            yield pending.popleft().result()
            pending.append(pool.submit(_worker, (adapter, rec, config, split, *spool)))
        while pending:
            yield pending.popleft().result()


def build(
    corpus: str | Adapter,
    root: str | Path,
    out: str | Path,
    *,
    config: PreprocessConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_samples_per_shard: int = 2000,
    progress: bool = True,
) -> dict:
    """Shard one corpus; returns the manifest (also written to ``{out}/{corpus}/manifest*.json``).

    ``config``: base preprocessing (default ``PreprocessConfig()`` with the corpus's mains notch); the
    adapter's ``preprocess_overrides`` apply on top and ``overrides`` (user / CLI) on top of those.
    ``part=(i, n)``: build only recordings whose id hashes to ``i`` mod ``n``. ``split``: train/val/test
    fractions for subjects without an official split. ``max_samples_per_shard``: a shard is closed after
    the first recording that brings it to this many samples (shards hold whole recordings, see module doc).
    Re-running with the same arguments resumes an interrupted build; different parameters on the same
    output folder are an error.
    """
    adapter = get_corpus(corpus) if isinstance(corpus, str) else corpus
    i, n = (int(part[0]), int(part[1]))
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"part must be (i, n) with 0 <= i < n, got {part!r}")
    fractions = tuple(float(f) for f in split)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative train/val/test fractions summing to 1, got {split!r}")
    if max_samples_per_shard < 1:
        raise ValueError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}")
    cfg = resolve_config(adapter, config, overrides)
    root = Path(root)
    folder = Path(out) / adapter.name
    folder.mkdir(parents=True, exist_ok=True)

    recordings = [r for r in adapter.find(root) if in_part(r, (i, n))]
    recordings.sort(key=lambda r: r.recording)
    ids = [r.recording for r in recordings]
    if len(set(ids)) != len(ids):
        dup = sorted(k for k, c in Counter(ids).items() if c > 1)
        raise ValueError(f"{adapter.name}: adapter returned duplicate recording ids {dup[:5]}")
    for r in recordings:
        if safe_id(r.recording) != r.recording:
            raise ValueError(f"{adapter.name}: recording id {r.recording!r} ({r.source}) has characters outside [A-Za-z0-9_-]")
    splits = {r.recording: assign_split(r, fractions, seed) for r in recordings}
    check_subject_splits(({"recording": r.recording, "subject": r.subject, "split": splits[r.recording]}
                          for r in recordings), f"{adapter.name} under {root} (official splits)")

    params = {
        "corpus": adapter.name, "root": str(root.resolve()), "config": jsonable(cfg), "split": list(fractions),
        "seed": seed, "part": [i, n], "max_samples_per_shard": max_samples_per_shard, "writer_revision": WRITER_REVISION,
    }
    state_path = folder / f".build-state{part_suffix((i, n))}.json"
    # An exclusive advisory lock, so two processes never build the same part into one folder at once.
    lock = buildlock.acquire(folder / f".build{part_suffix((i, n))}.lock")
    try:
        refuse_links(folder)  # a planted link at a state, manifest or shard name would redirect our writes
        check_layout(folder, (i, n))
        check_parts(folder, params)
        return _build_locked(adapter, cfg, recordings, splits, params, folder, state_path, (i, n), workers,
                             max_samples_per_shard, progress, lock.fileno())
    finally:
        lock.close()  # releases the flock


def _build_locked(adapter, cfg, recordings, splits, params, folder, state_path, part, workers,
                  max_samples_per_shard, progress, lock_fd) -> dict:
    i, n = part
    # The fingerprint leaves out the root path so a moved corpus can still resume.
    fingerprint = hashlib.sha256(json.dumps({k: v for k, v in params.items() if k != "root"}, sort_keys=True).encode()).hexdigest()
    state = {"format": FORMAT, "fingerprint": fingerprint, "params": params, "shards": [], "tail": [], "complete": False}
    if state_path.exists():
        state = _resumed_state(state_path, folder, fingerprint, params)
    # Leftovers of a killed build: half-written temporary shards of this part.
    for tmp in folder.glob(".*.tmp-*"):
        if tmp.name.startswith(tuple(f".{s}-" for s in SPLITS)) and _belongs(tmp.name, (i, n)):
            tmp.unlink(missing_ok=True)
    for spool in folder.glob(f"{spool_prefix((i, n))}*.tar-part"):  # this part's samples of a recording in flight
        spool.unlink(missing_ok=True)

    done = {r["recording"] for s in state["shards"] for r in s["recordings"]} | {r["recording"] for r in state["tail"]}
    todo = [(r, splits[r.recording]) for r in recordings if r.recording not in done]
    next_index = Counter()
    for s in state["shards"]:
        next_index[s["split"]] += 1

    if todo:
        state["complete"] = False
        open_shards: dict[str, OpenShard] = {}
        bar = tqdm(total=len(recordings), initial=len(recordings) - len(todo), desc=f"{adapter.name}",
                   unit="rec", disable=not progress, dynamic_ncols=True)
        twins = _twin_index(state)
        try:
            for result in _ordered_results(adapter, todo, cfg, workers, lock_fd, (folder, spool_prefix((i, n)))):
                result = _unless_twin(result, twins)
                s = result.summary
                if s["skipped"]:
                    log.warning("skipped %s: %s", s["source"], s["skipped"])
                    if progress:
                        tqdm.write(f"skipped {s['source']}: {s['skipped']}", file=sys.stderr)
                sp = s["split"]
                if sp not in open_shards:
                    open_shards[sp] = OpenShard(folder, shard_name(sp, next_index[sp], (i, n)), sp)
                shard = open_shards[sp]
                shard.add(result)
                if shard.samples >= max_samples_per_shard:
                    state["shards"].append(shard.commit())
                    next_index[sp] += 1
                    del open_shards[sp]
                    atomic_write_json(state_path, state, readable=False)
                    _test_hook(len(state["shards"]))
                bar.update(1)
            for sp in sorted(open_shards):
                shard = open_shards.pop(sp)
                if shard.samples:
                    state["shards"].append(shard.commit())
                else:  # only skipped / empty recordings: nothing to write, but they are done
                    state["tail"].extend(shard.recordings)
                    shard.discard()
            state["complete"] = True
            atomic_write_json(state_path, state, readable=False)
        finally:
            bar.close()
            for shard in open_shards.values():
                shard.discard()

    manifest = make_manifest(adapter, params, state)
    atomic_write_json(folder / manifest_name((i, n)), manifest)
    return manifest


def _resumed_state(state_path: Path, folder: Path, fingerprint: str, params: dict) -> dict:
    """The build state of an interrupted (or finished) build of the same part, checked before anything is resumed.

    Refuses, never repairs: without its state the build would start over and write over the shards it lists.

    Raises:
        BuildMismatchError: a build by another writer revision or with other parameters.
        ValueError: not a build state, or one whose entries are not what this module writes.
        Each message names the file or folder and what to do.
    """
    fix = (f"restore the file from a copy, or give the build another --out to start over (nothing in {folder} "
           "is deleted)")
    old = read_json(state_path, fix)
    if not (isinstance(old, dict) and isinstance(old.get("shards"), list) and isinstance(old.get("tail"), list)):
        raise ValueError(f"{state_path}: not a build state (expected a JSON object with 'fingerprint', 'shards' "
                         f"and 'tail'); {fix}")
    revision = old["params"].get("writer_revision", 1) if isinstance(old.get("params"), dict) else 1
    if revision != WRITER_REVISION:
        raise BuildMismatchError(
            f"{folder} holds a build by revision {revision} of the shard writer, which shards some recordings "
            f"differently from this one (revision {WRITER_REVISION}); delete that folder or use another --out to "
            "rebuild (nothing was changed)")
    if old.get("fingerprint") != fingerprint:
        raise BuildMismatchError(
            f"{folder} holds a build with different parameters ({state_path.name}: {old.get('params')}); "
            f"use another --out or delete that folder to rebuild with {params}")
    _check_state(old, state_path, fix)
    return old


def _twin_index(state: dict) -> TwinIndex:
    """The recordings a (resumed) build has already kept, to recognise their twins among the rest."""
    twins = TwinIndex()
    for r in [r for s in state["shards"] for r in s["recordings"]] + list(state["tail"]):
        twins.add(r)
    return twins


def _unless_twin(result: RecordingResult, twins: TwinIndex) -> RecordingResult:
    """``result`` as it is and remembered, or, when a recording kept earlier in the build holds the same samples
    (``shards.twins``), emptied and marked skipped as its duplicate (its samples are not written twice)."""
    s = result.summary
    kept = twins.twin_of(s)
    if kept is None:
        twins.add(s)
        return result
    if result.spool is not None:
        Path(result.spool).unlink(missing_ok=True)
    n = s["samples"]
    reason = (f"duplicate of {kept['source']} (recording {kept['recording']}): the same {n} windows of "
              f"{len(s['channels'])} channels; sharded once, as {kept['recording']}")
    if dict(s.get("labels") or {}) != dict(kept.get("labels") or {}):
        # one signal under two labels (a file copied into two class folders): the corpus contradicts itself
        reason += (f", whose labels it keeps ({_label_text(kept.get('labels'))}; this copy's: "
                   f"{_label_text(s.get('labels'))}): check which is right")
    summary = {**s, "samples": 0, "hours": 0.0, "labels": {}, "drops": {}, "duplicate_of": kept["recording"],
               "skipped": reason}
    summary.pop("sha256", None)
    return RecordingResult([], summary)


def _label_text(labels: Any) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(dict(labels or {}).items())) or "none"


# The entries of one recording's summary in a build state, with their JSON types (``process_recording``).
_SUMMARY = {"recording": str, "subject": str, "session": str, "source": str, "split": str, "samples": int,
            "hours": (int, float), "recording_hours": (int, float), "channels": list, "labels": dict, "drops": dict,
            "dropped_channels": list, "label_skips": dict, "skipped": (str, type(None))}
_SHARD = {"name": str, "split": str, "samples": int, "hours": (int, float), "recordings": list}


def _check_state(state: dict, path: Path, fix: str) -> None:
    """ValueError naming ``path`` unless every shard and recording entry of a build state has the shape this
    module writes (a hand-edited state with a matching fingerprint would otherwise fail deep in the build)."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: not a build state this suite wrote ({what}); {fix}")

    def check_summary(r: Any, where: str) -> None:
        if not isinstance(r, dict):
            raise bad(f"{where} is not an object")
        wrong = [k for k, kind in _SUMMARY.items() if not isinstance(r.get(k), kind) or isinstance(r.get(k), bool)
                 and kind is int]
        if wrong:
            raise bad(f"{where} ({r.get('recording', '?')}): missing or mistyped {', '.join(wrong)}")
        if r["split"] not in SPLITS:
            raise bad(f"{where} ({r['recording']}): split {r['split']!r} is not one of {', '.join(SPLITS)}")

    for k, shard in enumerate(state["shards"]):
        if not isinstance(shard, dict):
            raise bad(f"shards[{k}] is not an object")
        wrong = [key for key, kind in _SHARD.items() if not isinstance(shard.get(key), kind)]
        if wrong:
            raise bad(f"shards[{k}]: missing or mistyped {', '.join(wrong)}")
        for j, r in enumerate(shard["recordings"]):
            check_summary(r, f"shards[{k}].recordings[{j}]")
        if sum(r["samples"] for r in shard["recordings"]) != shard["samples"]:
            raise bad(f"shards[{k}] ({shard['name']}): {shard['samples']} samples, its recordings hold "
                      f"{sum(r['samples'] for r in shard['recordings'])}")
    for j, r in enumerate(state["tail"]):
        check_summary(r, f"tail[{j}]")


def _belongs(tmp_name: str, part: tuple[int, int]) -> bool:
    """Whether a temporary shard name (``.{split}-[III-]NNNNNN.tar.tmp-PID``) is of this part."""
    stem = tmp_name[1:].split(".tar", 1)[0]
    pieces = stem.split("-")
    return (len(pieces) == 2) if part[1] == 1 else (len(pieces) == 3 and pieces[1] == f"{part[0]:03d}")


def _test_hook(n_committed: int) -> None:
    """For the kill-and-resume tests, after N committed shards: exit at once (``EEGFM_SHARDS_CRASH_AFTER``),
    or write our PID to ``EEGFM_SHARDS_PAUSE_FILE`` and wait to be killed (``EEGFM_SHARDS_PAUSE_AFTER``)."""
    limit = os.environ.get("EEGFM_SHARDS_CRASH_AFTER")
    if limit and n_committed >= int(limit):
        os._exit(17)  # like SIGKILL: no cleanup, no finally blocks
    pause = os.environ.get("EEGFM_SHARDS_PAUSE_AFTER")
    if pause and n_committed >= int(pause):
        Path(os.environ["EEGFM_SHARDS_PAUSE_FILE"]).write_text(str(os.getpid()))
        time.sleep(3600)

