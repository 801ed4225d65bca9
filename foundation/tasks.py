"""Task ids of the task-aware MoE: which row of ``task_embed`` a sample's task selects.

Shards name a sample's task in their metadata (``meta["task"]``: "seizure", "sleep", ...); finetuning
recipes and task-aware pretraining both turn that name into the id the backbone's router sees, through
this one table. Names it does not know (unlabeled corpora, "abnormal", None) use id 0, the generic row.
The ids are part of every checkpoint's meaning: append, never renumber.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TASK_IDS", "DEFAULT_TASK_ID", "task_id", "task_ids"]

DEFAULT_TASK_ID = 0
TASK_IDS: dict[str, int] = {
    "pretraining": 0,
    "seizure": 1,
    "sleep": 2,
    "emotion": 3,
    "motor_imagery": 4,
    # Executed movements share the imagery recipes' label space (EEGMMIDB runs 3, 5, 7, 9, 11, 13).
    "motor_execution": 4,
}


def task_id(name: str | None) -> int:
    """The router id of a shard ``task`` name (0 for None or an unknown name)."""
    return TASK_IDS.get(name, DEFAULT_TASK_ID) if name else DEFAULT_TASK_ID


def task_ids(names: Sequence[str | None] | None, n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[n]`` long router ids of a batch's ``task`` names (all 0 when ``names`` is None)."""
    if names is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    if len(names) != n:
        raise ValueError(f"task_ids: batch has {n} samples but {len(names)} task names")
    return torch.tensor([task_id(t) for t in names], dtype=torch.long, device=device)
