"""Read side of the shards: URL expansion, sample decoding, batching windows with different channel sets.

Used by ``pretrain`` (streaming) and ``finetune`` (small labelled sets in memory). The only module of
``shards`` that imports torch, for :func:`collate`.
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from braceexpand import braceexpand

from shards.vocabulary import channel_id

__all__ = ["Window", "collate", "decode_sample", "expand_urls", "iter_samples", "load_windows", "read_manifest"]


@dataclass
class Window:
    """One decoded sample: ``eeg`` float32 ``[C, T]`` in 100 µV units, ``meta`` the sample's JSON."""

    eeg: np.ndarray
    meta: dict

    @property
    def key(self) -> str:
        return self.meta.get("__key__") or f"{self.meta['corpus']}__{self.meta['recording']}"


def expand_urls(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard URLs from a folder, a glob, a brace pattern, a ``pipe:`` URL or a list of those.

    - folder: every ``*.tar`` below it (recursive), sorted;
    - glob (``*``/``?``/``[``): matching files, sorted; no match -> FileNotFoundError;
    - brace pattern ``train-{000000..000009}.tar``: expanded, each must exist;
    - ``pipe:...`` / ``http(s)://`` / ``s3://`` ...: passed through (WebDataset opens them).
    A path that does not exist raises FileNotFoundError naming it.
    """
    if isinstance(spec, (str, Path)):
        specs: list[str] = [str(spec)]
    else:
        specs = [str(s) for s in spec]
    urls: list[str] = []
    for s in specs:
        if s.startswith("pipe:") or "://" in s:
            urls.extend(braceexpand(s) if "{" in s and not s.startswith("pipe:") else [s])
            continue
        for item in braceexpand(s) if "{" in s else [s]:
            p = Path(item).expanduser()
            if p.is_dir():
                found = sorted(str(q) for q in p.rglob("*.tar") if not q.name.startswith("."))
                if not found:
                    raise FileNotFoundError(f"no *.tar shards under folder {p}")
                urls.extend(found)
            elif any(ch in item for ch in "*?["):
                found = sorted(q for q in glob.glob(str(p), recursive=True) if q.endswith(".tar"))
                if not found:
                    raise FileNotFoundError(f"no *.tar shards match {item}")
                urls.extend(found)
            elif p.is_file():
                urls.append(str(p))
            else:
                raise FileNotFoundError(f"shard path {item} does not exist")
    if not urls:
        raise FileNotFoundError(f"no shards in {spec!r}")
    return urls


def decode_sample(sample: Mapping[str, Any]) -> Window:
    """A WebDataset sample dict (raw bytes or already decoded) -> :class:`Window`.

    ``eeg.npy`` float16 ``[C, T]`` becomes float32 ``[C, T]``; ``json`` is the metadata dict (plus
    ``__key__`` when present). KeyError naming the sample key when a member is missing.
    """
    key = sample.get("__key__", "?")
    try:
        eeg, meta = sample["eeg.npy"], sample["json"]
    except KeyError as e:
        raise KeyError(f"sample {key} ({sample.get('__url__', '?')}) lacks member {e.args[0]!r}; has {sorted(sample)}") from None
    if isinstance(eeg, (bytes, bytearray, memoryview)):
        eeg = np.load(io.BytesIO(eeg), allow_pickle=False)
    if isinstance(meta, (bytes, bytearray, memoryview)):
        meta = json.loads(bytes(meta))
    elif isinstance(meta, str):
        meta = json.loads(meta)
    eeg = np.asarray(eeg, dtype=np.float32)
    if eeg.ndim != 2 or eeg.shape[0] != len(meta.get("channels", [])):
        raise ValueError(f"sample {key}: eeg.npy has shape {eeg.shape}, expected [C={len(meta.get('channels', []))}, T]")
    meta = dict(meta)
    if "__key__" in sample:
        meta["__key__"] = sample["__key__"]
    return Window(eeg, meta)


def collate(windows: Sequence[Window]) -> dict[str, Any]:
    """Batch windows with different channel sets by zero padding.

    Returns ``x [B, C_max, T]`` float32, ``channel_ids [B, C_max]`` long (``shards.vocabulary`` ids, 0 at
    padding), ``channel_mask [B, C_max]`` bool (True = real channel), ``label [B]`` long (-1 unlabeled),
    ``task`` list[str | None], ``meta`` list[dict]. Every window must have the same T.
    """
    if not windows:
        raise ValueError("collate() got an empty batch")
    lengths = {w.eeg.shape[1] for w in windows}
    if len(lengths) != 1:
        detail = ", ".join(f"{w.key}: T={w.eeg.shape[1]}" for w in windows[:4])
        raise ValueError(f"windows in one batch must have the same length T, got {sorted(lengths)} ({detail})")
    t = lengths.pop()
    b, c_max = len(windows), max(w.eeg.shape[0] for w in windows)
    x = torch.zeros(b, c_max, t, dtype=torch.float32)
    ids = torch.zeros(b, c_max, dtype=torch.long)
    mask = torch.zeros(b, c_max, dtype=torch.bool)
    label = torch.full((b,), -1, dtype=torch.long)
    for i, w in enumerate(windows):
        c = w.eeg.shape[0]
        x[i, :c] = torch.from_numpy(np.ascontiguousarray(w.eeg, dtype=np.float32))
        ids[i, :c] = torch.tensor([channel_id(name) for name in w.meta["channels"]], dtype=torch.long)
        mask[i, :c] = True
        if w.meta.get("label") is not None:
            label[i] = int(w.meta["label"])
    return {"x": x, "channel_ids": ids, "channel_mask": mask, "label": label,
            "task": [w.meta.get("task") for w in windows], "meta": [w.meta for w in windows]}


def iter_samples(url: str) -> Iterable[dict]:
    """Raw samples (``__key__`` + member bytes) of one local tar, grouped by key in file order."""
    current: dict | None = None
    with tarfile.open(url, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            current[ext] = data
    if current is not None:
        yield current


def load_windows(spec: str | Path | Sequence[str | Path]) -> list[Window]:
    """All windows of the shards in ``spec`` (see :func:`expand_urls`), in memory, sorted by key.

    Local tars are read with :mod:`tarfile`; remote/``pipe:`` URLs through WebDataset.
    """
    out: list[Window] = []
    for url in expand_urls(spec):
        if url.startswith("pipe:") or "://" in url:
            import webdataset as wds

            samples: Iterable[dict] = wds.WebDataset(url, shardshuffle=False, empty_check=False)
        else:
            samples = iter_samples(url)
        out.extend(decode_sample(s) for s in samples)
    out.sort(key=lambda w: w.meta.get("__key__", ""))
    return out


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a corpus folder ``{out}/{corpus}``, merging ``manifest-part-*.json`` fragments.

    Counters (totals, label/drop counts, channel sets) are summed; shards, skipped recordings and splits
    are concatenated. FileNotFoundError naming the folder when it holds no manifest.
    """
    folder = Path(folder)
    whole = folder / "manifest.json"
    parts = sorted(folder.glob("manifest-part-*.json"))
    if whole.is_file() and not parts:
        return json.loads(whole.read_text())
    if not parts:
        raise FileNotFoundError(f"no manifest.json or manifest-part-*.json in {folder}")
    frags = [json.loads(p.read_text()) for p in parts]
    n_expected = frags[0]["build"]["part"][1]
    merged = {k: frags[0][k] for k in ("format", "corpus", "task", "label_names", "versions")}
    build = dict(frags[0]["build"])
    build["part"] = [None, n_expected]
    merged["build"] = build
    merged["parts"] = sorted(f["build"]["part"][0] for f in frags)
    merged["complete"] = all(f["complete"] for f in frags) and len(frags) == n_expected
    merged["shards"] = sorted((s for f in frags for s in f["shards"]), key=lambda s: s["name"])
    merged["skipped"] = sorted((s for f in frags for s in f["skipped"]), key=lambda s: s["recording"])
    merged["recordings"] = sorted((r for f in frags for r in f["recordings"]), key=lambda r: r["recording"])
    merged["totals"] = _sum_dicts(f["totals"] for f in frags)
    for key in ("label_counts", "recordings_by_label", "drops", "label_skips"):
        merged[key] = dict(sorted(_sum_dicts(f.get(key, {}) for f in frags).items()))
    merged["label_counts_by_split"] = _sum_nested(f["label_counts_by_split"] for f in frags)
    merged["dropped_channels"] = _sum_nested(f["dropped_channels"] for f in frags)
    by_split: dict[str, dict] = {}
    for f in frags:
        for sp, v in f["by_split"].items():
            acc = by_split.setdefault(sp, {"samples": 0, "hours": 0.0, "recordings": 0, "subjects": 0})
            for k in ("samples", "hours", "recordings"):
                acc[k] += v[k]
    for sp, acc in by_split.items():  # parts split recordings, not subjects: count distinct subjects
        acc["subjects"] = len({r["subject"] for r in merged["recordings"] if r["split"] == sp and not r["skipped"]})
    merged["by_split"] = dict(sorted(by_split.items()))
    sets: dict[tuple, dict] = {}
    for f in frags:
        for cs in f["channel_sets"]:
            acc = sets.setdefault(tuple(cs["channels"]), {"recordings": 0, "samples": 0})
            acc["recordings"] += cs["recordings"]
            acc["samples"] += cs["samples"]
    merged["channel_sets"] = [{"channels": list(k), **v} for k, v in sorted(sets.items(), key=lambda kv: (-kv[1]["recordings"], kv[0]))]
    merged["splits"] = {
        "subjects": dict(sorted({k: v for f in frags for k, v in f["splits"]["subjects"].items()}.items())),
        "recordings": dict(sorted({k: v for f in frags for k, v in f["splits"]["recordings"].items()}.items())),
    }
    return merged


def _sum_dicts(dicts: Iterable[Mapping]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _sum_nested(dicts: Iterable[Mapping[str, Mapping]]) -> dict:
    out: dict[str, dict] = {}
    for d in dicts:
        for k, inner in d.items():
            acc = out.setdefault(k, {})
            for kk, v in inner.items():
                acc[kk] = acc.get(kk, 0) + v
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}
