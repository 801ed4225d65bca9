"""Settings of a finetuning run: a frozen dataclass read from TOML + ``--key value`` overrides.

Hyper-parameters left at ``None`` take the recipe's default (``finetune/recipes/*.py``, LaBraM's
finetuning recipe unless the task needs otherwise), so ``--lr 1e-3`` changes one thing and the rest
stays the recipe's. Multi-task runs list their tasks either as ``--recipe seizure,sleep`` (all read from
``--data``; windows are told apart by their ``task`` field) or as ``[[tasks]]`` tables in a config file,
each with its own ``data``::

    recipe = ""          # unused when tasks are given
    checkpoint = "runs/pretrain/model"
    [[tasks]]
    recipe = "seizure"
    data = "data/shards/bonn"
    [[tasks]]
    recipe = "sleep"
    data = "data/shards/dreams"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from foundation.augment import AugmentConfig
from foundation.model import EEGMambaConfig
from foundation.readout import check_read_layer
from runtime.configfile import from_dict, option

__all__ = ["FinetuneConfig", "TaskSpec", "HYPER_FIELDS"]


@dataclass(frozen=True)
class TaskSpec:
    """One task of a (multi-task) run."""

    recipe: str = option("recipe name: seizure | sleep | emotion | motor_imagery", "")
    data: str = option("shards of this task (folder/glob/brace/pipe:); empty = the run's --data", "")
    classes: tuple[str, ...] = option("classes to use, in head order (empty = the recipe's, fitted to the data)", ())
    window_s: float | None = option("crop this task's windows to this many seconds (None = the run's window_s)", None)
    max_windows: int | None = option("keep at most this many of this task's windows (None = the run's max_windows)", None)


# Fields that override the recipe's Hyper when set (same names as finetune.recipes.base.Hyper).
HYPER_FIELDS = (
    "lr", "min_lr", "layer_decay", "weight_decay", "label_smoothing", "warmup_epochs", "epochs", "batch_size",
    "drop_path", "dropout", "grad_clip", "patience",
)


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``finetune/run.py`` needs; see ``--help`` for each key."""

    # --help groups: first field of a group -> its title.
    HELP_GROUPS: ClassVar[dict[str, str]] = {
        "recipe": "task, checkpoint and output", "model": "model", "extra_tasks": "data and split",
        "lr": "optimisation (None = the recipe's default)", "seed": "machinery",
    }

    recipe: str = option("recipe name, or several separated by commas for multi-task finetuning", "")
    checkpoint: str | None = option("pretrained EEGMamba: folder, shipped name (eegmamba-tiny-open) or Hub org/name[@rev]; none = from scratch", "")
    data: str = option("labelled shards (folder/glob/brace pattern/pipe: URL)", "")
    out: str = option("output folder (default runs/finetune-<recipe>-<time>)", "")
    tasks: tuple[TaskSpec, ...] = option("[[tasks]] tables: one per recipe, each with its own data", ())
    classes: tuple[str, ...] = option("single-recipe runs: classes in head order (e.g. left_hand,right_hand,feet,tongue)", ())

    # model
    model: EEGMambaConfig | None = field(default=None, metadata={"preset": "tiny", "help": (
        "the backbone's own config ([model] size = \"tiny\"|\"base\"|\"large\" + fields; a table without size "
        "starts from tiny). None: the checkpoint's, or tiny from scratch. With a checkpoint the fields you set "
        "(every field with size = ...) must agree with it (a mismatch is an error naming the field), except "
        "drop_path and scan_backend, which this run applies")})
    mode: Literal["finetune", "linear_probe"] = option(
        "finetune everything (from the probe's head, see head_init), or only fit the head on the frozen backbone", "finetune")
    pool: Literal["auto", "cls", "mean", "channels"] = option(
        "head input: one token mean per channel (keeps the montage), the mean of all tokens, or the class token "
        "(masked pretraining never trains it); auto = channels when every window has 2+ channels, else mean", "auto")
    gain: bool = option(
        "heads also read each channel's log RMS amplitude (the patch encoder normalises every window's gain away; "
        "within a dataset loudness is information, e.g. seizures)", True)
    read_layer: int | None = option(
        "the backbone layer heads read: its first read_layer BiMamba + MoE layers are kept, the rest dropped (-1 = the "
        "last, every layer kept); None = the middle layer, ceil(n_layers / 2), of a pretrained checkpoint or a fresh "
        "backbone, and every layer of a finetuned model (already cut). Masked pretraining turns the top layers into a "
        "decoder of hidden spectra; the benchmark's probes read the middle layer better", None)
    head_init: Literal["auto", "probe", "random"] = option(
        "probe: the head starts as a logistic regression fitted on the frozen features (LP-FT); random: small random "
        "weights; auto = probe from a pretrained checkpoint, random from scratch (random features are no start)", "auto")
    probe_margin: float = option(
        "LP-FT selection: a finetuned epoch replaces the probe only when its validation score beats the probe's by "
        "more than this many standard errors of the probe's score (0 = the best validation epoch)", 1.0)
    calibrate: bool = option("binary tasks: choose the decision threshold on validation (stored with the model)", True)
    align: Literal["none", "euclidean"] = option(
        "subject-adaptive input: euclidean = whiten each subject's windows by the inverse square root of their mean "
        "channel covariance (He & Wu 2019; prediction aligns each recording by its own)", "none")
    feature_norm: Literal["training", "subject"] = option(
        "what the head standardises its features with: the training split's statistics, or (subject; linear_probe "
        "mode only) each subject's own frozen features, so a subject's offset and scale never reach the classifier "
        "(prediction standardises each recording by its own windows)", "training")

    # data and split
    extra_tasks: tuple[str, ...] = option(
        "further shard task strings read with the recipe's labels, e.g. [\"motor_execution\"] for EEGMMIDB's real movements", ()
    )
    channels: tuple[str, ...] = option("canonical channels to keep, in order (empty = the recipe's / all in the shards)", ())
    window_s: float | None = option("crop windows to this many seconds (None = the recipe's / the shards')", None)
    split: Literal["kfold", "shards", "published"] = option(
        "kfold: group k-fold by subject/recording (fold = test); shards: the train/val/test split the shards were built with; "
        "published: the corpus's fixed split from the literature (EEGMAT: subjects 00-27/28-31/32-35; needs all of them)",
        "kfold",
    )
    fold: int = option("which fold is the test set (validation = the next fold)", 0)
    test_groups: tuple[str, ...] = option(
        "kfold with a fixed test set: these groups (corpus/subject or corpus/recording) test, the others are "
        "split into train/val by --fold; e.g. a pool held out of pretraining", ())
    val_groups: tuple[str, ...] = option("with test_groups: fixed validation groups (default: a group fold of the rest)", ())
    n_folds: int | None = option("k of the group k-fold (None = the recipe's)", None)
    max_windows: int | None = option("keep at most this many windows per task (evenly spaced; for quick trials)", None)

    # optimisation: None = the recipe's default
    lr: float | None = option("peak learning rate of the top layer and head", None)
    min_lr: float | None = option("learning rate at the end of the cosine", None)
    layer_decay: float | None = option("layer-wise LR decay (LaBraM 0.65; 1 = none)", None)
    weight_decay: float | None = option("AdamW weight decay", None)
    label_smoothing: float | None = option("cross-entropy label smoothing", None)
    warmup_epochs: int | None = option("linear warm-up epochs", None)
    epochs: int | None = option("maximum epochs", None)
    batch_size: int | None = option("windows per batch per process", None)
    drop_path: float | None = option("stochastic depth of the backbone while finetuning", None)
    dropout: float | None = option("dropout before the head's linear layer", None)
    grad_clip: float | None = option("gradient-norm clip (0 = off)", None)
    patience: int | None = option("epochs without a better validation metric before stopping", None)
    class_weights: bool = option("weight the loss by inverse class frequency of the training split", True)
    aux_loss_weight: float = option("weight of the MoE auxiliary (load-balance) loss", 1.0)
    augment: AugmentConfig = option(
        "training-time augmentation ([augment]: channel_dropout, gain_range, channel_gain_std, time_shift_s; off by default)",
        factory=AugmentConfig)

    # machinery
    seed: int = option("seed of the split, the initialisation and the batch order", 0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option("auto = bf16 on GPU, fp32 on CPU", "auto")
    eval_batch_size: int | None = option("windows per evaluation batch (None = 2 x batch_size)", None)
    progress: bool = option("show tqdm progress bars on the main process", True)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # from Python: a mapping reads like a TOML [model] table
            object.__setattr__(self, "model", from_dict(EEGMambaConfig, dict(self.model), base=EEGMambaConfig.from_size("tiny"),
                                                        where="model"))
        if not (isinstance(self.probe_margin, (int, float)) and self.probe_margin >= 0):
            raise ValueError(f"probe_margin must be a number >= 0 (standard errors), got {self.probe_margin!r}")
        check_read_layer(self.read_layer)

    def hyper_overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HYPER_FIELDS if getattr(self, k) is not None}

    def task_specs(self) -> tuple[TaskSpec, ...]:
        """The tasks of this run, from ``tasks`` or from ``recipe`` (+ ``classes`` for a single recipe).

        Raises:
            ValueError: naming what is missing or contradictory.
        """
        if self.tasks:
            if self.recipe and self.recipe != ",".join(t.recipe for t in self.tasks):
                raise ValueError(f"give either recipe={self.recipe!r} or [[tasks]] tables, not both")
            specs = tuple(t if t.data else dataclasses.replace(t, data=self.data) for t in self.tasks)
        else:
            names = [n.strip() for n in self.recipe.split(",") if n.strip()]
            if not names:
                raise ValueError("no recipe: pass --recipe seizure|sleep|emotion|motor_imagery (or a,b for multi-task)")
            if self.classes and len(names) > 1:
                raise ValueError("--classes applies to a single recipe; use [[tasks]] tables with classes for multi-task runs")
            specs = tuple(TaskSpec(recipe=n, data=self.data, classes=self.classes) for n in names)
        seen = set()
        for t in specs:
            if not t.recipe:
                raise ValueError("a [[tasks]] table has no recipe")
            if t.recipe in seen:
                raise ValueError(f"recipe {t.recipe!r} is listed twice")
            seen.add(t.recipe)
            if not t.data:
                raise ValueError(f"no data for recipe {t.recipe!r}: pass --data SHARDS or give the [[tasks]] table a data path")
        return specs
