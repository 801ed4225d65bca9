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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.ablations import apply
from benchmarks.report import log
from benchmarks.tasks import SHARD_SETS, Budget, TaskPlan, max_windows, shard_adapter

def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_shards(data_root: Path, out: Path, *, sets: Sequence[str] | None = None,
                 keep: Mapping[str, Callable[[Any], bool]] | None = None, folder_name: str = "shards",
                 channels: Mapping[str, Sequence[str]] | None = None) -> dict[str, Path]:
    """Shard each set of ``SHARD_SETS`` (default: all) into ``{out}/{folder_name}/{set}``, recordings filtered by
    ``keep[set]`` and channels subset to ``channels[set]`` where given; reuse a finished identical build."""
    from shards.writer import build

    folders = {}
    base = out / folder_name
    for corpus in sets if sets is not None else list(SHARD_SETS):
        _, rel, _ = SHARD_SETS[corpus]
        root = data_root / rel
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist: --data must hold {rel}/ (see ../shared/data/README.md)")
        adapter = shard_adapter(corpus, (keep or {}).get(corpus), (channels or {}).get(corpus))
        try:
            manifest = build(adapter, root, base, progress=False)
        except ValueError as err:
            if "different parameters" not in str(err):
                raise
            # A build of this work dir with other settings: it is ours to replace.
            log(f"{corpus}: shards in {base / corpus} were built with other parameters; rebuilding")
            shutil.rmtree(base / corpus)
            manifest = build(adapter, root, base, progress=False)
        if not manifest["complete"] or manifest["totals"]["samples"] == 0:
            raise RuntimeError(f"{corpus}: shard build incomplete or empty: {manifest['totals']}")
        log(f"{folder_name} {corpus}: {manifest['totals']['samples']} windows from {manifest['totals']['recordings']} "
            f"recordings ({manifest['totals']['skipped']} skipped); labels {manifest['label_counts']}")
        folders[corpus] = base / corpus
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


def train_vq_tokenizer(folders, out: Path, budget: Budget, seed: int, ablation=None) -> tuple[Path, bool]:
    """Train the VQ-NSP tokenizer on all windows; returns (``model`` folder, reused?)."""
    from runtime.configfile import to_dict
    from pretrain.config import OptimConfig, TrainConfig
    from pretrain.train_tokenizer import TokenizerRunConfig, train_tokenizer
    from tokenizer.vqnsp import VQNSPConfig

    folder = out / "pretrain" / "tokenizer"
    config = TokenizerRunConfig(
        data=pretrain_data_config(folders, budget),
        model=apply(VQNSPConfig.from_size("tiny"), ablation.tokenizer if ablation else {}, where="ablation tokenizer"),
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


def pretrain_backbone(name: str, objective, folders, out: Path, budget: Budget, seed: int,
                      ablation=None) -> tuple[Path, bool, list[float]]:
    """Pretrain a tiny EEGMamba with ``objective`` (an ObjectiveConfig); returns (model folder, reused?, losses)."""
    from foundation.model import EEGMambaConfig
    from pretrain.config import OptimConfig, PretrainConfig, TrainConfig
    from runtime.configfile import to_dict
    from pretrain.run import run

    folder = out / "pretrain" / name
    config = PretrainConfig(
        data=pretrain_data_config(folders, budget),
        model=apply(EEGMambaConfig.from_size("tiny"), ablation.model if ablation else {}, where="ablation model"),
        objective=apply(objective, ablation.objective if ablation else {}, where="ablation objective"),
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


def task_split(plan: TaskPlan, folder: Path, seed: int, budget: Budget, pool: Mapping[str, Any] | None = None):
    """(TaskData, Split) exactly as ``finetune.train.finetune`` builds them for this task, fold and seed.

    With ``pool`` (``protocol.choose_pool``) the test set is the pool and ``seed`` picks the validation fold
    of the other groups; without it (transductive) the test set is group fold ``seed mod n_folds``.
    """
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe
    from finetune.splits import split_windows

    data = load_task_data(get_recipe(plan.recipe_name), str(folder), classes=plan.classes, window_s=plan.window_s,
                          max_windows=max_windows(plan, budget))
    split = split_windows(data.metas, data.labels, group_by=data.recipe.group_by, n_folds=plan.n_folds,
                          fold=seed if pool else seed % plan.n_folds, seed=seed, test_groups=tuple(pool["groups"]) if pool else (),
                          val_groups=tuple(pool.get("val_groups", ())) if pool else ())
    return data, split


def finetune_config(plan: TaskPlan, folder: Path, seed: int, budget: Budget, *, checkpoint: str, mode: str, out: Path,
                    pool: str = "cls", test_groups: Sequence[str] = (), val_groups: Sequence[str] = (),
                    overrides: Mapping[str, Any] | None = None):
    """The ``FinetuneConfig`` of one benchmark run (``overrides``: an ablation's finetune fields)."""
    from finetune.config import FinetuneConfig

    config = FinetuneConfig(
        recipe=plan.recipe_name, checkpoint=checkpoint, data=str(folder), out=str(out), classes=plan.classes,
        # Masked modelling never trains the class token, so a frozen backbone is probed on the token mean.
        mode=mode, pool="mean" if mode == "linear_probe" else pool, split="kfold", window_s=plan.window_s,
        # With a test pool the fold picks the validation fold of the other groups (modulo their count).
        fold=seed if test_groups else seed % plan.n_folds, n_folds=plan.n_folds, max_windows=max_windows(plan, budget),
        test_groups=tuple(test_groups), val_groups=tuple(val_groups),
        lr=budget.probe_lr if mode == "linear_probe" else budget.finetune_lr,
        epochs=budget.finetune_epochs, patience=budget.finetune_patience, warmup_epochs=1,
        batch_size=budget.batch_size, seed=seed, progress=False,
    )
    return apply(config, overrides or {}, where="ablation finetune")


@torch.no_grad()
def test_probabilities(model_dir: Path, task: str, windows, batch_size: int = 64) -> list[list[float]]:
    """Softmax ``[n, k]`` of the saved finetuned model on ``windows`` (the test windows, in split order),
    rounded to 5 decimals: what the bootstrap over test groups resamples."""
    from finetune.data import batch_tensors
    from finetune.model import TaskModel

    model = TaskModel.from_pretrained(model_dir, map_location="cpu")
    model.eval()
    out = []
    for i in range(0, len(windows), batch_size):
        b = batch_tensors(windows[i:i + batch_size])
        logits, _ = model(b["x"], b["channel_ids"], b["channel_mask"], task)
        out.append(torch.softmax(logits.float(), dim=-1))
    return np.round(torch.cat(out).numpy(), 5).tolist() if out else []


def run_eegmamba(config, tasks: Mapping[str, tuple[Any, Any]]) -> dict[str, dict]:
    """One ``finetune`` run (single- or multi-task); per task name: test metrics, split, test probabilities.

    ``tasks``: task name -> (recipe name, TaskData and Split the benchmark built for it), to predict the
    test windows with the saved model (finetune reports metrics, not per-window outputs).
    """
    from finetune.train import finetune

    t0 = time.time()
    result = finetune(config)
    seconds = time.time() - t0
    out = {}
    for name, (recipe, data, split) in tasks.items():
        res = result["results"][recipe]
        out[name] = {"metrics": res["splits"]["test"], "split": res["split"], "seconds": seconds,
                     "best_epoch": result["best_epoch"], "epochs_run": result["run"]["epochs_run"],
                     "test_proba": test_probabilities(Path(result["out"]) / "model", recipe,
                                                      [data.windows[i] for i in split.test])}
    return out


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


