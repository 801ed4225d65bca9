"""One shard file: the tar bytes of a recording's samples and the temporary file that becomes a shard.

A sample is two tar members, ``{key}.eeg.npy`` and ``{key}.json`` (webdataset's sorted field order), with a
fixed owner/mode/mtime so rebuilds are byte-identical. Workers encode each recording's members
(:class:`RecordingEncoder`); the build process only appends those bytes to an :class:`OpenShard` and
commits it (fsync + rename) when it is full.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.atomic import fsync_dir, refuse_link
from shards.sample import EEG_MEMBER, META_MEMBER, key_prefix, npy_header

# tarfile.TarInfo.tobuf and np.save cost ~0.1 ms per sample in Python; the header below is GNU tar (tarfile.GNU_FORMAT, no per-member PAX header) built from a
# template that tarfile itself produced, so the bytes are exactly what tarfile writes (tests compare them).
_TAR_USER = "eegfm"
_TAR_MODE = 0o444
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads a closed archive to a multiple of this
_SPOOL_CHUNK = 8 << 20


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


_NPY_SUFFIX, _JSON_SUFFIX = f".{EEG_MEMBER}".encode(), f".{META_MEMBER}".encode()
_NPY_SUFFIX_SUM, _JSON_SUFFIX_SUM = sum(_NPY_SUFFIX), sum(_JSON_SUFFIX)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


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
    # A recording too long to hold (shards.streaming): its members are in this file instead of ``tar``, which
    # the shard takes over (copies in chunks, then deletes).
    spool: str | None = None
    spool_bytes: int = 0

    @property
    def n_samples(self) -> int:
        return int(self.summary.get("samples", 0))

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.tar)) + self.spool_bytes


class RecordingEncoder:
    """Encodes the windows of one recording into tar members.

    The per-sample JSON differs between windows of a recording only in ``onset_s``, ``duration_s``,
    ``label`` and ``label_name``; everything else is dumped once. Keys are in sorted order, so the bytes
    equal ``json.dumps(meta, sort_keys=True, separators=(",", ":"))`` (tests compare them).
    """

    def __init__(self, rec, channels: list[str], sfreq: float) -> None:
        """``rec``: the ``shards.corpora.base.Recording`` (corpus, recording, session, source, subject, task)."""
        self.prefix = key_prefix(rec.corpus, rec.recording).encode("utf-8", "surrogateescape")
        self.prefix_sum = sum(self.prefix)
        self.sfreq = sfreq
        # Dump the constant fields once, in sorted-key order, and cut the result around the varying ones:
        # channels, corpus, duration_s | label, label_name, onset_s | recording, session, sfreq, source, ...
        const = json.dumps({"channels": channels, "corpus": rec.corpus, "recording": rec.recording,
                            "session": rec.session, "sfreq": sfreq, "source": rec.source, "subject": rec.subject,
                            "task": rec.task, **({"subject_info": dict(rec.subject_info)} if rec.subject_info else {})},
                           sort_keys=True, separators=(",", ":"))
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
        npy_head = npy_header(eeg.shape)
        npy_size = len(npy_head) + eeg.nbytes
        js, duration = self.json(eeg.shape[1], onset_s, label, label_name)
        # header and data as separate chunks: the only copy of the samples is tobytes() (file.writelines
        # or pickling takes the chunks as they are)
        out += (_header(key + _NPY_SUFFIX, key_sum + _NPY_SUFFIX_SUM, npy_size), npy_head, eeg.tobytes(),
                _padding(npy_size), _header(key + _JSON_SUFFIX, key_sum + _JSON_SUFFIX_SUM, len(js)), js,
                _padding(len(js)))
        return duration


class OpenShard:
    """A shard being filled: a hidden temporary tar file plus the summaries of the recordings it consumed.

    Each recording's members arrive pre-encoded (``RecordingResult.tar``) and are appended as they come, so
    nothing of a finished recording is held in memory. ``commit`` ends the archive exactly as tarfile does
    (two zero blocks, then zeros up to a multiple of 20 blocks) and records the file's sha256 and size,
    hashed as the bytes are written (no second read), for the manifest.
    """

    def __init__(self, folder: Path, name: str, split: str) -> None:
        self.path = folder / name
        self.tmp = folder / f".{name}.tmp-{os.getpid()}"
        self.name, self.split = name, split
        if os.path.lexists(self.tmp):
            os.unlink(self.tmp)  # a killed build's leftover, or a planted link: never written through
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)  # few large write syscalls for many small members
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.samples = 0
        self.recordings: list[dict] = []

    def add(self, result: RecordingResult) -> None:
        if result.tar:
            self.file.writelines(result.tar)
            for chunk in result.tar:
                self.sha256.update(chunk)
            self.size += sum(map(len, result.tar))
        if result.spool is not None:
            with open(result.spool, "rb") as f:
                for chunk in iter(lambda: f.read(_SPOOL_CHUNK), b""):
                    self.file.write(chunk)
                    self.sha256.update(chunk)
                    self.size += len(chunk)
            os.unlink(result.spool)
        self.samples += result.n_samples
        self.recordings.append(result.summary)

    def commit(self) -> dict:
        end = self.size + 2 * _BLOCK
        trailer = b"\0" * (2 * _BLOCK + (-end % _RECORD))
        self.file.write(trailer)
        self.sha256.update(trailer)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        refuse_link(self.path)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return {"name": self.name, "split": self.split, "samples": self.samples,
                "hours": sum(r["hours"] for r in self.recordings), "recordings": self.recordings,
                "bytes": self.size + len(trailer), "sha256": self.sha256.hexdigest()}

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class DamagedShardError(ValueError):
    """A shard whose bytes differ from its manifest's sha256, or whose tar structure is broken; names the file."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


def read_shard(url: str, sha256: str | None = None, samples: int | None = None) -> list[dict]:
    """All samples of a local shard, checked whole before any is returned: ``[{"__key__", "__url__",
    "eeg.npy": bytes, "json": bytes}, ...]`` in file order.

    Raises :class:`DamagedShardError` when the file's sha256 is not ``sha256`` (the manifest's), when the tar
    cannot be parsed, when it ends early (tarfile stops quietly at a damaged member header, which would
    otherwise hand out the first part of the shard as if it were all of it), or when it holds another
    number of samples than ``samples``. The whole file is read into memory once (a shard is at most a few
    hundred MB) so that nothing of a damaged shard is used.
    """
    with open(url, "rb") as f:
        data = f.read()
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise DamagedShardError(url, f"sha256 {actual} differs from the manifest's {sha256}: the shard is "
                                         "damaged (rebuild it: delete it and its build-state entry, or the folder)")
    out: list[dict] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if not out or out[-1]["__key__"] != key:
                    out.append({"__key__": key, "__url__": url})
                out[-1][ext] = data[member.offset_data: member.offset_data + member.size]
            end = tar.offset
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise DamagedShardError(url, f"unreadable tar ({type(e).__name__}: {e})") from None
    if any(data[end:]):
        raise DamagedShardError(url, f"the tar ends at byte {end} of {len(data)}: a damaged member header")
    if samples is not None and len(out) != samples:
        raise DamagedShardError(url, f"{len(out)} samples, the manifest says {samples}")
    return out


def recording_digests(url: str, corpus: str) -> dict[str, str]:
    """sha256 of each recording's span of tar members in a local shard (as the manifest's ``recordings``
    record them), to say which recordings of a damaged shard were hit; {} when the tar cannot be parsed."""
    data = Path(url).read_bytes()
    spans: dict[str, list[int]] = {}
    prefix = f"{corpus}__"
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                key = member.name.partition(".")[0]
                recording = key.rsplit("__", 1)[0].removeprefix(prefix)
                end = member.offset_data + member.size + (-member.size % _BLOCK)
                spans.setdefault(recording, [member.offset, end])[1] = end
    except (tarfile.TarError, EOFError, ValueError):
        return {}
    return {rec: hashlib.sha256(data[a:b]).hexdigest() for rec, (a, b) in spans.items()}
