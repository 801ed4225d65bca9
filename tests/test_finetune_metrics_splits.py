"""finetune.metrics equals scikit-learn and hand-computed values; finetune.splits never leaks a group."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from finetune.metrics import classification_metrics
from finetune.recipes import RECIPES, get_recipe
from finetune.splits import choose_group_key, kfold_split, split_windows


# --- metrics -------------------------------------------------------------------------------------
def test_metrics_hand_computed_binary():
    # y_true 0,0,1,1 ; predictions 0,1,1,1 -> recalls 1/2 and 1 -> balanced accuracy 3/4.
    # kappa: p_o = 3/4, p_e = 1/2*1/4 + 1/2*3/4 = 1/2 -> (3/4 - 1/2) / (1/2) = 1/2.
    # F1: class 0 = 2/3, class 1 = 4/5, equal support -> 11/15.
    # scores 0.1, 0.8, 0.7, 0.9: 3 of 4 (pos, neg) pairs ordered right -> AUROC 3/4;
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    y = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.8, 0.7, 0.9])
    proba = np.stack([1 - p1, p1], axis=1)
    pred = [0, 1, 1, 1]
    m = classification_metrics(y, proba, y_pred=pred)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["cohen_kappa"] == pytest.approx(0.5)
    assert m["weighted_f1"] == pytest.approx(11 / 15)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auc_pr"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["n"] == 4


def test_metrics_equal_sklearn_multiclass_random():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = proba.argmax(1)
    m = classification_metrics(y, proba)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert "auroc" not in m  # AUROC / AUC-PR only for binary tasks
    assert np.asarray(m["confusion_matrix"]).sum() == 300
    assert np.asarray(m["confusion_matrix"]).shape == (5, 5)


def test_metrics_equal_sklearn_binary_random():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, 200), 0, 1)
    m = classification_metrics(y, np.stack([1 - p1, p1], 1))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["auc_pr"] == pytest.approx(average_precision_score(y, p1))
    assert 0.6 < m["auroc"] < 1.0


def test_metrics_single_class_auroc_is_nan_and_absent_class_keeps_shape():
    m = classification_metrics([1, 1, 1], np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]))
    assert math.isnan(m["auroc"]) and math.isnan(m["auc_pr"])
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]
    m = classification_metrics([0, 0, 1], y_pred=[0, 0, 1], n_classes=4)
    assert np.asarray(m["confusion_matrix"]).shape == (4, 4)
    assert m["balanced_accuracy"] == 1.0


def test_metrics_bad_input_errors():
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], y_pred=[0, 1], n_classes=2)
    with pytest.raises(ValueError, match="proba must be"):
        classification_metrics([0, 1], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], y_pred=[], n_classes=2)


# --- splits --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    n_groups=st.integers(3, 14),
    n_folds=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    n_classes=st.integers(2, 5),
    data=st.data(),
)
def test_kfold_split_never_shares_a_group(n_groups, n_folds, seed, n_classes, data):
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=n_groups, max_size=n_groups))
    groups = [f"g{g}" for g, n in enumerate(sizes) for _ in range(n)]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, len(groups))
    k = min(n_folds, n_groups)
    fold = data.draw(st.integers(0, k - 1)) if k >= 2 else 0
    try:
        s = kfold_split(groups, labels, n_folds=n_folds, fold=fold, seed=seed)
    except ValueError as err:  # only allowed failure: a fold left empty by very uneven groups
        assert "empty" in str(err) or "n_folds" in str(err)
        return
    g = np.asarray(groups)
    sides = [set(g[s.train]), set(g[s.val]), set(g[s.test])]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    # every window is on exactly one side
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(len(groups)))
    assert set(s.groups["test"]) == sides[2]


def test_kfold_folds_cover_every_group_once_as_test():
    groups = [f"s{i % 6}" for i in range(120)]
    labels = [i % 2 for i in range(120)]
    tested = []
    for fold in range(3):
        s = kfold_split(groups, labels, n_folds=3, fold=fold, seed=4)
        tested += list(s.groups["test"])
    assert sorted(tested) == sorted(set(groups))


def test_kfold_is_deterministic_and_seed_dependent():
    groups = [f"s{i % 10}" for i in range(200)]
    labels = [i % 3 for i in range(200)]
    a = kfold_split(groups, labels, n_folds=5, fold=1, seed=3)
    b = kfold_split(groups, labels, n_folds=5, fold=1, seed=3)
    assert a.groups == b.groups
    others = {kfold_split(groups, labels, n_folds=5, fold=1, seed=s).groups["test"] for s in range(8)}
    assert len(others) > 1


def test_two_recordings_hold_out_one_and_validate_on_a_time_block():
    metas = [
        {"corpus": "eegmmidb", "subject": "S001", "recording": rec, "onset_s": 4.0 * i}
        for rec in ("S001R04", "S001R08")
        for i in range(20)
    ]
    labels = [i % 2 for i in range(40)]
    for fold in (0, 1):
        s = split_windows(metas, labels, n_folds=5, fold=fold, seed=0)
        assert s.group_key == "recording" and s.n_folds == 2
        recs = np.asarray([m["recording"] for m in metas])
        test_recs = set(recs[s.test])
        assert len(test_recs) == 1
        assert not test_recs & set(recs[s.train]) and not test_recs & set(recs[s.val])
        onsets = np.asarray([m["onset_s"] for m in metas])
        assert onsets[s.val].min() > onsets[s.train].max()  # validation is the end of the run
        assert "untouched" in s.val_protocol


def test_choose_group_key_falls_back_to_recording():
    few = [{"corpus": "c", "subject": "1", "recording": f"r{i}"} for i in range(5)]
    assert choose_group_key(few) == "recording"
    many = [{"corpus": "c", "subject": str(i % 4), "recording": f"r{i}"} for i in range(8)]
    assert choose_group_key(many) == "subject"
    missing = [{"corpus": "c", "subject": None, "recording": f"r{i}"} for i in range(8)]
    assert choose_group_key(missing) == "recording"


def test_split_errors_name_the_problem():
    with pytest.raises(ValueError, match="only 1"):
        kfold_split(["a"] * 5, [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="fold 7"):
        kfold_split([f"g{i}" for i in range(6)], [0, 1] * 3, n_folds=3, fold=7)


# --- recipes -------------------------------------------------------------------------------------
def test_registry_and_label_maps():
    assert set(RECIPES) == {"seizure", "sleep", "emotion", "motor_imagery"}
    assert [RECIPES[n].task_id for n in ("seizure", "sleep", "emotion", "motor_imagery")] == [1, 2, 3, 4]
    sleep = get_recipe("sleep")
    assert sleep.classes == ("W", "N1", "N2", "N3", "REM")
    assert [sleep.label_index(n) for n in ("Sleep stage W", "S1", "N2", "S3", "S4", "R")] == [0, 1, 2, 3, 3, 4]
    seizure = get_recipe("seizure")
    assert seizure.label_index("background") == 0 and seizure.label_index("seizure") == 1
    assert seizure.label_index("artifact") is None
    with pytest.raises(KeyError, match="known recipes"):
        get_recipe("tuab")


def test_recipe_resolve_picks_label_space_from_data():
    emotion = get_recipe("emotion")
    assert emotion.resolve(["calm", "stress", "calm"]).classes == ("calm", "stress")
    assert emotion.resolve(["negative", "neutral", "positive"]).classes == ("negative", "neutral", "positive")
    mi = get_recipe("motor_imagery")
    assert mi.classes == ("left_fist", "right_fist")
    assert mi.resolve(["rest", "left_fist", "right_fist", "both_feet"]).classes == ("left_fist", "right_fist")
    assert mi.resolve(["left_hand", "right_hand", "feet", "tongue"]).classes == ("left_hand", "right_hand", "feet", "tongue")
    assert mi.with_classes(["rest", "left_fist", "right_fist"]).label_index("rest") == 0
    # classes missing from the data are dropped, with a clear error when fewer than two remain
    assert get_recipe("sleep").resolve(["W", "N2", "N3"]).classes == ("W", "N2", "N3")
    with pytest.raises(ValueError, match="at least two"):
        get_recipe("sleep").resolve(["W", "W"])
    with pytest.raises(ValueError, match="none of the label names"):
        get_recipe("sleep").resolve(["left_fist"])
    with pytest.raises(KeyError, match="not in label space"):
        mi.with_classes(["left_fist", "jump"])
