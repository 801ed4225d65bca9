"""Streaming pretraining batches from WebDataset shards, split by process and worker.

How WebDataset and Accelerate are wired together:

* the loader is a plain ``torch.utils.data.DataLoader`` that is **never** passed through
  ``accelerator.prepare`` (that either splits every sample twice or makes rank 0 read everything);
  batches are moved with ``.to(accelerator.device)`` by the trainer;
* shards are split by node (``wds.split_by_node``) and then by DataLoader worker
  (``wds.split_by_worker``), so every (rank, worker) reads its own shards; that needs at least
  ``world_size * num_workers`` shards per corpus, checked up front with a clear error;
* each worker's stream is infinite (it re-visits its shards in a fresh random order, like
  ``resampled=True``) and cut into data *epochs* of a fixed number of batches (``with_epoch``), so
  every rank yields exactly the same batch count and DDP never waits for a rank that ran dry.

Determinism: the stream of epoch ``e`` on (rank, worker) is driven only by
``random.Random(f"{seed}/{e}/{rank}/{worker}")`` (shard order, corpus mixing, shuffle buffer,
crop offsets). A run resumed at batch ``n`` restarts epoch ``n // epoch_batches`` and discards the
first ``n % epoch_batches`` batches, so it sees exactly the batches the uninterrupted run saw.

Crop lengths: every window is cropped to ``data.crop_s``, or, with ``data.longer_crops_s``, to the longest listed
length it holds, so a mix of 4-s and 5-s windows trains each at its own length. A batch holds one length (each
length fills its own batch; what is left in a bucket when a data epoch ends is dropped with the epoch's tail).

Batch layout (``shards.dataset.collate`` over cropped windows)::

    x             [B, C_max, T]  float32, 100 µV units, zero padded channels
    channel_ids   [B, C_max]     long (0 at padding)
    channel_mask  [B, C_max]     bool (True = real channel)
    label         [B]            long (-1 when unlabeled)
    meta          list[dict]     one per window, with "__key__" and "__url__" added
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from shards.dataset import collate, expand_urls
from shards.manifest import shard_digests
from shards.sample import decode_sample
from shards.shardfile import DamagedShardError


log = logging.getLogger("pretrain.data")


class DataError(ValueError):
    """Shards that cannot feed the requested training run (too few, missing, wrong rate...)."""


@dataclass(frozen=True)
class Corpus:
    """One weighted member of the training mix, with its shard URLs already expanded."""

    name: str
    urls: tuple[str, ...]
    weight: float = 1.0


def resolve_corpora(specs: Sequence[tuple[str, str, float]]) -> list[Corpus]:
    """Expand ``(name, url spec, weight)`` triples into corpora; errors name the spec.

    Raises:
        FileNotFoundError: a folder/file in a spec does not exist (from ``shards.dataset.expand_urls``).
        DataError: a spec that expands to no ``.tar`` shard, or a non-positive weight.
    """
    corpora = []
    for name, spec, weight in specs:
        urls = expand_urls(spec)
        if not urls:
            raise DataError(f"shard spec {spec!r} matches no .tar shards")
        if not weight > 0:
            raise DataError(f"corpus {name or spec!r}: weight must be > 0, got {weight}")
        if not name:
            name = _corpus_name(spec, urls[0])
        corpora.append(Corpus(name=name, urls=tuple(urls), weight=float(weight)))
    return corpora


def _corpus_name(spec: str, first_url: str) -> str:
    """Default corpus label: the folder holding its shards ({out}/{corpus}/*.tar), else the spec."""
    if first_url.startswith("pipe:") or "://" in first_url:
        return str(spec)
    return Path(first_url).parent.name or str(spec)


def check_shard_counts(corpora: Sequence[Corpus], world_size: int, num_workers: int) -> None:
    """Every (rank, worker) must own at least one shard of every corpus (else it has nothing to read)."""
    readers = world_size * max(1, num_workers)
    for corpus in corpora:
        if len(corpus.urls) < readers:
            raise DataError(
                f"corpus {corpus.name!r} has {len(corpus.urls)} shard(s) but {world_size} process(es) x "
                f"{max(1, num_workers)} DataLoader worker(s) = {readers} readers each need their own shard: "
                "write smaller shards (shards.writer --shard-size) or lower data.num_workers / the process count"
            )


#: A local shard's samples: ``[(key, [(field, byte offset, size), ...]), ...]`` in file order.
ShardIndex = list[tuple[str, list[tuple[str, int, int]]]]
_CHUNK = 1 << 20


def check_local_shard(url: str, sha256: str | None = None, samples: int | None = None) -> ShardIndex:
    """Check a local shard on disk, never holding more than a chunk of it, and return where its samples lie.

    The checks of ``shards.shardfile.read_shard`` in streaming passes: the file's sha256 against the
    manifest's (``hashlib.file_digest`` over chunks), the tar structure (member headers only; tarfile seeks
    over the data), only zeros after the archive's end (tarfile stops quietly at a damaged member header,
    which would hand out the first part of the shard as all of it), and the manifest's sample count. A
    64-channel, 2000-window shard of 30-s windows is ~1.5 GB: read whole, every worker of every corpus
    would hold one.

    Raises:
        DamagedShardError: naming the shard and what is wrong with it.
    """
    if sha256 is not None:
        with open(url, "rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        if actual != sha256:
            raise DamagedShardError(url, f"sha256 {actual} differs from the manifest's {sha256}: the shard is "
                                         "damaged (rebuild it: delete it and its build-state entry, or the folder)")
    index: ShardIndex = []
    try:
        with tarfile.open(url, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, field = member.name.partition(".")
                if not index or index[-1][0] != key:
                    index.append((key, []))
                index[-1][1].append((field, member.offset_data, member.size))
            end = tar.offset
    except (tarfile.TarError, EOFError, ValueError, OSError) as e:
        raise DamagedShardError(url, f"unreadable tar ({type(e).__name__}: {e})") from None
    with open(url, "rb") as f:
        f.seek(end)
        for block in iter(lambda: f.read(_CHUNK), b""):
            if block.count(0) != len(block):
                raise DamagedShardError(url, f"the tar ends at byte {end} of {os.path.getsize(url)}: a damaged member header")
    if samples is not None and len(index) != samples:
        raise DamagedShardError(url, f"{len(index)} samples, the manifest says {samples}")
    return index


def read_indexed_samples(url: str, index: ShardIndex) -> Iterator[dict]:
    """The samples of a checked shard (:func:`check_local_shard`), read from disk one at a time:
    ``{"__key__", "__url__", "<field>": bytes, ...}`` as webdataset's tar reader yields them."""
    with open(url, "rb") as f:
        for key, fields in index:
            sample = {"__key__": key, "__url__": url}
            for field, offset, size in fields:
                f.seek(offset)
                sample[field] = f.read(size)
            yield sample


class ShardStream(IterableDataset):
    """Infinite, seeded stream of cropped, collated batches for one data epoch at a time.

    Set ``epoch`` (via :meth:`set_epoch`) before creating a DataLoader iterator; worker processes
    receive a copy of this object, so the epoch travels with it.
    """

    def __init__(
        self,
        corpora: Sequence[Corpus],
        *,
        batch_size: int,
        crop_samples: int | Sequence[int],
        sfreq: float,
        epoch_batches: int,
        shuffle_buffer: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        lengths = (crop_samples,) if isinstance(crop_samples, int) else tuple(crop_samples)
        if batch_size < 1 or not lengths or min(lengths) < 1 or epoch_batches < 1:
            raise DataError(
                f"batch_size ({batch_size}), crop length ({crop_samples}) and epoch_batches ({epoch_batches}) must be >= 1"
            )
        self.corpora = list(corpora)
        self.batch_size = batch_size
        self.crop_lengths = tuple(sorted(set(lengths)))  # samples, shortest first
        self.sfreq = sfreq
        self.epoch_batches = epoch_batches
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        # sha256 / sample count per local shard from the manifests: damaged shards are skipped, not used
        self.digests = shard_digests([u for c in self.corpora for u in c.urls])
        self.damaged: dict[str, str] = {}  # url -> reason, in this process (each DataLoader worker has its own)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -- pieces of the per-worker pipeline -------------------------------------------------------
    def _my_urls(self, corpus: Corpus) -> list[str]:
        """This (rank, worker)'s share of the corpus: split by node, then by worker."""
        items = wds.split_by_worker(wds.split_by_node(iter([{"url": u} for u in corpus.urls])))
        urls = [item["url"] for item in items]
        if not urls:  # check_shard_counts should have caught this in the main process
            rank, world, worker, workers = wds.utils.pytorch_worker_info()
            raise DataError(
                f"rank {rank} worker {worker} got no shard of corpus {corpus.name!r} "
                f"({len(corpus.urls)} shards for {world} x {workers} readers)"
            )
        return urls

    def _corpus_samples(self, urls: list[str], rng: random.Random) -> Iterator[dict]:
        """Raw samples from this worker's shards, forever, in a fresh shard order per pass.

        A local shard is checked whole before any of its samples is used (:func:`check_local_shard`: its
        manifest's sha256 and sample count, its tar structure, all in streaming passes over the file) and
        then read from disk one sample at a time, so a worker holds one sample, not the shard; a damaged
        shard is skipped from then on with one warning naming it. Remote / ``pipe:`` shards stream through
        WebDataset unchecked.
        """
        while True:
            order = [u for u in urls if u not in self.damaged]
            if not order:
                raise DataError(f"every shard this reader owns is damaged: {self.damaged}")
            rng.shuffle(order)
            for url in order:
                if url.startswith("pipe:") or "://" in url:
                    yield from wds.tarfile_samples([{"url": url}])
                    continue
                try:
                    index = check_local_shard(url, **self.digests.get(url, {}))
                except DamagedShardError as e:
                    self.damaged[url] = e.reason
                    lost = sum(self.digests.get(u, {}).get("samples", 0) for u in self.damaged)
                    log.warning("skipping damaged shard %s (%d shard(s), %d sample(s) per the manifests skipped "
                                "by this reader so far): %s", url, len(self.damaged), lost, e.reason)
                    continue
                yield from read_indexed_samples(url, index)

    def _mixed(self, rng: random.Random) -> Iterator[dict]:
        streams = [self._corpus_samples(self._my_urls(c), rng) for c in self.corpora]
        if len(streams) == 1:
            yield from streams[0]
            return
        weights = [c.weight for c in self.corpora]
        indices = range(len(streams))
        while True:  # our own seeded mix: wds.RandomMix draws from the global `random` module
            yield next(streams[rng.choices(indices, weights)[0]])

    def _crop(self, sample: dict, rng: random.Random):
        """Decode one raw sample and cut a random stretch of the longest crop length it holds; None if too short."""
        window = decode_sample(sample)
        meta = dict(window.meta)
        sfreq = float(meta.get("sfreq", self.sfreq))
        if abs(sfreq - self.sfreq) > 1e-6:
            raise DataError(
                f"sample {sample.get('__key__')} in {sample.get('__url__')}: json field 'sfreq' is {sfreq}, "
                f"but the model expects {self.sfreq} Hz (rebuild the shards with shards.writer at that rate)"
            )
        eeg = window.eeg
        n = eeg.shape[-1]
        length = max((c for c in self.crop_lengths if c <= n), default=None)
        if length is None:
            return None
        start = rng.randrange(n - length + 1)
        meta["__key__"] = sample.get("__key__")
        meta["__url__"] = sample.get("__url__")
        meta["crop_start"] = start
        cropped = np.ascontiguousarray(eeg[:, start : start + length], dtype=np.float32)
        return dataclasses.replace(window, eeg=cropped, meta=meta)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}")
        # with_epoch semantics per worker: split this epoch's batches over the workers
        quota = self.epoch_batches // workers + (1 if worker < self.epoch_batches % workers else 0)
        samples = wds.filters._shuffle(self._mixed(rng), bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        produced, seen, short = 0, 0, 0
        buckets: dict[int, list] = {length: [] for length in self.crop_lengths}
        for sample in samples:
            if produced >= quota:
                return
            seen += 1
            window = self._crop(sample, rng)
            if window is None:
                short += 1
                if short == seen and seen >= 64:
                    raise DataError(
                        f"the first {seen} windows are all shorter than the crop of {self.crop_lengths[0]} samples "
                        f"({self.crop_lengths[0] / self.sfreq:g} s): lower data.crop_s or rebuild shards with longer "
                        "windows"
                    )
                continue
            batch = buckets[window.eeg.shape[-1]]
            batch.append(window)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch.clear()
                produced += 1


class BatchStream:
    """Batches for the trainer, positioned by how many micro-batches were already consumed.

    ``batches(start)`` yields forever from micro-batch ``start`` on: data epoch by data epoch
    (``epoch_batches`` each), discarding the first ``start % epoch_batches`` of the epoch it starts in.
    """

    def __init__(self, stream: ShardStream, *, num_workers: int = 0, seed: int = 0) -> None:
        self.stream = stream
        self.num_workers = num_workers
        self.seed = seed

    def _loader(self) -> DataLoader:
        # A private generator: creating the iterator must not consume the global torch RNG, whose
        # state accelerate checkpoints for the masks (resume would drift otherwise).
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )

    def batches(self, start: int = 0) -> Iterator[dict[str, Any]]:
        per_epoch = self.stream.epoch_batches
        epoch, skip = divmod(start, per_epoch)
        while True:
            self.stream.set_epoch(epoch)
            count = 0
            for batch in itertools.islice(self._loader(), skip, None):
                count += 1
                yield batch
            if count + skip < per_epoch:
                raise DataError(f"data epoch {epoch} ended after {count + skip} of {per_epoch} batches")
            epoch, skip = epoch + 1, 0


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch (not ``meta``) to ``device``."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def batch_tokens(batch: dict[str, Any], patch_size: int) -> int:
    """Real (channel, patch) tokens in a batch: sum over real channels of T / patch_size."""
    return int(batch["channel_mask"].sum().item()) * (batch["x"].shape[-1] // patch_size)


def sample_log_lines(batch: dict[str, Any], step: int) -> list[str]:
    """JSON lines ``{"step", "url", "key"}`` naming what a batch was made of (for the sample log)."""
    return [json.dumps({"step": step, "url": m.get("__url__"), "key": m.get("__key__")}) for m in batch["meta"]]


# -- from config sections to a stream ------------------------------------------------------------------


def corpus_specs(data) -> list[tuple[str, str, float]]:
    """``(name, url spec, weight)`` per corpus of a :class:`pretrain.config.DataConfig` (empty: use the demo)."""
    if data.corpora and data.shards:
        raise DataError("give either data.shards (one corpus) or [[data.corpora]] (a weighted mix), not both")
    if data.corpora:
        for i, c in enumerate(data.corpora):
            if not c.urls:
                raise DataError(f"data.corpora[{i}].urls is empty: name the shard folder / glob / brace pattern")
        return [(c.name, c.urls, c.weight) for c in data.corpora]
    if data.shards:
        return [("", data.shards, 1.0)]
    return []


def crop_length(crop_s: float, sfreq: float, patch_size: int, field: str = "data.crop_s") -> int:
    """Samples in a training crop; must be a positive whole number of patches."""
    n = crop_s * sfreq
    if n <= 0 or abs(n - round(n)) > 1e-6 or round(n) % patch_size:
        raise DataError(
            f"{field}={crop_s} gives {n:g} samples at {sfreq:g} Hz, not a whole number of "
            f"{patch_size}-sample patches (use a multiple of {patch_size / sfreq:g} s)"
        )
    return int(round(n))


def crop_lengths(data, sfreq: float, patch_size: int) -> tuple[int, ...]:
    """Samples in each training crop of a :class:`pretrain.config.DataConfig`: ``crop_s``, then its
    ``longer_crops_s`` in ascending order; each a whole number of patches, each longer one longer than ``crop_s``."""
    lengths = [crop_length(data.crop_s, sfreq, patch_size)]
    for seconds in data.longer_crops_s or ():
        if not seconds > data.crop_s:
            raise DataError(f"data.longer_crops_s holds {seconds:g} s, not longer than data.crop_s={data.crop_s:g} s "
                            "(crop_s is the shortest training length)")
        lengths.append(crop_length(seconds, sfreq, patch_size, field="data.longer_crops_s"))
    return tuple(sorted(set(lengths)))


def make_batch_stream(data, corpora: Sequence[Corpus], *, patch_size: int, sfreq: float, seed: int,
                      grad_accum: int, world_size: int) -> BatchStream:
    """The trainer's :class:`BatchStream` for a :class:`pretrain.config.DataConfig` section.

    One data epoch is ``data.epoch_steps`` optimiser steps (``x grad_accum`` micro-batches) on every rank.
    """
    check_shard_counts(corpora, world_size, data.num_workers)
    stream = ShardStream(
        corpora,
        batch_size=data.batch_size,
        crop_samples=crop_lengths(data, sfreq, patch_size),
        sfreq=sfreq,
        epoch_batches=data.epoch_steps * grad_accum,
        shuffle_buffer=data.shuffle_buffer,
        seed=seed,
    )
    return BatchStream(stream, num_workers=data.num_workers, seed=seed)



def preprocessing_record(corpora: Sequence[Corpus]) -> dict[str, Any]:
    """Preprocessing parameters of each corpus, read from its ``manifest.json`` (next to the shards).

    Saved as ``preprocess.json`` beside the exported model so finetuning / prediction can cut and
    filter new recordings the way the pretraining data was. Remote corpora are recorded without them.
    """
    from shards.dataset import read_manifest

    record: dict[str, Any] = {}
    for corpus in corpora:
        entry: dict[str, Any] = {"shards": len(corpus.urls), "weight": corpus.weight}
        first = corpus.urls[0]
        if not (first.startswith("pipe:") or "://" in first):
            folder = Path(first).parent
            try:
                manifest = read_manifest(folder)
                entry.update(manifest_dir=str(folder.resolve()), preprocess=manifest.get("build", {}).get("config"),
                             format=manifest.get("format"))
            except FileNotFoundError:
                entry["preprocess"] = None
        record[corpus.name] = entry
    return record
