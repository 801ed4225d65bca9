"""A task's labelled windows in memory, and the batches a (multi-task) run trains on.

Downstream sets are small (thousands of windows), so :func:`load_task_data` reads the shards with
``shards.dataset.load_windows`` and keeps them in memory: the windows whose ``task`` is the recipe's,
relabelled to the recipe's class indices (windows whose label the recipe does not use, e.g. ``rest`` for
left/right motor imagery, are counted and left out), cropped to the recipe's window length.

:class:`TaskBatches` draws training batches across tasks "in proportion to what each has left": every
epoch each task's training windows are shuffled into batches, and each step picks a task with
probability (its remaining batches) / (all remaining batches), so every window is seen once per epoch
and the tasks interleave instead of running one after the other. Ranks take every world-size-th batch of
the same seeded plan, cut to equal length so no rank waits for a batch that never comes.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.recipes.base import Recipe
from runtime.signal import SFREQ, check_sfreq
from shards.dataset import collate, expand_urls, load_windows, read_manifest
from shards.sample import Window

__all__ = ["TaskData", "TaskBatches", "load_task_data", "batch_tensors", "class_weights"]


@dataclass
class TaskData:
    """One task's windows, all with the same ``[C_i, T]`` length T (channels may differ)."""

    recipe: Recipe  # resolved to the data's label space
    windows: list[Window]  # meta["label"] = class index of recipe.classes
    source: str
    preprocessing: dict[str, Any] = field(default_factory=dict)  # corpus -> manifest "build" entry
    shard_splits: dict[str, str] = field(default_factory=dict)  # "corpus/recording" -> train|val|test
    left_out: dict[str, int] = field(default_factory=dict)  # label names the recipe does not use -> windows
    left_out_by_corpus: dict[str, dict[str, int]] = field(default_factory=dict)  # corpus -> the same, its own

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([w.meta["label"] for w in self.windows], dtype=np.int64)

    @property
    def metas(self) -> list[dict]:
        return [w.meta for w in self.windows]

    @property
    def n_samples(self) -> int:
        return int(self.windows[0].eeg.shape[1])

    def class_counts(self, idx: np.ndarray | None = None) -> list[int]:
        y = self.labels if idx is None else self.labels[idx]
        return np.bincount(y, minlength=self.recipe.n_classes).tolist()


def _manifests(spec: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Preprocessing parameters and shard splits of every corpus folder in ``spec`` (local tars only)."""
    builds: dict[str, Any] = {}
    splits: dict[str, str] = {}
    folders = sorted({str(Path(u).parent) for u in expand_urls(spec) if "://" not in u and not u.startswith("pipe:")})
    for folder in folders:
        try:
            manifest = read_manifest(folder)
        except FileNotFoundError:
            continue
        corpus = manifest.get("corpus", Path(folder).name)
        builds[corpus] = manifest.get("build", {})
        for rec, sp in (manifest.get("splits", {}).get("recordings", {}) or {}).items():
            splits[f"{corpus}/{rec}"] = sp
    return builds, splits


def load_task_data(
    recipe: Recipe,
    spec: str | Path | Sequence[str],
    *,
    classes: Sequence[str] = (),
    window_s: float | None = None,
    channels: Sequence[str] | None = None,
    extra_tasks: Sequence[str] = (),
    max_windows: int | None = None,
    windows: Sequence[Window] | None = None,
) -> TaskData:
    """Labelled windows of ``recipe.task`` from the shards ``spec``.

    Args:
        classes: explicit head classes (kept even if absent); empty = fit the recipe to the data.
        window_s: crop length in seconds (default: ``recipe.window_s``, else the shards' length).
        extra_tasks: further shard task strings to read with this recipe's labels (``Recipe.extra_tasks``).
        channels: canonical channel names to keep, in this order (default: ``recipe.channels``, else
            all); windows lacking one of them are left out and counted under ``left_out``.
        max_windows: keep this many windows, evenly spaced in key order (quick trials).
        windows: already loaded windows of ``spec`` (multi-task runs over one shard set read it once).

    Raises:
        ValueError: no window of this task, no usable label, or windows of different lengths / too short,
            each naming the shards and what was found.
    """
    spec_str = str(spec) if isinstance(spec, (str, Path)) else ",".join(map(str, spec))
    all_windows = list(windows) if windows is not None else load_windows(spec)
    if extra_tasks:
        recipe = dataclasses.replace(recipe, extra_tasks=tuple(extra_tasks))
    mine = [w for w in all_windows if w.meta.get("task") in recipe.accepted_tasks]
    if not mine:
        found = Counter(str(w.meta.get("task")) for w in all_windows)
        raise ValueError(
            f"recipe {recipe.name!r}: no windows with task in {list(recipe.accepted_tasks)} in {spec_str} "
            f"(tasks found: {dict(sorted(found.items())) or 'none'})"
        )
    for rate in {w.meta.get("sfreq", SFREQ) for w in mine}:  # one check per rate, not per window
        first = next(w for w in mine if w.meta.get("sfreq", SFREQ) == rate)
        check_sfreq(rate, f"{spec_str}: sample {first.key}", what="(sfreq in its JSON)")
    names = [w.meta.get("label_name") for w in mine if w.meta.get("label") is not None]
    recipe = recipe.with_classes(classes) if classes else recipe.resolve(names)

    kept, by_corpus = _relabel(mine, recipe)
    if not kept:
        raise ValueError(f"recipe {recipe.name!r}: no window of {spec_str} has one of the classes {list(recipe.classes)}")
    channels = tuple(channels) if channels else recipe.channels
    if channels:
        recipe = dataclasses.replace(recipe, channels=tuple(channels))
        kept, missing = _select_channels(kept, channels)
        for corpus, n in missing.items():
            by_corpus.setdefault(corpus, Counter())[f"missing channels of {list(channels)}"] += n
        if not kept:
            raise ValueError(f"recipe {recipe.name!r}: no window of {spec_str} has all channels {list(channels)}")
    _check_corpora(mine, kept, by_corpus, recipe, spec_str)
    left_out = sum(by_corpus.values(), Counter())

    window_s = window_s if window_s is not None else recipe.window_s
    kept = _crop(kept, window_s, spec_str, recipe.name)
    if max_windows is not None and len(kept) > max_windows:
        pick = np.linspace(0, len(kept) - 1, max_windows).round().astype(int)
        kept = [kept[i] for i in sorted(set(pick.tolist()))]
    builds, splits = _manifests(spec)
    return TaskData(recipe=recipe, windows=kept, source=spec_str, preprocessing=builds, shard_splits=splits,
                    left_out=dict(sorted(left_out.items())),
                    left_out_by_corpus={c: dict(sorted(v.items())) for c, v in sorted(by_corpus.items()) if v})


def _relabel(mine: Sequence[Window], recipe: Recipe) -> tuple[list[Window], dict[str, Counter]]:
    """The windows whose label is one of the recipe's classes, relabelled to its indices; the others counted by
    corpus and label name."""
    kept: list[Window] = []
    left_out: dict[str, Counter] = {}
    for w in mine:
        name = w.meta.get("label_name") if w.meta.get("label") is not None else None
        idx = recipe.label_index(name)
        if idx is None:
            left_out.setdefault(str(w.meta.get("corpus")), Counter())[str(name)] += 1
            continue
        kept.append(Window(w.eeg, {**w.meta, "label": idx, "label_name": recipe.classes[idx], "source_label_name": name}))
    return kept, left_out


def _check_corpora(mine: Sequence[Window], kept: Sequence[Window], left_out: Mapping[str, Counter], recipe: Recipe,
                   spec: str) -> None:
    """ValueError naming a corpus of the task that contributes no window (its labels are not the recipe's classes,
    or it lacks the recipe's channels): left out silently, a run would report metrics on less data than it was
    given."""
    offered = Counter(str(w.meta.get("corpus")) for w in mine)
    used = Counter(str(w.meta.get("corpus")) for w in kept)
    for corpus in sorted(c for c in offered if not used[c]):
        why = ", ".join(f"{k} x{v}" for k, v in sorted(left_out.get(corpus, {}).items()))
        raise ValueError(
            f"recipe {recipe.name!r}: corpus {corpus!r} of {spec} contributes none of its {offered[corpus]} windows "
            f"({why}): its labels are not the classes {list(recipe.classes)} the recipe resolved. Finetune it in a run "
            f"of its own, name its classes with --classes, or leave it out of --data")


def _select_channels(windows: list[Window], channels: Sequence[str]) -> tuple[list[Window], Counter]:
    out, missing = [], Counter()
    for w in windows:
        names = list(w.meta["channels"])
        if not all(c in names for c in channels):
            missing[str(w.meta.get("corpus"))] += 1
            continue
        rows = [names.index(c) for c in channels]
        out.append(Window(np.ascontiguousarray(w.eeg[rows]), {**w.meta, "channels": list(channels)}))
    return out, missing


def _crop(windows: list[Window], window_s: float | None, spec: str, name: str) -> list[Window]:
    lengths = Counter(w.eeg.shape[1] for w in windows)
    if window_s is None:
        if len(lengths) > 1:
            raise ValueError(
                f"recipe {name!r}: windows in {spec} have different lengths {dict(lengths)} samples; "
                f"set window_s to crop them to one length"
            )
        return windows
    out = []
    for w in windows:
        sfreq = float(w.meta.get("sfreq", SFREQ))
        n = int(round(window_s * sfreq))
        if w.eeg.shape[1] < n:
            raise ValueError(
                f"recipe {name!r}: window {w.key} of {spec} lasts {w.eeg.shape[1] / sfreq:g} s, shorter than window_s={window_s:g}"
            )
        if w.eeg.shape[1] == n:
            out.append(w)
        else:
            out.append(Window(np.ascontiguousarray(w.eeg[:, :n]), {**w.meta, "duration_s": n / sfreq}))
    return out


def class_weights(counts: Sequence[int], names: Sequence[str] = ()) -> torch.Tensor:
    """Inverse-frequency weights ``n / (k * n_c)`` (mean weight over windows = 1).

    Raises:
        ValueError: naming a class with no training window (its weight would be infinite).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if (counts == 0).any():
        missing = [names[i] if i < len(names) else str(i) for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"class(es) {missing} have no window in the training split; cannot weight or learn them")
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def batch_tensors(windows: Sequence[Window]) -> dict[str, torch.Tensor]:
    """``shards.dataset.collate`` without the metadata lists: ``x [B, C, T]``, ``channel_ids [B, C]``,
    ``channel_mask [B, C]``, ``label [B]`` (what Accelerate moves to the device and gathers)."""
    b = collate(windows)
    return {k: b[k] for k in ("x", "channel_ids", "channel_mask", "label")}


class WindowList(torch.utils.data.Dataset):
    """A list of windows as a map-style dataset (for evaluation DataLoaders)."""

    def __init__(self, windows: Sequence[Window]) -> None:
        self.windows = list(windows)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Window:
        return self.windows[i]


class TaskBatches:
    """The training batches of one epoch over several tasks, for one rank.

    Iterating yields ``(task, batch)`` with ``batch`` from :func:`batch_tensors` (on the CPU).

    Args:
        windows: task -> that task's training windows.
        batch_size: windows per batch (the last batch of a task may be smaller, never below 2 so
            BatchNorm-free layers and label smoothing see a real batch; a single leftover is dropped).
        seed, epoch: the plan is a pure function of (seed, epoch): every rank draws the same plan.
        rank, world_size: this rank takes batches ``rank, rank + world_size, ...``.
    """

    def __init__(
        self,
        windows: Mapping[str, Sequence[Window]],
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.windows = {k: list(v) for k, v in windows.items()}
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.plan = self._plan()

    def _plan(self) -> list[tuple[str, list[int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues: dict[str, list[list[int]]] = {}
        for task in sorted(self.windows):
            n = len(self.windows[task])
            order = rng.permutation(n).tolist()
            batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
            queues[task] = [b for b in batches if len(b) >= 2] or batches
        plan = []
        tasks = sorted(queues)
        while True:
            left = np.asarray([len(queues[t]) for t in tasks], dtype=np.float64)
            if left.sum() == 0:
                break
            task = tasks[int(rng.choice(len(tasks), p=left / left.sum()))]
            plan.append((task, queues[task].pop(0)))
        per_rank = len(plan) // self.world_size if self.world_size > 1 else len(plan)
        return plan[self.rank::self.world_size][:per_rank]

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for task, idx in self.plan:
            yield task, batch_tensors([self.windows[task][i] for i in idx])
