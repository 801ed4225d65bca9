"""The stages of ``benchmarks/downstream.py`` before the per-fold runs: shards from the data folder, the
pretraining shards of each half (``benchmarks.folds``), the probe pool's shards, and the backbones (one per
pretraining seed and half). Each stage reuses a finished build or run of the same settings in the work dir, and
never deletes one of other settings: a run on other folds or settings (a subset of the tasks, another budget) in
the same work dir keeps its shards and backbones beside the others', in folders named by a key of their settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
from benchmarks.tasks import SHARD_SETS, Budget, shard_adapter
from benchmarks.units import LPFT_STANDARD_ERROR, finetune_settings, key_of


def build_shards(data_root: Path, out: Path, *, sets: Sequence[str] | None = None,
                 keep: Mapping[str, Callable[[Any], bool]] | None = None, folder_name: str = "shards") -> dict[str, Path]:
    """Shard each set of ``SHARD_SETS`` (default: all) into ``{out}/{folder_name}/{set}``, recordings filtered by
    ``keep[set]`` where given; reuse a finished identical build, replace one with other settings."""
    from shards.writer import BuildMismatchError, build

    folders = {}
    base = out / folder_name
    for corpus in sets if sets is not None else list(SHARD_SETS):
        _, rel, _ = SHARD_SETS[corpus]
        root = data_root / rel
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist: --data must hold {rel}/ (see ../shared/data/README.md)")
        adapter = shard_adapter(corpus, (keep or {}).get(corpus))
        try:
            manifest = build(adapter, root, base, progress=False)
        except BuildMismatchError:
            log(f"{corpus}: shards in {base / corpus} were built with other parameters or writer; rebuilding")
            shutil.rmtree(base / corpus)
            manifest = build(adapter, root, base, progress=False)
        if not manifest["complete"] or manifest["totals"]["samples"] == 0:
            raise RuntimeError(f"{corpus}: shard build incomplete or empty: {manifest['totals']}")
        log(f"{folder_name} {corpus}: {manifest['totals']['samples']} windows from {manifest['totals']['recordings']} "
            f"recordings ({manifest['totals']['skipped']} skipped); labels {manifest['label_counts']}")
        folders[corpus] = base / corpus
    return folders


def excluding(held: Mapping[str, set[str]]) -> Callable[[Any], bool]:
    """``keep(recording)``: not one of the held-out recordings or subjects."""
    recordings, subjects = set(held.get("recordings", ())), set(held.get("subjects", ()))
    return lambda rec: rec.recording not in recordings and rec.subject not in subjects


def in_fraction(fraction: float, salt: str = "") -> Callable[[Any], bool]:
    """``keep(recording)``: the recordings whose ``{salt}/{id}`` hashes (SHA-256, so every run and machine draws the
    same ones) below ``fraction`` of the range: about that share of a set's recordings. The salt (the set's name)
    draws each set on its own, so sets that name their recordings alike are not all kept or dropped together."""
    def keep(rec) -> bool:
        digest = hashlib.sha256(f"{salt}/{rec.recording}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction
    return keep


def both(*keeps: Callable[[Any], bool] | None) -> Callable[[Any], bool]:
    """``keep(recording)``: every given filter keeps it."""
    given = [k for k in keeps if k is not None]
    return lambda rec: all(k(rec) for k in given)


def own_folder(plain: Path, key: str, finished_key: Callable[[Path], str | None]) -> Path:
    """Where the work of settings ``key`` goes: ``plain``, unless it holds finished work of other settings
    (``finished_key(folder)``: the key of the finished work a folder holds, None when it holds none), then the
    sibling ``{plain}-{key[:8]}``. A folder holding finished work is never handed to other settings."""
    found = finished_key(plain)
    return plain if found is None or found == key else plain.with_name(f"{plain.name}-{key[:8]}")


def subset_shards(data_root: Path, out: Path, name: str, sets: Sequence[str],
                  keep: Mapping[str, Callable[[Any], bool]], stamp: Mapping[str, Any]) -> dict[str, Path]:
    """``{out}/{name}/{set}``: the sets with ``keep`` applied, built once per ``stamp`` (what ``keep`` keeps): when
    that folder holds a build for other folds, in ``{out}/{name}-KEY/{set}`` beside it (``own_folder``)."""
    folders = {}
    for corpus in sets:
        text = json.dumps(stamp.get(corpus), sort_keys=True, default=str)

        def built_for(base: Path, corpus=corpus) -> str | None:
            stamp_file = base / f"{corpus}.keep.json"
            return key_of(stamp_file.read_text()) if (base / corpus).exists() and stamp_file.is_file() else None

        base = own_folder(out / name, key_of(text), built_for)
        stamp_file = base / f"{corpus}.keep.json"
        if (base / corpus).exists() and built_for(base) != key_of(text):
            log(f"{base.name}/{corpus}: an unfinished build; rebuilding")
            shutil.rmtree(base / corpus)
        folders.update(build_shards(data_root, out, sets=[corpus], keep={corpus: keep[corpus]} if corpus in keep else None,
                                    folder_name=base.name))
        stamp_file.write_text(text)
    return folders


def pretrain_data_config(folders: Mapping[str, Path], budget: Budget):
    """The pretraining mix: every corpus, weighted by its number of windows to the power ``budget.pretrain_mix_power``
    (1: each window equally likely)."""
    from pretrain.config import CorpusConfig, DataConfig
    from shards.dataset import read_manifest

    corpora = []
    for corpus, folder in folders.items():
        n = read_manifest(folder)["totals"]["samples"]
        corpora.append(CorpusConfig(urls=str(folder), weight=float(n) ** budget.pretrain_mix_power, name=corpus))
    # 4-s crops: the shortest windows (EEGMMIDB cues) are 4 s.
    return DataConfig(corpora=tuple(corpora), crop_s=4.0, longer_crops_s=budget.pretrain_longer_crops_s,
                      batch_size=budget.pretrain_batch, shuffle_buffer=512, num_workers=0, epoch_steps=100)


def backbone_root(out: Path, ablation_name: str | None = None, ablation=None) -> Path:
    """Where a run keeps its backbones: ``{out}/pretrain``, or ``{out}/pretrain/ablation-NAME`` for an ablation that
    changes pretraining, so one work dir holds the main run and its ablations (shards built once, a finetuning-only
    ablation reusing the main run's backbones) without one run's backbones replacing another's."""
    if ablation is not None and ablation.changes_pretraining:
        return out / "pretrain" / f"ablation-{ablation_name}"
    return out / "pretrain"


# Pretraining settings added after backbones were stored, left out of a backbone's key while off (None): a
# backbone trained before the setting existed was trained with it off, and keeps its key.
KEY_OMITTED_WHEN_OFF = {"data": ("longer_crops_s",)}


def backbone_key(config: Mapping[str, Any]) -> str:
    """What a backbone was trained from: its pretraining config (as a dict) without its own folder, so a work dir
    moved or renamed keeps its backbones, and the digests of the shards it read and probed, so a folder rebuilt
    with other contents (same paths, same counts) retrains."""
    from shards.dataset import read_manifest

    config = {**config, **{section: {k: v for k, v in config[section].items() if not (k in names and v is None)}
                           for section, names in KEY_OMITTED_WHEN_OFF.items()}}
    train = {k: v for k, v in config["train"].items() if k != "out_dir"}
    folders = [c["urls"] for c in config["data"]["corpora"]] + list(config["probe"]["shards"])
    shards = {str(f): [s.get("sha256") for s in read_manifest(Path(f))["shards"]] for f in folders}
    # the selection rule as the installed code applies it: a rule changed in code exports other weights
    return key_of({"config": {**config, "train": train}, "shards": shards, "selection": probe_selection()})


def weights_digest(model_dir: Path) -> str:
    """A short digest of an exported backbone's weights: what the jobs that read it are keyed by, so a backbone
    trained again (same settings, other weights) never reads back the results of the one it replaced."""
    from pretrain.release import file_sha256

    return file_sha256(Path(model_dir) / "model.safetensors")[:16]


def pretrain_backbone(name: str, folders: Mapping[str, Path], root: Path, budget: Budget, seed: int, *,
                      probe: Sequence[str] = (), ablation=None) -> dict[str, Any]:
    """Pretrain a tiny EEGMamba with the suite's default objective on ``folders`` (labels unused), the validation
    probe on the ``probe`` shards choosing the exported step; reused when ``{root}/{name}`` holds a run of the same
    settings (``root`` from ``backbone_root``). Returns ``{model, losses, selected_step, probe, seconds, reused}``."""
    from foundation.model import EEGMambaConfig
    from pretrain.config import ObjectiveConfig, OptimConfig, PretrainConfig, ProbeConfig, TrainConfig
    from pretrain.run import run
    from runtime.configfile import to_dict

    config = PretrainConfig(
        data=pretrain_data_config(folders, budget),
        model=apply(EEGMambaConfig.from_size("tiny"), ablation.model if ablation else {}, where="ablation model"),
        objective=apply(ObjectiveConfig(), ablation.objective if ablation else {}, where="ablation objective"),
        probe=ProbeConfig(shards=tuple(str(p) for p in probe), every=budget.probe_every),
        optim=OptimConfig(lr=budget.pretrain_lr, warmup_steps=max(1, budget.pretrain_steps // 20)),
        train=TrainConfig(out_dir=str(root / name), max_steps=budget.pretrain_steps, save_every=budget.pretrain_steps,
                          keep_checkpoints=1, log_every=10, seed=seed + budget.pretrain_seed_offset, progress=False),
    )
    key = backbone_key(to_dict(config))

    def trained_from(folder: Path) -> str | None:
        stamp = folder / "benchmark_key.json"
        finished = (folder / "model" / "config.json").is_file() and stamp.is_file()
        return json.loads(stamp.read_text()).get("key") if finished else None

    folder = own_folder(root / name, key, trained_from)
    stamp = folder / "benchmark_key.json"
    if trained_from(folder) == key:
        # the folder may have moved since (the key leaves its path out)
        return {**json.loads(stamp.read_text())["info"], "model": str(folder / "model"),
                "weights": weights_digest(folder / "model"), "reused": True}
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished run (no finished backbone of any settings is ever removed)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, out_dir=str(folder)))
    t0 = time.time()
    result = run(config)
    losses = [float(v) for v in result.losses]
    probe_file = result.export_dir / "probe.json"
    info = {"model": str(result.export_dir), "key": key, "losses": losses, "selected_step": result.selected_step,
            "probe": json.loads(probe_file.read_text())["history"] if probe_file.is_file() else [],
            "seconds": time.time() - t0, "steps": result.steps}
    stamp.write_text(json.dumps({"key": key, "info": info}))
    k = max(1, len(losses) // 10)
    log(f"pretrain {name}: {result.steps} steps, loss {np.mean(losses[:k]):.4f} -> {np.mean(losses[-k:]):.4f}, "
        f"exported step {result.selected_step or result.steps}, {info['seconds']:.0f} s")
    return {**info, "weights": weights_digest(result.export_dir), "reused": False}


# How the probe's standard error is taken (``runtime.score_error.score_se`` with the set's groups: the larger of
# the window-level closed form and a bootstrap over subjects) and compared (``pretrain.probe.keep_selected``: the
# larger of the best step's and the candidate's). A probe set of one recording resamples blocks of it instead; the
# benchmark's probe set holds four subjects and a binary task, so its backbones are selected as before.
SELECTION_SE = "windows or subjects; best or candidate"


def probe_selection() -> dict[str, Any]:
    """How the backbones' exported step is chosen (the suite's default validation-probe rule and the layer the
    probe reads), for the report: runs whose backbones were selected otherwise are not paired."""
    from pretrain.config import ProbeConfig

    return {"tolerance": ProbeConfig().tolerance, "read_layer": ProbeConfig().read_layer,
            "standard_error": SELECTION_SE}


def finetune_selection(ablation=None) -> dict[str, Any]:
    """How LP-FT chooses between its probe and its finetuned epochs (the suite's default, or the ablation's), for
    the report: finetuned rows of runs selected otherwise are not paired."""
    return {"probe_margin": finetune_settings(ablation.finetune if ablation else {}).probe_margin,
            "standard_error": LPFT_STANDARD_ERROR}


def head_readout(ablation=None) -> dict[str, Any]:
    """What the EEGMamba heads read beyond the tokens (the suite's default, or the ablation's), for the report: an
    ablation pairs with a run whose heads read the same features."""
    read = finetune_settings(ablation.finetune if ablation else {})
    return {"gain": read.gain, "read_layer": read.read_layer}


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

