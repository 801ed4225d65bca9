"""The finetuning loop on ``runtime.engine``: data -> split -> model -> AdamW + warm-up/cosine -> early stopping.

``finetune(config)`` runs one (single- or multi-task) finetuning and returns its results; it is what
``finetune/run.py`` calls under ``accelerate launch``. Before the first step each head is fitted as a
logistic regression on the frozen backbone's features (``finetune.probe``, LP-FT; ``head_init="random"``
skips the fit but keeps the feature standardisation), and that probe is the first candidate model (epoch
-1). Per epoch it trains on :class:`TaskBatches`, evaluates every task's validation split
(``accelerator.gather_for_metrics``, so padded duplicates of the last distributed batch are dropped), and
keeps the weights with the best mean selection score across tasks (``finetune.metrics.selection_score``:
AUROC, which ranks windows and so cannot prefer a constant predictor; ties go to the lower validation loss;
an epoch whose validation probabilities barely move never wins over one whose do, since on a few windows its
ties can rank them perfectly by chance). The probe stays the model unless a finetuned epoch beats its
validation score by more than ``probe_margin`` standard errors (``finetune.metrics.selection_se``: the larger of
the window-level error and a bootstrap over the validation subjects, or over blocks of the one validation
recording; of the probe's score or the epoch's, whichever is larger): on a few validation windows or subjects
the best epoch is mostly the luckiest one, and finetuning that only looks better there ended below its own probe on
test. ``patience`` epochs without a higher validation score stop the run.
Binary heads then take the decision threshold that maximises validation balanced accuracy
(``calibrate``), and the best weights are evaluated on the validation and held-out test splits and saved
with their recipe, threshold and metrics. A linear-probe run (``mode="linear_probe"``) is the probe alone; with
``feature_norm="subject"`` the probe reads each window's features standardised by its subject's own statistics
(``subject_features``), and its evaluation loaders carry those features instead of windows.
Warnings (printed and kept in the report) say when validation is too small to select on and when the
warm-up is longer than the run.

Outputs in ``out``::

    model/            config.json, model.safetensors, recipe.json, metrics.json (finetune.model)
    report.json, report.md, confusion_<task>_<split>.png   (finetune.report)
    learning_curves.png   loss, validation metrics and learning rate over the run (finetune.curves)
    logs/             TensorBoard events: train/loss and train/lr per step, val/... per epoch
    log.jsonl         one line per epoch: train loss, learning rate, validation metrics
    config.json       the resolved FinetuneConfig
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm

from finetune.align import align_groups, standardize_groups
from finetune.config import FinetuneConfig
from finetune.contract import conform_tasks
from finetune.curves import RunCurves
from finetune.data import TaskBatches, TaskData, WindowList, batch_tensors, class_weights, load_task_data
from finetune.heads import param_groups
from finetune.metrics import (MIN_VAL_WINDOWS, choose_threshold, classification_metrics, is_constant_predictor, responds,
                              selection_score, selection_se)
from finetune.model import TaskModel, load_backbone, reading_layer
from finetune.probe import fit_probe, task_features
from finetune.recipes import get_recipe
from finetune.recipes.base import Hyper, merge_hyper
from finetune.report import json_safe, write_report
from finetune.splits import Split, group_names, published_split, split_windows, subject_groups
from foundation.augment import augment
from foundation.ssm import selective_scan_backend
from runtime import run_folder
from runtime.atomic import LinkedPathError, atomic_write_text
from runtime.config_dict import given_keys
from runtime.configfile import to_dict
from runtime.engine import (
    NonFiniteLossError,
    check_finite,
    check_model,
    clip_and_check,
    log_scan_backend,
    make_accelerator,
    make_scheduler,
)
from runtime.folder_lock import FolderLockedError
from runtime.signal import SFREQ
from shards.dataset import load_windows
from shards.vocabulary import channel_id

__all__ = ["finetune", "evaluate", "shard_split"]

ADVICE = "Lower --lr or raise --warmup_epochs."


def shard_split(data: TaskData) -> Split:
    """The train/val/test split the shards were built with (from their manifests), by recording."""
    sides: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    unknown = set()
    for i, m in enumerate(data.metas):
        key = f"{m.get('corpus')}/{m.get('recording')}"
        side = data.shard_splits.get(key)
        if side not in sides:
            unknown.add(key)
            continue
        sides[side].append(i)
    if unknown:
        raise ValueError(f"split='shards': {len(unknown)} recordings of {data.source} are not in a manifest's splits, e.g. {sorted(unknown)[:3]}")
    for side in ("train", "val"):
        if not sides[side]:
            raise ValueError(f"split='shards': the shards of {data.source} have no {side} windows for {data.recipe.name!r}; use split='kfold'")
    groups = {s: tuple(sorted({f"{data.metas[i]['corpus']}/{data.metas[i]['recording']}" for i in idx})) for s, idx in sides.items()}
    return Split(*(np.asarray(sides[s], dtype=np.int64) for s in ("train", "val", "test")), group_key="shards", fold=0, n_folds=1, groups=groups,
                 val_protocol="the shards' own train/val/test assignment")


@torch.no_grad()
def evaluate(model, loader, task: str, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true [n], proba [n, k])`` of ``task`` over a prepared DataLoader (of windows, or of head features
    ``{"features", "label"}``), gathered from all ranks."""
    model.eval()
    ys, ps = [], []
    for batch in loader:
        with accelerator.autocast():
            if "features" in batch:  # a feature_norm="subject" probe: features standardised per subject beforehand
                logits = accelerator.unwrap_model(model).head_logits(batch["features"], task)
            else:
                logits, _ = model(batch["x"], batch["channel_ids"], batch["channel_mask"], task)
        proba = F.softmax(logits.float(), dim=-1)
        proba, y = accelerator.gather_for_metrics((proba, batch["label"]))
        ps.append(proba.cpu())
        ys.append(y.cpu())
    return torch.cat(ys).numpy(), torch.cat(ps).numpy()


def _default_out(config: FinetuneConfig, names: list[str]) -> str:
    return config.out or f"runs/finetune-{'+'.join(names)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_lengths(tasks: Mapping[str, TaskData], backbone_cfg) -> None:
    for name, data in tasks.items():
        t = data.n_samples
        if t % backbone_cfg.patch_size or t // backbone_cfg.patch_size > backbone_cfg.max_patches:
            raise ValueError(
                f"recipe {name!r}: windows of {t} samples do not fit the backbone (patch_size={backbone_cfg.patch_size}, "
                f"max_patches={backbone_cfg.max_patches}); set window_s to a whole number of seconds of at most "
                f"{backbone_cfg.max_patches * backbone_cfg.patch_size / SFREQ:g} s"
            )


def load_tasks(config: FinetuneConfig) -> tuple[dict[str, TaskData], Hyper]:
    """Each task's labelled windows (shards read once per folder) and the run's hyper-parameters.

    One optimiser for all tasks: the first recipe's defaults (all recipes share LaBraM's) + overrides.
    """
    specs = config.task_specs()
    cache: dict[str, list] = {}
    tasks: dict[str, TaskData] = {}
    for spec in specs:
        recipe = get_recipe(spec.recipe)
        if spec.data not in cache:
            cache[spec.data] = load_windows(spec.data)
        tasks[recipe.name] = load_task_data(
            recipe, spec.data, classes=spec.classes, window_s=config.window_s if spec.window_s is None else spec.window_s,
            channels=config.channels, extra_tasks=config.extra_tasks, windows=cache[spec.data],
            max_windows=config.max_windows if spec.max_windows is None else spec.max_windows)
    if config.align == "euclidean":
        for data in tasks.values():
            data.windows = align_groups(data.windows, subject_groups(data.metas))
    hyper: Hyper = merge_hyper(tasks[specs[0].recipe].recipe.hyper, config.hyper_overrides())
    for key in ("epochs", "batch_size", "patience"):
        if getattr(hyper, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(hyper, key)}")
    if hyper.lr <= 0:
        raise ValueError(f"lr must be > 0, got {hyper.lr}")
    return tasks, hyper


def make_split(config: FinetuneConfig, data: TaskData) -> Split:
    if config.split == "shards":
        return shard_split(data)
    if config.split == "published":
        return published_split(data.metas)
    return split_windows(data.metas, data.labels, group_by=data.recipe.group_by,
                         n_folds=config.n_folds or data.recipe.n_folds, fold=config.fold, seed=config.seed,
                         test_groups=config.test_groups, val_groups=config.val_groups)


def backbone_overrides(config: FinetuneConfig, checkpoint: str | None) -> dict[str, Any]:
    """The ``[model]`` fields ``load_backbone`` builds (from scratch) or holds the checkpoint to (with one).

    With a checkpoint only the fields the user set count (``runtime.config_dict.given_keys``; every
    field after ``size = ...``), not the tiny preset a one-key table was filled in from. ``drop_path`` is
    the recipe's business (``Hyper.drop_path``).
    """
    overrides = {} if config.model is None else config.model.to_dict()
    given = given_keys(config.model)
    if checkpoint is not None and given is not None:
        overrides = {k: v for k, v in overrides.items() if k in given}
    overrides.pop("drop_path", None)
    return overrides


def build_model(config: FinetuneConfig, tasks: Mapping[str, TaskData], hyper: Hyper, checkpoint: str | None,
                announce: bool) -> tuple[TaskModel, dict[str, Any], Any]:
    """The backbone (from ``checkpoint`` or fresh) with one head per task, where the backbone came from, and the
    input contract the model is saved with (the tasks' windows are converted to the checkpoint's, in place)."""
    backbone, provenance = load_backbone(checkpoint, model_overrides=backbone_overrides(config, checkpoint),
                                         drop_path=hyper.drop_path if config.mode == "finetune" else None)
    backbone = reading_layer(backbone, config.read_layer, provenance)
    layers = provenance["layers"]
    if announce and layers["read"] < layers["of"]:
        print(f"finetune: heads read layer {layers['read']} of the backbone's {layers['of']} (read_layer; -1 = the "
              f"last), the layers above are dropped", file=sys.stderr, flush=True)
    contract = conform_tasks(provenance.get("checkpoint"), tasks, announce=announce)
    _check_lengths(tasks, backbone.config)
    heads = {name: {"n_classes": d.recipe.n_classes, "task_id": d.recipe.task_id, "classes": list(d.recipe.classes),
                    "norm": "standard", "feature_norm": config.feature_norm,
                    **head_input(config.pool, d, backbone.config.adapter, gain=config.gain)}
             for name, d in tasks.items()}
    return TaskModel(backbone, heads, dropout=hyper.dropout, mode=config.mode), provenance, contract


def head_input(pool: str, data: TaskData, adapter: str, *, gain: bool) -> dict[str, Any]:
    """``{"pool", "channels", "gain"}`` of a task's head. ``auto``: one token mean per channel when every window has
    two or more channels (and the adapter makes per-channel tokens), else the mean of all tokens. The channel list
    is every channel of the task's windows, in vocabulary order, so a head does not depend on the order a file
    stored its channels in."""
    names = {c for w in data.windows for c in w.meta.get("channels", ())}
    multi = all(len(w.meta.get("channels", ())) >= 2 for w in data.windows)
    if pool == "auto":
        pool = "channels" if multi and adapter == "channel_patch" else "mean"
    channels = sorted(names, key=channel_id) if pool == "channels" else []
    return {"pool": pool, "channels": channels, "gain": bool(gain)}


def task_losses(config: FinetuneConfig, tasks: Mapping[str, TaskData], splits: Mapping[str, Split], hyper: Hyper,
                device: torch.device) -> tuple[dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    """Cross-entropy per task (label smoothing, inverse-frequency class weights of the training split)."""
    weights = {}
    for name, data in tasks.items():
        counts = data.class_counts(splits[name].train)
        if min(counts) == 0:  # unweighted runs still cannot learn an absent class
            raise ValueError(f"recipe {name!r}: class(es) with no training window: {dict(zip(data.recipe.classes, counts))}")
        weights[name] = class_weights(counts, data.recipe.classes) if config.class_weights else torch.ones(len(counts))
    losses = {n: torch.nn.CrossEntropyLoss(weight=w.to(device), label_smoothing=hyper.label_smoothing) for n, w in weights.items()}
    return losses, weights


@dataclasses.dataclass
class Fit:
    """The prepared pieces of a run and what the loop learns about it."""

    model: TaskModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_windows: dict[str, list]
    losses: dict[str, torch.nn.Module]
    val_loaders: dict[str, Any]
    test_loaders: dict[str, Any]
    warmup_steps: int
    total_steps: int
    step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_score: tuple[bool, float, float] = (False, -math.inf, -math.inf)
    best_se: float = 0.0  # standard error of the kept epoch's selection score
    best_epoch: int = -2
    top_score: tuple[bool, float, float] = (False, -math.inf, -math.inf)  # the best of any epoch: patience
    best_state: dict[str, torch.Tensor] | None = None
    predictions: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # test outputs, one process only
    val_groups: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # each validation window's group


def prepare_fit(config: FinetuneConfig, model: TaskModel, tasks, splits, hyper: Hyper, losses,
                acc: Accelerator, subject_features: Mapping[str, np.ndarray] | None = None) -> Fit:
    """Optimiser (layer-wise LR decay), warm-up + cosine over the whole run, prepared model and loaders
    (of windows; of each window's subject-standardised features with ``subject_features``)."""
    groups = param_groups(model, lr=hyper.lr, weight_decay=hyper.weight_decay, n_layers=model.backbone.config.n_layers,
                          layer_decay=hyper.layer_decay if config.mode == "finetune" else 1.0)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=hyper.lr,
                                  betas=hyper.betas)
    train_windows = {name: [d.windows[i] for i in splits[name].train] for name, d in tasks.items()}
    steps_per_epoch = len(TaskBatches(train_windows, hyper.batch_size, seed=config.seed, epoch=0,
                                      rank=acc.process_index, world_size=acc.num_processes))
    if steps_per_epoch == 0:
        raise ValueError(f"no training batch: {sum(map(len, train_windows.values()))} training windows over "
                         f"{acc.num_processes} processes")
    total_steps = steps_per_epoch * hyper.epochs
    # A warm-up longer than half the run (short trials) would leave no room for the decay.
    warmup_steps = min(hyper.warmup_epochs * steps_per_epoch, total_steps // 2)
    scheduler = make_scheduler(optimizer, warmup_steps, total_steps, min(hyper.min_lr / hyper.lr, 1.0))
    model, optimizer = acc.prepare(model, optimizer)
    eval_bs = config.eval_batch_size or 2 * hyper.batch_size

    def loader(name: str, rows: np.ndarray):
        data = tasks[name]
        if subject_features is not None:
            pairs = torch.utils.data.TensorDataset(torch.from_numpy(subject_features[name][rows]).float(),
                                                   torch.from_numpy(np.asarray(data.labels)[rows]).long())
            return acc.prepare(torch.utils.data.DataLoader(pairs, batch_size=eval_bs, shuffle=False,
                                                           collate_fn=_feature_batch))
        return acc.prepare(torch.utils.data.DataLoader(WindowList([data.windows[i] for i in rows]), batch_size=eval_bs,
                                                       shuffle=False, collate_fn=batch_tensors))

    return Fit(model, optimizer, scheduler, train_windows, losses,
               val_loaders={n: loader(n, splits[n].val) for n in tasks},
               test_loaders={n: loader(n, splits[n].test) for n in tasks if splits[n].test.size},
               warmup_steps=warmup_steps, total_steps=total_steps,
               val_groups={n: np.asarray(split_groups(tasks[n], splits[n], "val")) for n in tasks})


def split_groups(data: TaskData, split: Split, side: str) -> list[str]:
    """The group (``corpus/subject``, else ``corpus/recording``) of each window of one side of ``split``, in split
    order."""
    key = split.group_key if split.group_key in ("subject", "recording") else "recording"
    return group_names([data.metas[i] for i in getattr(split, side)], key)


def _feature_batch(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"features": torch.stack([f for f, _ in pairs]), "label": torch.stack([y for _, y in pairs])}


def subject_features(model: TaskModel, tasks: Mapping[str, TaskData], batch_size: int,
                     device: torch.device) -> dict[str, np.ndarray]:
    """Per task ``[n, in_features]``: every window's frozen features, standardised by the statistics of its subject's
    windows (``finetune.align.standardize_groups``; groups as ``align`` uses them: subjects, else recordings).
    A subject's windows in any split count (no label is used), as prediction standardises a new recording by all of
    its own windows."""
    return {name: standardize_groups(task_features(model, data.windows, name, batch_size=batch_size, device=device),
                                     subject_groups(data.metas))
            for name, data in tasks.items()}


def train_epoch(fit: Fit, config: FinetuneConfig, hyper: Hyper, epoch: int, acc: Accelerator,
                curves: RunCurves | None = None, bar: tqdm | None = None) -> float:
    """One pass over the interleaved task batches; returns the mean training loss. Each step's loss and learning
    rate go to ``curves``, and ``bar`` moves one step per batch."""
    fit.model.train()
    batches = TaskBatches(fit.train_windows, hyper.batch_size, seed=config.seed, epoch=epoch,
                          rank=acc.process_index, world_size=acc.num_processes)
    total, count = 0.0, 0
    multitask = len(fit.train_windows) > 1
    for task, batch in batches:
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        x, channel_mask = augment(batch["x"], batch["channel_mask"], config.augment)
        with acc.autocast():
            logits, aux = fit.model(x, batch["channel_ids"], channel_mask, task)
        loss = fit.losses[task](logits.float(), batch["label"]) + config.aux_loss_weight * aux.float()
        what = f"at epoch {epoch}, step {fit.step + 1} (task {task!r})"
        advice = f"Stopped before the optimiser step; no model was written. {ADVICE}"
        check_finite(acc, {"loss": loss}, what=what, advice=advice)
        acc.backward(loss)
        clip_and_check(acc, fit.model, hyper.grad_clip, what=what, advice=advice)
        lr = fit.optimizer.param_groups[-1]["lr"]  # the rate this step uses (the top layer and head)
        fit.optimizer.step()
        fit.scheduler.step()
        fit.optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        total += value
        count += 1
        fit.step += 1
        if curves is not None:
            curves.step(fit.step, epoch, task, value, lr, multitask=multitask)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{total / count:.3f}", refresh=False)
    return total / max(count, 1)


def validate(fit: Fit, tasks: Mapping[str, TaskData], acc: Accelerator,
             epoch: int) -> tuple[tuple[bool, float, float], dict[str, dict], float]:
    """``(responsive, mean selection score, minus mean validation loss)`` over the tasks, every task's metrics, and
    the standard error of the mean selection score (the tasks' errors taken as independent).

    ``responsive``: every task's validation probabilities move (``finetune.metrics.responds``). On a handful of
    validation windows a model whose outputs barely depend on its input (a fresh head from scratch) can rank them
    perfectly by chance; selection never prefers such an epoch to one that responds.

    Raises:
        NonFiniteLossError: the model's outputs are NaN/inf (the same on every rank: they are gathered).
    """
    val, se = {}, {}
    for name, dl in fit.val_loaders.items():
        y, p = evaluate(fit.model, dl, name, acc)
        if not np.isfinite(p).all():
            raise NonFiniteLossError(f"non-finite value in the validation outputs of task {name!r} after epoch {epoch}: "
                                     f"the weights diverged. Stopped; no model was written. {ADVICE}")
        val[name] = classification_metrics(y, p, n_classes=tasks[name].recipe.n_classes)
        groups = fit.val_groups.get(name)
        # the outputs come back in split order (ordered, unshuffled loaders; gathered in rank order)
        se[name] = selection_se(y, p, val[name], groups if groups is not None and len(groups) == len(y) else None)
    score = float(np.mean([selection_score(val[n]) for n in tasks]))
    responsive = all(responds(val[n]) for n in tasks)
    mean_se = math.sqrt(sum(se[n] ** 2 for n in tasks)) / len(tasks)
    return (responsive, score, -float(np.mean([val[n]["nll"] for n in tasks]))), val, mean_se


def improves(score: tuple[bool, float, float], best: tuple[bool, float, float], margin: float = 0.0) -> bool:
    """Whether ``score`` beats ``best``: a responsive epoch beats one that is not; then a selection score higher by
    more than ``margin``; with no margin, scores equal within 1e-9 go to the lower validation loss."""
    responsive, value, loss = score
    best_responsive, best_value, best_loss = best
    if responsive != best_responsive:
        return responsive
    if margin > 0:
        return value > best_value + margin
    if abs(value - best_value) > 1e-9:
        return value > best_value
    return loss > best_loss


def keep_if_best(fit: Fit, epoch: int, score: tuple[bool, float, float], se: float, acc: Accelerator,
                 probe_margin: float = 0.0) -> bool:
    """Keep ``epoch``'s weights when they beat the kept ones (``improves``); while the kept model is the probe
    (epoch -1 of an LP-FT run, ``probe_margin > 0``), only by more than ``probe_margin`` standard errors: the larger
    of the probe's score's and the epoch's (``se``), since an epoch whose score is noisier than the probe's is not
    shown better by less than its own noise. Applied in epoch order this keeps the best finetuned epoch if it beats
    the probe by that much, else the probe. True when ``epoch`` was kept."""
    margin = probe_margin * max(fit.best_se, se) if fit.best_epoch == -1 else 0.0
    if not improves(score, fit.best_score, margin):
        return False
    fit.best_score, fit.best_se, fit.best_epoch = score, se, epoch
    fit.best_state = {k: v.detach().to("cpu", copy=True) for k, v in acc.unwrap_model(fit.model).state_dict().items()}
    return True


def start_heads(model: TaskModel, config: FinetuneConfig, tasks: Mapping[str, TaskData], splits: Mapping[str, Split],
                hyper: Hyper, device: torch.device,
                subject_features: Mapping[str, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
    """Standardise every head's input with its training features, and (``head_init="probe"``, or any linear-probe
    run) fit it as a logistic regression on the frozen features (``finetune.probe``); returns per task the probe's
    C and validation scores. ``subject_features``: per task every window's features already standardised by
    its subject (``feature_norm="subject"``), which the probe is fitted on. Runs where the model is still
    unprepared, on the main process (DDP broadcasts rank 0's weights and buffers to the others at ``prepare``)."""
    info = {}
    batch = config.eval_batch_size or 2 * hyper.batch_size
    for name, data in tasks.items():
        split = splits[name]
        head = model.heads[name]
        standardized = None if subject_features is None else subject_features[name]
        f_train = _probe_features(model, data, name, split.train, standardized, batch, device)
        if head_init(config) == "random" and config.mode == "finetune":
            std = f_train.std(0)
            head.set_statistics(torch.from_numpy(f_train.mean(0)), torch.from_numpy(np.where(std > 1e-6, std, 1.0)))
            info[name] = {"head_init": "random"}
            continue
        f_val = _probe_features(model, data, name, split.val, standardized, batch, device)
        probe = fit_probe(f_train, data.labels[split.train], f_val, data.labels[split.val], data.recipe.n_classes,
                          seed=config.seed)
        head.set_statistics(torch.from_numpy(probe.mean), torch.from_numpy(probe.std))
        head.set_linear(torch.from_numpy(probe.weight), torch.from_numpy(probe.bias))
        info[name] = {"head_init": "probe", "C": probe.C, "val_scores": {str(c): v for c, v in probe.scores.items()}}
    return info


def _probe_features(model: TaskModel, data: TaskData, task: str, rows: np.ndarray, standardized: np.ndarray | None,
                    batch_size: int, device: torch.device) -> np.ndarray:
    """``[len(rows), in_features]``: the frozen features of those windows, or their rows of ``standardized``
    (every window's features standardised by subject) where the run standardises by subject."""
    if standardized is not None:
        return standardized[rows]
    return task_features(model, [data.windows[i] for i in rows], task, batch_size=batch_size, device=device)


def head_init(config: FinetuneConfig) -> str:
    """``config.head_init`` with ``auto`` resolved: the probe's head from a pretrained checkpoint (LP-FT), a small
    random one from scratch (a probe of random features is no better a start, and its large weights push the
    first steps around: on 12 Bonn segments it cost 0.18 test AUROC)."""
    if config.head_init != "auto":
        return config.head_init
    return "random" if config.checkpoint in (None, "none") else "probe"


# Below these, a validation set cannot tell a better model from noise: model selection and the threshold
# are then little more than a coin toss (the run goes on, and says so).
MIN_VAL_GROUPS = 2


def run_warnings(tasks: Mapping[str, TaskData], splits: Mapping[str, Split], hyper: Hyper, mode: str) -> list[str]:
    """What the user should know before trusting this run: windows of the data left out (labels the recipe does not
    use, missing channels), validation too small to select on, a class missing from validation, a warm-up longer
    than the run."""
    out = []
    for name, data in tasks.items():
        for corpus, why in data.left_out_by_corpus.items():
            out.append(f"task {name!r}: {sum(why.values())} window(s) of corpus {corpus!r} left out ("
                       + ", ".join(f"label {k} x{v}" if not k.startswith("missing") else f"{k} x{v}" for k, v in why.items())
                       + f"); the recipe's classes are {list(data.recipe.classes)}")
        split = splits[name]
        val_groups = len(split.groups.get("val", ())) if split.groups else None
        counts = data.class_counts(split.val)
        if len(split.val) < MIN_VAL_WINDOWS or (val_groups is not None and val_groups < MIN_VAL_GROUPS):
            out.append(f"task {name!r}: validation holds {len(split.val)} windows"
                       + (f" from {val_groups} {split.group_key}(s)" if val_groups is not None else "")
                       + f"; model selection and the decision threshold need at least {MIN_VAL_WINDOWS} windows from "
                         f"{MIN_VAL_GROUPS} {split.group_key}s to be more than noise"
                       + (f" (with fewer than {MIN_VAL_WINDOWS} windows a binary task decides at 0.5)"
                          if len(split.val) < MIN_VAL_WINDOWS and data.recipe.n_classes == 2 else ""))
        if min(counts) == 0:
            absent = [c for c, n in zip(data.recipe.classes, counts) if n == 0]
            out.append(f"task {name!r}: validation has no window of class(es) {absent}; selection falls back to "
                       "balanced accuracy and the threshold is not calibrated")
    if mode == "finetune" and hyper.warmup_epochs >= hyper.epochs:
        out.append(f"warm-up ({hyper.warmup_epochs} epochs) is as long as the run ({hyper.epochs} epochs): the learning "
                   "rate never reaches its peak; lower warmup_epochs or raise epochs")
    return out


def final_results(fit: Fit, tasks: Mapping[str, TaskData], splits: Mapping[str, Split],
                  weights: Mapping[str, torch.Tensor], acc: Accelerator, calibrate: bool = True) -> dict[str, Any]:
    """Validation and test metrics of the best weights, with each task's split, class statistics and decision
    threshold (binary tasks with ``calibrate``: the one that maximises validation balanced accuracy)."""
    model = acc.unwrap_model(fit.model)
    model.load_state_dict(fit.best_state)
    check_model(acc, fit.model, what=f"in the weights of the best epoch ({fit.best_epoch})",
                advice=f"No model was written. {ADVICE}")
    results: dict[str, Any] = {}
    for name, data in tasks.items():
        per_split = {}
        y_val, p_val = evaluate(fit.model, fit.val_loaders[name], name, acc)
        threshold = choose_threshold(y_val, p_val) if calibrate else None
        model.set_threshold(name, threshold)
        for side, loaders in (("val", fit.val_loaders), ("test", fit.test_loaders)):
            if name in loaders:
                y, p = (y_val, p_val) if side == "val" else evaluate(fit.model, loaders[name], name, acc)
                per_split[side] = classification_metrics(y, p, n_classes=data.recipe.n_classes, threshold=threshold)
                per_split[side]["constant_predictor"] = is_constant_predictor(per_split[side])
                if side == "test" and acc.num_processes == 1:  # one process: outputs in split order
                    fit.predictions[name] = {"y": y.tolist(), "proba": p.tolist(), "threshold": threshold,
                                             "groups": split_groups(data, splits[name], "test")}
        classes = data.recipe.classes
        results[name] = {
            "classes": list(classes), "splits": per_split, "split": splits[name].describe(),
            "class_counts_train": dict(zip(classes, data.class_counts(splits[name].train))),
            "class_weights": dict(zip(classes, weights[name].tolist())), "left_out_labels": data.left_out,
            "best_epoch": fit.best_epoch, "threshold": threshold,
        }
    return results


def save_outputs(out_dir: Path, model: TaskModel, tasks: Mapping[str, TaskData], splits: Mapping[str, Split],
                 hyper: Hyper, results: dict[str, Any], run_info: dict[str, Any], contract: Any,
                 figures: Mapping[str, Path] | None = None) -> None:
    """``model/`` (weights + recipe.json + metrics.json) and the report (main process only)."""
    recipes = {}
    for name, data in tasks.items():
        sfreq = float(data.windows[0].meta.get("sfreq", SFREQ))
        recipes[name] = {
            **data.recipe.to_dict(), "hyper": dataclasses.asdict(hyper), "window_samples": data.n_samples,
            "window_s": data.n_samples / sfreq, "sfreq": sfreq, "data": data.source,
            "preprocessing": data.preprocessing, "split": splits[name].describe(),
            "threshold": model.head_specs[name]["threshold"], "align": run_info.get("align", "none"),
            "feature_norm": model.head_specs[name]["feature_norm"],
            "trained_channels": sorted({c for i in splits[name].train for c in data.windows[i].meta.get("channels", ())},
                                       key=channel_id),
        }
    metrics = {name: {"best_epoch": res["best_epoch"], **res["splits"]} for name, res in results.items()}
    extra = {"recipe": json_safe(recipes), "metrics": json_safe(metrics), **({"contract": contract.to_dict()} if contract else {})}
    model.save_pretrained(out_dir / "model", extra=extra)
    write_report(out_dir, results, run=run_info, figures=figures)


def finetune(config: FinetuneConfig, *, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Run one finetuning; returns ``{"out": path, "results": {task: {...}}, "best_epoch": int, ...}`` and, in a
    one-process run, ``predictions``: per task the test windows' ``y``, ``proba``, ``groups`` (split order) and
    the decision ``threshold`` (what ``benchmarks/downstream.py`` pools across folds).

    Raises:
        ValueError / KeyError / FileNotFoundError / CheckpointError: bad config, data or checkpoint,
            each naming the key, file or field. NonFiniteLossError: a NaN/inf loss or gradient.
    """
    config.task_specs()  # config errors before anything is read
    if config.feature_norm == "subject" and config.mode != "linear_probe":
        raise ValueError("feature_norm='subject' needs mode='linear_probe': finetuning moves the features every step, "
                         "so statistics of each subject's frozen features would not describe the trained model")
    if config.checkpoint == "":
        raise ValueError("no checkpoint: pass --checkpoint DIR (a pretrained EEGMamba folder) or --checkpoint none")
    if config.out:  # an output over the input is refused before any work (and again, locked, in _out_dir)
        run_folder.check_output(config.out, inputs={"--checkpoint": None if config.checkpoint == "none" else config.checkpoint})
    acc = accelerator or make_accelerator(config.mixed_precision)
    set_seed(config.seed)
    t0 = time.time()
    tasks, hyper = load_tasks(config)
    splits = {name: make_split(config, data) for name, data in tasks.items()}
    checkpoint = None if config.checkpoint in (None, "none") else config.checkpoint
    model, provenance, contract = build_model(config, tasks, hyper, checkpoint, acc.is_main_process)
    warnings_ = run_warnings(tasks, splits, hyper, config.mode)
    if acc.is_main_process:
        for line in warnings_:
            print(f"warning: {line}", file=sys.stderr, flush=True)
    losses, weights = task_losses(config, tasks, splits, hyper, acc.device)
    standardized = None
    if config.feature_norm == "subject":
        if acc.num_processes > 1:
            raise ValueError(f"feature_norm='subject' runs in one process (a linear probe; got {acc.num_processes}): "
                             "launch it without accelerate's multi-process config")
        standardized = subject_features(model, tasks, config.eval_batch_size or 2 * hyper.batch_size, torch.device("cpu"))
    probes = (start_heads(model, config, tasks, splits, hyper, torch.device("cpu"), standardized)
              if acc.is_main_process else {})
    fit = prepare_fit(config, model, tasks, splits, hyper, losses, acc, standardized)
    out_dir = _out_dir(config, list(tasks), acc, provenance.get("checkpoint"))
    log_scan_backend(acc, selective_scan_backend, model)

    curves_png = run_epochs(fit, config, hyper, tasks, acc, out_dir)
    results = final_results(fit, tasks, splits, weights, acc, calibrate=config.calibrate)
    run_info = {
        "tasks": list(tasks), "checkpoint": provenance, "mode": config.mode,
        "pool": {n: model.head_specs[n]["pool"] for n in tasks}, "gain": config.gain, "head_init": head_init(config),
        "probe_margin": config.probe_margin if head_init(config) == "probe" else 0.0, "align": config.align,
        "feature_norm": config.feature_norm, "probe": probes, "warnings": warnings_,
        "hyper": dataclasses.asdict(hyper), "warmup_steps": fit.warmup_steps, "total_steps": fit.total_steps,
        "steps_run": fit.step, "epochs_run": max(len(fit.history) - 1, 0), "best_epoch": fit.best_epoch,
        "best_val_score": fit.best_score[1], "processes": acc.num_processes, "mixed_precision": acc.mixed_precision,
        "seconds": round(time.time() - t0, 1),
    }
    if acc.is_main_process:
        save_outputs(out_dir, acc.unwrap_model(fit.model), tasks, splits, hyper, results, run_info, contract,
                     figures={"learning curves": curves_png} if curves_png else None)
        run_folder.release(out_dir)
    acc.wait_for_everyone()
    return {"out": str(out_dir), "results": results, "best_epoch": fit.best_epoch, "history": fit.history, "run": run_info,
            "predictions": fit.predictions}


def run_epochs(fit: Fit, config: FinetuneConfig, hyper: Hyper, tasks: Mapping[str, TaskData], acc: Accelerator,
               out_dir: Path) -> Path | None:
    """Epoch -1 (the model as it starts: the probe's head on the frozen features), then training epochs until
    ``patience`` epochs bring no higher validation score; the kept epoch follows ``keep_if_best``. Every epoch is a
    ``log.jsonl`` line and TensorBoard scalars (``finetune.curves``); the progress bar moves per batch. Returns
    ``learning_curves.png`` (main process)."""
    bad_epochs = 0
    epochs = hyper.epochs if config.mode == "finetune" else 0
    probe_margin = config.probe_margin if head_init(config) == "probe" else 0.0  # a random head is no model to keep
    curves = RunCurves(out_dir, active=acc.is_main_process)
    bar = tqdm(total=fit.total_steps if epochs else 0, desc="finetune", unit="step", dynamic_ncols=True,
               disable=not (acc.is_main_process and config.progress))
    with _EpochLog(out_dir / "log.jsonl", acc.is_main_process) as log, bar:
        for epoch in range(-1, epochs):
            train_loss = train_epoch(fit, config, hyper, epoch, acc, curves, bar) if epoch >= 0 else math.nan
            score, val, se = validate(fit, tasks, acc, epoch)
            record = {"epoch": epoch, "step": fit.step, "train_loss": train_loss, "lr": fit.optimizer.param_groups[-1]["lr"],
                      "val_score": score[1], "val_score_se": se, "val_loss": -score[2], "val_responsive": score[0],
                      "val": {n: {k: v for k, v in m.items() if k != "confusion_matrix"} for n, m in val.items()}}
            fit.history.append(record)
            log.write(record)
            curves.epoch(record)
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val=f"{score[1]:.3f}")
            keep_if_best(fit, epoch, score, se, acc, probe_margin)
            rising = improves(score, fit.top_score)
            if rising:
                fit.top_score = score
            bad_epochs = 0 if rising else bad_epochs + 1
            if bad_epochs >= hyper.patience:
                break
    return curves.close(best_epoch=fit.best_epoch)


def _out_dir(config: FinetuneConfig, names: list[str], acc: Accelerator, checkpoint: str | None = None) -> Path:
    """The run folder (one name for all ranks), locked for this run, with the resolved config written into it.

    Refused on every rank (``runtime.run_folder.claim_output``): a folder that is or holds the checkpoint or the
    data the run reads, one that holds a training run, one another run is writing, a planted link in it.
    """
    out = [_default_out(config, names), None]
    if acc.is_main_process:
        inputs = {"--checkpoint": checkpoint, **{"--data": spec.data for spec in config.task_specs()}}
        try:
            run_folder.claim_output(out[0], inputs=inputs)
            atomic_write_text(Path(out[0]) / "config.json", json.dumps(to_dict(config), indent=2))
        except (run_folder.RunFolderError, FolderLockedError, LinkedPathError) as err:
            out[1] = str(err)
    if acc.num_processes > 1:
        broadcast_object_list(out)
    if out[1] is not None:
        raise run_folder.RunFolderError(out[1])
    return Path(out[0])


class _EpochLog:
    """``log.jsonl``: one JSON line per epoch, flushed at once (main process only)."""

    def __init__(self, path: Path, active: bool) -> None:
        self.file = open(path, "w") if active else None

    def __enter__(self) -> "_EpochLog":
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(json_safe(record)) + "\n")
            self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
