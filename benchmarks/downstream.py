"""Does pretraining help? End-to-end downstream benchmark on the real recordings in ``../shared/data``.

One run does everything, from raw files to the results table::

    python benchmarks/downstream.py                      # full run (~30 min on a 2-core CPU)
    python benchmarks/downstream.py --quick              # smoke test (a few minutes, fewer windows/steps)
    python benchmarks/downstream.py --data /path/to/data --out runs/downstream --seeds 3
    python benchmarks/downstream.py --render benchmarks/results/results.json   # re-render the table only
    # ablations (own --results folder): longer pretraining, another finetuning LR, a subset of the tasks
    python benchmarks/downstream.py --tasks seizure,sleep --pretrain-steps 1200 --out runs/downstream-long \
        --results benchmarks/results/ablation-pretrain-1200-steps

Stages (each timed; the wall times are part of the table):

1. shards: every set of the data folder through ``shards.writer.build`` (Bonn, DREAMS, EEGMMIDB subject 1,
   mental-stress, the unlabeled recordings). An existing build in ``--out`` with the same parameters is reused.
2. pretraining of a tiny EEGMamba on ALL windows of those shards (labels unused), once per objective:
   the VQ tokenizer (``tokenizer.run.train_tokenizer``) then masked-token prediction, and the Gaussian-masked
   STFT (``pretrain.run.run``). Reused when ``{out}/pretrain/<name>`` holds a run of the same settings.
3. per task and seed, one split fixed with ``finetune.splits.split_windows`` (the function ``finetune`` uses,
   with the same arguments, and checked against the split every finetune run reports): EEGMamba finetuned from
   each pretrained backbone, the same architecture from scratch, a linear probe on each frozen pretrained
   backbone (``finetune.train.finetune``).
4. baselines on the same splits: log band power (delta..gamma per channel, ``scipy.signal.welch``) +
   standardised, class-balanced logistic regression (C picked on the validation split), and braindecode's
   EEGNet (AdamW, class-weighted cross-entropy, early stopping on validation balanced accuracy).
5. a table of test-split balanced accuracy, Cohen's kappa, weighted F1 and AUROC (binary tasks), mean ± std
   over seeds, plus wall time per stage: printed, and written to ``--results`` (results.md + results.json).

Tasks and splits (test = one fold, validation = the next fold, the rest trains; seed ``s`` uses fold
``s mod k`` and shuffles the group-to-fold assignment with ``s``):

- seizure: Bonn S (ictal) vs Z/O/N/F, 5-s windows; groups = segments (the set has no patient ids), 5 folds.
- sleep: DREAMS excerpts, one 5-s hypnogram epoch per window; groups = excerpts (one subject each),
  leave-one-excerpt-out (6 folds). The six excerpts contain no REM epoch, so the head has 4 classes.
- motor_imagery: EEGMMIDB subject 1, imagined left vs right fist (runs 4 and 8), one 4-s window per cue,
  8 sensorimotor channels (see MOTOR_CHANNELS); groups = runs (2 folds: one run tests; validation is the
  last 20 % of the other run in time).
- emotion: mental-stress horror video vs relaxing music, the first 4 s of each 10-s window; groups =
  subjects, 5 folds.

Bonn, DREAMS and mental stress are capped to an evenly spaced subset of their windows (``TaskPlan.max_windows``)
to fit the time budget. Pretraining sees every window of every set, test windows included (labels unused):
the transductive setting of a foundation model pretrained on a large pool that happens to contain them.
Torch runs on one thread (``--threads``): on a shared 2-core machine two threads per process were 15-20x slower.

Every number in the written table comes from this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
import types
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: import the suite from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SFREQ = 200.0  # the shards' common rate
BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 45.0),
}
METRICS = ("balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc")
METRIC_TITLES = {"balanced_accuracy": "bal. acc.", "cohen_kappa": "kappa", "weighted_f1": "weighted F1", "auroc": "AUROC"}

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


def channel_subset_adapter(corpus: str, name: str, channels: Sequence[str]):
    """The registered ``corpus`` adapter, renamed ``name``, keeping only ``channels`` (canonical names).

    Recordings holding none of them are left whole (they are narrow already, e.g. 2-channel resting EEG).
    """
    from shards.corpora import get_corpus
    from shards.vocabulary import canonical_name

    base = type(get_corpus(corpus))
    wanted = set(channels)

    class Subset(base):  # type: ignore[misc, valid-type]
        def load(self, rec):
            loaded = super().load(rec)
            keep = [ch for ch in loaded.raw.ch_names if canonical_name(ch) in wanted]
            if keep:
                loaded.raw.pick(keep)
            return loaded

    Subset.name = name
    Subset.__name__ = Subset.__qualname__ = f"{base.__name__}Subset"
    return Subset()


@dataclass(frozen=True)
class TaskPlan:
    """One downstream task of the benchmark."""

    name: str  # recipe name
    corpus: str  # key of SHARD_SETS
    title: str
    classes: tuple[str, ...]
    n_folds: int
    max_windows: int | None = None  # evenly spaced subset (full mode), None = all
    window_s: float | None = None  # crop windows to their first window_s seconds (None = as sharded)


SHARD_SETS.update({
    "bonn": ("bonn", "seizure/bonn", None),
    "dreams": ("dreams", "sleep/dreams_spindles", None),
    "eegmmidb_motor8": ("eegmmidb", "motor_imagery/eegmmidb", MOTOR_CHANNELS),
    "mental_stress": ("mental_stress", "emotion/mental_stress_emotiv", None),
    "recordings_1020": ("recordings", "unlabeled", RECORDING_CHANNELS),
})

# Bonn (8 overlapping windows per segment), DREAMS and mental stress are capped to an evenly spaced subset
# (every segment / excerpt / recording stays in) and mental stress is cropped to the 4-s crops the backbone
# is pretrained on, so that 3 seeds x 5 EEGMamba variants fit the 30-minute budget on 2 cores.
TASKS: tuple[TaskPlan, ...] = (
    TaskPlan("seizure", "bonn", "Bonn seizure (S vs Z/O/N/F)", ("non_seizure", "seizure"), 5, max_windows=500),
    TaskPlan("sleep", "dreams", "DREAMS sleep (W/N1/N2/N3)", ("W", "N1", "N2", "N3"), 6, max_windows=720),
    TaskPlan("motor_imagery", "eegmmidb_motor8", "EEGMMIDB S001 imagined left vs right fist (8 sensorimotor ch.)",
             ("left_fist", "right_fist"), 2),
    TaskPlan("emotion", "mental_stress", "Mental stress (horror vs relaxing), 4-s crops", ("calm", "stress"), 5,
             max_windows=300, window_s=4.0),
)


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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -------------------------------------------------------------------------------------------------
# braindecode


def _stub_module(name: str) -> types.ModuleType:
    """A placeholder module whose every public attribute is a class that raises when used."""
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so `import torchaudio.transforms` resolves against sys.modules

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        class _Missing:
            def __init__(self, *args, **kwargs):
                raise NotImplementedError(f"{name}.{attr}: torchaudio is stubbed out (its CUDA-linked wheel cannot load here)")

        _Missing.__name__ = attr
        return _Missing

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return mod


def import_eegnet() -> type:
    """``braindecode.models.EEGNet``, importable on a CPU-only torch.

    braindecode 1.8 imports torchaudio eagerly (filters and a few spectrogram models), and the installed
    torchaudio wheel is CUDA-linked, so on a CPU-only torch ``import braindecode`` fails with OSError.
    EEGNet uses no torchaudio function: stub ``torchaudio`` / ``.functional`` / ``.transforms`` (anything
    taken from them raises NotImplementedError when called), drop the half-imported braindecode modules
    and import again.
    """
    try:
        from braindecode.models import EEGNet

        return EEGNet
    except (OSError, ImportError) as err:
        if "torchaudio" not in f"{err!r} {err.__cause__!r}" and not any(m.startswith("torchaudio") for m in sys.modules):
            raise
        print(f"note: braindecode failed to import torchaudio ({type(err).__name__}); using a stub torchaudio "
              "module (EEGNet does not use it)", flush=True)
    for name in [m for m in sys.modules if m.split(".")[0] in ("braindecode", "torchaudio")]:
        del sys.modules[name]
    subs = {n: _stub_module(f"torchaudio.{n}") for n in ("functional", "transforms")}
    root = _stub_module("torchaudio")
    for n, mod in subs.items():
        setattr(root, n, mod)
        sys.modules[f"torchaudio.{n}"] = mod
    sys.modules["torchaudio"] = root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MNE montage deprecations inside braindecode
        from braindecode.models import EEGNet
    return EEGNet


# -------------------------------------------------------------------------------------------------
# baselines


def band_power_features(x: np.ndarray, sfreq: float = SFREQ) -> np.ndarray:
    """Log band power per channel: ``x [n, c, t]`` -> ``[n, c * 5]`` ordered ``(c band)``.

    Welch PSD (2-s Hann segments, or the whole window when shorter), integrated over delta 0.5-4,
    theta 4-8, alpha 8-13, beta 13-30 and gamma 30-45 Hz; log10 of power + 1e-12.
    """
    from scipy.signal import welch

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"band_power_features expects x [n, c, t], got shape {x.shape}")
    nperseg = int(min(x.shape[-1], 2 * sfreq))
    freqs, psd = welch(x, fs=sfreq, nperseg=nperseg, axis=-1)  # psd [n, c, f]
    df = freqs[1] - freqs[0]
    feats = []
    for lo, hi in BANDS.values():
        sel = (freqs >= lo) & (freqs < hi)
        if not sel.any():
            raise ValueError(f"band {lo}-{hi} Hz has no frequency bin at {sfreq} Hz with {nperseg}-sample segments")
        feats.append(psd[..., sel].sum(axis=-1) * df)  # [n, c]
    power = np.stack(feats, axis=-1)  # [n, c, band]
    return np.log10(power + 1e-12).reshape(x.shape[0], -1)


def fit_band_power(x_train, y_train, x_val, y_val, *, seed: int = 0, cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0)):
    """Standardised, class-balanced logistic regression on log band power; C chosen on the validation split.

    Returns the fitted sklearn Pipeline (``predict_proba`` on raw windows' features).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best, best_score = None, -math.inf
    for c in cs:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed))
        model.fit(x_train, y_train)
        score = balanced_accuracy_score(y_val, model.predict(x_val))
        if score > best_score + 1e-12:
            best, best_score = model, score
    return best


def _stack(windows) -> np.ndarray:
    shapes = {w.eeg.shape for w in windows}
    if len(shapes) != 1:
        raise ValueError(f"baselines need windows of one shape [C, T], got {sorted(shapes)[:4]}")
    return np.stack([w.eeg for w in windows]).astype(np.float32)


def train_eegnet(x_train, y_train, x_val, y_val, *, n_classes: int, epochs: int, patience: int, seed: int,
                 batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-2):
    """braindecode EEGNet on ``x [n, c, t]``: AdamW, class-weighted CE, keep the best-validation epoch.

    Returns ``(model in eval mode, epochs run)``.
    """
    from sklearn.metrics import balanced_accuracy_score

    EEGNet = import_eegnet()
    torch.manual_seed(seed)
    model = EEGNet(n_chans=x_train.shape[1], n_outputs=n_classes, n_times=x_train.shape[2], sfreq=SFREQ)
    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"EEGNet: class(es) {np.flatnonzero(counts == 0).tolist()} have no training window")
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(counts.sum() / (n_classes * counts), dtype=torch.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    rng = np.random.default_rng(seed)
    best_score, best_state, bad, ran = -math.inf, None, 0, 0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(xt))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:  # EEGNet's BatchNorm needs more than one window
                continue
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        ran = epoch + 1
        score = balanced_accuracy_score(y_val, predict_proba_torch(model, x_val).argmax(1))
        if score > best_score + 1e-9:
            best_score, bad = score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, ran


@torch.no_grad()
def predict_proba_torch(model: torch.nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs ``[n, k]`` of a classifier on ``x [n, c, t]``."""
    model.eval()
    out = [torch.softmax(model(torch.from_numpy(x[i:i + batch_size])), dim=-1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


# -------------------------------------------------------------------------------------------------
# aggregation and table


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and sample std (ddof=1; 0 with one value) of the finite values; nan when there are none."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0, "n": int(vals.size)}


def fmt(stat: Mapping[str, float] | None) -> str:
    """``0.912 ± 0.013``, or ``–`` for a metric that does not apply."""
    if not stat or not math.isfinite(stat.get("mean", math.nan)):
        return "–"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per-seed runs ``[{task, method, seed, metrics, seconds}]`` -> ``{task: {method: {metric: stat, seconds}}}``."""
    out: dict[str, dict] = {}
    for r in runs:
        out.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
    table: dict[str, dict] = {}
    for task, methods in out.items():
        table[task] = {}
        for method, rs in methods.items():
            entry = {m: summarize([r["metrics"].get(m, math.nan) for r in rs]) for m in METRICS}
            entry["seconds"] = summarize([r["seconds"] for r in rs])
            entry["seeds"] = sorted(r["seed"] for r in rs)
            table[task][method] = entry
    return table


def results_table(table: Mapping[str, Mapping[str, Mapping]], titles: Mapping[str, str]) -> str:
    """Markdown table: one row per (task, method), metrics as mean ± std, seconds per run."""
    head = "| task | method | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " | s / run |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for task, methods in table.items():
        for method, entry in methods.items():
            cells = [fmt(entry.get(m)) for m in METRICS]
            sec = entry.get("seconds", {}).get("mean", math.nan)
            lines.append(f"| {titles.get(task, task)} | {method} | " + " | ".join(cells) + f" | {sec:.0f} |")
    return "\n".join(lines)


def stage_table(stages: Mapping[str, float]) -> str:
    lines = ["| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in stages.items()]
    lines.append(f"| total | {sum(stages.values()):.0f} |")
    return "\n".join(lines)


def aims(table: Mapping[str, Mapping[str, Mapping]], pretrained: Sequence[str], scratch: str, band: str,
         seizure_task: str = "seizure") -> list[str]:
    """The issue's aims, checked on mean test balanced accuracy (lines for the report)."""
    def ba(task, method):
        return table.get(task, {}).get(method, {}).get("balanced_accuracy", {}).get("mean", math.nan)

    lines = []
    for method in pretrained:
        wins = [t for t in table if ba(t, method) > ba(t, scratch)]
        not_worse = [t for t in table if ba(t, method) >= ba(t, band)]
        lines.append(f"- {method}: beats from-scratch on {len(wins)}/{len(table)} tasks ({', '.join(wins) or 'none'}); "
                     f"no worse than band power on {len(not_worse)}/{len(table)} ({', '.join(not_worse) or 'none'}).")
    for method in [*pretrained, scratch, band]:
        if seizure_task in table and method in table[seizure_task]:
            v = ba(seizure_task, method)
            lines.append(f"- seizure balanced accuracy >= 0.95 with {method}: {'yes' if v >= 0.95 else 'no'} ({v:.3f})")
    return lines


# -------------------------------------------------------------------------------------------------
# stages


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
    from foundation.configfile import to_dict
    from pretrain.config import OptimConfig, TrainConfig
    from tokenizer.run import TokenizerRunConfig, train_tokenizer

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
    from foundation.configfile import to_dict
    from pretrain.config import ModelConfig, OptimConfig, PretrainConfig, TrainConfig
    from pretrain.run import run

    folder = out / "pretrain" / name
    config = PretrainConfig(
        data=pretrain_data_config(folders, budget),
        model=ModelConfig(size="tiny"),
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


def max_windows(plan: TaskPlan, budget: Budget) -> int | None:
    caps = [c for c in (plan.max_windows, budget.max_windows) if c is not None]
    return min(caps) if caps else None


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


def run_baselines(plan: TaskPlan, data, split, seed: int, budget: Budget) -> dict[str, dict]:
    """Band power + logistic regression and EEGNet on one split; test metrics and seconds of each."""
    from finetune.metrics import classification_metrics

    n_classes = data.recipe.n_classes
    x = _stack(data.windows)
    y = data.labels
    out = {}
    t0 = time.time()
    feats = band_power_features(x)
    lr = fit_band_power(feats[split.train], y[split.train], feats[split.val], y[split.val], seed=seed)
    out["band power + LR"] = {"metrics": classification_metrics(y[split.test], lr.predict_proba(feats[split.test]), n_classes=n_classes),
                              "seconds": time.time() - t0, "C": float(lr[-1].C)}
    t0 = time.time()
    model, ran = train_eegnet(x[split.train], y[split.train], x[split.val], y[split.val], n_classes=n_classes,
                              epochs=budget.eegnet_epochs, patience=budget.eegnet_patience, seed=seed, batch_size=budget.batch_size)
    out["EEGNet (braindecode)"] = {"metrics": classification_metrics(y[split.test], predict_proba_torch(model, x[split.test]), n_classes=n_classes),
                                   "seconds": time.time() - t0, "epochs_run": ran}
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


# -------------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/downstream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the real-data folder (../shared/data)")
    p.add_argument("--out", type=Path, default=Path("runs/downstream"), help="work dir: shards, pretrained models, finetune runs")
    p.add_argument("--results", type=Path, default=None,
                   help="where results.md/json go (default benchmarks/results; with --quick {out}/results-quick)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (= splits and initialisations) per task and method")
    p.add_argument("--quick", action="store_true", help="smoke test: few pretraining steps and epochs, at most 240 windows per task")
    p.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated subset of the tasks")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probes")
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                   help="only rewrite results.md next to an existing results.json (no training)")
    p.add_argument("--readme", type=Path, default=None, metavar="README",
                   help="also replace the README's results block (between the "
                        f"{README_BEGIN} / {README_END} markers) with this run's report")
    p.add_argument("--pool", choices=("cls", "mean"), default="cls",
                   help="head input of the finetuned EEGMamba variants (linear probes always use the token mean)")
    p.add_argument("--finetune-lr", type=float, default=None, help="override the mode's finetuning peak LR (ablation)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the mode's pretraining steps (ablation)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 because the tiny model's ops are too small to split, and on a shared "
                        "machine two spinning OpenMP threads per process ran 15-20x slower than one")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    known = {t.name for t in TASKS}
    args.task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.task_names) - known)
    if unknown or not args.task_names:
        p.error(f"--tasks: unknown task(s) {unknown}; known: {sorted(known)}")
    if args.results is None:
        args.results = args.out / "results-quick" if args.quick else REPO / "benchmarks" / "results"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        payload["table"] = aggregate(payload["runs"])
        write_results(payload, args.render.parent)
        if args.readme is not None:
            update_readme(args.readme, render(payload))
        return 0
    budget = QUICK if args.quick else FULL
    if args.pretrain_steps is not None:
        if args.pretrain_steps < 1:
            raise SystemExit("--pretrain-steps must be >= 1")
        budget = dataclasses.replace(budget, pretrain_steps=args.pretrain_steps)
    if args.finetune_lr is not None:
        if not args.finetune_lr > 0:
            raise SystemExit("--finetune-lr must be > 0")
        budget = dataclasses.replace(budget, finetune_lr=args.finetune_lr)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    notes: list[str] = []
    t_start = time.time()
    import_eegnet()  # fail early, and print the torchaudio note once

    log(f"stage 1/4: shards from {args.data}")
    t0 = time.time()
    folders = build_shards(args.data, out)
    stages["1 shards (build or reuse)"] = time.time() - t0

    from pretrain.config import ObjectiveConfig

    log("stage 2/4: self-supervised pretraining on all windows (labels unused)")
    t0 = time.time()
    tok_dir, reused = train_vq_tokenizer(folders, out, budget, seed=0)
    stages["2a VQ tokenizer" + (" (reused)" if reused else "")] = time.time() - t0
    pretrained: dict[str, Path] = {}
    losses: dict[str, list[float]] = {}
    for name, objective in (
        ("VQ masked-token", ObjectiveConfig(name="masked_token", tokenizer=str(tok_dir))),
        ("masked STFT", ObjectiveConfig(name="masked_stft")),
    ):
        t0 = time.time()
        slug = "masked_token" if name.startswith("VQ") else "masked_stft"
        pretrained[name], reused, losses[name] = pretrain_backbone(slug, objective, folders, out, budget, seed=0)
        stages[f"2{'b' if slug == 'masked_token' else 'c'} pretrain {name}" + (" (reused)" if reused else "")] = time.time() - t0

    log("stage 3-4/4: finetuning and baselines on fixed splits")
    methods: list[tuple[str, str, str]] = []  # (method name, checkpoint, mode)
    for name, path in pretrained.items():
        methods.append((f"EEGMamba pretrained ({name}), finetuned", str(path), "finetune"))
    methods.append(("EEGMamba from scratch", "none", "finetune"))
    if not args.no_probe:
        for name, path in pretrained.items():
            methods.append((f"EEGMamba linear probe ({name})", str(path), "linear_probe"))
    runs: list[dict] = []
    splits_record: dict[str, dict] = {}
    plans = [t for t in TASKS if t.name in args.task_names]
    for plan in plans:
        t_task = time.time()
        for seed in range(args.seeds):
            data, split = task_split(plan, folders[plan.corpus], seed, budget)
            described = split.describe()
            splits_record.setdefault(plan.name, {})[str(seed)] = described
            log(f"{plan.name} seed {seed}: {len(data.windows)} windows, classes {list(data.recipe.classes)}, "
                f"{described['group_key']} fold {described['fold']}/{described['n_folds']}, windows {described['n_windows']}")
            for method, checkpoint, mode in methods:
                slug = hashlib.sha256(method.encode()).hexdigest()[:8]
                r = run_eegmamba(plan, folders[plan.corpus], seed, budget, checkpoint=checkpoint, mode=mode,
                                 out=out / "finetune" / plan.name / f"{slug}-seed{seed}", pool=args.pool)
                if r["split"]["groups"] != described["groups"]:
                    raise RuntimeError(f"{plan.name} seed {seed}: finetune's split differs from the benchmark's "
                                       f"({r['split']['groups']} vs {described['groups']})")
                runs.append({"task": plan.name, "method": method, "seed": seed, **{k: v for k, v in r.items() if k != "split"}})
                log(f"  {method}: bal.acc {r['metrics']['balanced_accuracy']:.3f} ({r['seconds']:.0f} s, "
                    f"best epoch {r['best_epoch']} of {r['epochs_run']})")
            for method, r in run_baselines(plan, data, split, seed, budget).items():
                runs.append({"task": plan.name, "method": method, "seed": seed, **r})
                log(f"  {method}: bal.acc {r['metrics']['balanced_accuracy']:.3f} ({r['seconds']:.0f} s)")
        stages[f"3 {plan.name}: all methods x {args.seeds} seeds"] = time.time() - t_task

    info = machine()
    payload = {
        "command": ["python", *sys.argv], "quick": args.quick, "seeds": args.seeds, "budget": dataclasses.asdict(budget),
        "machine": info, "stages_s": stages, "total_s": time.time() - t_start,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pretrain_losses": losses, "runs": runs,
        "splits": splits_record, "notes": notes, "tasks": {t.name: dataclasses.asdict(t) for t in plans},
    }
    payload["table"] = aggregate(runs)
    write_results(payload, args.results)
    if args.readme is not None:
        update_readme(args.readme, render(payload))
    return 0


SCRATCH, BAND = "EEGMamba from scratch", "band power + LR"


def paired_differences(runs: Sequence[Mapping[str, Any]], method: str, reference: str,
                       metric: str = "balanced_accuracy") -> dict[str, dict]:
    """Per task: ``method - reference`` on the same split (seed), mean ± std over seeds, and wins/seeds."""
    by = {(r["task"], r["method"], r["seed"]): r["metrics"].get(metric) for r in runs}
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        diffs = [by[(task, method, s)] - by[(task, reference, s)] for (t, m, s) in by
                 if t == task and m == method and by.get((task, reference, s)) is not None and by[(t, m, s)] is not None]
        out[task] = {**summarize(diffs), "wins": int(sum(d > 0 for d in diffs))}
    return out


def render(payload: Mapping[str, Any]) -> str:
    """The Markdown report of one benchmark run (a pure function of its results.json payload)."""
    runs = payload["runs"]
    table = aggregate(runs)
    titles = {t.name: t.title for t in TASKS}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    pretrained = [m for m in methods if m.startswith("EEGMamba pretrained")]
    info = payload["machine"]
    command = " ".join(payload["command"]) if isinstance(payload["command"], list) else str(payload["command"])
    if not command.startswith("python"):
        command = "python " + command
    finished = f"Finished: {payload['finished']}, " if payload.get("finished") else ""
    diff_lines = []
    for method in pretrained:
        for ref in (SCRATCH, BAND):
            if ref not in methods:
                continue
            d = paired_differences(runs, method, ref)
            cells = "; ".join(f"{titles.get(t, t).split(' (')[0]} {v['mean']:+.3f} ± {v['std']:.3f} ({v['wins']}/{v['n']} seeds)"
                              for t, v in d.items() if v["n"])
            diff_lines.append(f"- {method} minus {ref}: {cells}")
    losses = payload.get("pretrain_losses", {})
    md = [
        f"# Downstream benchmark{' (--quick smoke test)' if payload.get('quick') else ''}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {info.get('cpu', info.get('processor'))}, {info['cpu_count']} CPU cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), Python {info['python']}  ",
        f"{finished}total wall time {payload['total_s'] / 60:.1f} min",
        "",
        "Test-split metrics, mean ± std over seeds (seed s = fold s mod k of a group k-fold, "
        "groups = segments / excerpts / runs / subjects; same split for every method).",
        "",
        results_table(table, titles),
        "",
        "## Aims (issue 7), on mean balanced accuracy",
        "",
        *aims(table, pretrained, SCRATCH, BAND),
        "",
        "Paired by seed (same split), balanced accuracy differences, mean ± std (seeds where the first is better):",
        "",
        *diff_lines,
        "",
        "## Pretraining",
        "",
        *[f"- {name}: {len(ls)} steps, loss {np.mean(ls[:max(1, len(ls) // 10)]):.4f} (first 10 %) -> "
          f"{np.mean(ls[-max(1, len(ls) // 10):]):.4f} (last 10 %)" for name, ls in losses.items() if ls],
        "",
        "## Wall time per stage",
        "",
        stage_table(payload["stages_s"]),
        "",
    ]
    return "\n".join(md)


README_BEGIN = "<!-- downstream-results:begin -->"
README_END = "<!-- downstream-results:end -->"


def update_readme(readme: Path, report: str) -> None:
    """Put ``report`` (the results.md text) between the README's markers, headings one level down.

    So the README's numbers are the script's output, never typed by hand.
    """
    text = readme.read_text()
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise SystemExit(f"{readme}: expected one {README_BEGIN} and one {README_END} marker")
    body = "\n".join(("#" + line if line.startswith("## ") else line) for line in report.splitlines()
                     if not line.startswith("# "))
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    readme.write_text(f"{head}{README_BEGIN}\n{body.strip()}\n{README_END}{tail}")
    log(f"updated the results block of {readme}")


def write_results(payload: Mapping[str, Any], folder: Path) -> None:
    text = render(payload)
    print(text)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(text)
    (folder / "results.json").write_text(json.dumps(_json_safe(payload), indent=1))
    log(f"wrote {folder / 'results.md'} and results.json")


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    if isinstance(x, Path):
        return str(x)
    return x


if __name__ == "__main__":
    sys.exit(main())
