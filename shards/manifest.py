"""The manifest of a build folder: its schema, writing it from a build state, reading and merging parts.

Layout of one build (``{out}/{corpus}/``)::

    {split}-{shard:06d}.tar                  part=(0, 1)
    {split}-{part:03d}-{shard:06d}.tar       part=(i, n), n > 1: one SLURM array task each
    manifest.json  |  manifest-part-{i:03d}-of-{n:03d}.json
    .build-state[-part-III-of-NNN].json      resume bookkeeping (``shards.writer``)

A manifest records the build parameters (``build``), software versions, per-shard sample counts, hours and
recordings, totals, counts by split / channel set / label, window drops, dropped channels by reason, skipped
recordings with reasons and the split of every subject and recording. :func:`make_manifest` writes one
from a build state; :func:`read_manifest` reads a folder, merging part fragments.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from shards.corpora.base import Adapter

FORMAT = "eegfm-shards/1"
SPLITS = ("train", "val", "test")


def part_suffix(part: tuple[int, int]) -> str:
    """``""`` for a whole build, ``-part-III-of-NNN`` for part ``(i, n)``: names its manifest, state and lock."""
    return "" if part[1] == 1 else f"-part-{part[0]:03d}-of-{part[1]:03d}"


def shard_name(split: str, index: int, part: tuple[int, int]) -> str:
    return f"{split}-{index:06d}.tar" if part[1] == 1 else f"{split}-{part[0]:03d}-{index:06d}.tar"


def manifest_name(part: tuple[int, int]) -> str:
    return f"manifest{part_suffix(part)}.json"


_LAYOUT_FILE = re.compile(r"(?:manifest|\.build-state)(?:-part-(\d+)-of-(\d+))?\.json")


def _layouts(folder: Path) -> dict[int, str]:
    """Builds present in ``folder`` by part count N (1 = a whole build), each with one file showing it."""
    found: dict[int, str] = {}
    names = sorted((p.name for p in folder.iterdir()), key=lambda n: (not n.startswith("manifest"), n)) \
        if folder.is_dir() else []
    for name in names:  # manifests first: they name a layout best
        m = _LAYOUT_FILE.fullmatch(name)
        if m:
            found.setdefault(int(m.group(2)) if m.group(2) else 1, name)
    return found


def _describe(n: int) -> str:
    return "a whole build (no --part)" if n == 1 else f"a build split into {n} parts (--part I/{n})"


def check_layout(folder: Path, part: tuple[int, int]) -> None:
    """ValueError when ``folder`` holds a build of another layout than ``part``: a whole build next to
    ``--part`` builds (or parts of another N) would put every sample into the folder twice, and readers
    that glob ``*.tar`` would train on both."""
    for n, example in _layouts(Path(folder)).items():
        if n != part[1]:
            raise ValueError(
                f"{folder} already holds {_describe(n)} ({example}); {_describe(part[1])} into the same folder "
                f"would duplicate its samples: use another --out, or delete {folder} to rebuild")


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


def jsonable(x: Any) -> Any:
    if type(x) in (str, int, float, bool) or x is None:  # the bulk of a manifest: skip the checks below
        return x
    if dataclasses.is_dataclass(x):
        return {k: jsonable(v) for k, v in dataclasses.asdict(x).items()}
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x



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
    placed_channels: dict[str, Counter] = {}  # "placed by position at FC3 (4.2 mm)" -> raw name -> recordings
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
        for name, how in r.get("placed_channels", []):
            placed_channels.setdefault(how, Counter())[name] += 1
    # "sha256" / "bytes": of the whole tar file (absent in builds resumed from before they were recorded).
    shards = [{"name": s["name"], "split": s["split"], "samples": s["samples"], "hours": s["hours"],
               "recordings": [r["recording"] for r in s["recordings"]],
               **{k: s[k] for k in ("bytes", "sha256") if k in s}} for s in state["shards"]]
    return _round_floats(jsonable({
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
        "placed_channels": {k: dict(sorted(v.items())) for k, v in sorted(placed_channels.items())},
        "skipped": skipped,
        "splits": {
            "subjects": dict(sorted({r["subject"]: r["split"] for r in recs}.items())),
            "recordings": {r["recording"]: r["split"] for r in recs},
        },
        # "sha256": of the recording's tar members (header to padding) inside its shard, when it has samples;
        # "notch_hz": the mains notch the recording itself stated (BIDS PowerLineFrequency), used instead of the build's
        "recordings": [{k: r[k] for k in ("recording", "subject", "session", "source", "task", "split", "samples",
                                             "hours", "recording_hours", "skipped", "sha256", "notch_hz") if k in r}
                       for r in recs],
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


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a corpus folder ``{out}/{corpus}``, merging ``manifest-part-*.json`` fragments.

    Counters (totals, label/drop counts, channel sets) are summed; shards, skipped recordings and splits
    are concatenated. FileNotFoundError naming the folder when it holds no manifest.
    """
    folder = Path(folder)
    whole = folder / "manifest.json"
    parts = sorted(folder.glob("manifest-part-*.json"))
    layouts = {n: f for n, f in _layouts(folder).items() if f.startswith("manifest")}
    if len(layouts) > 1:
        found = "; ".join(f"{_describe(n)} ({f})" for n, f in sorted(layouts.items()))
        raise ValueError(f"{folder} mixes builds of different layouts, whose shards would be read twice: {found}; "
                         f"delete the folder and rebuild one layout")
    if whole.is_file() and not parts:
        return read_json(whole)
    if not parts:
        raise FileNotFoundError(f"no manifest.json or manifest-part-*.json in {folder}")
    frags = [read_json(p) for p in parts]
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
    merged["placed_channels"] = _sum_nested(f.get("placed_channels", {}) for f in frags)
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


def read_json(path: Path, fix: str = "rebuild the folder or restore the file") -> Any:
    """The JSON in ``path`` (a manifest or build state); ValueError naming the file, the parse error and ``fix``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {fix}") from None


def shard_digests(urls: Iterable[str]) -> dict[str, dict]:
    """``{url: {"sha256", "samples"}}`` for the local shards whose folder's manifest records a sha256.

    Shards without a manifest (or from builds before sha256 was recorded) and remote / ``pipe:`` URLs are
    left out: they are read without that check.
    """
    out: dict[str, dict] = {}
    by_folder: dict[Path, list[str]] = {}
    for url in urls:
        if not (url.startswith("pipe:") or "://" in url):
            by_folder.setdefault(Path(url).parent, []).append(url)
    for folder, members in by_folder.items():
        try:
            listed = {s["name"]: s for s in read_manifest(folder)["shards"]}
        except FileNotFoundError:
            continue
        for url in members:
            entry = listed.get(Path(url).name)
            if entry and entry.get("sha256"):
                out[url] = {"sha256": entry["sha256"], "samples": entry["samples"]}
    return out


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
