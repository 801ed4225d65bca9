"""pretrain.data: the WebDataset stream (crops, padding, node/worker splits, seeded epochs, mixing, errors)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from pretrain.config import CorpusConfig, DataConfig, DemoConfig
from pretrain.data import (
    BatchStream,
    Corpus,
    DataError,
    ShardStream,
    check_shard_counts,
    corpus_specs,
    crop_length,
    crop_lengths,
    make_batch_stream,
    resolve_corpora,
)
from pretrain.demo import build_demo_shards
from shards.dataset import expand_urls, load_windows

SFREQ = 200.0


@pytest.fixture(scope="session")
def demo_spec(tmp_path_factory) -> str:
    """Glob of ~20 small training shards of the simulated demo corpus (shared by the pretrain tests)."""
    root = tmp_path_factory.getbasetemp() / "pretrain_demo"
    return build_demo_shards(root, DemoConfig(n_subjects=6, duration_s=40.0, shard_size=8), progress=False)


@pytest.fixture(scope="session")
def long_spec(demo_spec, tmp_path_factory) -> str:
    """The demo corpus's recordings cut into 6-s windows (the demo's are 4 s): a corpus of longer windows."""
    from pretrain.demo import CORPUS
    from shards.writer import build

    raw = tmp_path_factory.getbasetemp() / "pretrain_demo" / "raw"
    out = tmp_path_factory.mktemp("long_windows")
    build(CORPUS, raw, out, overrides={"window_s": 6.0, "stride_s": 6.0}, max_samples_per_shard=8, progress=False)
    return str(out / CORPUS / "train-*.tar")


def _stream(spec, *, batch=4, crop_s=2.0, epoch_steps=5, seed=0, workers=0, buffer=32, longer=None) -> BatchStream:
    data = DataConfig(shards=spec, batch_size=batch, crop_s=crop_s, epoch_steps=epoch_steps,
                      num_workers=workers, shuffle_buffer=buffer, longer_crops_s=longer)
    corpora = resolve_corpora(corpus_specs(data))
    return make_batch_stream(data, corpora, patch_size=200, sfreq=SFREQ, seed=seed, grad_accum=1, world_size=1)


def _take(stream: BatchStream, n: int, start: int = 0) -> list[dict]:
    return list(itertools.islice(stream.batches(start), n))


def test_batches_are_random_crops_of_the_stored_windows(demo_spec):
    batches = _take(_stream(demo_spec, batch=4, crop_s=2.0), 3)
    stored = {w.meta["__key__"]: w for w in load_windows(expand_urls(demo_spec))}
    starts = set()
    for batch in batches:
        assert batch["x"].shape == (4, 19, 400) and batch["x"].dtype == torch.float32
        assert batch["channel_mask"].all() and batch["channel_ids"].shape == (4, 19)
        for row, meta in enumerate(batch["meta"]):
            window = stored[meta["__key__"]]
            s = meta["crop_start"]
            assert 0 <= s <= window.eeg.shape[1] - 400
            np.testing.assert_allclose(batch["x"][row].numpy(), window.eeg[:, s : s + 400], rtol=0, atol=0)
            assert meta["__url__"].endswith(".tar")
            starts.add(s)
    assert len(starts) > 1  # crops are random, not always the window start


def test_same_seed_same_batches_and_other_seed_differs(demo_spec):
    a = _take(_stream(demo_spec, seed=3), 4)
    b = _take(_stream(demo_spec, seed=3), 4)
    c = _take(_stream(demo_spec, seed=4), 4)
    keys = lambda bs: [m["__key__"] for batch in bs for m in batch["meta"]]
    assert keys(a) == keys(b)
    assert all(torch.equal(x["x"], y["x"]) for x, y in zip(a, b))
    assert keys(a) != keys(c)


@pytest.mark.parametrize("start", [2, 5, 7])  # inside the first data epoch, on its boundary, inside the second
def test_resumed_position_replays_the_uninterrupted_stream(demo_spec, start):
    full = _take(_stream(demo_spec, epoch_steps=5), 9)
    resumed = _take(_stream(demo_spec, epoch_steps=5), 9 - start, start=start)
    assert [m["__key__"] for b in resumed for m in b["meta"]] == [m["__key__"] for b in full[start:] for m in b["meta"]]
    assert all(torch.equal(x["x"], y["x"]) for x, y in zip(full[start:], resumed))


def test_ranks_read_disjoint_shards_and_the_same_batch_count(demo_spec, monkeypatch):
    urls = expand_urls(demo_spec)
    seen, counts = {}, {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        batches = list(itertools.islice(_stream(demo_spec, epoch_steps=6).batches(0), 6))
        stream = _stream(demo_spec, epoch_steps=6).stream
        counts[rank] = sum(1 for _ in stream)  # one data epoch, straight from the IterableDataset
        seen[rank] = {m["__url__"] for b in batches for m in b["meta"]}
        assert seen[rank] <= set(urls[rank::2])
    assert not seen[0] & seen[1]
    assert counts[0] == counts[1] == 6


def test_workers_read_disjoint_shards(demo_spec):
    stream = _stream(demo_spec, workers=2, epoch_steps=6)
    batches = _take(stream, 6)
    # DataLoader alternates workers: even batches come from worker 0, odd ones from worker 1
    by_worker = [{m["__url__"] for b in batches[w::2] for m in b["meta"]} for w in (0, 1)]
    assert not by_worker[0] & by_worker[1]
    urls = expand_urls(demo_spec)
    assert by_worker[0] <= set(urls[0::2]) and by_worker[1] <= set(urls[1::2])


def test_corpora_are_mixed_by_weight(demo_spec):
    urls = expand_urls(demo_spec)
    half = len(urls) // 2
    corpora = [Corpus("a", tuple(urls[:half]), 3.0), Corpus("b", tuple(urls[half:]), 1.0)]
    stream = BatchStream(ShardStream(corpora, batch_size=8, crop_samples=400, sfreq=SFREQ, epoch_batches=30,
                                     shuffle_buffer=16, seed=0))
    urls_a = set(urls[:half])
    counts = Counter("a" if m["__url__"] in urls_a else "b" for b in _take(stream, 30) for m in b["meta"])
    share = counts["a"] / (counts["a"] + counts["b"])
    assert 0.65 < share < 0.85, counts  # 0.75 expected; 240 draws


def test_too_few_shards_for_the_readers_is_a_clear_error(demo_spec):
    corpora = resolve_corpora([("demo", demo_spec, 1.0)])
    n = len(corpora[0].urls)
    check_shard_counts(corpora, world_size=2, num_workers=2)
    with pytest.raises(DataError, match=rf"'demo' has {n} shard\(s\) but 8 process\(es\) x 4 DataLoader"):
        check_shard_counts(corpora, world_size=8, num_workers=4)


def test_missing_and_empty_shard_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_corpora([("", str(tmp_path / "nope"), 1.0)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        resolve_corpora([("", str(tmp_path / "empty"), 1.0)])
    with pytest.raises(DataError, match="not both"):
        corpus_specs(DataConfig(shards="x", corpora=(CorpusConfig(urls="y"),)))


def test_crop_must_be_whole_patches():
    assert crop_length(4.0, 200.0, 200) == 800
    with pytest.raises(DataError, match=r"data.crop_s=2.5 .* 500 samples"):
        crop_length(2.5, 200.0, 200)
    with pytest.raises(DataError, match="crop_s=0"):
        crop_length(0, 200.0, 200)


def test_each_window_trains_at_the_longest_crop_it_holds(demo_spec, long_spec):
    stored = {(url, w.meta["__key__"]): w for spec in (demo_spec, long_spec) for url in expand_urls(spec)
              for w in load_windows([url])}
    assert {w.eeg.shape[1] for w in stored.values()} == {800, 1200}
    data = DataConfig(corpora=(CorpusConfig(urls=demo_spec, name="short"), CorpusConfig(urls=long_spec, name="long")),
                      batch_size=4, crop_s=2.0, longer_crops_s=(6.0, 4.0), epoch_steps=12, shuffle_buffer=16)
    assert crop_lengths(data, SFREQ, 200) == (400, 800, 1200)

    def stream():
        return make_batch_stream(data, resolve_corpora(corpus_specs(data)), patch_size=200, sfreq=SFREQ, seed=0,
                                 grad_accum=1, world_size=1)

    batches = _take(stream(), 12)
    lengths = Counter()
    for batch in batches:
        n = batch["x"].shape[-1]
        lengths[n] += 1
        for row, meta in enumerate(batch["meta"]):
            window = stored[meta["__url__"], meta["__key__"]]
            # 4-s windows train whole at 4 s, 6-s ones whole at 6 s; none is cut to the 2-s crop_s
            assert window.eeg.shape[1] == n and meta["crop_start"] == 0
            np.testing.assert_array_equal(batch["x"][row].numpy(), window.eeg)
    assert set(lengths) == {800, 1200}, lengths
    # each DataLoader worker keeps its own buckets: still one length per batch, each window whole
    workers = dataclasses.replace(data, num_workers=2)
    for batch in _take(make_batch_stream(workers, resolve_corpora(corpus_specs(workers)), patch_size=200, sfreq=SFREQ,
                                         seed=0, grad_accum=1, world_size=1), 8):
        assert {stored[m["__url__"], m["__key__"]].eeg.shape[1] for m in batch["meta"]} == {batch["x"].shape[-1]}
    # one length per batch does not change what a resumed run reads
    for start in (0, 5):
        again = _take(stream(), 3, start)
        for a, b in zip(again, batches[start:start + 3]):
            assert [m["__key__"] for m in a["meta"]] == [m["__key__"] for m in b["meta"]]
            assert torch.equal(a["x"], b["x"])


def test_longer_crops_must_be_longer_whole_patches():
    with pytest.raises(DataError, match=r"data.longer_crops_s holds 3 s, not longer than data.crop_s=4 s"):
        crop_lengths(DataConfig(crop_s=4.0, longer_crops_s=(3.0, 6.0)), SFREQ, 200)
    with pytest.raises(DataError, match=r"data.longer_crops_s=4.5 gives 900 samples"):
        crop_lengths(DataConfig(crop_s=4.0, longer_crops_s=(4.5,)), SFREQ, 200)
    assert crop_lengths(DataConfig(crop_s=4.0), SFREQ, 200) == (800,)


def test_windows_shorter_than_the_crop_are_an_error(demo_spec):
    with pytest.raises(DataError, match="shorter than the crop"):
        _take(_stream(demo_spec, crop_s=8.0, buffer=4), 1)


def test_wrong_sampling_rate_is_an_error(demo_spec):
    corpora = resolve_corpora([("", demo_spec, 1.0)])
    stream = ShardStream(corpora, batch_size=2, crop_samples=500, sfreq=250.0, epoch_batches=1, shuffle_buffer=2)
    with pytest.raises(DataError, match="'sfreq' is 200.0, but the model expects 250.0"):
        next(iter(stream))


# -- local shards are checked and read from disk without loading them whole ----------------------------------


def test_shards_are_hashed_and_read_in_streaming_passes_and_damage_is_still_caught(demo_spec, tmp_path, caplog):
    import hashlib
    import io
    import json
    import logging
    import shutil
    import tarfile
    import tracemalloc
    from pathlib import Path

    from pretrain.data import check_local_shard, read_indexed_samples
    from shards.shardfile import DamagedShardError, read_shard

    folder = Path(expand_urls(demo_spec)[0]).parent
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["shards"][0]
    url = str(copy / entry["name"])
    # an intact shard: the same samples, bytes for bytes, as the whole-file reader
    index = check_local_shard(url, entry["sha256"], entry["samples"])
    assert list(read_indexed_samples(url, index)) == read_shard(url, entry["sha256"], entry["samples"])
    # flipped bytes inside a sample: the tar still parses, only the hash tells
    with tarfile.open(url) as tar:
        member = next(m for m in tar if m.name.endswith(".eeg.npy"))
    data = bytearray(Path(url).read_bytes())
    data[member.offset_data + 200: member.offset_data + 264] = bytes(64)
    Path(url).write_bytes(bytes(data))
    assert len(check_local_shard(url)) == entry["samples"]
    with pytest.raises(DamagedShardError, match=f"{entry['name']}: sha256 .* differs from the manifest's"):
        check_local_shard(url, entry["sha256"], entry["samples"])
    with pytest.raises(DamagedShardError, match="samples, the manifest says"):
        check_local_shard(str(copy / manifest["shards"][1]["name"]), samples=entry["samples"] + 999)
    urls = tuple(sorted(str(p) for p in copy.glob("*.tar")))
    stream = ShardStream([Corpus("demo", urls)], batch_size=4, crop_samples=400, sfreq=SFREQ, epoch_batches=40,
                         shuffle_buffer=8, seed=0)
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        used = {m["__url__"] for batch in stream for m in batch["meta"]}
    assert url not in used and list(stream.damaged) == [url]
    assert [r.getMessage().count(entry["name"]) for r in caplog.records] == [1]

    # memory: a 16 MB shard is checked and streamed holding about one sample, never the file
    big = tmp_path / "big.tar"
    payload = np.random.default_rng(0).bytes(80_000)
    with tarfile.open(big, "w") as tar:
        for i in range(200):
            info = tarfile.TarInfo(f"s{i:04d}.eeg.npy")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_indexed_samples(str(big), check_local_shard(str(big), digest, 200)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 200 and peak < 2_000_000 < big.stat().st_size
