"""The manifest of a build folder: its schema, writing it from a build state, reading and merging parts.

Layout of one build (``{out}/{corpus}/``)::

    {split}-{shard:06d}.tar                  part=(0, 1)
    {split}-{part:03d}-{shard:06d}.tar       part=(i, n), n > 1: one SLURM array task each
    manifest.json  |  manifest-part-{i:03d}-of-{n:03d}.json
    .build-state[-part-III-of-NNN].json      resume bookkeeping (``shards.writer``)

A manifest records the build parameters (``build``), software versions, per-shard sample counts, hours and
recordings, totals, counts by split / channel set / label, window drops, dropped channels by reason, skipped
recordings with reasons (a recording found twice, ``duplicates``, among them) and the split of every subject and
recording. :func:`make_manifest` writes one
from a build state; :func:`read_manifest` reads a folder, merging part fragments.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
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
# What the writer makes of the same inputs and settings. Part of every build's parameters, so a build by an earlier
# revision is neither resumed nor taken for a finished identical one; bumped whenever the same recordings would be
# sharded differently (2: a recording whose windows repeat a kept one is skipped as its twin).
WRITER_REVISION = 2
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


# Build parameters that may differ between the parts of one build: which part it is, and where the raw corpus
# was mounted on the machine that built it. Everything else (corpus, preprocessing, split fractions and seed,
# shard size) decides which samples exist and where they go, and must be equal across the parts.
PART_LOCAL = frozenset({"part", "root"})


def build_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters every part of one build shares (``params`` without :data:`PART_LOCAL`)."""
    return {k: v for k, v in params.items() if k not in PART_LOCAL}


def build_fingerprint(params: Mapping[str, Any]) -> str:
    """sha256 of :func:`build_settings`: equal for the parts of one build, different for any other setting."""
    return hashlib.sha256(json.dumps(jsonable(build_settings(params)), sort_keys=True).encode()).hexdigest()


def settings_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """``"key: A vs B; ..."`` for the shared settings that differ between two builds' parameters."""
    flat_a, flat_b = _flatten(jsonable(build_settings(a))), _flatten(jsonable(build_settings(b)))
    keys = sorted(k for k in set(flat_a) | set(flat_b) if flat_a.get(k) != flat_b.get(k))
    return "; ".join(f"{k}: {flat_a.get(k)!r} vs {flat_b.get(k)!r}" for k in keys)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _part_files(folder: Path) -> list[tuple[Path, str, list[int]]]:
    """Every manifest and build state of ``folder``: its path, the key holding its build parameters, its part."""
    files = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _LAYOUT_FILE.fullmatch(path.name)
        if m:
            part = [int(m.group(1)), int(m.group(2))] if m.group(2) else [0, 1]
            files.append((path, "build" if path.name.startswith("manifest") else "params", part))
    return files


def check_parts(folder: Path, params: Mapping[str, Any]) -> None:
    """ValueError when another part's manifest or build state in ``folder`` was (or is being) built with other
    settings than ``params``: parts with another split seed or fractions put one subject's recordings in
    different splits, and parts with other preprocessing mix windows of different lengths or filters."""
    own = build_fingerprint(params)
    part = list(params.get("part") or [0, 1])
    for path, key, file_part in _part_files(Path(folder)):
        if file_part == part:
            continue  # this part's own files: its resume check compares them
        data = read_json(path)
        other = data.get(key) if isinstance(data, dict) else None
        if not isinstance(other, dict):
            raise ValueError(f"{path}: not a manifest or build state of this suite (no '{key}' object); restore it "
                             f"or delete {folder} to rebuild")
        if build_fingerprint(other) != own:
            raise ValueError(
                f"{folder} holds part {other.get('part')} of a build with other settings ({path.name}): "
                f"{settings_diff(other, params)} (that part vs this one). Every part of one build must use the same "
                f"corpus, preprocessing, --split, --seed and --max_samples_per_shard: re-run this part with that "
                f"part's settings, or build into another --out")


def check_subject_splits(recordings: Iterable[Mapping[str, Any]], where: str) -> None:
    """ValueError naming the first subject whose recordings lie in two splits (a leak from train into test)."""
    seen: dict[str, dict[str, str]] = {}
    for r in recordings:
        if r.get("skipped"):
            continue
        seen.setdefault(str(r["subject"]), {}).setdefault(str(r["split"]), str(r["recording"]))
    for subject, splits in sorted(seen.items()):
        if len(splits) > 1:
            shown = ", ".join(f"{sp} ({rec})" for sp, rec in sorted(splits.items()))
            raise ValueError(f"{where}: subject {subject!r} has recordings in {len(splits)} splits: {shown}; a subject's "
                             f"recordings must all be in one split (parts built with different --seed or --split?): "
                             f"rebuild the folder with one set of settings")


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



def _duplicates(recs: list[dict]) -> list[dict]:
    """The recordings left out as twins of one kept (``duplicate_of``), each with the source of that one."""
    sources = {r["recording"]: r["source"] for r in recs}
    return [{"recording": r["recording"], "source": r["source"], "duplicate_of": r["duplicate_of"],
             "duplicate_of_source": sources.get(r["duplicate_of"])} for r in recs if r.get("duplicate_of")]


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
        # recordings left out because one kept earlier holds the same samples (shards.twins); also in "skipped"
        "duplicates": _duplicates(recs),
        "splits": {
            "subjects": dict(sorted({r["subject"]: r["split"] for r in recs}.items())),
            "recordings": {r["recording"]: r["split"] for r in recs},
        },
        # "sha256": of the recording's tar members (header to padding) inside its shard, when it has samples;
        # "notch_hz": the mains notch the recording itself stated (BIDS PowerLineFrequency), used instead of the build's
        "recordings": [{k: r[k] for k in ("recording", "subject", "session", "source", "task", "split", "samples",
                                             "hours", "recording_hours", "skipped", "sha256", "notch_hz",
                                             "duplicate_of") if k in r}
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
        manifest = _checked_manifest(whole, read_json(whole))
        check_subject_splits(manifest["recordings"], str(whole))
        return manifest
    if not parts:
        raise FileNotFoundError(f"no manifest.json or manifest-part-*.json in {folder}")
    frags = [_checked_manifest(p, read_json(p)) for p in parts]
    for path, frag in zip(parts[1:], frags[1:]):
        if build_fingerprint(frag["build"]) != build_fingerprint(frags[0]["build"]):
            raise ValueError(
                f"{folder} mixes parts built with different settings: {parts[0].name} vs {path.name}: "
                f"{settings_diff(frags[0]['build'], frag['build'])}; rebuild the parts with one set of settings")
    n_expected = frags[0]["build"]["part"][1]
    merged = {k: frags[0][k] for k in ("format", "corpus", "task", "label_names", "versions")}
    build = dict(frags[0]["build"])
    build["part"] = [None, n_expected]
    merged["build"] = build
    merged["parts"] = sorted(f["build"]["part"][0] for f in frags)
    merged["complete"] = all(f["complete"] for f in frags) and len(frags) == n_expected
    merged["shards"] = sorted((s for f in frags for s in f["shards"]), key=lambda s: s["name"])
    merged["skipped"] = sorted((s for f in frags for s in f["skipped"]), key=lambda s: s["recording"])
    merged["duplicates"] = sorted((d for f in frags for d in f.get("duplicates", [])), key=lambda d: d["recording"])
    merged["recordings"] = sorted((r for f in frags for r in f["recordings"]), key=lambda r: r["recording"])
    check_subject_splits(merged["recordings"], str(folder))
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


# What a reader needs of a manifest, with the JSON type of each entry.
_MANIFEST_KEYS = {"format": str, "corpus": str, "build": dict, "complete": bool, "totals": dict, "shards": list,
                  "recordings": list, "skipped": list, "splits": dict, "by_split": dict, "channel_sets": list,
                  "label_counts": dict, "label_counts_by_split": dict, "dropped_channels": dict}


def _checked_manifest(path: Path, data: Any) -> dict:
    """``data`` if it has the shape of a manifest this suite writes; ValueError naming ``path`` otherwise."""
    fix = "restore it from the build, or delete the folder and rebuild"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a manifest (expected a JSON object, got {type(data).__name__}); {fix}")
    bad = [k for k, kind in _MANIFEST_KEYS.items() if not isinstance(data.get(k), kind)]
    if bad:
        raise ValueError(f"{path}: not a manifest of this suite (missing or mistyped: {', '.join(bad)}); {fix}")
    part = data["build"].get("part")
    if not (isinstance(part, list) and len(part) == 2 and all(isinstance(v, int) for v in part)):
        raise ValueError(f"{path}: build.part must be [i, n], got {part!r}; {fix}")
    for entry in data["shards"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("samples"), int)
                and "/" not in entry["name"] and entry["name"].endswith(".tar")):
            raise ValueError(f"{path}: shard entry {entry!r} is not {{name: '<split>-NNNNNN.tar', samples: int, ...}}; {fix}")
    for entry in data["recordings"]:
        if not (isinstance(entry, dict) and all(k in entry for k in ("recording", "subject", "split"))):
            raise ValueError(f"{path}: recording entry {str(entry)[:80]} lacks recording/subject/split; {fix}")
    return data


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
