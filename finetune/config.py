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
    data = "shards/bonn"
    [[tasks]]
    recipe = "sleep"
    data = "shards/dreams"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FinetuneConfig", "TaskSpec", "HYPER_FIELDS"]


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field whose ``help`` shows up in ``--help``."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TaskSpec:
    """One task of a (multi-task) run."""

    recipe: str = _help("recipe name: seizure | sleep | emotion | motor_imagery", "")
    data: str = _help("shards of this task (folder/glob/brace/pipe:); empty = the run's --data", "")
    classes: tuple[str, ...] = _help("classes to use, in head order (empty = the recipe's, fitted to the data)", ())


# Fields that override the recipe's Hyper when set (same names as finetune.recipes.base.Hyper).
HYPER_FIELDS = (
    "lr", "min_lr", "layer_decay", "weight_decay", "label_smoothing", "warmup_epochs", "epochs", "batch_size",
    "drop_path", "dropout", "grad_clip", "patience",
)


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``finetune/run.py`` needs; see ``--help`` for each key."""

    recipe: str = _help("recipe name, or several separated by commas for multi-task finetuning", "")
    checkpoint: str | None = _help("pretrained EEGMamba folder (save_pretrained), or none = train from scratch", "")
    data: str = _help("labelled shards (folder/glob/brace pattern/pipe: URL)", "")
    out: str = _help("output folder (default runs/finetune-<recipe>-<time>)", "")
    tasks: tuple[TaskSpec, ...] = _help("[[tasks]] tables: one per recipe, each with its own data", ())
    classes: tuple[str, ...] = _help("single-recipe runs: classes in head order (e.g. left_hand,right_hand,feet,tongue)", ())

    # model
    size: Literal["tiny", "base", "large"] = _help("backbone size when training from scratch", "tiny")
    model: dict = _help(
        "EEGMambaConfig fields (e.g. {d_model = 64}): from scratch they override the size preset; with a "
        "checkpoint they must agree with it (a mismatch is an error)",
        factory=dict,
    )
    mode: Literal["finetune", "linear_probe"] = _help("finetune everything, or train only the head on a frozen backbone", "finetune")
    pool: Literal["cls", "mean"] = _help("head input: the class token or the mean of the tokens", "cls")

    # data and split
    extra_tasks: tuple[str, ...] = _help(
        "further shard task strings read with the recipe's labels, e.g. [\"motor_execution\"] for EEGMMIDB's real movements", ()
    )
    channels: tuple[str, ...] = _help("canonical channels to keep, in order (empty = the recipe's / all in the shards)", ())
    window_s: float | None = _help("crop windows to this many seconds (None = the recipe's / the shards')", None)
    split: Literal["kfold", "shards", "published"] = _help(
        "kfold: group k-fold by subject/recording (fold = test); shards: the train/val/test split the shards were built with; "
        "published: the corpus's fixed split from the literature (EEGMAT: subjects 00-27/28-31/32-35; needs all of them)",
        "kfold",
    )
    fold: int = _help("which fold is the test set (validation = the next fold)", 0)
    n_folds: int | None = _help("k of the group k-fold (None = the recipe's)", None)
    max_windows: int | None = _help("keep at most this many windows per task (evenly spaced; for quick trials)", None)

    # optimisation: None = the recipe's default
    lr: float | None = _help("peak learning rate of the top layer and head", None)
    min_lr: float | None = _help("learning rate at the end of the cosine", None)
    layer_decay: float | None = _help("layer-wise LR decay (LaBraM 0.65; 1 = none)", None)
    weight_decay: float | None = _help("AdamW weight decay", None)
    label_smoothing: float | None = _help("cross-entropy label smoothing", None)
    warmup_epochs: int | None = _help("linear warm-up epochs", None)
    epochs: int | None = _help("maximum epochs", None)
    batch_size: int | None = _help("windows per batch per process", None)
    drop_path: float | None = _help("stochastic depth of the backbone while finetuning", None)
    dropout: float | None = _help("dropout before the head's linear layer", None)
    grad_clip: float | None = _help("gradient-norm clip (0 = off)", None)
    patience: int | None = _help("epochs without a better validation metric before stopping", None)
    class_weights: bool = _help("weight the loss by inverse class frequency of the training split", True)
    aux_loss_weight: float = _help("weight of the MoE auxiliary (load-balance) loss", 1.0)

    # machinery
    seed: int = _help("seed of the split, the initialisation and the batch order", 0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = _help("auto = bf16 on GPU, fp32 on CPU", "auto")
    eval_batch_size: int | None = _help("windows per evaluation batch (None = 2 x batch_size)", None)
    progress: bool = _help("show tqdm progress bars on the main process", True)

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
