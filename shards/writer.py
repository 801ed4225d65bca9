"""Raw corpus -> WebDataset tars + ``manifest.json`` (DESIGN.md "shards/: the sample contract").

Layout of one build::

    {out}/{corpus}/{split}-{shard:06d}.tar          (part=(0, 1))
    {out}/{corpus}/{split}-{part:03d}-{shard:06d}.tar  (part=(i, n), n > 1: one SLURM array task each)
    {out}/{corpus}/manifest.json  |  manifest-part-{i:03d}-of-{n:03d}.json
    {out}/{corpus}/.build-state[-part-III-of-NNN].json  (resume bookkeeping)

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import platform
import sys
import tarfile
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm.auto import tqdm

from shards.corpora import get_corpus
from shards.corpora.base import Adapter, Recording, safe_id
from shards.preprocess import PreprocessConfig, cut_windows, preprocess_raw

log = logging.getLogger("shards.writer")

SPLITS = ("train", "val", "test")
FORMAT = "eegfm-shards/1"
# Below this nothing of EEG's 1-30 Hz band survives; above it a header's record duration is almost surely wrong.
MIN_SFREQ, MAX_SFREQ = 25.0, 100_000.0
_OFFICIAL_SPLIT = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                   "dev": "val", "test": "test", "eval": "test", "evaluation": "test"}


# ---------------------------------------------------------------------------------------------------
# one recording -> samples (runs in worker processes)


@dataclass
class RecordingResult:
    """What processing one recording produced: its samples and a JSON-able summary for the manifest."""

    samples: list[tuple[str, np.ndarray, dict]] = field(default_factory=list)  # (key, eeg f16 [C, T], meta)
    summary: dict = field(default_factory=dict)


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


def _dropped_channels(signal) -> list[tuple[str, str]]:
    """Normalise ``Signal.dropped_channels`` (mapping name -> reason, or (name, reason) pairs) to pairs."""
    dropped = getattr(signal, "dropped_channels", None) or {}
    if isinstance(dropped, Mapping):
        return [(str(k), str(v)) for k, v in dropped.items()]
    out = []
    for d in dropped:
        out.append((str(d[0]), str(d[1])) if isinstance(d, (tuple, list)) else (str(d), "dropped"))
    return out


def _window_eeg(w) -> np.ndarray:
    for attr in ("data", "eeg", "x"):
        if hasattr(w, attr):
            return getattr(w, attr)
    raise TypeError(f"preprocess Window {type(w).__name__} has no data/eeg field")


def process_recording(adapter: Adapter, rec: Recording, config: PreprocessConfig, split: str) -> RecordingResult:
    """Load, preprocess and window one recording. Never raises for bad input: the summary says ``skipped``."""
    summary: dict[str, Any] = {
        "recording": rec.recording, "subject": rec.subject, "session": rec.session, "source": rec.source,
        "task": rec.task, "split": split, "samples": 0, "hours": 0.0, "recording_hours": 0.0,
        "channels": [], "labels": {}, "drops": {}, "dropped_channels": [], "label_skips": {}, "skipped": None,
    }
    try:
        if not Path(rec.path).exists():
            raise FileNotFoundError(f"file does not exist: {rec.path}")
        loaded = adapter.load(rec)
        raw = loaded.raw
        sfreq = float(raw.info["sfreq"])
        if not math.isfinite(sfreq) or not MIN_SFREQ <= sfreq <= MAX_SFREQ:
            raise ValueError(f"sampling rate {sfreq:g} Hz in the header is implausible for EEG "
                             f"(expected {MIN_SFREQ:g}-{MAX_SFREQ:g} Hz)")
        expected = (rec.extra or {}).get("sfreq")
        if expected is not None and abs(float(expected) - sfreq) > 1e-3 * float(expected):
            raise ValueError(f"sampling rate {sfreq:g} Hz in the header, the corpus specifies {float(expected):g} Hz")
        summary["recording_hours"] = raw.n_times / sfreq / 3600.0
        summary["label_skips"] = dict(getattr(loaded, "skipped", {}) or {})
        # Explicit raw-name -> canonical mappings for names the vocabulary cannot know (Bonn's "EEG").
        channel_map = getattr(loaded, "channel_map", None) or getattr(adapter, "channel_map", None)
        signal = preprocess_raw(raw, config, source=rec.source, channel_map=channel_map)
        summary["dropped_channels"] = _dropped_channels(signal)
        windows, drops = cut_windows(signal, loaded.segments, config)
    except Exception as e:  # noqa: BLE001 - any failure of one recording must not stop the build
        reason = f"{type(e).__name__}: {e}"
        if str(rec.path) not in reason and rec.source not in reason:
            reason = f"{rec.source}: {reason}"
        summary["skipped"] = reason
        return RecordingResult([], summary)

    channels = list(signal.channels)
    summary["channels"] = channels
    summary["drops"] = dict(sorted(Counter(drops).items()))
    labels: Counter = Counter()
    samples = []
    for k, w in enumerate(windows):
        eeg = np.asarray(_window_eeg(w), dtype=np.float32)
        if eeg.shape[0] != len(channels):
            raise RuntimeError(f"{rec.source}: window has {eeg.shape[0]} rows for {len(channels)} channels")
        label = getattr(w, "label", None)
        label_name = getattr(w, "label_name", None)
        onset = float(getattr(w, "onset_s"))
        meta = {
            "corpus": rec.corpus, "recording": rec.recording, "subject": rec.subject, "session": rec.session,
            "channels": channels, "sfreq": float(signal.sfreq), "onset_s": round(onset, 6),
            "duration_s": round(eeg.shape[1] / float(signal.sfreq), 6), "task": rec.task,
            "label": None if label is None else int(label), "label_name": label_name, "source": rec.source,
        }
        labels[label_name if label is not None else "unlabeled"] += 1
        samples.append((f"{rec.corpus}__{rec.recording}__{k:06d}", eeg.astype(np.float16), meta))
    summary["samples"] = len(samples)
    summary["hours"] = sum(s[2]["duration_s"] for s in samples) / 3600.0
    summary["labels"] = dict(sorted(labels.items()))
    return RecordingResult(samples, summary)


def _worker(args) -> RecordingResult:
    adapter, rec, config, split = args
    return process_recording(adapter, rec, config, split)


# ---------------------------------------------------------------------------------------------------
# shard files


def encode_sample(key: str, eeg: np.ndarray, meta: dict) -> dict:
    """Canonical bytes of one sample (no pickle; ``np.save`` header and sorted-key JSON are stable)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(eeg, dtype=np.float16), allow_pickle=False)
    return {"__key__": key, "eeg.npy": buf.getvalue(),
            "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


class _OpenShard:
    """A shard being filled: a TarWriter on a hidden temporary file plus the recordings it consumed."""

    def __init__(self, folder: Path, name: str, split: str) -> None:
        self.path = folder / name
        self.tmp = folder / f".{name}.tmp-{os.getpid()}"
        self.name, self.split = name, split
        self.file = open(self.tmp, "wb")
        # Fixed mtime/owner/mode: TarWriter otherwise stamps time.time() and tars differ between builds.
        self.writer = wds.TarWriter(self.file, user="eegfm", group="eegfm", mode=0o444, mtime=0, encoder=False)
        # webdataset 1.0.2 computes but never passes its `format`, leaving tarfile's PAX default, which adds a
        # 1 KiB extended header per member (a third of a small shard) and costs ~40% of the tar-writing time.
        # GNU format has no per-member extended header and still allows long names.
        self.writer.tarstream.format = tarfile.GNU_FORMAT
        self.samples = 0
        self.recordings: list[dict] = []

    def add(self, result: RecordingResult) -> None:
        for key, eeg, meta in result.samples:
            self.writer.write(encode_sample(key, eeg, meta))
        self.samples += len(result.samples)
        self.recordings.append(result.summary)

    def commit(self) -> dict:
        self.writer.close()  # closes the tar stream, not our file object
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return {"name": self.name, "split": self.split, "samples": self.samples,
                "hours": sum(r["hours"] for r in self.recordings), "recordings": self.recordings}

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.file.close()
            self.tmp.unlink(missing_ok=True)


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


def _part_suffix(part: tuple[int, int]) -> str:
    return "" if part[1] == 1 else f"-part-{part[0]:03d}-of-{part[1]:03d}"


def shard_name(split: str, index: int, part: tuple[int, int]) -> str:
    return f"{split}-{index:06d}.tar" if part[1] == 1 else f"{split}-{part[0]:03d}-{index:06d}.tar"


def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("eegfm", "numpy", "scipy", "mne", "webdataset", "edfio"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def _ordered_results(adapter, jobs, config, workers) -> Iterator[RecordingResult]:
    """Results in job order; with workers > 1 a bounded number of recordings are in flight."""
    if workers <= 1:
        for rec, split in jobs:
            yield process_recording(adapter, rec, config, split)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        it = iter(jobs)
        for rec, split in it:
            pending.append(pool.submit(_worker, (adapter, rec, config, split)))
            if len(pending) >= 2 * workers:
                break
        for rec, split in it:
            yield pending.popleft().result()
            pending.append(pool.submit(_worker, (adapter, rec, config, split)))
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

    params = {
        "corpus": adapter.name, "root": str(root.resolve()), "config": _jsonable(cfg), "split": list(fractions),
        "seed": seed, "part": [i, n], "max_samples_per_shard": max_samples_per_shard,
    }
    state_path = folder / f".build-state{_part_suffix((i, n))}.json"
    lock = _lock(folder / f".build{_part_suffix((i, n))}.lock")
    try:
        return _build_locked(adapter, cfg, recordings, splits, params, folder, state_path, (i, n), workers,
                             max_samples_per_shard, progress)
    finally:
        lock.close()  # releases the flock


def _lock(path: Path):
    """An exclusive advisory lock, so two processes never build the same part into one folder at once."""
    import fcntl

    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RuntimeError(f"another build of this part is running in {path.parent} (lock {path.name} is held)") from None
    return f


def _build_locked(adapter, cfg, recordings, splits, params, folder, state_path, part, workers,
                  max_samples_per_shard, progress) -> dict:
    i, n = part
    # The fingerprint leaves out the root path so a moved corpus can still resume.
    fingerprint = hashlib.sha256(json.dumps({k: v for k, v in params.items() if k != "root"}, sort_keys=True).encode()).hexdigest()
    state = {"format": FORMAT, "fingerprint": fingerprint, "params": params, "shards": [], "tail": [], "complete": False}
    if state_path.exists():
        old = json.loads(state_path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{folder} holds a build with different parameters ({state_path.name}: {old.get('params')}); "
                f"use another --out or delete that folder to rebuild with {params}")
        state = old
    # Leftovers of a killed build: half-written temporary shards of this part.
    for tmp in folder.glob(".*.tmp-*"):
        if tmp.name.startswith(tuple(f".{s}-" for s in SPLITS)) and _belongs(tmp.name, (i, n)):
            tmp.unlink(missing_ok=True)

    done = {r["recording"] for s in state["shards"] for r in s["recordings"]} | {r["recording"] for r in state["tail"]}
    todo = [(r, splits[r.recording]) for r in recordings if r.recording not in done]
    next_index = Counter()
    for s in state["shards"]:
        next_index[s["split"]] += 1

    if todo:
        state["complete"] = False
        open_shards: dict[str, _OpenShard] = {}
        bar = tqdm(total=len(recordings), initial=len(recordings) - len(todo), desc=f"{adapter.name}",
                   unit="rec", disable=not progress, dynamic_ncols=True)
        try:
            for result in _ordered_results(adapter, todo, cfg, workers):
                s = result.summary
                if s["skipped"]:
                    log.warning("skipped %s: %s", s["source"], s["skipped"])
                    if progress:
                        tqdm.write(f"skipped {s['source']}: {s['skipped']}", file=sys.stderr)
                sp = s["split"]
                if sp not in open_shards:
                    open_shards[sp] = _OpenShard(folder, shard_name(sp, next_index[sp], (i, n)), sp)
                shard = open_shards[sp]
                shard.add(result)
                if shard.samples >= max_samples_per_shard:
                    state["shards"].append(shard.commit())
                    next_index[sp] += 1
                    del open_shards[sp]
                    atomic_write_json(state_path, state)
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
            atomic_write_json(state_path, state)
        finally:
            bar.close()
            for shard in open_shards.values():
                shard.discard()

    manifest = make_manifest(adapter, params, state)
    atomic_write_json(folder / f"manifest{_part_suffix((i, n))}.json", manifest)
    return manifest


def _belongs(tmp_name: str, part: tuple[int, int]) -> bool:
    """Whether a temporary shard name (``.{split}-[III-]NNNNNN.tar.tmp-PID``) is of this part."""
    stem = tmp_name[1:].split(".tar", 1)[0]
    pieces = stem.split("-")
    return (len(pieces) == 2) if part[1] == 1 else (len(pieces) == 3 and pieces[1] == f"{part[0]:03d}")


def _test_hook(n_committed: int) -> None:
    """Crash on purpose after N committed shards (``EEGFM_SHARDS_CRASH_AFTER``): the kill-and-resume test."""
    limit = os.environ.get("EEGFM_SHARDS_CRASH_AFTER")
    if limit and n_committed >= int(limit):
        os._exit(17)  # like SIGKILL: no cleanup, no finally blocks


# ---------------------------------------------------------------------------------------------------
# manifest


def make_manifest(adapter: Adapter, params: dict, state: dict) -> dict:
    """Aggregate the per-recording summaries of a build state into the manifest."""
    recs = [r for s in state["shards"] for r in s["recordings"]] + list(state["tail"])
    recs.sort(key=lambda r: r["recording"])
    by_split: dict[str, dict] = {}
    channel_sets: dict[tuple, dict] = {}
    labels: Counter = Counter()
    labels_by_split: dict[str, Counter] = {}
    rec_labels: Counter = Counter()
    drops: Counter = Counter()
    label_skips: Counter = Counter()
    dropped_channels: dict[str, Counter] = {}
    skipped = []
    for r in recs:
        if r["skipped"]:
            skipped.append({"recording": r["recording"], "source": r["source"], "reason": r["skipped"]})
            continue
        sp = by_split.setdefault(r["split"], {"samples": 0, "hours": 0.0, "recordings": 0, "subjects": set()})
        sp["samples"] += r["samples"]
        sp["hours"] += r["hours"]
        sp["recordings"] += 1
        sp["subjects"].add(r["subject"])
        cs = channel_sets.setdefault(tuple(r["channels"]), {"recordings": 0, "samples": 0})
        cs["recordings"] += 1
        cs["samples"] += r["samples"]
        labels.update(r["labels"])
        labels_by_split.setdefault(r["split"], Counter()).update(r["labels"])
        rec_labels.update(r["labels"].keys())
        drops.update(r["drops"])
        label_skips.update(r["label_skips"])
        for name, reason in r["dropped_channels"]:
            dropped_channels.setdefault(reason, Counter())[name] += 1
    shards = [{"name": s["name"], "split": s["split"], "samples": s["samples"], "hours": s["hours"],
               "recordings": [r["recording"] for r in s["recordings"]]} for s in state["shards"]]
    return _round_floats(_jsonable({
        "format": FORMAT,
        "corpus": adapter.name,
        "task": adapter.task,
        "label_names": getattr(adapter, "task_label_names", None) or list(adapter.label_names),
        "complete": bool(state["complete"]),
        "build": params,
        "versions": software_versions(),
        "totals": {
            "samples": sum(s["samples"] for s in shards),
            "hours": sum(s["hours"] for s in shards),
            "recordings": len(recs) - len(skipped),
            "skipped": len(skipped),
            "shards": len(shards),
        },
        "shards": shards,
        "by_split": {k: {**v, "subjects": len(v["subjects"])} for k, v in sorted(by_split.items())},
        "channel_sets": [{"channels": list(k), **v} for k, v in sorted(channel_sets.items(), key=lambda kv: (-kv[1]["recordings"], kv[0]))],
        "label_counts": dict(sorted(labels.items())),
        "label_counts_by_split": {k: dict(sorted(v.items())) for k, v in sorted(labels_by_split.items())},
        "recordings_by_label": dict(sorted(rec_labels.items())),
        "drops": dict(sorted(drops.items())),
        "label_skips": dict(sorted(label_skips.items())),
        "dropped_channels": {k: dict(sorted(v.items())) for k, v in sorted(dropped_channels.items())},
        "skipped": skipped,
        "splits": {
            "subjects": dict(sorted({r["subject"]: r["split"] for r in recs}.items())),
            "recordings": {r["recording"]: r["split"] for r in recs},
        },
        "recordings": [{k: r[k] for k in ("recording", "subject", "session", "source", "task", "split",
                                             "samples", "hours", "recording_hours", "skipped")} for r in recs],
    }))


def _round_floats(x: Any, digits: int = 9) -> Any:
    """Round floats so sums of hours read 1.5, not 1.4999999999999998 (still deterministic)."""
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: _round_floats(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_round_floats(v, digits) for v in x]
    return x
