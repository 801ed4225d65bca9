"""The downstream tasks of ``benchmarks/downstream.py``: which shard sets are built, which task reads which, how
many folds each is cross-validated in, and the budget of the fast default and of ``--full``."""

from __future__ import annotations

import dataclasses
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
    """One downstream task of the benchmark: every window of its shard set, cross-validated by group."""

    name: str  # task name in the results (the recipe name unless ``recipe`` is given)
    corpus: str  # key of SHARD_SETS
    title: str
    classes: tuple[str, ...]
    folds: int = 4  # cross-validation folds by group (capped at the groups there are); even, so they split in halves
    window_s: float | None = None  # crop windows to their first window_s seconds (None = as sharded)
    recipe: str = ""  # finetune recipe when it differs from ``name`` (EEGMAT uses the emotion recipe)
    probe_pool: int = 0  # groups set aside as the pretraining validation probe (never tested, never pretrained on)

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

# Groups: Bonn segments (the set names no patient), DREAMS excerpts (one subject each; six folds = leave one
# excerpt out), EEGMMIDB runs (one subject: run 4 against run 8), mental-stress and EEGMAT subjects. Mental stress
# is cropped to the 4-s windows the backbone is pretrained on; EEGMAT keeps the published protocol's 5-s windows
# and all 19 channels. Four EEGMAT subjects are the pretraining's validation probe (``benchmarks.folds``).
TASKS: tuple[TaskPlan, ...] = (
    TaskPlan("seizure", "bonn", "Bonn seizure (S vs Z/O/N/F)", ("non_seizure", "seizure"), folds=4),
    TaskPlan("sleep", "dreams", "DREAMS sleep (W/N1/N2/N3)", ("W", "N1", "N2", "N3"), folds=6),
    TaskPlan("motor_imagery", "eegmmidb_motor8", "EEGMMIDB S001 imagined left vs right fist (8 sensorimotor ch.)",
             ("left_fist", "right_fist"), folds=2),
    TaskPlan("emotion", "mental_stress", "Mental stress (horror vs relaxing), 4-s crops", ("calm", "stress"), folds=4,
             window_s=4.0),
    TaskPlan("eegmat", "eegmat", "EEGMAT rest vs mental arithmetic (19 ch., 5 s)", ("rest", "arithmetic"), folds=4,
             recipe="emotion", probe_pool=4),
)


@dataclass(frozen=True)
class Budget:
    """What one benchmark mode spends: pretraining steps and seeds, and how finetuning is scheduled.

    ``finetune_epochs`` / ``warmup_epochs`` / ``patience`` None = the recipe's own schedule (LaBraM's: 50 epochs,
    5 warm-up, patience 10).
    """

    seeds: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    probe_every: int
    finetune_epochs: int | None
    warmup_epochs: int | None
    patience: int | None
    batch_size: int
    eegnet_epochs: int
    eegnet_patience: int
    aligned_finetune: bool  # the subject-adaptive protocol's rows include the finetuned models (else probes and band power)
    # each corpus's weight in the pretraining mix is (its windows) ** this: 1 = every window equally likely; below 1
    # tempers the mix towards the small corpora (temperature sampling, as multilingual language models mix languages)
    pretrain_mix_power: float = 1.0
    # added to each seed's pretraining seed only: other pretraining randomness (initialisation, masks, data order)
    # with the same folds and finetuning seeds, so a rerun so offset measures how far pretraining noise alone moves
    # the paired differences
    pretrain_seed_offset: int = 0
    # longer pretraining crops (``DataConfig.longer_crops_s``): each window at the longest of 4 s and these it holds
    pretrain_longer_crops_s: tuple[float, ...] | None = None
    # the share of each set's recordings (by a stable hash of the recording id) the pretraining shards keep, after the
    # held-out groups are removed: below 1 measures how the features depend on the amount of pretraining data
    pretrain_data_fraction: float = 1.0


# the fields a stored run may lack (added since) with the value it ran at
BUDGET_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Budget) if f.default is not dataclasses.MISSING}

# The fast default takes about 50 minutes on a 2-core CPU (about 47 CPU-minutes of pretraining, ~40 of the rest);
# --full runs the recipes' schedule (many hours on a CPU). Pretraining longer did not help at this size: 4800
# steps probed no better than 2400 (the pretrain-4800-steps ablation).
FAST = Budget(seeds=3, pretrain_steps=2400, pretrain_batch=16, pretrain_lr=1e-3, probe_every=300, finetune_epochs=3,
              warmup_epochs=1, patience=3, batch_size=32, eegnet_epochs=30, eegnet_patience=8, aligned_finetune=False)
FULL = Budget(seeds=3, pretrain_steps=2400, pretrain_batch=16, pretrain_lr=1e-3, probe_every=300, finetune_epochs=None,
              warmup_epochs=None, patience=None, batch_size=64, eegnet_epochs=60, eegnet_patience=10, aligned_finetune=True)
