"""The leak-free protocol of ``benchmarks/downstream.py`` (issue 15): per task a fixed pool of test groups.

A foundation model is pretrained on one pool of recordings and evaluated on subjects it has never seen. So
each task holds out a fixed pool of groups (subjects, or recordings where the set has no subject ids:
Bonn segments, DREAMS excerpts, EEGMMIDB runs): fold 0 of a stratified group k-fold with ``TaskPlan.pool_folds``
folds and a fixed seed (``POOL_SEED``), chosen on all of the task's windows, so the pool is a property of
the task, not of ``--quick`` or the run's seeds. The pool

- never enters pretraining or the tokenizer: both read ``{out}/shards-pretrain``, built from the same raw
  files without the pool's recordings (every recording of a pool subject, labelled for the task or not);
- is the test set of every seed (``finetune.splits.pool_split``); the seed varies the train / validation
  split of the other groups and the initialisation.

``--transductive`` keeps the old protocol (pretraining sees every window; test = group fold ``seed mod k``)
as a labelled ablation.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import log
from benchmarks.tasks import PRETRAIN_CHANNELS, TaskPlan

POOL_SEED = 0  # the pool is fixed: never the run's seed


def choose_pool(plan: TaskPlan, folder: Path, seed: int = POOL_SEED) -> dict[str, Any]:
    """The test pool of ``plan`` from its shards ``folder`` (all windows, no cap).

    Returns ``{group_key, groups, recordings, subjects, n_groups}``: the group names as
    ``finetune.splits`` writes them (``corpus/subject`` or ``corpus/recording``), and the recordings and
    subjects (empty unless groups are subjects) that pretraining must leave out.
    """
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe
    from finetune.splits import choose_group_key, group_folds, group_names

    data = load_task_data(get_recipe(plan.recipe_name), str(folder), classes=plan.classes, window_s=plan.window_s)
    key = choose_group_key(data.metas, prefer=data.recipe.group_by)
    groups = np.asarray(group_names(data.metas, key), dtype=object)
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise ValueError(f"{plan.name}: {n_groups} {key} in {folder}; a test pool needs at least 2")
    folds = group_folds(groups, np.asarray(data.labels), min(plan.pool_folds, n_groups), seed)
    pool = sorted(set(groups[folds == 0].tolist()))
    members = [m for m, g in zip(data.metas, groups.tolist()) if g in set(pool)]
    return {
        "group_key": key,
        "groups": pool,
        "recordings": sorted({str(m["recording"]) for m in members}),
        "subjects": sorted({str(m["subject"]) for m in members}) if key == "subject" else [],
        "n_groups": n_groups,
    }


def pretrain_keep(pool: Mapping[str, Any] | None, match: str = ""):
    """``keep(recording) -> bool`` for the pretraining shards of one set: not in the pool, matching ``match``."""
    recordings = set(pool["recordings"]) if pool else set()
    subjects = set(pool["subjects"]) if pool else set()
    pattern = re.compile(match) if match else None

    def keep(rec) -> bool:
        if rec.recording in recordings or rec.subject in subjects:
            return False
        return pattern is None or bool(pattern.search(rec.recording))

    return keep


def build_pretrain_shards(data_root: Path, out: Path, sets: list[str], exclusions: Mapping[str, dict]) -> dict[str, Path]:
    """``{out}/shards-pretrain/{set}``: the shard sets without their test pools (``exclusions[set]`` =
    ``{"pool": choose_pool(...) | None, "match": regex}``), reused when built with the same exclusions."""
    from benchmarks.stages import build_shards

    folders = {}
    for name in sets:
        excl = exclusions.get(name, {})
        stamp_file = out / "shards-pretrain" / f"{name}.excluded.json"
        stamp = json.dumps({**excl, "channels": PRETRAIN_CHANNELS.get(name)}, sort_keys=True, default=str)
        folder = out / "shards-pretrain" / name
        if folder.exists() and (not stamp_file.is_file() or stamp_file.read_text() != stamp):
            log(f"{name}: pretraining shards were built with another test pool; rebuilding")
            shutil.rmtree(folder)
        keep = pretrain_keep(excl.get("pool"), excl.get("match", "")) if excl else None
        folders.update(build_shards(data_root, out, sets=[name], keep={name: keep} if keep else None,
                                    folder_name="shards-pretrain", channels=PRETRAIN_CHANNELS))
        stamp_file.write_text(stamp)
    return folders


def pool_window_keys(folder: Path, pool: Mapping[str, Any]) -> set[str]:
    """Keys of the windows of ``folder`` (a shard set) that belong to the pool's recordings or subjects."""
    from shards.dataset import load_windows

    recordings, subjects = set(pool["recordings"]), set(pool["subjects"])
    return {w.key for w in load_windows(str(folder)) if str(w.meta.get("recording")) in recordings or str(w.meta.get("subject")) in subjects}
