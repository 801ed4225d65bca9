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
import functools
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
    """What processing one recording produced, ready to append to a shard.

    ``tar``: the tar members of all its samples as consecutive byte chunks (``{key}.eeg.npy`` then
    ``{key}.json`` per window, each a 512-byte header + payload padded to 512 bytes). Tar members carry no
    offsets, so these bytes are the same wherever they land in a shard: workers encode them and the writer
    only appends them. Plain bytes (instead of arrays and dicts per window) are cheap to pickle back from a
    worker and give the garbage collector nothing to scan. ``summary``: JSON-able, for the manifest
    (``summary["samples"]`` counts the samples in ``tar``).
    """

    tar: list[bytes] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.summary.get("samples", 0))

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.tar))


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
    encoder = _SampleEncoder(rec, channels, float(signal.sfreq))
    if windows:
        f16, first = _float16_span(signal.data, windows, len(channels), rec.source)
    pieces: list[bytes] = []
    durations = []
    for k, w in enumerate(windows):
        n = _window_eeg(w).shape[1]
        eeg = f16[:, w.start - first: w.start - first + n]  # a view; tobytes() below is the only copy
        label = getattr(w, "label", None)
        label_name = getattr(w, "label_name", None)
        label = None if label is None else int(label)
        duration = encoder.encode(pieces, k, eeg, float(w.onset_s), label, label_name)
        durations.append(duration)
        labels[label_name if label is not None else "unlabeled"] += 1
    summary["samples"] = len(windows)
    summary["hours"] = sum(durations) / 3600.0
    summary["labels"] = dict(sorted(labels.items()))
    return RecordingResult(pieces, summary)


def _float16_span(data: np.ndarray, windows, n_channels: int, source: str) -> tuple[np.ndarray, int]:
    """``data[:, first:last]`` as float16 ``[C, last - first]``, the span the kept windows cover, and ``first``.

    One conversion per recording rather than one per window: overlapping windows (stride < window) would
    otherwise convert the shared samples twice. Relies on the ``Window`` contract
    ``w.data == signal.data[:, w.start:w.start + n]``, checked cheaply on the first window.
    """
    if data.shape[0] != n_channels:
        raise RuntimeError(f"{source}: signal has {data.shape[0]} rows for {n_channels} channels")
    first = min(w.start for w in windows)
    last = max(w.start + _window_eeg(w).shape[1] for w in windows)
    w0 = windows[0]
    d0 = _window_eeg(w0)
    if d0.shape[0] != n_channels or not np.shares_memory(d0, data[:, w0.start: w0.start + d0.shape[1]]):
        raise RuntimeError(f"{source}: window 0 is not signal.data[:, start:start + n] "
                           f"({d0.shape[0]} rows for {n_channels} channels)")
    return data[:, first:last].astype(np.float16), first


def _worker(args) -> RecordingResult:
    adapter, rec, config, split = args
    return process_recording(adapter, rec, config, split)


# ---------------------------------------------------------------------------------------------------
# shard files


# A sample is two tar members, ``{key}.eeg.npy`` and ``{key}.json`` (webdataset's sorted field order), with
# a fixed owner/mode/mtime so rebuilds are byte-identical. tarfile.TarInfo.tobuf and np.save cost ~0.1 ms per
# sample in Python; the header below is GNU tar (tarfile.GNU_FORMAT, no per-member PAX header) built from a
# template that tarfile itself produced, so the bytes are exactly what tarfile writes (tests compare them).
_TAR_USER = "eegfm"
_TAR_MODE = 0o444
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads a closed archive to a multiple of this


def _tarinfo_header(name: str, size: int) -> bytes:
    """The reference: tarfile's GNU header for one of our members (also used for names over 100 bytes)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, _TAR_MODE, _TAR_USER, _TAR_USER
    return ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = bytearray(_tarinfo_header("", 0))
_TEMPLATE[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
_TEMPLATE_SUM = sum(_TEMPLATE) - sum(_TEMPLATE[124:136])  # without the size field
_TEMPLATE_HEAD = bytes(_TEMPLATE[100:124])  # mode, uid, gid
_TEMPLATE_MID = bytes(_TEMPLATE[136:148])  # mtime
_TEMPLATE_TAIL = bytes(_TEMPLATE[156:])  # type flag, linkname, magic, uname, gname, dev, prefix


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte GNU tar header of a regular member ``name`` of ``size`` bytes (ours: mode 0444, mtime 0).

    Equal to ``tarfile.TarInfo(...).tobuf(tarfile.GNU_FORMAT)``; names over 100 bytes (a GNU ``LongLink``
    member first) and sizes of 8 GiB or more (base-256 size) are left to tarfile.
    """
    bname = name.encode("utf-8", "surrogateescape")
    return _header(bname, sum(bname), size)


def _header(bname: bytes, name_sum: int, size: int) -> bytes:
    """``tar_header`` for an encoded name whose byte sum (its share of the checksum) is ``name_sum``."""
    if len(bname) > 100 or size >= 8**11:
        return _tarinfo_header(bname.decode("utf-8", "surrogateescape"), size)
    size_field = b"%011o\0" % size
    chksum = _TEMPLATE_SUM + name_sum + sum(size_field)
    return b"".join((bname.ljust(100, b"\0"), _TEMPLATE_HEAD, size_field, _TEMPLATE_MID,
                     b"%06o\0 " % chksum, _TEMPLATE_TAIL))


_NPY_SUFFIX_SUM, _JSON_SUFFIX_SUM = sum(b".eeg.npy"), sum(b".json")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


_NPY_HEADERS: dict[tuple[int, ...], bytes] = {}


def npy_bytes(eeg: np.ndarray) -> bytes:
    """``np.save`` bytes of a float16 array (C order), with the header cached per shape.

    The ``.npy`` header depends only on dtype, order and shape, so it is taken once from ``np.save`` itself
    (byte-identical by construction) and the data is ``tobytes()``: one copy instead of np.save's
    BytesIO round trip.
    """
    if eeg.dtype != np.float16:
        raise TypeError(f"eeg must be float16, got {eeg.dtype}")
    return _npy_header(eeg.shape) + eeg.tobytes()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = _NPY_HEADERS.get(shape)
    if header is None:
        buf = io.BytesIO()
        zeros = np.zeros(shape, np.float16)
        np.save(buf, zeros, allow_pickle=False)
        header = buf.getvalue()[: -zeros.nbytes or None]
        _NPY_HEADERS[shape] = header
    return header


def _json_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


class _SampleEncoder:
    """Encodes the windows of one recording into tar members.

    The per-sample JSON differs between windows of a recording only in ``onset_s``, ``duration_s``,
    ``label`` and ``label_name``; everything else is dumped once. Keys are in sorted order, so the bytes
    equal ``json.dumps(meta, sort_keys=True, separators=(",", ":"))`` (tests compare them).
    """

    def __init__(self, rec: Recording, channels: list[str], sfreq: float) -> None:
        self.prefix = f"{rec.corpus}__{rec.recording}__".encode("utf-8", "surrogateescape")
        self.prefix_sum = sum(self.prefix)
        self.sfreq = sfreq
        # Dump the constant fields once, in sorted-key order, and cut the result around the varying ones:
        # channels, corpus, duration_s | label, label_name, onset_s | recording, session, sfreq, source, ...
        const = json.dumps({"channels": channels, "corpus": rec.corpus, "recording": rec.recording,
                            "session": rec.session, "sfreq": sfreq, "source": rec.source, "subject": rec.subject,
                            "task": rec.task}, sort_keys=True, separators=(",", ":"))
        cut = const.index(',"recording":')
        self.head = const[:cut] + ',"duration_s":'
        self.tail = const[cut:]
        self.labels: dict[tuple, str] = {}
        self.durations: dict[int, tuple[float, str]] = {}

    def json(self, n: int, onset_s: float, label, label_name) -> tuple[bytes, float]:
        dur = self.durations.get(n)
        if dur is None:
            duration = round(n / self.sfreq, 6)
            dur = self.durations[n] = (duration, json.dumps(duration))
        lab = self.labels.get((label, label_name))
        if lab is None:
            lab = self.labels[(label, label_name)] = (
                f',"label":{json.dumps(label)},"label_name":{json.dumps(label_name)},"onset_s":')
        # float.__repr__ is what json writes for a finite float
        return (self.head + dur[1] + lab + repr(round(onset_s, 6)) + self.tail).encode(), dur[0]

    def encode(self, out: list[bytes], index: int, eeg: np.ndarray, onset_s: float, label, label_name) -> float:
        """Append the two members of sample ``index`` (eeg ``[C, T]`` float16) to ``out``; returns duration_s."""
        digits = b"%06d" % index
        key_sum = self.prefix_sum + sum(digits)
        key = self.prefix + digits
        npy_head = _npy_header(eeg.shape)
        npy_size = len(npy_head) + eeg.nbytes
        js, duration = self.json(eeg.shape[1], onset_s, label, label_name)
        # header and data as separate chunks: the only copy of the samples is tobytes() (file.writelines
        # or pickling takes the chunks as they are)
        out += (_header(key + b".eeg.npy", key_sum + _NPY_SUFFIX_SUM, npy_size), npy_head, eeg.tobytes(),
                _padding(npy_size), _header(key + b".json", key_sum + _JSON_SUFFIX_SUM, len(js)), js,
                _padding(len(js)))
        return duration


def encode_sample(key: str, eeg: np.ndarray, meta: dict) -> dict:
    """A sample as webdataset's field dict (``__key__``, ``eeg.npy``, ``json``): the same bytes the builder
    writes, for writing samples with ``webdataset.TarWriter`` elsewhere (e.g. tests)."""
    return {"__key__": key, "eeg.npy": npy_bytes(np.ascontiguousarray(eeg, dtype=np.float16)),
            "json": _json_bytes(meta)}


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


def atomic_write_json(path: Path, obj: Any, *, readable: bool = True) -> None:
    """``obj`` as sorted-key JSON, atomically. ``readable``: one top-level key per line and the items of
    top-level lists and dicts one per line, everything below that compact. ``json.dumps(indent=...)`` would
    read the same but runs json's pure-Python encoder, ~0.1 s for a 500-recording manifest; this
    layout lets the C encoder do all the work. ``readable=False``: one line (the resume state file, which
    is rewritten after every shard)."""
    atomic_write_bytes(path, (_json_lines(obj) if readable else json.dumps(obj, sort_keys=True)).encode() + b"\n")


def _json_lines(obj: Any) -> str:
    def dump(x: Any) -> str:
        return json.dumps(x, sort_keys=True, separators=(", ", ": "))

    def block(x: Any, indent: str) -> str:
        if isinstance(x, dict) and x:
            inner = indent + " "
            return "{\n" + ",\n".join(f"{inner}{dump(str(k))}: {dump(x[k])}" for k in sorted(x)) + f"\n{indent}}}"
        if isinstance(x, (list, tuple)) and x:
            inner = indent + " "
            return "[\n" + ",\n".join(f"{inner}{dump(v)}" for v in x) + f"\n{indent}]"
        return dump(x)

    if not isinstance(obj, dict):
        return dump(obj)
    return "{\n" + ",\n".join(f" {dump(str(k))}: {block(obj[k], ' ')}" for k in sorted(obj)) + "\n}"


class _OpenShard:
    """A shard being filled: a hidden temporary tar file plus the summaries of the recordings it consumed.

    Each recording's members arrive pre-encoded (``RecordingResult.tar``) and are appended as they come, so
    nothing of a finished recording is held in memory. ``commit`` ends the archive exactly as tarfile does
    (two zero blocks, then zeros up to a multiple of 20 blocks).
    """

    def __init__(self, folder: Path, name: str, split: str) -> None:
        self.path = folder / name
        self.tmp = folder / f".{name}.tmp-{os.getpid()}"
        self.name, self.split = name, split
        self.file = open(self.tmp, "wb", buffering=1 << 20)  # few large write syscalls for many small members
        self.size = 0
        self.samples = 0
        self.recordings: list[dict] = []

    def add(self, result: RecordingResult) -> None:
        if result.tar:
            self.file.writelines(result.tar)
            self.size += result.nbytes
        self.samples += result.n_samples
        self.recordings.append(result.summary)

    def commit(self) -> dict:
        end = self.size + 2 * _BLOCK
        self.file.write(b"\0" * (2 * _BLOCK + (-end % _RECORD)))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return {"name": self.name, "split": self.split, "samples": self.samples,
                "hours": sum(r["hours"] for r in self.recordings), "recordings": self.recordings}

    def discard(self) -> None:
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


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("eegfm", "numpy", "scipy", "mne", "webdataset", "edfio"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return tuple(out.items())


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape shard bytes. Cached per process: importlib.metadata
    scans every installed distribution (~20 ms), which a multi-corpus or per-part build would pay each time."""
    return dict(_versions())


def _jsonable(x: Any) -> Any:
    if type(x) in (str, int, float, bool) or x is None:  # the bulk of a manifest: skip the checks below
        return x
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
    if type(x) in (str, int, bool) or x is None:
        return x
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: _round_floats(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_round_floats(v, digits) for v in x]
    return x
