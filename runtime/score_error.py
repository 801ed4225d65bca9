"""Standard errors of the validation scores that model selection compares.

Pretraining's validation probe and finetuning's LP-FT both keep a simpler model unless a score beats it by
more than its noise; these give that noise for the scores they select on (AUROC, macro one-vs-rest AUROC,
balanced accuracy). Taking windows as independent they are closed forms rather than a bootstrap over windows:
selection runs every few hundred steps or every epoch, and on the few windows where the rule matters the two agree
within 25 %.

Windows are not independent when a few subjects give many each: a probe set of 4 subjects and 193 windows varies
between steps far more than 193 independent windows would. ``group_bootstrap_se`` resamples whole groups
(subjects) instead; ``score_se`` with ``groups`` takes the larger of the two. Nor are the windows of one recording
independent (a sleep stage lasts minutes): with a single group, ``group_bootstrap_se`` resamples contiguous blocks
of its windows instead (a block bootstrap, Carlstein 1986), the windows taken in the order given (time order).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["auroc_se", "balanced_accuracy_se", "score_se", "group_bootstrap_se"]


def auroc_se(auroc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982): standard error of an AUROC from ``n_pos`` positive and ``n_neg`` negative windows,
    the AUROC smoothed by half a pair towards 0.5 first (as balanced accuracy's recalls are), so a perfect score
    on three windows is not certain."""
    pairs = max(n_pos * n_neg, 0)
    a = (float(auroc) * pairs + 0.5) / (pairs + 1)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / max(n_pos * n_neg, 1)
    return math.sqrt(max(var, 0.0))


def balanced_accuracy_se(y: np.ndarray, pred: np.ndarray) -> float:
    """The binomial error of each class's recall, Laplace-smoothed (so a perfect recall is not certain), averaged
    like balanced accuracy. ``y [n]`` true and ``pred [n]`` predicted classes."""
    y, pred = np.asarray(y), np.asarray(pred)
    var = []
    for c in np.unique(y):
        n = int((y == c).sum())
        r = (float((pred[y == c] == c).sum()) + 1) / (n + 2)
        var.append(r * (1 - r) / n)
    return float(math.sqrt(sum(var)) / len(var)) if var else math.nan


def score_se(y: np.ndarray, proba: np.ndarray, scores: dict[str, float], groups: np.ndarray | None = None) -> float:
    """Standard error of the score ``scores`` holds: ``auroc`` (binary), ``auroc_macro`` (each class against the
    rest at the macro value, averaged as independent), else ``balanced_accuracy`` of ``proba``'s argmax.
    ``y [n]``, ``proba [n, classes]``; with ``groups [n]`` (subjects, windows of each in time order) the larger of
    that and :func:`group_bootstrap_se` of the same score."""
    closed = _closed_form_se(np.asarray(y), proba, scores)
    if groups is None:
        return closed
    kind = next((k for k in ("auroc", "auroc_macro") if _finite(scores.get(k))), "balanced_accuracy")
    boot = group_bootstrap_se(y, proba, groups, score=kind)
    return max(closed, boot) if math.isfinite(boot) else closed


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


#: Blocks a single group's windows are cut into for the block bootstrap: as if the recording were ten sessions, each
#: long enough (minutes, for a recording of half an hour) to hold a sleep stage's or a task's bout whole.
BLOCKS = 10


def group_bootstrap_se(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, *, score: str = "auroc",
                       n_boot: int = 200, seed: int = 0, blocks: int = BLOCKS) -> float:
    """Standard deviation of ``score`` (``"auroc"``, ``"auroc_macro"`` or ``"balanced_accuracy"``) over ``n_boot``
    resamples of whole groups with replacement. With a single group its windows, in the order given, are cut into
    ``blocks`` contiguous blocks and the blocks are resampled. NaN with fewer than two groups or blocks (a single
    window), or under 20 resamples holding every class. ``y [n]``, ``proba [n, classes]``, ``groups [n]``."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y, proba, groups = np.asarray(y), np.asarray(proba), np.asarray(groups)
    names = np.unique(groups)
    if len(names) >= 2:
        rows = [np.flatnonzero(groups == g) for g in names]
    else:
        rows = [part for part in np.array_split(np.arange(len(y)), min(blocks, len(y))) if part.size]
    if len(rows) < 2:
        return math.nan
    n_classes = proba.shape[1]

    def value(idx: np.ndarray) -> float:
        if score == "auroc":
            return roc_auc_score(y[idx], proba[idx, 1])
        if score == "auroc_macro":
            return roc_auc_score(y[idx], proba[idx], multi_class="ovr", average="macro", labels=list(range(n_classes)))
        return balanced_accuracy_score(y[idx], proba[idx].argmax(1))

    present = len(np.unique(y))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
        if len(np.unique(y[idx])) < present:
            continue
        values.append(value(idx))
    return float(np.std(values, ddof=1)) if len(values) >= 20 else math.nan


def _closed_form_se(y: np.ndarray, proba: np.ndarray, scores: dict[str, float]) -> float:
    if _finite(scores.get("auroc")):
        return auroc_se(scores["auroc"], int((y == 1).sum()), int((y == 0).sum()))
    if _finite(scores.get("auroc_macro")):
        classes = range(np.asarray(proba).shape[1])
        var = [auroc_se(scores["auroc_macro"], int((y == c).sum()), int((y != c).sum())) ** 2 for c in classes]
        return float(math.sqrt(sum(var)) / len(var))
    return balanced_accuracy_se(y, np.asarray(proba).argmax(1))
