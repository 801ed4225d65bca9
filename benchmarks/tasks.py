"""The downstream tasks of ``benchmarks/downstream.py``: which shard sets are built, which task reads which, and
the step / epoch / window budget of a full or ``--quick`` run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


def channel_subset_adapter(corpus: str, name: str, channels: Sequence[str] | None = None,
                           keep: Callable[[Any], bool] | None = None):
    """The registered ``corpus`` adapter, renamed ``name``, keeping only ``channels`` (canonical names) and
    only the recordings for which ``keep(recording)`` holds (None = all).

    Recordings holding none of the channels are left whole (they are narrow already, e.g. 2-channel
    resting EEG). ``keep`` is how the leak-free protocol leaves the test pool out of the pretraining shards.
    """
    from shards.corpora import get_corpus
    from shards.vocabulary import canonical_name

    base = type(get_corpus(corpus))
    wanted = set(channels or ())

    class Subset(base):  # type: ignore[misc, valid-type]
        def find(self, root):
            found = super().find(root)
            return [r for r in found if keep(r)] if keep is not None else found

        def load(self, rec):
            loaded = super().load(rec)
            chosen = [ch for ch in loaded.raw.ch_names if canonical_name(ch) in wanted]
            if chosen:
                loaded.raw.pick(chosen)
            return loaded

    Subset.name = name
    Subset.__name__ = Subset.__qualname__ = f"{base.__name__}Subset"
    return Subset()


def shard_adapter(shard_set: str, keep: Callable[[Any], bool] | None = None, channels: Sequence[str] | None = None):
    """The adapter that builds ``SHARD_SETS[shard_set]`` (recordings filtered by ``keep``, and ``channels``
    instead of the set's own subset, when given)."""
    from shards.corpora import get_corpus

    adapter_name, _, own = SHARD_SETS[shard_set]
    channels = channels or own
    if channels is None and keep is None and adapter_name == shard_set:
        return get_corpus(adapter_name)
    return channel_subset_adapter(adapter_name, shard_set, channels, keep)


@dataclass(frozen=True)
class TaskPlan:
    """One downstream task of the benchmark."""

    name: str  # task name in the results (the recipe name unless ``recipe`` is given)
    corpus: str  # key of SHARD_SETS
    title: str
    classes: tuple[str, ...]
    n_folds: int  # transductive protocol: group k-fold; leak-free: folds of the non-pool groups (validation)
    max_windows: int | None = None  # evenly spaced subset (full mode), None = all
    window_s: float | None = None  # crop windows to their first window_s seconds (None = as sharded)
    recipe: str = ""  # finetune recipe when it differs from ``name`` (EEGMAT uses the emotion recipe)
    pool_folds: int = 5  # leak-free protocol: the test pool is fold 0 of a stratified group k-fold (1/k of the groups)
    pretrain_match: str = ""  # regex a recording id must match to join pretraining ("" = every recording)

    @property
    def recipe_name(self) -> str:
        return self.recipe or self.name


SHARD_SETS.update({
    "bonn": ("bonn", "seizure/bonn", None),
    "dreams": ("dreams", "sleep/dreams_spindles", None),
    "eegmmidb_motor8": ("eegmmidb", "motor_imagery/eegmmidb", MOTOR_CHANNELS),
    "mental_stress": ("mental_stress", "emotion/mental_stress_emotiv", None),
    "eegmat": ("eegmat", "workload/eegmat", None),
    "recordings_1020": ("recordings", "unlabeled", RECORDING_CHANNELS),
})

# Bonn (8 overlapping windows per segment), DREAMS, mental stress and EEGMAT are capped to an evenly spaced
# subset (every segment / excerpt / recording stays in) and mental stress is cropped to the 4-s crops the
# backbone is pretrained on, so that 3 seeds x every EEGMamba variant fit the 30-minute budget on 2 cores.
# EEGMAT keeps the published protocol's 5-s windows and all 19 channels (95 tokens a window, 19x a Bonn
# window), hence its low cap; only the rest recordings (``_1``) of subjects outside the test pool join
# pretraining (issue 13).
TASKS: tuple[TaskPlan, ...] = (
    TaskPlan("seizure", "bonn", "Bonn seizure (S vs Z/O/N/F)", ("non_seizure", "seizure"), 5, max_windows=500),
    TaskPlan("sleep", "dreams", "DREAMS sleep (W/N1/N2/N3)", ("W", "N1", "N2", "N3"), 6, max_windows=720,
             pool_folds=3),
    TaskPlan("motor_imagery", "eegmmidb_motor8", "EEGMMIDB S001 imagined left vs right fist (8 sensorimotor ch.)",
             ("left_fist", "right_fist"), 2, pool_folds=2),
    TaskPlan("emotion", "mental_stress", "Mental stress (horror vs relaxing), 4-s crops", ("calm", "stress"), 5,
             max_windows=300, window_s=4.0),
    TaskPlan("eegmat", "eegmat", "EEGMAT rest vs mental arithmetic (19 ch., 5 s)", ("rest", "arithmetic"), 5,
             max_windows=240, recipe="emotion", pool_folds=4, pretrain_match=r"_1$"),
)
# Pretraining shards that keep fewer channels than the task's: a batch pads every window to its widest
# member, so 19-channel EEGMAT windows in ~80 % of pretraining batches would more than double the
# pretraining time; its rest recordings join pretraining on the 8 10-20 channels the unlabeled set keeps.
PRETRAIN_CHANNELS: dict[str, tuple[str, ...]] = {"eegmat": RECORDING_CHANNELS}
# The four recipes one multi-task model finetunes on (EEGMAT shares the emotion recipe with mental stress,
# and a multi-task run holds each recipe once).
MULTITASK = ("seizure", "sleep", "motor_imagery", "emotion")


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

