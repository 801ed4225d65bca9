"""The cross-fitted protocol of ``benchmarks/downstream.py``: every group tested once, by a backbone that never saw it.

Per task the groups (subjects; recordings where a set names none: Bonn segments, DREAMS excerpts, EEGMMIDB runs)
are dealt into ``k`` stratified folds, nested in two halves (folds ``0..k/2-1`` are half 0). Each pretraining seed
pretrains two backbones, each without one half of every task (labels unused either way), and every fold is
tested with the backbone that never saw its half: the test covers every group of every task, and no test group
was in the pretraining data of the model that labels it. A fixed *probe pool* of EEGMAT subjects stays out of
all pretraining and out of every test fold: it is the validation probe that picks each backbone's exported step
(``pretrain/probe.py``), and finetuning may train on it like on any other training group.

Everything here is a pure function of the shards and fixed seeds (``FOLD_SEED``), so the folds are a property of
the task, not of the run's seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FOLD_SEED", "TaskFolds", "assign_folds", "probe_pool", "published_folds"]

FOLD_SEED = 0  # the folds are fixed: never a run's seed


@dataclass
class TaskFolds:
    """One task's folds: ``fold_of[group]`` in ``0..k-1``, -1 for probe-pool groups (never tested), -2 for groups
    a fixed split only trains on (``published``: fold 0 is its test set, ``val`` its validation groups)."""

    task: str
    group_key: str
    k: int
    fold_of: dict[str, int]
    members: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # group -> {recordings, subjects}
    val: tuple[str, ...] = ()  # fixed validation groups (a published split), else chosen per seed

    def half(self, fold: int) -> int:
        """Which half a fold lies in (the backbone ``not_half`` of that half tests it)."""
        return 0 if fold < self.k // 2 or self.k == 1 else 1

    def groups(self, fold: int) -> list[str]:
        return sorted(g for g, f in self.fold_of.items() if f == fold)

    def half_groups(self, half: int) -> list[str]:
        return sorted(g for g, f in self.fold_of.items() if f >= 0 and self.half(f) == half)

    def held_out(self, half: int) -> dict[str, set[str]]:
        """Recordings and subjects a backbone that tests ``half`` must not pretrain on (that half + the probe pool)."""
        out: dict[str, set[str]] = {"recordings": set(), "subjects": set()}
        for g, f in self.fold_of.items():
            if f == -1 or (f >= 0 and self.half(f) == half):
                for kind in out:
                    out[kind] |= set(self.members.get(g, {}).get(kind, ()))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "group_key": self.group_key, "k": self.k,
                "folds": {str(f): self.groups(f) for f in range(-1, self.k) if self.groups(f)}}


def assign_folds(task: str, metas: list[dict], labels: np.ndarray, k: int, *, group_key: str,
                 pool: tuple[str, ...] = ()) -> TaskFolds:
    """Deal the task's groups into ``k`` stratified folds (``finetune.splits.group_folds``, fixed seed), the
    groups of ``pool`` set aside (fold -1). ``k`` is capped at the number of groups left."""
    from finetune.splits import group_folds, group_names

    groups = np.asarray(group_names(metas, group_key), dtype=object)
    in_pool = np.isin(groups, list(pool))
    rest = sorted(set(groups[~in_pool].tolist()))
    if len(rest) < 2:
        raise ValueError(f"{task}: {len(rest)} {group_key}(s) outside the probe pool; cross-validation needs two")
    k = min(k, len(rest))
    folds = group_folds(groups[~in_pool], np.asarray(labels)[~in_pool], k, FOLD_SEED)
    fold_of = {g: int(f) for g, f in zip(groups[~in_pool].tolist(), folds.tolist())}
    fold_of.update({g: -1 for g in set(groups[in_pool].tolist())})
    members: dict[str, dict[str, set]] = {}
    for m, g in zip(metas, groups.tolist()):
        entry = members.setdefault(g, {"recordings": set(), "subjects": set()})
        entry["recordings"].add(str(m["recording"]))
        if group_key == "subject":
            entry["subjects"].add(str(m["subject"]))
    return TaskFolds(task, group_key, k, fold_of, {g: {kk: sorted(v) for kk, v in e.items()} for g, e in members.items()})


def probe_pool(metas: list[dict], labels: np.ndarray, n: int, *, group_key: str) -> tuple[str, ...]:
    """``n`` groups set aside as the pretraining probe (every class present in each, fixed choice): the groups
    with both classes, evenly spaced in sorted order, so the pool does not depend on any run setting."""
    from finetune.splits import group_names

    groups = np.asarray(group_names(metas, group_key), dtype=object)
    labels = np.asarray(labels)
    n_classes = len(set(labels.tolist()))
    full = sorted(g for g in set(groups.tolist()) if len(set(labels[groups == g].tolist())) == n_classes)
    if len(full) < n + 4:
        return ()
    picks = np.linspace(0, len(full) - 1, n).round().astype(int)
    return tuple(full[i] for i in picks)


def published_folds(task: str, metas: list[dict], pool: tuple[str, ...] = ()) -> TaskFolds | None:
    """The corpus's published split as one fold (``finetune.splits.published_split``: test = fold 0, validation
    fixed, the rest train only), or None when the data lack a subject of it. Probe-pool groups stay out of
    pretraining (-1) unless the split tests them."""
    from finetune.splits import published_split

    try:
        split = published_split(metas)
    except ValueError:
        return None
    fold_of = {g: -2 for side in ("train", "val") for g in split.groups[side]}
    fold_of.update({g: -1 for g in pool if fold_of.get(g) == -2})
    fold_of.update({g: 0 for g in split.groups["test"]})
    members = {g: {"recordings": sorted({str(m["recording"]) for m in metas if f"{m['corpus']}/{m['subject']}" == g}),
                   "subjects": [g.split("/", 1)[1]]} for g in fold_of}
    return TaskFolds(task, "subject", 1, fold_of, members, val=tuple(split.groups["val"]))
