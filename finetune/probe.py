"""A linear probe on frozen features: the head a finetuning run starts from (LP-FT), and all a linear-probe run is.

Kumar et al. (ICLR 2022, "Fine-Tuning can Distort Pretrained Features") show that a randomly initialised head
sends large, arbitrary gradients into pretrained features during the first steps; fitting the head on the frozen
features first and finetuning from there keeps what pretraining learned. Here the probe is scikit-learn's
logistic regression (class-balanced, L2) on features standardised with the training split's statistics, its
regularisation chosen on the validation split; :class:`~finetune.heads.ClassificationHead` with
``norm="standard"`` computes exactly that model, so the finetuned run starts at the probe's predictions, and
model selection keeps the probe when no finetuning epoch beats it on validation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from finetune.data import batch_tensors
from finetune.metrics import classification_metrics, selection_score

__all__ = ["Probe", "fit_probe", "task_features", "PROBE_CS"]

# Inverse regularisation strengths tried; features are hundreds to thousands of dimensions and training sets
# often a few hundred windows, so strong regularisation must be on the list. The benchmark's EEGMAT probes pick
# the lowest, 1e-3, in most folds, yet a grid down to 1e-5 scored lower there (balanced accuracy -0.008) and left
# every motor-imagery fold model (one subject) a constant predictor: below 1e-3 the probe stops separating and ties.
PROBE_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class Probe:
    """A fitted probe: standardisation ``mean``/``std [D]`` and the linear map ``weight [k, D]``, ``bias [k]``
    of the standardised features to logits; ``C`` chosen, validation ``metrics`` per ``C`` tried."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    C: float
    scores: dict[float, float] = field(default_factory=dict)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias


@torch.no_grad()
def task_features(model, windows: Sequence[Any], task: str, *, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """``[n, in_features]`` what ``task``'s head reads for each window, with the backbone in eval mode
    (no dropout, drop path or gate noise; the mode is restored)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(windows), batch_size):
            b = batch_tensors(windows[i:i + batch_size])
            f = model.features(b["x"].to(device), b["channel_ids"].to(device), b["channel_mask"].to(device), task)
            out.append(f.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))


def fit_probe(f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray | None, y_val: np.ndarray | None,
              n_classes: int, *, seed: int = 0, cs: Sequence[float] = PROBE_CS, max_windows: int = 20000) -> Probe:
    """Class-balanced logistic regression on standardised ``f_train [n, D]``; ``C`` maximises the validation
    selection score (``finetune.metrics.selection_score``: AUROC, else balanced accuracy); ties go to the
    stronger regularisation. Without a usable validation set (empty, or one class) ``C = 0.01``.
    At most ``max_windows`` evenly spaced training windows are used (the probe is a starting point; sklearn's
    solver is not built for millions of rows).

    Raises:
        ValueError: a class has no training window.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    y_train = np.asarray(y_train, dtype=np.int64)
    missing = sorted(set(range(n_classes)) - set(y_train.tolist()))
    if missing:
        raise ValueError(f"probe: class(es) {missing} have no training window")
    if len(y_train) > max_windows:
        keep = np.linspace(0, len(y_train) - 1, max_windows).round().astype(int)
        f_train, y_train = f_train[keep], y_train[keep]
    mean = f_train.mean(0)
    std = f_train.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    z_train = (f_train - mean) / std
    usable = f_val is not None and y_val is not None and len(y_val) > 0 and len(np.unique(y_val)) > 1
    tried = tuple(cs) if usable else (0.01,)
    best: tuple[float, Any] | None = None
    scores: dict[float, float] = {}
    for c in sorted(tried):
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z_train, y_train)
        if usable:
            proba = clf.predict_proba((f_val - mean) / std)
            scores[c] = selection_score(classification_metrics(y_val, proba, n_classes=n_classes))
            if best is None or scores[c] > scores[best[0]] + 1e-9:
                best = (c, clf)
        else:
            best = (c, clf)
    c, clf = best
    if n_classes == 2:
        # sklearn's binary model is one logit; softmax over (0, w.x + b) gives the same probabilities
        weight = np.vstack([np.zeros_like(clf.coef_[0]), clf.coef_[0]])
        bias = np.array([0.0, clf.intercept_[0]])
    else:
        weight, bias = clf.coef_, clf.intercept_
    return Probe(mean=mean, std=std, weight=weight, bias=bias, C=float(c), scores=scores)
