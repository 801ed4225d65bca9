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

__all__ = ["PRIMARY_METRIC", "classification_metrics", "chance_level"]

PRIMARY_METRIC = "balanced_accuracy"


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray | None = None,
    *,
    y_pred: Sequence[int] | np.ndarray | None = None,
    n_classes: int | None = None,
) -> dict[str, float | int | list[list[int]]]:
    """Metrics of one evaluation set.

    Args:
        y_true: ``[n]`` integer class indices in ``[0, n_classes)``.
        proba: ``[n, n_classes]`` class probabilities (rows sum to 1); ``y_pred`` defaults to its argmax.
            Needed for AUROC / AUC-PR (binary tasks only).
        y_pred: ``[n]`` predicted classes, when no probabilities are available.
        n_classes: size of the label space (default: ``proba.shape[1]`` or ``max(y) + 1``); fixes the
            confusion-matrix shape even when a class is absent from this set.

    Returns:
        ``balanced_accuracy, cohen_kappa, weighted_f1, accuracy, n`` and ``confusion_matrix``
        (``[n_classes, n_classes]`` list, rows = true class); for binary tasks also ``auroc`` and
        ``auc_pr`` (positive class = index 1). Values are plain Python floats/ints.
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
            y_pred = proba.argmax(axis=1)
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
        if n_classes == 2 and proba is not None:
            score = proba[:, 1]
            both = len(np.unique(y_true)) == 2
            out["auroc"] = float(roc_auc_score(y_true, score)) if both else math.nan
            out["auc_pr"] = float(average_precision_score(y_true, score)) if both else math.nan
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def chance_level(n_classes: int) -> float:
    """Balanced accuracy of a constant or random classifier: ``1 / n_classes``."""
    return 1.0 / n_classes


def _nan_safe(fn) -> float:
    value = float(fn())
    return value if math.isfinite(value) else math.nan
