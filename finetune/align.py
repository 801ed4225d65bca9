"""Euclidean alignment (He & Wu, IEEE TBME 2019): the subject-adaptive input step of finetuning.

EEG differs between people in ways no label explains: skull and skin conductance, electrode impedance and
montage placement scale and mix the channels. Euclidean alignment whitens each subject's windows by the inverse
square root of their mean channel covariance, ``x <- R^{-1/2} x`` with ``R = mean_i x_i x_i^T / t``, so every
subject's aligned windows have identity mean covariance. It uses no label and only that subject's own windows,
so a new recording can be aligned the same way before it is labelled (``finetune.predict`` aligns each recording
by its own windows). Whitened windows have unit variance; they are scaled to ``ALIGNED_RMS_UV`` (20 µV, a
typical scalp EEG level) so they stay in the range the backbone was pretrained on (the suite's units are
100 µV). It is a protocol: a model trained on aligned windows must be fed aligned windows, and
comparisons are fair only when every method gets the same aligned input (``benchmarks/downstream.py`` reports it
as its own rows).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from runtime.signal import UNIT_UV
from shards.sample import Window

__all__ = ["ALIGNMENTS", "ALIGNED_RMS_UV", "alignment_matrix", "align_groups", "align_array", "align_with",
           "mean_covariance", "standardize_groups", "whitening", "FeatureMoments"]

ALIGNMENTS = ("none", "euclidean")
ALIGNED_RMS_UV = 20.0


def mean_covariance(x: np.ndarray) -> np.ndarray:
    """``R = mean_i x_i x_i^T / t`` of windows ``x [n, c, t]``: ``[c, c]`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return np.einsum("nct,ndt->cd", x, x) / (x.shape[0] * x.shape[2])


def whitening(cov: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``R^{-1/2}`` of a mean covariance ``[c, c]``. ``eps`` (relative to the mean eigenvalue) keeps a flat or
    duplicated channel from blowing up its direction."""
    vals, vecs = np.linalg.eigh(cov)
    floor = eps * max(float(vals.mean()), 1e-12)
    return (vecs / np.sqrt(np.maximum(vals, floor))) @ vecs.T


def alignment_matrix(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``R^{-1/2}`` of windows ``x [n, c, t]``: ``[c, c]`` (float64)."""
    return whitening(mean_covariance(x), eps)


def align_with(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Windows ``x [n, c, t]`` whitened by ``matrix`` (:func:`alignment_matrix` of their group) and scaled to
    ``ALIGNED_RMS_UV`` (float32); a long recording is aligned batch by batch with the matrix of all its windows."""
    scale = ALIGNED_RMS_UV / UNIT_UV  # µV -> the suite's units
    return (scale * np.einsum("cd,ndt->nct", matrix, np.asarray(x, dtype=np.float64))).astype(np.float32)


def align_array(x: np.ndarray) -> np.ndarray:
    """All windows ``x [n, c, t]`` of one subject (or recording), aligned together (float32)."""
    return align_with(x, alignment_matrix(x))


def align_groups(windows: Sequence[Window], groups: Sequence[str]) -> list[Window]:
    """Each group's windows aligned by that group's own covariance; windows of one group with different channel
    lists (two montages of one subject) are aligned separately. Returns new windows in the same order."""
    members: dict[tuple, list[int]] = defaultdict(list)
    for i, (w, g) in enumerate(zip(windows, groups)):
        members[(g, tuple(w.meta.get("channels", ())), w.eeg.shape)].append(i)
    out: list[Window | None] = [None] * len(windows)
    for idx in members.values():
        aligned = align_array(np.stack([np.asarray(windows[i].eeg, dtype=np.float32) for i in idx]))
        for i, a in zip(idx, aligned):
            out[i] = Window(a, windows[i].meta)
    return out  # type: ignore[return-value]


def standardize_groups(features: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Per-subject feature standardisation: each group's rows of ``features [n, D]`` minus that group's mean,
    divided by its standard deviation (a feature constant within a group is only centred). Returns ``[n, D]``
    float64 in the same order.

    The frozen-feature counterpart of Euclidean alignment: where alignment whitens the signal, this removes each
    subject's offset and scale from every feature a readout sees (a subject whose alpha power is high in every
    condition no longer looks like one condition). Like alignment it uses no label and only the group's own
    windows, so a new subject is standardised by their own recording.

    Raises:
        ValueError: ``groups`` does not name one group per row.
    """
    f = np.asarray(features, dtype=np.float64)
    g = np.asarray(list(groups), dtype=object)
    if f.ndim != 2 or len(g) != f.shape[0]:
        raise ValueError(f"standardize_groups: features must be [n, D] with one group per row, got features "
                         f"{f.shape} and {len(g)} group names")
    out = np.empty_like(f)
    for name in dict.fromkeys(g.tolist()):
        rows = g == name
        moments = FeatureMoments()
        moments.add(f[rows])
        out[rows] = moments.standardize(f[rows])
    return out


class FeatureMoments:
    """Running per-feature mean and standard deviation (float64) of one subject's features, batch by batch, and
    :meth:`standardize` with them as :func:`standardize_groups` does (a feature constant within the subject is
    only centred): how prediction standardises a recording it reads in blocks. Batches are merged by
    Chan et al.'s pairwise update, so a feature with a large mean and a small spread keeps its spread (the naive
    ``E[f^2] - E[f]^2`` would cancel it away)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, f: np.ndarray) -> None:
        f = np.asarray(f, dtype=np.float64)
        if not len(f):
            return
        mean, m2, n = f.mean(0), ((f - f.mean(0)) ** 2).sum(0), len(f)
        delta, total = mean - self.mean, self.n + n
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta ** 2 * self.n * n / total
        self.n = total

    def standardize(self, f: np.ndarray) -> np.ndarray:
        std = np.sqrt(self.m2 / self.n)
        return (np.asarray(f, dtype=np.float64) - self.mean) / np.where(std > 1e-12, std, 1.0)
