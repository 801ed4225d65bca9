"""The finetuning loop on Accelerate: data -> split -> model -> AdamW + warm-up/cosine -> early stopping.

``finetune(config)`` runs one (single- or multi-task) finetuning and returns its results; it is what
``finetune/run.py`` calls under ``accelerate launch``. Per epoch it trains on :class:`TaskBatches`,
evaluates every task's validation split (``accelerator.gather_for_metrics``, so padded duplicates of the
last distributed batch are dropped), and keeps the weights of the epoch with the best mean primary metric
(balanced accuracy) across tasks; ``patience`` epochs without improvement stop the run. The best weights
are then evaluated on the validation and held-out test splits and saved with their recipe and metrics.

Outputs in ``out``::

    model/            config.json, model.safetensors, recipe.json, metrics.json (finetune.model)
    report.json, report.md, confusion_<task>_<split>.png   (finetune.report)
    log.jsonl         one line per epoch: train loss, learning rate, validation metrics
    config.json       the resolved FinetuneConfig
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from finetune.config import FinetuneConfig
from finetune.contract import conform_tasks
from finetune.data import TaskBatches, TaskData, WindowList, batch_tensors, class_weights, load_task_data
from finetune.heads import param_groups
from finetune.metrics import PRIMARY_METRIC, classification_metrics
from finetune.model import TaskModel, load_backbone
from finetune.recipes import get_recipe
from finetune.recipes.base import Hyper, merge_hyper
from finetune.report import json_safe, write_report
from finetune.splits import Split, published_split, split_windows
from foundation.configfile import to_dict
from shards.dataset import load_windows
from shards.sample import SFREQ

__all__ = ["finetune", "evaluate", "lr_lambda", "shard_split"]


def lr_lambda(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR: linear warm-up from 1/warmup to 1, then cosine down to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
    """``(y_true [n], proba [n, k])`` of ``task`` over a prepared DataLoader, gathered from all ranks."""
    model.eval()
    ys, ps = [], []
    for batch in loader:
        with accelerator.autocast():
            logits, _ = model(batch["x"], batch["channel_ids"], batch["channel_mask"], task)
        proba = F.softmax(logits.float(), dim=-1)
        proba, y = accelerator.gather_for_metrics((proba, batch["label"]))
        ps.append(proba.cpu())
        ys.append(y.cpu())
    return torch.cat(ys).numpy(), torch.cat(ps).numpy()


def _mixed_precision(choice: str) -> str:
    if choice == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return choice


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


def finetune(config: FinetuneConfig, *, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Run one finetuning; returns ``{"out": path, "results": {task: {...}}, "best_epoch": int}``.

    Raises:
        ValueError / KeyError / FileNotFoundError / CheckpointError: bad config, data or checkpoint,
            each naming the key, file or field.
    """
    specs = config.task_specs()
    if config.checkpoint == "":
        raise ValueError("no checkpoint: pass --checkpoint DIR (a pretrained EEGMamba folder) or --checkpoint none")
    checkpoint = None if config.checkpoint in (None, "none") else config.checkpoint
    accelerator = accelerator or Accelerator(
        mixed_precision=_mixed_precision(config.mixed_precision),
        # Heads of the tasks not in a batch, and MoE experts no token picked, get no gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(config.seed)
    main = accelerator.is_main_process
    t0 = time.time()

    # ---- data --------------------------------------------------------------------------------------
    cache: dict[str, list] = {}
    tasks: dict[str, TaskData] = {}
    for spec in specs:
        recipe = get_recipe(spec.recipe)
        if spec.data not in cache:
            cache[spec.data] = load_windows(spec.data)
        tasks[recipe.name] = load_task_data(
            recipe, spec.data, classes=spec.classes, window_s=config.window_s, channels=config.channels, extra_tasks=config.extra_tasks, max_windows=config.max_windows, windows=cache[spec.data]
        )
    cache.clear()
    first = tasks[specs[0].recipe]
    # One optimiser for all tasks: the first recipe's defaults (all recipes share LaBraM's) + overrides.
    hyper: Hyper = merge_hyper(first.recipe.hyper, config.hyper_overrides())
    for key in ("epochs", "batch_size", "patience"):
        if getattr(hyper, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(hyper, key)}")
    if hyper.lr <= 0:
        raise ValueError(f"lr must be > 0, got {hyper.lr}")

    splits: dict[str, Split] = {}
    for name, data in tasks.items():
        if config.split == "shards":
            splits[name] = shard_split(data)
        elif config.split == "published":
            splits[name] = published_split(data.metas)
        else:
            splits[name] = split_windows(
                data.metas, data.labels, group_by=data.recipe.group_by,
                n_folds=config.n_folds or data.recipe.n_folds, fold=config.fold, seed=config.seed,
            )

    # ---- model ---------------------------------------------------------------------------------------
    backbone, provenance = load_backbone(
        checkpoint, size=config.size, model_overrides=config.model,
        drop_path=hyper.drop_path if config.mode == "finetune" else None,
    )
    contract = conform_tasks(provenance.get("checkpoint"), tasks, announce=main)
    _check_lengths(tasks, backbone.config)
    heads = {
        name: {"n_classes": d.recipe.n_classes, "task_id": d.recipe.task_id, "classes": list(d.recipe.classes)}
        for name, d in tasks.items()
    }
    model = TaskModel(backbone, heads, pool=config.pool, dropout=hyper.dropout, mode=config.mode)
    groups = param_groups(model, lr=hyper.lr, weight_decay=hyper.weight_decay,
                          layer_decay=hyper.layer_decay if config.mode == "finetune" else 1.0,
                          n_layers=backbone.config.n_layers)
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups], lr=hyper.lr, betas=hyper.betas
    )
    weights = {}
    for name, data in tasks.items():
        counts = data.class_counts(splits[name].train)
        weights[name] = class_weights(counts, data.recipe.classes) if config.class_weights else torch.ones(len(counts))
        if min(counts) == 0:  # unweighted runs still cannot learn an absent class
            raise ValueError(f"recipe {name!r}: class(es) with no training window: {dict(zip(data.recipe.classes, counts))}")

    train_windows = {name: [d.windows[i] for i in splits[name].train] for name, d in tasks.items()}
    rank, world = accelerator.process_index, accelerator.num_processes
    steps_per_epoch = len(TaskBatches(train_windows, hyper.batch_size, seed=config.seed, epoch=0, rank=rank, world_size=world))
    if steps_per_epoch == 0:
        raise ValueError(f"no training batch: {sum(map(len, train_windows.values()))} training windows over {world} processes")
    total_steps = steps_per_epoch * hyper.epochs
    # A warm-up longer than half the run (short trials) would leave no room for the decay.
    warmup_steps = min(hyper.warmup_epochs * steps_per_epoch, total_steps // 2)
    min_ratio = min(hyper.min_lr / hyper.lr, 1.0) if hyper.lr > 0 else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)
    )
    model, optimizer = accelerator.prepare(model, optimizer)

    eval_bs = config.eval_batch_size or 2 * hyper.batch_size

    def loader(windows):
        dl = torch.utils.data.DataLoader(WindowList(windows), batch_size=eval_bs, shuffle=False, collate_fn=batch_tensors)
        return accelerator.prepare(dl)

    val_loaders = {n: loader([d.windows[i] for i in splits[n].val]) for n, d in tasks.items()}
    test_loaders = {n: loader([d.windows[i] for i in splits[n].test]) for n, d in tasks.items() if splits[n].test.size}
    losses = {n: torch.nn.CrossEntropyLoss(weight=weights[n].to(accelerator.device), label_smoothing=hyper.label_smoothing) for n in tasks}

    out = [_default_out(config, list(tasks))]
    if world > 1:
        broadcast_object_list(out)
    out_dir = Path(out[0])
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
        log_file = open(out_dir / "log.jsonl", "w")

    # ---- loop ----------------------------------------------------------------------------------------
    best_score, best_epoch, best_state, bad_epochs, history = -math.inf, -1, None, 0, []
    step = 0
    bar = tqdm(range(hyper.epochs), desc="finetune", disable=not (main and config.progress))
    for epoch in bar:
        model.train()
        batches = TaskBatches(train_windows, hyper.batch_size, seed=config.seed, epoch=epoch, rank=rank, world_size=world)
        total, count = 0.0, 0
        for task, batch in batches:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                logits, aux = model(batch["x"], batch["channel_ids"], batch["channel_mask"], task)
            loss = losses[task](logits.float(), batch["label"]) + config.aux_loss_weight * aux.float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {step}, task {task!r}")
            accelerator.backward(loss)
            if hyper.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), hyper.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item()
            count += 1
            step += 1
        val = {}
        for name, dl in val_loaders.items():
            y, p = evaluate(model, dl, name, accelerator)
            val[name] = classification_metrics(y, p, n_classes=tasks[name].recipe.n_classes)
        score = float(np.mean([val[n][PRIMARY_METRIC] for n in tasks]))
        record = {"epoch": epoch, "step": step, "train_loss": total / max(count, 1), "lr": optimizer.param_groups[-1]["lr"],
                  "val_score": score, "val": {n: {k: v for k, v in m.items() if k != "confusion_matrix"} for n, m in val.items()}}
        history.append(record)
        if main:
            log_file.write(json.dumps(json_safe(record)) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{score:.3f}")
        if score > best_score + 1e-9:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in accelerator.unwrap_model(model).state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= hyper.patience:
                break
    if main:
        log_file.close()

    # ---- best model: evaluate, save, report -----------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.load_state_dict(best_state)
    results: dict[str, Any] = {}
    for name, data in tasks.items():
        per_split = {}
        for side, loaders in (("val", val_loaders), ("test", test_loaders)):
            if name in loaders:
                y, p = evaluate(model, loaders[name], name, accelerator)
                per_split[side] = classification_metrics(y, p, n_classes=data.recipe.n_classes)
        results[name] = {
            "classes": list(data.recipe.classes),
            "splits": per_split,
            "split": splits[name].describe(),
            "class_counts_train": dict(zip(data.recipe.classes, data.class_counts(splits[name].train))),
            "class_weights": dict(zip(data.recipe.classes, weights[name].tolist())),
            "left_out_labels": data.left_out,
            "best_epoch": best_epoch,
        }
    run_info = {
        "tasks": list(tasks),
        "checkpoint": provenance,
        "mode": config.mode,
        "pool": config.pool,
        "hyper": dataclasses.asdict(hyper),
        "warmup_steps": warmup_steps,
        "total_steps": total_steps,
        "steps_run": step,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_score": best_score,
        "processes": world,
        "mixed_precision": accelerator.mixed_precision,
        "seconds": round(time.time() - t0, 1),
    }
    if main:
        recipes = {}
        for name, data in tasks.items():
            sfreq = float(data.windows[0].meta.get("sfreq", SFREQ))
            recipes[name] = {
                **data.recipe.to_dict(),
                "hyper": dataclasses.asdict(hyper),
                "window_samples": data.n_samples,
                "window_s": data.n_samples / sfreq,
                "sfreq": sfreq,
                "data": data.source,
                "preprocessing": data.preprocessing,
                "split": splits[name].describe(),
            }
        metrics = {name: {"best_epoch": best_epoch, **res["splits"]} for name, res in results.items()}
        unwrapped.save_pretrained(out_dir / "model", extra={"recipe": json_safe(recipes), "metrics": json_safe(metrics),
                                                          **({"contract": contract.to_dict()} if contract else {})})
        write_report(out_dir, results, run=run_info)
    accelerator.wait_for_everyone()
    return {"out": str(out_dir), "results": results, "best_epoch": best_epoch, "history": history, "run": run_info}
