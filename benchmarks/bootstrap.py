"""Bootstrap confidence intervals over test groups (subjects / recordings / segments), never over windows.

Windows of one recording are correlated, so resampling windows would give intervals far too narrow for
what a new subject will see. A resample draws the test *groups* with replacement and keeps every window of
each drawn group; the statistic is the mean over seeds of each seed's metric on its resampled test set
(seeds that test on the same groups share one draw, so a paired difference of two methods is resampled on
the same groups). The interval is the percentile interval of ``n_boot`` resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``), fast."""
    n_true = np.bincount(y, minlength=n_classes)
    n_hit = np.bincount(y[pred == y], minlength=n_classes)
    present = n_true > 0
    return float((n_hit[present] / n_true[present]).mean()) if present.any() else float("nan")


def group_bootstrap(groups: Sequence[Sequence[str]], stat: Callable[[int, np.ndarray], float], *,
                    n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict[str, float] | None:
    """Percentile interval of ``mean over seeds i of stat(i, windows)`` under resampling test groups.

    Args:
        groups: per seed, ``[n_i]`` the test group of each test window.
        stat: ``(seed index, window indices [m]) -> value``.
    Returns ``{lo, hi, n_groups}`` (``n_groups``: the fewest test groups of a seed), or None when a seed
    has fewer than 2 test groups (no interval over groups exists).
    """
    prepared = []
    for g in groups:
        g = np.asarray(g, dtype=object)
        names = sorted(set(g.tolist()))
        prepared.append((tuple(names), [np.flatnonzero(g == n) for n in names]))
    if not prepared or min(len(names) for names, _ in prepared) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        draws: dict[tuple, np.ndarray] = {}
        per_seed = []
        for i, (names, members) in enumerate(prepared):
            if names not in draws:
                draws[names] = rng.integers(0, len(names), len(names))
            per_seed.append(stat(i, np.concatenate([members[j] for j in draws[names]])))
        values[b] = np.nanmean(per_seed) if np.isfinite(per_seed).any() else np.nan
    lo, hi = np.nanpercentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"lo": float(lo), "hi": float(hi), "n_groups": min(len(names) for names, _ in prepared)}
