"""Classification metrics for the downstream tasks, computed with scikit-learn.

The set follows the anchors' benchmark tables (LaBraM / CBraMod / EEGMamba): balanced accuracy is the
primary metric (the downstream sets are imbalanced, e.g. sleep N1 or ictal windows are rare), plus
Cohen's kappa and weighted F1 for every task, and AUROC + AUC-PR (average precision) for binary tasks.

Undefined values (AUROC when the evaluation set holds one class only) are ``nan`` here and ``null`` in
the JSON reports, never a made-up number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from runtime.score_error import score_se

__all__ = ["PRIMARY_METRIC", "MIN_VAL_WINDOWS", "classification_metrics", "chance_level", "choose_threshold",
           "is_constant_predictor", "MIN_SPREAD", "predict_labels", "responds", "selection_score",
           "selection_se"]

PRIMARY_METRIC = "balanced_accuracy"
# Below this range of the most predicted class's probability a model's outputs do not depend on its input.
MIN_SPREAD = 0.01


def predict_labels(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class per row of ``proba [n, k]``: the argmax, or for a binary task with ``threshold`` (the positive
    class's decision threshold chosen on validation, :func:`choose_threshold`) ``proba[:, 1] >= threshold``."""
    proba = np.asarray(proba, dtype=np.float64)
    if threshold is not None and proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)


# Below this many validation windows, model selection and a decision threshold are little more than a coin toss.
MIN_VAL_WINDOWS = 20


def choose_threshold(y_true: Sequence[int] | np.ndarray, proba: np.ndarray, *,
                     min_windows: int = MIN_VAL_WINDOWS) -> float | None:
    """The decision threshold on the positive class's probability that maximises balanced accuracy on this
    (validation) set; ties go to the threshold nearest 0.5. None (decide at 0.5) when the set holds one class
    only or fewer than ``min_windows`` windows, the task is not binary, or the scores rank the set no better
    than chance (AUROC <= 0.5).

    Class weights, label smoothing and a small training set all move a model's probabilities away from
    0.5 at the class boundary, so a model can rank windows perfectly (AUROC 1) and still call nearly all of
    them one class at 0.5; the validation set says where the boundary is. Where the validation subjects are
    ranked backwards, the best threshold is an extreme that calls nearly every window one class and scores
    balanced accuracy 0.5 plus noise; such a set says nothing about the boundary, and the model keeps the one its
    class-weighted training put at 0.5 (on held-out subjects of a cross-subject stress task, the extreme
    thresholds labelled every test window alike). A handful of windows is separated perfectly by many thresholds
    and says as little: on the benchmark's motor imagery (3 validation windows) thresholds chosen so made 6 fold
    models label every test window alike, each of which predicted both classes at 0.5.
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != 2 or len(np.unique(y)) < 2 or len(y) < min_windows:
        return None
    score = proba[:, 1]
    if roc_auc_score(y, score) <= 0.5:
        return None
    values = np.unique(score)
    # candidate thresholds: midpoints between consecutive distinct scores, and the ends
    cands = np.concatenate([[values[0]], (values[:-1] + values[1:]) / 2, [np.nextafter(values[-1], np.inf)]])
    pos, neg = y == 1, y == 0
    tpr = (score[pos][None, :] >= cands[:, None]).mean(1)
    tnr = (score[neg][None, :] < cands[:, None]).mean(1)
    bacc = (tpr + tnr) / 2
    best = np.flatnonzero(bacc >= bacc.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray | None = None,
    *,
    y_pred: Sequence[int] | np.ndarray | None = None,
    n_classes: int | None = None,
    threshold: float | None = None,
) -> dict[str, float | int | list[list[int]]]:
    """Metrics of one evaluation set.

    Args:
        y_true: ``[n]`` integer class indices in ``[0, n_classes)``.
        proba: ``[n, n_classes]`` class probabilities (rows sum to 1); ``y_pred`` defaults to its argmax
            (binary tasks with ``threshold``: ``proba[:, 1] >= threshold``). Needed for AUROC / AUC-PR and
            the loss.
        y_pred: ``[n]`` predicted classes, when no probabilities are available.
        n_classes: size of the label space (default: ``proba.shape[1]`` or ``max(y) + 1``); fixes the
            confusion-matrix shape even when a class is absent from this set.
        threshold: a binary task's decision threshold on ``proba[:, 1]`` (None = argmax).

    Returns:
        ``balanced_accuracy, cohen_kappa, weighted_f1, accuracy, n``, ``confusion_matrix``
        (``[n_classes, n_classes]`` list, rows = true class), ``predicted_classes`` (how many classes the
        predictions use: 1 = a constant predictor) and, with probabilities, ``nll`` (mean negative
        log-likelihood) and ``proba_spread`` (range of the probability of the most predicted class: below
        0.01 the model ignores its input); binary tasks also ``auroc`` and ``auc_pr`` (positive class =
        index 1), multi-class ones ``auroc_macro`` (one-vs-rest, when every class is present). Values are
        plain Python floats/ints.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64)
        if proba.ndim != 2 or proba.shape[0] != y_true.shape[0]:
            raise ValueError(f"proba must be [n={y_true.shape[0]}, n_classes], got shape {proba.shape}")
        if n_classes is None:
            n_classes = proba.shape[1]
        elif proba.shape[1] != n_classes:
            raise ValueError(f"proba has {proba.shape[1]} columns but n_classes={n_classes}")
        if y_pred is None:
            y_pred = predict_labels(proba, threshold)
    if y_pred is None:
        raise ValueError("classification_metrics needs proba or y_pred")
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_true has {y_true.shape[0]} items but y_pred has {y_pred.shape[0]}")
    if y_true.size == 0:
        raise ValueError("classification_metrics got an empty evaluation set")
    if n_classes is None:
        n_classes = int(max(y_true.max(), y_pred.max())) + 1
    bad = (y_true < 0) | (y_true >= n_classes)
    if bad.any():
        raise ValueError(f"y_true holds labels outside [0, {n_classes}): {sorted(set(y_true[bad].tolist()))}")
    labels = list(range(n_classes))

    with warnings.catch_warnings():
        # sklearn warns (and returns its documented value) when a class is missing from a small
        # evaluation fold; the numbers stay meaningful, the warning would only be noise.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        out: dict[str, float | int | list[list[int]]] = {
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "cohen_kappa": _nan_safe(lambda: cohen_kappa_score(y_true, y_pred, labels=labels)),
            "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "n": int(y_true.size),
        }
        out["predicted_classes"] = int(len(np.unique(y_pred)))
        if proba is not None:
            out.update(_probability_metrics(y_true, proba, y_pred, n_classes))
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def _probability_metrics(y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """``nll``, ``proba_spread`` and the ranking metrics (AUROC, AUC-PR; macro AUROC for multi-class)."""
    picked = proba[np.arange(len(y_true)), y_true]
    top = int(np.bincount(y_pred, minlength=n_classes).argmax())
    out = {"nll": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()),
           "proba_spread": float(proba[:, top].max() - proba[:, top].min())}
    if n_classes == 2:
        both = len(np.unique(y_true)) == 2
        out["auroc"] = float(roc_auc_score(y_true, proba[:, 1])) if both else math.nan
        out["auc_pr"] = float(average_precision_score(y_true, proba[:, 1])) if both else math.nan
    else:
        every = len(np.unique(y_true)) == n_classes
        out["auroc_macro"] = (float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                                  labels=list(range(n_classes)))) if every else math.nan)
    return out


def is_constant_predictor(metrics: dict) -> bool:
    """One predicted class for every window, or probabilities that barely move (spread < ``MIN_SPREAD``): a result
    such a model gets says nothing about its input (a constant classifier scores 1/k balanced accuracy
    and any AUROC its ties give)."""
    return metrics.get("predicted_classes", 2) <= 1 or not responds(metrics)


def responds(metrics: dict) -> bool:
    """The probabilities move with the input (``proba_spread >= MIN_SPREAD``). Unlike one predicted class, a
    barely moving output cannot be repaired by a decision threshold."""
    return metrics.get("proba_spread", 1.0) >= MIN_SPREAD


def selection_score(metrics: dict) -> float:
    """What model selection maximises on validation: AUROC (binary) or macro one-vs-rest AUROC (multi-class),
    which rank windows and so cannot prefer a constant predictor; balanced accuracy where AUROC is undefined
    (a class missing from the validation set)."""
    for key in ("auroc", "auroc_macro"):
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            return float(value)
    return float(metrics["balanced_accuracy"])


def selection_se(y_true: np.ndarray, proba: np.ndarray, metrics: dict, groups: np.ndarray | None = None) -> float:
    """Standard error of ``selection_score(metrics)`` on the windows it was measured on (``y_true [n]``,
    ``proba [n, classes]``): the noise a finetuned epoch's gain over the probe must exceed to count. ``score_se``
    picks the same score ``selection_score`` does (AUROC, macro AUROC, else balanced accuracy of the argmax); with
    ``groups [n]`` (each window's subject, windows in time order) the larger of the window-level error and a
    bootstrap over the groups (over blocks of the windows when there is one group), since a few subjects giving many
    windows each, or one recording's neighbouring windows, vary far more than as many independent windows would."""
    return score_se(y_true, proba, metrics, groups)


def chance_level(n_classes: int) -> float:
    """Balanced accuracy of a constant or random classifier: ``1 / n_classes``."""
    return 1.0 / n_classes


def _nan_safe(fn) -> float:
    value = float(fn())
    return value if math.isfinite(value) else math.nan
