"""The downstream tasks of ``benchmarks/downstream.py``: which shard sets are built, which task reads which, and
the step / epoch / window budget of a full or ``--quick`` run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# shard set -> (corpus adapter, folder under --data, channel subset or None)
SHARD_SETS: dict[str, tuple[str, str, tuple[str, ...] | None]] = {}  # filled below MOTOR_CHANNELS

# Channel subsets of the multi-channel sets. The backbone reads all (channel, patch) tokens of a window as one
# sequence and a batch pads every window to its widest member, so one 64-channel EEGMMIDB window makes a whole
# batch 64x longer: on a 2-core CPU the full montage costs more than all other data together. Motor imagery
# lives over the sensorimotor cortex (the classic C3/C4 mu/beta desynchronisation), so EEGMMIDB keeps 8
# sensorimotor channels, for pretraining, finetuning and both baselines alike; the unlabeled recordings keep
# the 10-20 channels below that they have.
MOTOR_CHANNELS = ("FC3", "FCZ", "FC4", "C3", "CZ", "C4", "CP3", "CP4")
RECORDING_CHANNELS = ("F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2")


def channel_subset_adapter(corpus: str, name: str, channels: Sequence[str]):
    """The registered ``corpus`` adapter, renamed ``name``, keeping only ``channels`` (canonical names).

    Recordings holding none of them are left whole (they are narrow already, e.g. 2-channel resting EEG).
    """
    from shards.corpora import get_corpus
    from shards.vocabulary import canonical_name

    base = type(get_corpus(corpus))
    wanted = set(channels)

    class Subset(base):  # type: ignore[misc, valid-type]
        def load(self, rec):
            loaded = super().load(rec)
            keep = [ch for ch in loaded.raw.ch_names if canonical_name(ch) in wanted]
            if keep:
                loaded.raw.pick(keep)
            return loaded

    Subset.name = name
    Subset.__name__ = Subset.__qualname__ = f"{base.__name__}Subset"
    return Subset()


@dataclass(frozen=True)
class TaskPlan:
    """One downstream task of the benchmark."""

    name: str  # recipe name
    corpus: str  # key of SHARD_SETS
    title: str
    classes: tuple[str, ...]
    n_folds: int
    max_windows: int | None = None  # evenly spaced subset (full mode), None = all
    window_s: float | None = None  # crop windows to their first window_s seconds (None = as sharded)


SHARD_SETS.update({
    "bonn": ("bonn", "seizure/bonn", None),
    "dreams": ("dreams", "sleep/dreams_spindles", None),
    "eegmmidb_motor8": ("eegmmidb", "motor_imagery/eegmmidb", MOTOR_CHANNELS),
    "mental_stress": ("mental_stress", "emotion/mental_stress_emotiv", None),
    "recordings_1020": ("recordings", "unlabeled", RECORDING_CHANNELS),
})

# Bonn (8 overlapping windows per segment), DREAMS and mental stress are capped to an evenly spaced subset
# (every segment / excerpt / recording stays in) and mental stress is cropped to the 4-s crops the backbone
# is pretrained on, so that 3 seeds x 5 EEGMamba variants fit the 30-minute budget on 2 cores.
TASKS: tuple[TaskPlan, ...] = (
    TaskPlan("seizure", "bonn", "Bonn seizure (S vs Z/O/N/F)", ("non_seizure", "seizure"), 5, max_windows=500),
    TaskPlan("sleep", "dreams", "DREAMS sleep (W/N1/N2/N3)", ("W", "N1", "N2", "N3"), 6, max_windows=720),
    TaskPlan("motor_imagery", "eegmmidb_motor8", "EEGMMIDB S001 imagined left vs right fist (8 sensorimotor ch.)",
             ("left_fist", "right_fist"), 2),
    TaskPlan("emotion", "mental_stress", "Mental stress (horror vs relaxing), 4-s crops", ("calm", "stress"), 5,
             max_windows=300, window_s=4.0),
)


@dataclass(frozen=True)
class Budget:
    """Steps and epochs of one benchmark mode (full or --quick)."""

    tokenizer_steps: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    finetune_epochs: int
    finetune_patience: int
    finetune_lr: float
    probe_lr: float
    batch_size: int
    eegnet_epochs: int
    eegnet_patience: int
    max_windows: int | None  # per task (evenly spaced) in --quick; None = the task's own cap


FULL = Budget(tokenizer_steps=200, pretrain_steps=1200, pretrain_batch=16, pretrain_lr=1e-3,
              finetune_epochs=10, finetune_patience=4, finetune_lr=3e-3, probe_lr=1e-2, batch_size=16,
              eegnet_epochs=30, eegnet_patience=8, max_windows=None)
QUICK = Budget(tokenizer_steps=10, pretrain_steps=15, pretrain_batch=8, pretrain_lr=1e-3,
               finetune_epochs=2, finetune_patience=2, finetune_lr=3e-3, probe_lr=1e-2, batch_size=16,
               eegnet_epochs=3, eegnet_patience=3, max_windows=120)


def max_windows(plan: TaskPlan, budget: Budget) -> int | None:
    caps = [c for c in (plan.max_windows, budget.max_windows) if c is not None]
    return min(caps) if caps else None

