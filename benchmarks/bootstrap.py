"""Bootstrap confidence intervals over test groups (subjects / recordings / segments), never over windows.

Windows of one recording are correlated, so resampling windows would give intervals far too narrow for
what a new subject will see. A resample draws the test *groups* with replacement and keeps every window of
each drawn group, each as many times as its group was drawn: the statistics here take that as a weight per
window, which scores a resample without building it (the report bootstraps every paired difference of every
task, thousands of AUROCs). The statistic is the mean over seeds of each seed's metric on its resampled test
set (seeds that test on the same groups share one draw, so a paired difference of two methods is resampled on
the same groups). The interval is the percentile interval of ``n_boot`` resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
# Fewer groups than this give no interval: n groups have only C(2n-1, n) distinct resamples (3 for 2 groups, 35
# for 4), too few for a 95 % percentile interval to say anything.
MIN_GROUPS = 5


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``), fast;
    ``weights [n]`` counts each window that many times (a bootstrap resample)."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    n_true = np.bincount(y, weights=w, minlength=n_classes)
    n_hit = np.bincount(y, weights=w * (pred == y), minlength=n_classes)
    present = n_true > 0
    return float((n_hit[present] / n_true[present]).mean()) if present.any() else float("nan")


class Ranking:
    """AUROC of fixed scores under any window weights: the Mann-Whitney U statistic, ties counted half. The
    scores are sorted once; each weighting costs a few ``bincount`` calls over the windows.

    ``score [n]``: the positive class's probability of a binary task; ``[n, k]``: the class probabilities of a
    multi-class one, scored macro one-vs-rest (scikit-learn's ``roc_auc_score(multi_class="ovr")``).
    """

    def __init__(self, y: np.ndarray, score: np.ndarray, n_classes: int):
        y = np.asarray(y)
        score = np.asarray(score, dtype=np.float64)
        columns = [(y == 1, score if score.ndim == 1 else score[:, 1])] if n_classes == 2 else \
            [(y == c, score[:, c]) for c in range(n_classes)]
        # per column: the positive mask, each window's bin among the distinct scores (ascending) and their number
        self.columns = []
        for positive, s in columns:
            distinct, bins = np.unique(s, return_inverse=True)
            self.columns.append((positive, bins.reshape(-1), len(distinct)))
        self.n = len(y)

    def auroc(self, weights: np.ndarray | None = None) -> float:
        """nan when a class has no weight (a resample that drew none of its windows ranks nothing)."""
        w = np.ones(self.n) if weights is None else np.asarray(weights, dtype=np.float64)
        values = []
        for positive, bins, n_bins in self.columns:
            neg = np.bincount(bins, weights=w * ~positive, minlength=n_bins)  # negative weight per distinct score
            w_pos, w_neg = float((w * positive).sum()), float(neg.sum())
            if w_pos == 0 or w_neg == 0:
                return float("nan")
            below = np.cumsum(neg) - neg  # negative weight strictly below each distinct score
            u = float((w * positive * (below[bins] + 0.5 * neg[bins])).sum())
            values.append(u / (w_pos * w_neg))
        return float(np.mean(values))


def group_bootstrap(groups: Sequence[Sequence[str]], stat: Callable[[int, np.ndarray], float], *,
                    n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL,
                    min_groups: int = MIN_GROUPS) -> dict[str, float] | None:
    """Percentile interval of ``mean over seeds i of stat(i, weights)`` under resampling test groups.

    Args:
        groups: per seed, ``[n_i]`` the test group of each test window.
        stat: ``(seed index, weights [n_i]) -> value``, ``weights`` how many times the resample drew each
            window's group.
        min_groups: fewer test groups than this in any seed give no interval.
    Returns ``{lo, hi, n_groups}`` (``n_groups``: the fewest test groups of a seed), or None when a seed
    has fewer than ``min_groups`` test groups.
    """
    prepared = []
    for g in groups:
        names, inverse = np.unique(np.asarray(g, dtype=str), return_inverse=True)
        prepared.append((tuple(names.tolist()), inverse.reshape(-1)))
    if not prepared or min(len(names) for names, _ in prepared) < max(2, min_groups):
        return None
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        draws: dict[tuple, np.ndarray] = {}
        per_seed = []
        for i, (names, inverse) in enumerate(prepared):
            if names not in draws:
                draws[names] = np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names)).astype(np.float64)
            per_seed.append(stat(i, draws[names][inverse]))
        values[b] = np.nanmean(per_seed) if np.isfinite(per_seed).any() else np.nan
    lo, hi = np.nanpercentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"lo": float(lo), "hi": float(hi), "n_groups": min(len(names) for names, _ in prepared)}
