"""Read side of the shards: URL expansion, sample decoding, batching windows with different channel sets.

Used by ``pretrain`` (streaming) and ``finetune`` (small labelled sets in memory). The only module of
``shards`` that imports torch, for :func:`collate`.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from braceexpand import braceexpand

from shards.manifest import read_manifest, shard_digests
from shards.sample import Window, decode_sample
from shards.shardfile import DamagedShardError, read_shard
from shards.vocabulary import channel_id

log = logging.getLogger("shards.dataset")

__all__ = ["DamagedShardError", "Window", "collate", "decode_sample", "expand_urls", "iter_samples", "load_windows", "read_manifest"]


def expand_urls(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard URLs from a folder, a glob, a brace pattern, a ``pipe:`` URL or a list of those.

    - folder: the shards its build manifests list (``manifest*.json`` in the folder or in its corpus
      subfolders), sorted; a tar no manifest lists (a copy, an ``old/`` subfolder, a half-written temporary) is
      left out with a warning naming it. A folder without any manifest: every ``*.tar`` below it (recursive);
    - glob (``*``/``?``/``[``): matching files, sorted, less those a manifest of their folder does not list;
      no match -> FileNotFoundError;
    - brace pattern ``train-{000000..000009}.tar``: expanded, each must exist;
    - ``pipe:...`` / ``http(s)://`` / ``s3://`` ...: passed through (WebDataset opens them).
    A path that does not exist, or a shard a manifest lists but the folder lacks, raises FileNotFoundError
    naming it.
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
                urls.extend(_folder_shards(p))
            elif any(ch in item for ch in "*?["):
                found = sorted(q for q in glob.glob(str(p), recursive=True) if q.endswith(".tar"))
                if not found:
                    raise FileNotFoundError(f"no *.tar shards match {item}")
                urls.extend(_listed_only(found, item))
            elif p.is_file():
                urls.append(str(p))
            else:
                raise FileNotFoundError(f"shard path {item} does not exist")
    if not urls:
        raise FileNotFoundError(f"no shards in {spec!r}")
    return urls


def _manifest_folders(folder: Path) -> list[Path]:
    """``folder`` and the folders below it that hold a build manifest, sorted."""
    return sorted({m.parent for m in folder.rglob("manifest*.json") if _is_manifest_name(m.name)})


def _is_manifest_name(name: str) -> bool:
    return name == "manifest.json" or (name.startswith("manifest-part-") and name.endswith(".json"))


def _listed(folder: Path) -> list[str]:
    """The shards of ``folder``'s manifest, each checked to exist."""
    out = []
    for entry in read_manifest(folder)["shards"]:
        path = folder / entry["name"]
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} is listed in {folder}'s manifest but missing: restore it, or "
                                    f"rebuild {folder}")
        out.append(str(path))
    return sorted(out)


def _folder_shards(folder: Path) -> list[str]:
    """The shards of a folder: what its manifests list, or every tar below it when it holds no manifest."""
    every = sorted(str(q) for q in folder.rglob("*.tar") if not q.name.startswith("."))
    builds = _manifest_folders(folder)
    if not builds:
        if not every:
            raise FileNotFoundError(f"no *.tar shards under folder {folder}")
        return every
    listed = [u for b in builds for u in _listed(b)]
    _warn_unlisted(sorted(set(every) - set(listed)), folder)
    if not listed:
        raise FileNotFoundError(f"the manifests under {folder} list no shards")
    return sorted(listed)


def _listed_only(found: list[str], pattern: str) -> list[str]:
    """Glob matches less the tars that a manifest of their own folder does not list."""
    keep, unlisted = [], []
    listed_by: dict[Path, set[str] | None] = {}
    for url in found:
        folder = Path(url).parent
        if folder not in listed_by:
            has = any(_is_manifest_name(m.name) for m in folder.glob("manifest*.json"))
            listed_by[folder] = {Path(u).name for u in _listed(folder)} if has else None
        names = listed_by[folder]
        (keep if names is None or Path(url).name in names else unlisted).append(url)
    _warn_unlisted(unlisted, Path(pattern))
    if not keep:
        raise FileNotFoundError(f"no shard listed in a manifest matches {pattern} (unlisted: {', '.join(unlisted[:3])})")
    return keep


def _warn_unlisted(unlisted: list[str], where: Path) -> None:
    if unlisted:
        log.warning("left out %d tar(s) under %s that no build manifest lists (copies or leftovers; `python -m shards "
                    "inspect` names them): %s", len(unlisted), where, ", ".join(unlisted[:5])
                    + (", ..." if len(unlisted) > 5 else ""))


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
    """Raw samples (``__key__`` + member bytes) of one local tar in file order; the tar is checked whole
    first (:func:`shards.shardfile.read_shard`: DamagedShardError naming it when it is not)."""
    return read_shard(url)


def load_windows(spec: str | Path | Sequence[str | Path], *, skipped: dict[str, str] | None = None) -> list[Window]:
    """All windows of the shards in ``spec`` (see :func:`expand_urls`), in memory, sorted by key.

    Local tars are checked against their manifest's sha256 and sample count when it has them (and their
    tar structure always); a damaged shard is left out with one warning naming it, and recorded in
    ``skipped`` (url -> reason) when given. Remote/``pipe:`` URLs are read through WebDataset unchecked.
    """
    urls = expand_urls(spec)
    digests = shard_digests(urls)
    out: list[Window] = []
    damaged: dict[str, str] = {}
    for url in urls:
        if url.startswith("pipe:") or "://" in url:
            import webdataset as wds

            samples: Iterable[dict] = wds.WebDataset(url, shardshuffle=False, empty_check=False)
        else:
            try:
                samples = read_shard(url, **digests.get(url, {}))
            except DamagedShardError as e:
                damaged[url] = e.reason
                log.warning("skipping damaged shard %s (%d of %d shards skipped so far): %s",
                            url, len(damaged), len(urls), e.reason)
                continue
        out.extend(decode_sample(s) for s in samples)
    if skipped is not None:
        skipped.update(damaged)
    out.sort(key=lambda w: w.meta.get("__key__", ""))
    return out
