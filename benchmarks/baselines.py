"""Baselines of ``benchmarks/downstream.py`` on the same splits as EEGMamba: log band power + logistic regression,
and braindecode's EEGNet with its own small training loop (importable on a CPU-only torch); the fitted band-power
model labels raw recordings under shift (:class:`BandPowerLabeller`, for ``benchmarks/shift.py``)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.tasks import Budget, TaskPlan
from runtime.signal import SFREQ  # the shards' common rate

BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 45.0),
}


def import_eegnet() -> type:
    """``braindecode.models.EEGNet``, importable on a CPU-only torch (``finetune.braindecode.braindecode_models``
    stubs torchaudio when its CUDA-linked wheel cannot load; EEGNet does not use it).

    Raises:
        ImportError: braindecode is not installed (the ``braindecode`` extra).
    """
    from finetune.braindecode import braindecode_models

    return braindecode_models().EEGNet


def eegnet_unavailable() -> str | None:
    """Why the EEGNet row cannot run here (braindecode missing), or None when it can."""
    try:
        import_eegnet()
    except ImportError as err:
        return f"no EEGNet rows: {err}"
    return None


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


@dataclass(frozen=True)
class BandPowerLabeller:
    """The fitted band power + LR pipeline as a ``benchmarks.shift.Labeller``: labels a raw recording's windows.

    Windows come from ``finetune.predict.recording_windows(model_dir, path)``, the read path of
    ``predict_file``, with the preprocessing and recipe of an EEGMamba model finetuned on the same shard
    windows the pipeline was fitted on (the benchmark passes its seed-0 scratch model's folder). Features are
    :func:`band_power_features` per training channel, in training order. Channels the training windows did
    not have are ignored. A training channel the recording lacks (``drop_half_channels``, another montage)
    gets the training mean of its five features, the StandardScaler's ``mean_``: a fixed-feature model needs
    a value in every column, and after standardisation the mean is 0, so the missing channel adds nothing to
    the logits and the decision rests on the channels present (mean imputation, what a deployed model of this
    kind would do). Zeros instead would be a log10 power of 1 (100 µV)², far outside the training range.

    Single-channel training windows under different names (DREAMS: C3 in some excerpts, CZ in others) were
    stacked by position in distribution (``stack_windows``), so the labeller does the same: ``positional``,
    any recording whose windows have that one channel.

    Probabilities are in ``classes`` order (a class absent from training gets 0).
    """

    pipeline: Any  # sklearn Pipeline(StandardScaler, LogisticRegression) on band_power_features
    channels: tuple[str, ...]  # training windows' channels (canonical names), the feature order
    classes: tuple[str, ...]
    positional: bool = False  # one channel whatever its name, as the in-distribution baseline saw it

    @classmethod
    def fit_on(cls, pipeline, windows, classes: Sequence[str]) -> BandPowerLabeller:
        """From the training windows' channel list; ValueError when they do not share one (unless every
        window has one channel: then ``positional``)."""
        lists = {tuple(w.meta["channels"]) for w in windows}
        if len(lists) != 1:
            if {len(c) for c in lists} == {1}:
                return cls(pipeline, ("|".join(sorted(c[0] for c in lists)),), tuple(classes), positional=True)
            raise ValueError(f"the band-power training windows have {len(lists)} channel lists (e.g. "
                             f"{sorted(lists)[:2]}); one fixed feature order is needed to label other recordings")
        return cls(pipeline, lists.pop(), tuple(classes))

    def features(self, x: np.ndarray, channels: Sequence[str], sfreq: float = SFREQ) -> np.ndarray:
        """``x [n, c, t]`` with rows ``channels`` -> ``[n, len(self.channels) * 5]`` in training order, the
        training channels ``channels`` lacks at the scaler's mean."""
        if self.positional:
            if x.shape[1] != 1:
                raise ValueError(f"band power was trained on one channel ({self.channels[0]}); the recording's "
                                 f"windows have {x.shape[1]} ({list(channels)})")
            return band_power_features(x, sfreq)
        n_bands = len(BANDS)
        scaler = self.pipeline[0]
        out = np.tile(np.asarray(scaler.mean_, dtype=np.float64), (len(x), 1)).reshape(len(x), len(self.channels), n_bands)
        have = [(i, list(channels).index(c)) for i, c in enumerate(self.channels) if c in channels]
        if have:
            rows = [j for _, j in have]
            out[:, [i for i, _ in have]] = band_power_features(x[:, rows], sfreq).reshape(len(x), len(rows), n_bands)
        return out.reshape(len(x), -1)

    def __call__(self, model_dir: str | Path, path: str | Path, *, task: str | None = None,
                 window_s: float | None = None) -> list[dict[str, Any]]:
        from finetune.predict import prediction_rows, recording_windows

        rec = recording_windows(model_dir, path, task=task, window_s=window_s)
        if list(rec.classes) != list(self.classes):
            raise RuntimeError(f"{model_dir}: recipe classes {rec.classes} differ from the band-power model's {list(self.classes)}")
        fitted = self.pipeline.predict_proba(self.features(rec.x, rec.channels, rec.sfreq))
        proba = np.zeros((len(rec.x), len(self.classes)))
        proba[:, self.pipeline.classes_] = fitted
        return prediction_rows(rec.onsets_s, proba, self.classes)


def stack_windows(windows) -> np.ndarray:
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


def band_power_run(plan: TaskPlan, data, split, seed: int) -> tuple[dict, BandPowerLabeller | str]:
    """Band power + LR on one split: its result (test metrics, probabilities, seconds, C) and the shift
    labeller fitted on it, or the note why there is none."""
    from finetune.metrics import classification_metrics

    n_classes = data.recipe.n_classes
    x, y = stack_windows(data.windows), data.labels
    t0 = time.time()
    feats = band_power_features(x)
    lr = fit_band_power(feats[split.train], y[split.train], feats[split.val], y[split.val], seed=seed)
    proba = np.zeros((len(split.test), n_classes))
    proba[:, lr.classes_] = lr.predict_proba(feats[split.test])  # a class absent from training keeps 0
    result = {"metrics": classification_metrics(y[split.test], proba, n_classes=n_classes),
              "seconds": time.time() - t0, "C": float(lr[-1].C), "test_proba": np.round(proba, 5).tolist()}
    try:
        return result, BandPowerLabeller.fit_on(lr, [data.windows[i] for i in split.train], data.recipe.classes)
    except ValueError as err:
        return result, f"{plan.name}: no band-power shift rows: {err}"


def run_baselines(plan: TaskPlan, data, split, seed: int, budget: Budget) -> dict[str, dict]:
    """Band power + logistic regression and EEGNet on one split; test metrics, test probabilities (rounded
    to 5 decimals, for the bootstrap over test groups) and seconds of each. Without braindecode there is
    no EEGNet entry (:func:`eegnet_unavailable` says why; the benchmark notes it once).

    The band-power result also holds ``labeller`` (a :class:`BandPowerLabeller`, or None) and
    ``labeller_note`` (why there is none); both are objects for the shift rows, not results: pop them.
    """
    from finetune.metrics import classification_metrics

    n_classes = data.recipe.n_classes
    x = stack_windows(data.windows)
    y = data.labels
    band, labeller = band_power_run(plan, data, split, seed)
    out = {"band power + LR": {**band, "labeller": None if isinstance(labeller, str) else labeller,
                               "labeller_note": labeller if isinstance(labeller, str) else None}}
    if eegnet_unavailable():
        return out
    t0 = time.time()
    model, ran = train_eegnet(x[split.train], y[split.train], x[split.val], y[split.val], n_classes=n_classes,
                              epochs=budget.eegnet_epochs, patience=budget.eegnet_patience, seed=seed, batch_size=budget.batch_size)
    proba = predict_proba_torch(model, x[split.test])
    out["EEGNet (braindecode)"] = {"metrics": classification_metrics(y[split.test], proba, n_classes=n_classes),
                                   "seconds": time.time() - t0, "epochs_run": ran,
                                   "test_proba": np.round(proba, 5).tolist()}
    return out
