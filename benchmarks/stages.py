"""The stages of ``benchmarks/downstream.py``: shards from the data folder, self-supervised pretraining (the VQ
tokenizer, then one backbone per objective), and one finetune run per task, seed and method. Each stage reuses a
finished run of the same settings in the work dir."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import log
from benchmarks.tasks import SHARD_SETS, Budget, TaskPlan, channel_subset_adapter, max_windows

def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_shards(data_root: Path, out: Path) -> dict[str, Path]:
    """Shard every corpus of the data folder into ``{out}/shards/{corpus}``; reuse a finished identical build."""
    from shards.writer import build

    from shards.corpora import get_corpus

    folders = {}
    for corpus, (adapter_name, rel, channels) in SHARD_SETS.items():
        root = data_root / rel
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist: --data must hold {rel}/ (see ../shared/data/README.md)")
        adapter = channel_subset_adapter(adapter_name, corpus, channels) if channels else get_corpus(adapter_name)
        try:
            manifest = build(adapter, root, out / "shards", progress=False)
        except ValueError as err:
            if "different parameters" not in str(err):
                raise
            # A build of this work dir with other settings: it is ours to replace.
            log(f"{corpus}: shards in {out / 'shards' / corpus} were built with other parameters; rebuilding")
            shutil.rmtree(out / "shards" / corpus)
            manifest = build(adapter, root, out / "shards", progress=False)
        if not manifest["complete"] or manifest["totals"]["samples"] == 0:
            raise RuntimeError(f"{corpus}: shard build incomplete or empty: {manifest['totals']}")
        log(f"shards {corpus}: {manifest['totals']['samples']} windows from {manifest['totals']['recordings']} recordings "
            f"({manifest['totals']['skipped']} skipped); labels {manifest['label_counts']}")
        folders[corpus] = out / "shards" / corpus
    return folders


def pretrain_data_config(folders: Mapping[str, Path], budget: Budget):
    """The pretraining mix: every corpus, weighted by its number of windows (so each window is equally likely)."""
    from pretrain.config import CorpusConfig, DataConfig
    from shards.dataset import read_manifest

    corpora = []
    for corpus, folder in folders.items():
        n = read_manifest(folder)["totals"]["samples"]
        corpora.append(CorpusConfig(urls=str(folder), weight=float(n), name=corpus))
    # 4-s crops: the shortest windows (EEGMMIDB cues) are 4 s.
    return DataConfig(corpora=tuple(corpora), crop_s=4.0, batch_size=budget.pretrain_batch, shuffle_buffer=512,
                      num_workers=0, epoch_steps=100)


def _reusable(folder: Path, key: str) -> bool:
    stamp = folder / "benchmark_key.json"
    return (folder / "model" / "config.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)  # a run of this work dir with other settings


def train_vq_tokenizer(folders, out: Path, budget: Budget, seed: int) -> tuple[Path, bool]:
    """Train the VQ-NSP tokenizer on all windows; returns (``model`` folder, reused?)."""
    from pretrain.configfile import to_dict
    from pretrain.config import OptimConfig, TrainConfig
    from pretrain.train_tokenizer import TokenizerRunConfig, train_tokenizer

    folder = out / "pretrain" / "tokenizer"
    config = TokenizerRunConfig(
        data=pretrain_data_config(folders, budget),
        optim=OptimConfig(lr=1e-3, warmup_steps=max(1, budget.tokenizer_steps // 10)),
        train=TrainConfig(out_dir=str(folder), max_steps=budget.tokenizer_steps, save_every=budget.tokenizer_steps,
                          keep_checkpoints=1, seed=seed, progress=False),
    )
    key = _key(to_dict(config))
    if _reusable(folder, key):
        return folder / "model", True
    _fresh(folder)
    result = train_tokenizer(config)
    (folder / "benchmark_key.json").write_text(json.dumps({"key": key}))
    last = result.logs[-1] if result.logs else {}
    log(f"tokenizer: {result.steps} steps, loss {last.get('loss', math.nan):.4f}, "
        f"perplexity {last.get('perplexity', math.nan):.1f}, usage {last.get('usage', math.nan):.3f}")
    return folder / "model", False


def pretrain_backbone(name: str, objective, folders, out: Path, budget: Budget, seed: int) -> tuple[Path, bool, list[float]]:
    """Pretrain a tiny EEGMamba with ``objective`` (an ObjectiveConfig); returns (model folder, reused?, losses)."""
    from foundation.model import EEGMambaConfig
    from pretrain.config import OptimConfig, PretrainConfig, TrainConfig
    from pretrain.configfile import to_dict
    from pretrain.run import run

    folder = out / "pretrain" / name
    config = PretrainConfig(
        data=pretrain_data_config(folders, budget),
        model=EEGMambaConfig.from_size("tiny"),
        objective=objective,
        optim=OptimConfig(lr=budget.pretrain_lr, warmup_steps=max(1, budget.pretrain_steps // 20)),
        train=TrainConfig(out_dir=str(folder), max_steps=budget.pretrain_steps, save_every=budget.pretrain_steps,
                          keep_checkpoints=1, log_every=10, seed=seed, progress=False),
    )
    key = _key(to_dict(config))
    if _reusable(folder, key):
        losses = json.loads((folder / "benchmark_key.json").read_text()).get("losses", [])
        return folder / "model", True, losses
    _fresh(folder)
    result = run(config)
    losses = [float(v) for v in result.losses]
    (folder / "benchmark_key.json").write_text(json.dumps({"key": key, "losses": losses}))
    k = max(1, len(losses) // 10)
    log(f"pretrain {name}: {result.steps} steps, loss first {np.mean(losses[:k]):.4f} -> last {np.mean(losses[-k:]):.4f}, "
        f"{result.samples_per_s:.1f} windows/s")
    return folder / "model", False, losses


def task_split(plan: TaskPlan, folder: Path, seed: int, budget: Budget):
    """(TaskData, Split) exactly as ``finetune.train.finetune`` builds them for this task, fold and seed."""
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe
    from finetune.splits import split_windows

    data = load_task_data(get_recipe(plan.name), str(folder), classes=plan.classes, window_s=plan.window_s,
                          max_windows=max_windows(plan, budget))
    fold = seed % plan.n_folds
    split = split_windows(data.metas, data.labels, group_by=data.recipe.group_by, n_folds=plan.n_folds, fold=fold, seed=seed)
    return data, split


def run_eegmamba(plan: TaskPlan, folder: Path, seed: int, budget: Budget, *, checkpoint: str, mode: str, out: Path,
                 pool: str = "cls") -> dict:
    """One ``finetune`` run; returns its test metrics, split description and seconds."""
    from finetune.config import FinetuneConfig
    from finetune.train import finetune

    config = FinetuneConfig(
        recipe=plan.name, checkpoint=checkpoint, data=str(folder), out=str(out), classes=plan.classes,
        # Masked modelling never trains the class token, so a frozen backbone is probed on the token mean.
        mode=mode, pool="mean" if mode == "linear_probe" else pool, split="kfold", window_s=plan.window_s, fold=seed % plan.n_folds, n_folds=plan.n_folds, max_windows=max_windows(plan, budget),
        lr=budget.probe_lr if mode == "linear_probe" else budget.finetune_lr,
        epochs=budget.finetune_epochs, patience=budget.finetune_patience, warmup_epochs=1,
        batch_size=budget.batch_size, seed=seed, progress=False,
    )
    t0 = time.time()
    result = finetune(config)
    res = result["results"][plan.name]
    return {"metrics": res["splits"]["test"], "split": res["split"], "seconds": time.time() - t0,
            "best_epoch": result["best_epoch"], "epochs_run": result["run"]["epochs_run"]}


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


