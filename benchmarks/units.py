"""The cells of the benchmark: a method on one fold of one task, for one seed and protocol.

Every cell trains on the other folds' groups (validation: a group fold of them, chosen by the seed), tests on its
fold, and returns the test windows' labels, groups and probabilities and its validation-chosen threshold, so the
report can pool the folds into one prediction per window. A finetuned model is one ``Unit`` (one fold); the
frozen-feature methods are one ``FeatureJob`` per task, seed and protocol over the folds of a half (one feature
pass, then a classifier per fold). Jobs are independent: ``run_units`` runs them in worker processes (one torch
thread each) and caches each result as ``{out}/units/<key>.json``, so an interrupted run resumes without redoing a
finished job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PRETRAINED = "EEGMamba pretrained, finetuned (LP-FT)"
SCRATCH = "EEGMamba from scratch, finetuned"
PROBE = "EEGMamba pretrained, linear probe"
RANDOM_PROBE = "EEGMamba random init, linear probe"
BAND = "band power + LR"
EEGNET = "EEGNet (braindecode)"
EEGMAMBA = (PRETRAINED, SCRATCH, PROBE, RANDOM_PROBE)
FINETUNED = (PRETRAINED, SCRATCH)  # one finetune run per fold (``Unit``)
FEATURES = (PROBE, RANDOM_PROBE, BAND)  # one feature pass for several folds (``FeatureJob``)
# plain; aligned: Euclidean alignment of each subject's windows (every method); standardised: each subject's
# frozen features standardised by their own statistics (the frozen-feature methods only: a finetuned backbone's
# features move every step).
PROTOCOLS = ("plain", "aligned", "standardised")
# How LP-FT measures the noise a finetuned epoch must beat the probe by (``finetune.train.keep_if_best``): the larger
# of the window-level and the validation-subject error (blocks of the recording when validation holds one; macro
# AUROC too), of the probe's score or the epoch's.
LPFT_STANDARD_ERROR = "windows, subjects or blocks of one; probe or epoch"
# How an EEGMamba probe of the frozen-feature jobs decides a binary task: as a linear-probe run does, at the
# validation-chosen threshold when ``calibrate`` is on, else at 0.5 (band power, a baseline, always chooses).
PROBE_THRESHOLD = "validation if calibrate"


def key_of(obj: Any) -> str:
    """A short content key of a JSON-able object (what a cached job or run was computed from)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finetune_defaults() -> dict[str, Any]:
    """The installed ``FinetuneConfig``'s defaults: part of every job's key, so a default changed in code (what a
    head reads, how LP-FT selects) recomputes the jobs it affects instead of reading back stale results."""
    from finetune.config import FinetuneConfig

    return dataclasses.asdict(FinetuneConfig())


def finetune_settings(overrides: Mapping[str, Any]):
    """The installed ``FinetuneConfig`` with an ablation's finetune ``overrides``: the settings every EEGMamba job of
    the run shares (what a head reads, how LP-FT selects)."""
    from benchmarks.ablations import apply
    from finetune.config import FinetuneConfig

    return apply(FinetuneConfig(), overrides, where="ablation finetune")


# Budget fields a job does not compute from: the seed count, and what only pretraining reads (a job reads its
# backbone by the digest of its weights, ``Unit.backbone``).
NOT_JOB_BUDGET = frozenset({"seeds", "pretrain_steps", "pretrain_batch", "pretrain_lr", "probe_every",
                            "pretrain_mix_power", "pretrain_seed_offset", "pretrain_longer_crops_s",
                            "pretrain_data_fraction"})


def job_budget(budget: Mapping[str, Any]) -> dict[str, Any]:
    """The budget as one job sees it: how many seeds the run has, and how its backbones were pretrained, do not
    change what a job computes from a backbone, so adding a seed to a finished run reuses every cached job, and a
    run that changes only the pretraining reuses the main run's scratch, random-init and band-power jobs."""
    return {k: v for k, v in budget.items() if k not in NOT_JOB_BUDGET}


@dataclass(frozen=True)
class Unit:
    """What one run computes; ``checkpoint`` is the backbone of the fold's half and seed (pretrained methods)."""

    task: str
    fold: int
    seed: int
    method: str
    protocol: str
    checkpoint: str | None = None
    backbone: str | None = None  # the digest of the backbone's weights: a retrained backbone is another unit

    def key(self, context: Mapping[str, Any]) -> str:
        # LP-FT's choice between probe and epochs is code, not a config default: its rule keys the units it decides
        rule = {"lpft_standard_error": LPFT_STANDARD_ERROR} if self.method == PRETRAINED else {}
        return key_of({**dataclasses.asdict(self), **context, **rule})


@dataclass(frozen=True)
class Context:
    """What every unit of a run shares: the task's shards and folds, the budget and the ablation's overrides."""

    shards: str
    recipe: str
    classes: tuple[str, ...]
    window_s: float | None
    test_groups: tuple[str, ...]
    n_folds: int
    budget: dict[str, Any]
    finetune_overrides: dict[str, Any]
    out: str
    val_groups: tuple[str, ...] = ()  # fixed validation groups (a published split), else a fold chosen by the seed


def finetune_config(unit: Unit, ctx: Context):
    """The ``FinetuneConfig`` of an EEGMamba unit."""
    from benchmarks.ablations import apply
    from finetune.config import FinetuneConfig

    b = ctx.budget
    probe = unit.method in (PROBE, RANDOM_PROBE)
    config = FinetuneConfig(
        recipe=ctx.recipe, checkpoint=unit.checkpoint if unit.method in (PRETRAINED, PROBE) else "none",
        data=ctx.shards, out=str(run_folder(unit, ctx)),
        classes=ctx.classes, window_s=ctx.window_s, mode="linear_probe" if probe else "finetune",
        test_groups=ctx.test_groups, val_groups=ctx.val_groups, n_folds=max(2, ctx.n_folds - 1), fold=unit.seed,
        seed=unit.seed,
        epochs=b["finetune_epochs"], warmup_epochs=b["warmup_epochs"], patience=b["patience"],
        batch_size=b["batch_size"], align="euclidean" if unit.protocol == "aligned" else "none", progress=False,
    )
    return apply(config, ctx.finetune_overrides, where="ablation finetune")


def run_folder(unit: Unit, ctx: Context) -> Path:
    """Where an EEGMamba unit's finetuning run writes its model and report: named by the unit's cache key, so an
    ablation sharing the work dir writes beside the main run's models instead of over them."""
    return Path(ctx.out) / "runs" / f"{unit.task}-f{unit.fold}-s{unit.seed}-{unit.key(_unit_context(ctx))}"


def eegmamba_unit(unit: Unit, ctx: Context) -> dict[str, Any]:
    from finetune.train import finetune

    result = finetune(finetune_config(unit, ctx))
    pred = result["predictions"][ctx.recipe]
    res = result["results"][ctx.recipe]
    return {"y": pred["y"], "proba": pred["proba"], "groups": pred["groups"], "threshold": pred["threshold"],
            "best_epoch": result["best_epoch"], "epochs_run": result["run"]["epochs_run"],
            "val": {k: v for k, v in res["splits"]["val"].items() if k != "confusion_matrix"},
            "probe_val": (result["history"][0]["val_score"] if result["history"] else None),
            "head": result["run"]["pool"].get(ctx.recipe), "warnings": result["run"]["warnings"]}


def task_data(ctx: Context, protocol: str):
    """The task's windows (aligned per subject under the aligned protocol) and the unit's split."""
    from finetune.align import align_groups
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe
    from finetune.splits import subject_groups

    data = load_task_data(get_recipe(ctx.recipe), ctx.shards, classes=ctx.classes, window_s=ctx.window_s)
    if protocol == "aligned":
        data.windows = align_groups(data.windows, subject_groups(data.metas))
    return data


def split_of(data, ctx: Context, seed: int):
    from finetune.splits import split_windows

    return split_windows(data.metas, data.labels, group_by=data.recipe.group_by, n_folds=max(2, ctx.n_folds - 1),
                         fold=seed, seed=seed, test_groups=ctx.test_groups, val_groups=ctx.val_groups)


def eegnet_unit(unit: Unit, ctx: Context) -> dict[str, Any]:
    """braindecode's EEGNet on exactly the split an EEGMamba unit of the same fold and seed uses."""
    from benchmarks.baselines import predict_proba_torch, stack_windows, train_eegnet
    from finetune.metrics import choose_threshold
    from finetune.splits import group_names

    data = task_data(ctx, unit.protocol)
    split = split_of(data, ctx, unit.seed)
    x, y = stack_windows(data.windows), data.labels
    net, ran = train_eegnet(x[split.train], y[split.train], x[split.val], y[split.val], n_classes=data.recipe.n_classes,
                            epochs=ctx.budget["eegnet_epochs"], patience=ctx.budget["eegnet_patience"], seed=unit.seed,
                            batch_size=ctx.budget["batch_size"])
    test = split.test
    return {"y": y[test].tolist(), "proba": predict_proba_torch(net, x[test]).tolist(),
            "groups": group_names([data.metas[i] for i in test], split.group_key),
            "threshold": choose_threshold(y[split.val], predict_proba_torch(net, x[split.val])), "epochs_run": ran}


@dataclass(frozen=True)
class FeatureJob:
    """The frozen-feature methods (linear probes, band power + LR) of one task, seed and protocol over several folds:
    features are computed once for every window, then each fold fits its own classifier on its own split. The
    probe is the one ``finetune.probe`` fits in a linear-probe run (same features, C chosen on validation, a
    binary threshold chosen on validation unless the run's ``calibrate`` is off); only the feature pass is shared
    between folds."""

    task: str
    seed: int
    method: str
    protocol: str
    folds: tuple[int, ...]
    checkpoint: str | None = None
    backbone: str | None = None

    def key(self, contexts: Sequence[Context]) -> str:
        # how an EEGMamba probe takes its threshold is code: it keys the jobs it decides
        rule = {"probe_threshold": PROBE_THRESHOLD} if self.method != BAND else {}
        return key_of({**dataclasses.asdict(self), **rule, "defaults": finetune_defaults(),
                       "contexts": [{**dataclasses.asdict(c), "budget": job_budget(c.budget)} for c in contexts]})


def window_features(job: FeatureJob, ctx: Context, data) -> np.ndarray:
    """``[n, D]`` features of every window of the task: the head input of a linear-probe run, or log band power."""
    from benchmarks.baselines import band_power_features, stack_windows

    if job.method == BAND:
        return band_power_features(stack_windows(data.windows))
    import torch
    from accelerate.utils import set_seed

    from finetune.model import TaskModel, load_backbone, reading_layer
    from finetune.probe import task_features
    from finetune.train import head_input

    set_seed(job.seed)  # the random-init backbone of a linear-probe run from scratch with this seed
    backbone, provenance = load_backbone(job.checkpoint if job.method == PROBE else None)
    read = finetune_settings(ctx.finetune_overrides)  # the head an EEGMamba run of this ablation builds
    backbone = reading_layer(backbone, read.read_layer, provenance)
    heads = {ctx.recipe: {"n_classes": data.recipe.n_classes, "task_id": data.recipe.task_id, "norm": "standard",
                          "classes": list(data.recipe.classes),
                          **head_input(read.pool, data, backbone.config.adapter, gain=read.gain)}}
    model = TaskModel(backbone, heads, mode="linear_probe")
    with torch.no_grad():
        return task_features(model, data.windows, ctx.recipe, batch_size=2 * ctx.budget["batch_size"])


def feature_job(job: FeatureJob, contexts: Sequence[Context]) -> list[dict[str, Any]]:
    """One result per fold, in the format of an EEGMamba unit's."""
    from benchmarks.baselines import fit_band_power
    from finetune.align import standardize_groups
    from finetune.metrics import choose_threshold
    from finetune.probe import fit_probe
    from finetune.splits import group_names, subject_groups

    data = task_data(contexts[0], job.protocol)
    t0 = time.time()
    feats = window_features(job, contexts[0], data)
    if job.protocol == "standardised":
        feats = standardize_groups(feats, subject_groups(data.metas))
    shared = time.time() - t0
    y, k = data.labels, data.recipe.n_classes
    out = []
    for fold, ctx in zip(job.folds, contexts):
        t1 = time.time()
        split = split_of(data, ctx, job.seed)
        if job.method == BAND:
            model = fit_band_power(feats[split.train], y[split.train], feats[split.val], y[split.val], seed=job.seed)

            def proba_of(idx, model=model):
                p = np.zeros((len(idx), k))
                p[:, model.classes_] = model.predict_proba(feats[idx])
                return p
            extra = {"C": float(model[-1].C)}
        else:
            probe = fit_probe(feats[split.train], y[split.train], feats[split.val], y[split.val], k, seed=job.seed)

            def proba_of(idx, probe=probe):
                z = probe.logits(feats[idx])
                z = np.exp(z - z.max(1, keepdims=True))
                return z / z.sum(1, keepdims=True)
            extra = {"C": probe.C}
        test = split.test
        calibrate = job.method == BAND or finetune_settings(ctx.finetune_overrides).calibrate  # band power: a baseline
        out.append({"task": job.task, "fold": fold, "seed": job.seed, "method": job.method, "protocol": job.protocol,
                    "checkpoint": job.checkpoint, "y": y[test].tolist(), "proba": proba_of(test).tolist(),
                    "groups": group_names([data.metas[i] for i in test], split.group_key),
                    "threshold": choose_threshold(y[split.val], proba_of(split.val)) if calibrate else None,
                    "seconds": time.time() - t1 + shared / len(job.folds), **extra})
    return out


def run_job(job, contexts, cache: Path) -> list[dict[str, Any]]:
    """Run (or read back) a ``Unit`` (one fold) or a ``FeatureJob`` (several); a failure is a result per fold with
    ``error``, never a lost benchmark."""
    import torch

    contexts = list(contexts)
    path = cache / f"{job.key(contexts if isinstance(job, FeatureJob) else _unit_context(contexts[0]))}.json"
    if path.is_file():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        if isinstance(job, FeatureJob):
            results = feature_job(job, contexts)
        else:
            out = eegmamba_unit(job, contexts[0]) if job.method in FINETUNED else eegnet_unit(job, contexts[0])
            results = [{**dataclasses.asdict(job), **out, "seconds": time.time() - t0}]
    except Exception as err:  # noqa: BLE001 - one failing cell must not cost the run
        folds = job.folds if isinstance(job, FeatureJob) else (job.fold,)
        base = {k: v for k, v in dataclasses.asdict(job).items() if k != "folds"}
        return [{**base, "fold": f, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=5),
                 "seconds": time.time() - t0} for f in folds]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results))
    os.replace(tmp, path)
    return results


def _unit_context(ctx: Context) -> dict[str, Any]:
    return {"shards": ctx.shards, "budget": job_budget(ctx.budget), "overrides": ctx.finetune_overrides, "test": ctx.test_groups,
            "val": ctx.val_groups, "classes": ctx.classes, "window_s": ctx.window_s, "defaults": finetune_defaults()}


def _call(args):
    return run_job(*args)


def run_units(work: Sequence[tuple[Any, Sequence[Context]]], cache: Path, jobs: int = 1,
              done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every job (``Unit`` or ``FeatureJob`` with its contexts), in ``jobs`` worker processes (one torch thread
    each); ``done(result)`` after each fold's result."""
    cache.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []

    def collect(batch):
        for r in batch:
            results.append(r)
            if done:
                done(r)

    if jobs <= 1:
        for job, contexts in work:
            collect(run_job(job, contexts, cache))
        return results
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(jobs, maxtasksperchild=8) as pool:
        for batch in pool.imap_unordered(_call, [(j, c, cache) for j, c in work]):
            collect(batch)
    return results
