"""Train / validation / test splits by subject or recording, never by window.

Windows cut from one recording are strongly correlated (same electrodes, same session, overlapping
spans), so a window-level split measures memorisation of the recording, not generalisation. Every
split here assigns whole *groups* (a subject, or a recording when subjects are unknown or too few) to
exactly one side.

Protocol: k-fold cross-validation over groups with scikit-learn's :class:`StratifiedGroupKFold`
(shuffled by ``seed``, class proportions kept as even as the groups allow). Fold ``f`` is the test
set, fold ``(f + 1) % k`` the validation set for early stopping, the rest trains. With few groups
``k`` shrinks to the number of groups (at least 3 are needed for three disjoint sides). With only two
groups (e.g. the two left/right imagery runs of the single EEGMMIDB subject) one group is the test
set and validation is a held-out *time block* at the end of each training recording, which keeps the
test recording untouched; the split records that it did so.

``published`` mode (:func:`published_split`): a corpus whose foundation-model papers score one fixed split
(:data:`PUBLISHED_SPLITS`) gets exactly that split, or an error naming the subjects it lacks. EEGMAT: files
sorted, subjects 00-27 train, 28-31 validation, 32-35 test (CBraMod, REVE, NeurIPT).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

__all__ = [
    "PUBLISHED_SPLITS", "PublishedSplit", "Split", "group_names", "kfold_split", "pool_split", "published_split",
    "split_windows", "subject_groups",
]


@dataclass(frozen=True)
class Split:
    """Indices into one task's window list, and which groups went where."""

    train: np.ndarray  # [n_train] int64
    val: np.ndarray  # [n_val] int64
    test: np.ndarray  # [n_test] int64
    group_key: str  # "subject" | "recording"
    fold: int
    n_folds: int
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # side -> group names
    val_protocol: str = "held-out groups"

    def describe(self) -> dict:
        """JSON-friendly summary for the report."""
        return {
            "group_key": self.group_key,
            "fold": self.fold,
            "n_folds": self.n_folds,
            "val_protocol": self.val_protocol,
            "n_windows": {"train": int(self.train.size), "val": int(self.val.size), "test": int(self.test.size)},
            "groups": {k: list(v) for k, v in self.groups.items()},
        }


def group_names(metas: Sequence[Mapping], key: str) -> list[str]:
    """The group of each window: ``corpus/subject`` or ``corpus/recording``.

    The corpus is part of the name because subject ids like ``"1"`` repeat across corpora.
    """
    if key not in ("subject", "recording"):
        raise ValueError(f"group key must be 'subject' or 'recording', got {key!r}")
    out = []
    for i, m in enumerate(metas):
        value = m.get(key)
        if value is None or value == "":
            raise KeyError(f"window {i} ({m.get('corpus')}/{m.get('recording')}) has no '{key}' in its metadata")
        out.append(f"{m.get('corpus', '')}/{value}")
    return out


def choose_group_key(metas: Sequence[Mapping], prefer: str = "subject", min_groups: int = 3) -> str:
    """``prefer`` when every window has it and there are at least ``min_groups`` of them, else "recording".

    Subject-level splits are the stricter protocol; recordings are the fallback for corpora that do
    not identify subjects (Bonn) or have a single subject (our EEGMMIDB excerpt).
    """
    if prefer == "subject":
        subjects = [m.get("subject") for m in metas]
        if all(s not in (None, "") for s in subjects):
            names = set(group_names(metas, "subject"))
            if len(names) >= min_groups:
                return "subject"
    return "recording"


def subject_groups(metas: Sequence[Mapping]) -> list[str]:
    """Each window's subject (its recording where the data name no subject): what the subject-adaptive steps
    (Euclidean alignment, per-subject feature standardisation) adapt by."""
    return group_names(metas, choose_group_key(metas, prefer="subject", min_groups=1))


def kfold_split(
    groups: Sequence[str],
    labels: Sequence[int],
    *,
    n_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    onsets: Sequence[float] | None = None,
    recordings: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    group_key: str = "group",
) -> Split:
    """Group k-fold split of ``len(groups)`` windows.

    Args:
        groups: ``[n]`` group name of each window.
        labels: ``[n]`` class index of each window (stratification).
        n_folds: requested folds; reduced to the number of groups when there are fewer.
        fold: which fold is the test set, ``0 <= fold < n_folds`` (after reduction).
        seed: shuffles the assignment of groups to folds.
        onsets, recordings: ``[n]`` window onsets and recording names, only needed for the two-group
            fallback (validation = last ``val_fraction`` of each training recording in time).
    """
    groups = np.asarray(groups, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if groups.shape[0] != labels.shape[0]:
        raise ValueError(f"{groups.shape[0]} groups but {labels.shape[0]} labels")
    unique = sorted(set(groups.tolist()))
    n_groups = len(unique)
    if n_groups < 2:
        raise ValueError(
            f"cannot split by {group_key}: only {n_groups} {group_key}(s) ({unique}); a held-out test set needs at least 2"
        )
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    k = min(n_folds, n_groups)
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range: {k} folds over {n_groups} {group_key}s")

    if n_groups == 2:
        return _two_group_split(groups, unique, fold, seed, onsets, recordings, val_fraction, group_key)

    fold_of_window = group_folds(groups, labels, k, seed)
    val_fold = (fold + 1) % k
    idx = np.arange(groups.shape[0])
    test = idx[fold_of_window == fold]
    val = idx[fold_of_window == val_fold]
    train = idx[(fold_of_window != fold) & (fold_of_window != val_fold)]
    for side, arr in (("train", train), ("val", val), ("test", test)):
        if arr.size == 0:
            raise ValueError(f"fold {fold}/{k} leaves the {side} set empty (groups: {n_groups})")
    return Split(
        train=train,
        val=val,
        test=test,
        group_key=group_key,
        fold=fold,
        n_folds=k,
        groups={side: tuple(sorted(set(groups[arr].tolist()))) for side, arr in (("train", train), ("val", val), ("test", test))},
    )


def group_folds(groups: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``[n]`` fold (0..k-1) of each window: StratifiedGroupKFold over the groups, shuffled by ``seed``."""
    unique = sorted(set(groups.tolist()))
    # StratifiedGroupKFold wants integer-coded groups; its shuffle is seeded by random_state.
    codes = np.asarray([unique.index(g) for g in groups.tolist()])
    if np.bincount(labels).max() < k:
        # Every class has fewer windows than folds: stratification is impossible (sklearn refuses), and
        # an unstratified group k-fold is the split that remains.
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of_window = np.empty(groups.shape[0], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        for f, (_, test_idx) in enumerate(splitter.split(np.zeros(len(codes)), labels, codes)):
            fold_of_window[test_idx] = f
    return fold_of_window


def pool_split(
    groups: Sequence[str],
    labels: Sequence[int],
    test_groups: Sequence[str],
    *,
    val_groups: Sequence[str] = (),
    n_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    onsets: Sequence[float] | None = None,
    recordings: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    group_key: str = "group",
) -> Split:
    """A fixed test set: every window of ``test_groups`` tests; the other groups train and validate.

    The leak-free protocol of ``benchmarks/downstream.py``: the test groups are a pool held out of
    pretraining too, and every seed tests on it. Validation is ``val_groups`` when given (a published
    split), else group fold ``fold`` of a stratified group k-fold over the remaining groups (shuffled by
    ``seed``, ``k = min(n_folds, groups left)``), else, with a single group left, the last ``val_fraction``
    (by onset) of each of its recordings.
    """
    groups = np.asarray(groups, dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    if groups.shape[0] != labels.shape[0]:
        raise ValueError(f"{groups.shape[0]} groups but {labels.shape[0]} labels")
    pool = set(test_groups)
    idx = np.arange(groups.shape[0])
    is_test = np.asarray([g in pool for g in groups.tolist()], dtype=bool)
    test, rest = idx[is_test], idx[~is_test]
    if test.size == 0:
        raise ValueError(f"none of the {len(pool)} test {group_key}s is in the data (e.g. {sorted(pool)[:3]})")
    rest_groups = sorted(set(groups[rest].tolist()))
    if not rest_groups:
        raise ValueError(f"every {group_key} is a test {group_key}: nothing left to train on")
    if val_groups:
        wanted = set(val_groups)
        is_val = np.asarray([g in wanted for g in groups[rest].tolist()], dtype=bool)
        val, train = rest[is_val], rest[~is_val]
        k, protocol = 1, f"fixed validation {group_key}s"
    elif len(rest_groups) >= 2:
        k = min(max(2, n_folds), len(rest_groups))
        folds = group_folds(groups[rest], labels[rest], k, seed)
        val, train = rest[folds == fold % k], rest[folds != fold % k]
        protocol = f"fold {fold % k} of a {k}-fold split of the other {group_key}s"
    else:
        if onsets is None or recordings is None:
            raise ValueError(f"one training {group_key}: the time-block validation needs window onsets and recordings")
        onsets, recordings = np.asarray(onsets, dtype=np.float64), np.asarray(recordings, dtype=object)
        is_val = np.zeros(groups.shape[0], dtype=bool)
        for rec in sorted(set(recordings[rest].tolist())):
            members = rest[recordings[rest] == rec]
            is_val[members[onsets[members] >= np.quantile(onsets[members], 1.0 - val_fraction)]] = True
        val, train = idx[is_val], rest[~is_val[rest]]
        k, protocol = 1, f"last {val_fraction:.0%} (by onset) of each training recording"
    for side, arr in (("train", train), ("val", val)):
        if arr.size == 0:
            raise ValueError(f"the fixed test pool leaves the {side} set empty ({len(rest_groups)} other {group_key}s)")
    return Split(
        train=train, val=val, test=test, group_key=group_key, fold=fold, n_folds=k,
        groups={side: tuple(sorted(set(groups[arr].tolist()))) for side, arr in (("train", train), ("val", val), ("test", test))},
        val_protocol=f"fixed test pool; validation = {protocol}",
    )


def _two_group_split(groups, unique, fold, seed, onsets, recordings, val_fraction, group_key) -> Split:
    if onsets is None or recordings is None:
        raise ValueError(f"only 2 {group_key}s: the time-block validation fallback needs window onsets and recordings")
    order = np.random.default_rng(seed).permutation(2)
    test_group = unique[order[fold]]
    onsets = np.asarray(onsets, dtype=np.float64)
    recordings = np.asarray(recordings, dtype=object)
    idx = np.arange(groups.shape[0])
    test = idx[groups == test_group]
    rest = idx[groups != test_group]
    val_mask = np.zeros(groups.shape[0], dtype=bool)
    for rec in sorted(set(recordings[rest].tolist())):
        members = rest[recordings[rest] == rec]
        cut = np.quantile(onsets[members], 1.0 - val_fraction)
        val_mask[members[onsets[members] >= cut]] = True
    val = idx[val_mask]
    train = np.setdiff1d(rest, val)
    if train.size == 0 or val.size == 0:
        raise ValueError(f"only 2 {group_key}s and too few windows to hold out a validation block")
    return Split(
        train=train,
        val=val,
        test=test,
        group_key=group_key,
        fold=fold,
        n_folds=2,
        groups={"train": (unique[order[1 - fold]],), "val": (unique[order[1 - fold]],), "test": (test_group,)},
        val_protocol=f"last {val_fraction:.0%} (by onset) of each training recording; test {group_key} untouched",
    )


def split_windows(
    metas: Sequence[Mapping],
    labels: Sequence[int],
    *,
    group_by: str = "subject",
    n_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    test_groups: Sequence[str] = (),
    val_groups: Sequence[str] = (),
) -> Split:
    """Split one task's windows (their metadata dicts) by subject, falling back to recording.

    With ``test_groups`` (group names ``corpus/subject`` or ``corpus/recording``) the test set is fixed
    (:func:`pool_split`); names of other corpora are ignored, so one list serves a multi-task run.

    Args:
        metas: ``[n]`` window metadata (``corpus, subject, recording, onset_s``).
        labels: ``[n]`` class indices.
        group_by: preferred group key; "subject" falls back to "recording" when subjects are
            missing or fewer than 3.
    """
    key = choose_group_key(metas, prefer=group_by)
    groups = group_names(metas, key)
    recs = group_names(metas, "recording")
    onsets = [float(m.get("onset_s", 0.0)) for m in metas]
    if test_groups:
        return pool_split(groups, labels, test_groups, val_groups=val_groups, n_folds=n_folds, fold=fold, seed=seed,
                          onsets=onsets, recordings=recs, group_key=key)
    return kfold_split(
        groups, labels, n_folds=n_folds, fold=fold, seed=seed, onsets=onsets, recordings=recs, group_key=key
    )


@dataclass(frozen=True)
class PublishedSplit:
    """A corpus's fixed train/val/test subjects as the literature scores it."""

    corpus: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    source: str

    @property
    def subjects(self) -> tuple[str, ...]:
        return self.train + self.val + self.test


def _subjects(prefix: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02d}" for i in range(first, last + 1))


# EEGMAT: CBraMod's preprocessing sorts the 72 files and cuts them 56 / 8 / 8, i.e. two files per subject:
# subjects 00-27 / 28-31 / 32-35 (REVE and NeurIPT reuse it).
PUBLISHED_SPLITS: dict[str, PublishedSplit] = {
    "eegmat": PublishedSplit(
        corpus="eegmat",
        train=_subjects("Subject", 0, 27),
        val=_subjects("Subject", 28, 31),
        test=_subjects("Subject", 32, 35),
        source="files sorted, subjects 00-27 train / 28-31 val / 32-35 test (CBraMod, ICLR 2025; REVE; NeurIPT)",
    ),
}


def published_split(metas: Sequence[Mapping]) -> Split:
    """The published split of the corpus the windows come from (:data:`PUBLISHED_SPLITS`).

    Every subject of the protocol must be present, and no other: a partial download (e.g. the 26 subjects
    02-27 in ``../shared/data``) cannot reproduce the published numbers, so it is an error naming the
    missing subjects rather than a smaller split that would look the same in a report.

    Raises:
        ValueError: windows of several corpora, a corpus without a published split, or subjects missing /
            not part of the protocol (named).
    """
    corpora = sorted({str(m.get("corpus")) for m in metas})
    if len(corpora) != 1:
        raise ValueError(f"split='published' needs the windows of one corpus, got {corpora}")
    corpus = corpora[0]
    if corpus not in PUBLISHED_SPLITS:
        raise ValueError(
            f"split='published': corpus {corpus!r} has no published split (known: {', '.join(sorted(PUBLISHED_SPLITS))}); "
            "use split='kfold'"
        )
    proto = PUBLISHED_SPLITS[corpus]
    subjects = [str(m.get("subject", "")) for m in metas]
    present = set(subjects)
    missing = [s for s in proto.subjects if s not in present]
    foreign = sorted(present - set(proto.subjects))
    if missing or foreign:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {len(proto.subjects)} subjects are missing: {', '.join(missing)}")
        if foreign:
            parts.append(f"subjects not in the protocol: {', '.join(foreign)}")
        raise ValueError(
            f"split='published' for {corpus} ({proto.source}) needs every subject of the full data set; "
            f"{'; '.join(parts)}. Download the full set, or use split='kfold' (subject-wise folds)"
        )
    side_of = {s: side for side in ("train", "val", "test") for s in getattr(proto, side)}
    sides = np.asarray([side_of[s] for s in subjects], dtype=object)
    idx = np.arange(len(subjects))
    return Split(
        train=idx[sides == "train"],
        val=idx[sides == "val"],
        test=idx[sides == "test"],
        group_key="subject",
        fold=0,
        n_folds=1,
        groups={side: tuple(f"{corpus}/{s}" for s in getattr(proto, side)) for side in ("train", "val", "test")},
        val_protocol=f"published: {proto.source}",
    )
