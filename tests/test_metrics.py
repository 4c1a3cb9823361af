"""UA/WA/F1 and confusion against hand-computed values and scikit-learn; fold aggregation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score,
                             precision_recall_fscore_support)

from ser_ray.learn.metrics import aggregate, compute_metrics, confusion_matrix, pooled

# "sad" is predicted once but never true; "happy" is true twice but never predicted;
# "fearful" is neither, and must not drag any average down.
LABELS = ["angry", "happy", "neutral", "sad", "fearful"]
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 0, 2, 0, 2, 2, 2, 3, 2]


def test_hand_computed_example():
    m = compute_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["confusion"] == [
        [3, 0, 1, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 0, 3, 1, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert m["n"] == 10
    assert m["wa"] == pytest.approx(6 / 10)
    # recall over the classes present in y_true (angry, happy, neutral): (3/4 + 0 + 3/4) / 3
    assert m["ua"] == pytest.approx(0.5)
    # F1 = 2TP/(2TP+FP+FN): angry 6/8, happy 0, neutral 6/9, sad 0 (predicted, never true)
    # macro over classes true or predicted (not fearful): 4 classes
    assert m["macro_f1"] == pytest.approx((6 / 8 + 0 + 6 / 9 + 0) / 4)
    assert m["weighted_f1"] == pytest.approx((4 * 6 / 8 + 2 * 0 + 4 * 6 / 9) / 10)

    rows = {r["label"]: r for r in m["per_class"]}
    assert [r["label"] for r in m["per_class"]] == LABELS
    assert rows["angry"] == {"label": "angry", "precision": 0.75, "recall": 0.75, "f1": 0.75,
                             "support": 4}
    assert rows["neutral"]["precision"] == pytest.approx(3 / 5)
    assert rows["neutral"]["recall"] == pytest.approx(3 / 4)
    assert rows["happy"] == {"label": "happy", "precision": 0.0, "recall": 0.0, "f1": 0.0,
                             "support": 2}
    assert rows["sad"] == {"label": "sad", "precision": 0.0, "recall": 0.0, "f1": 0.0,
                           "support": 0}
    assert rows["fearful"]["support"] == 0


def test_result_is_plain_python():
    m = compute_metrics(np.array(Y_TRUE, dtype=np.int32), np.array(Y_PRED), LABELS)
    assert type(m["ua"]) is float and type(m["n"]) is int
    assert all(type(v) is int for row in m["confusion"] for v in row)
    assert type(m["per_class"][0]["support"]) is int


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(6)]
    # classes 4 and 5 never true; class 5 may be predicted
    y_true = rng.integers(0, 4, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 6, size=200))
    m = compute_metrics(y_true, y_pred, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert m["macro_f1"] == pytest.approx(
            f1_score(y_true, y_pred, average="macro", zero_division=0))
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(6),
                                                     zero_division=0)
    assert m["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["weighted_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="weighted", zero_division=0))
    np.testing.assert_allclose([row["precision"] for row in m["per_class"]], p)
    np.testing.assert_allclose([row["recall"] for row in m["per_class"]], r)
    np.testing.assert_allclose([row["f1"] for row in m["per_class"]], f)
    assert [row["support"] for row in m["per_class"]] == s.tolist()


def test_ua_differs_from_wa_on_imbalanced_data():
    y_true = np.array([0] * 90 + [1] * 10)
    y_pred = np.zeros(100, dtype=np.int64)  # always the majority class
    m = compute_metrics(y_true, y_pred, ["neutral", "angry"])
    assert m["wa"] == pytest.approx(0.9)
    assert m["ua"] == pytest.approx(0.5)


def test_confusion_rows_are_true_and_sum_to_support():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, size=50)
    y_pred = rng.integers(0, 3, size=50)
    cm = confusion_matrix(y_true, y_pred, ["a", "b", "c"])
    assert cm.sum() == 50
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(y_true, minlength=3))
    np.testing.assert_array_equal(cm.sum(axis=0), np.bincount(y_pred, minlength=3))
    assert confusion_matrix([0], [2], ["a", "b", "c"])[0, 2] == 1


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 1, 5], [0, 1, 1], r"y_true holds class indices \[5\]"),
    ([0, 1], [0, -1], r"y_pred holds class indices \[-1\]"),
    ([0, 1, 1], [0, 1], "aligned"),
    ([], [], "empty"),
    ([0.0, 1.0], [0, 1], "integer class indices"),
    ([[0, 1]], [[0, 1]], "1-D"),
])
def test_bad_inputs_are_named(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(y_true, y_pred, ["a", "b", "c"])


def test_duplicate_labels_rejected():
    with pytest.raises(ValueError, match="duplicates"):
        compute_metrics([0], [0], ["a", "a"])


def _two_folds():
    labels = ["angry", "sad"]
    f1 = compute_metrics([0, 0, 1, 1], [0, 1, 1, 1], labels)  # recalls 0.5, 1.0 -> ua 0.75
    f2 = compute_metrics([0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], labels)  # perfect
    return labels, f1, f2


def test_aggregate_mean_and_population_std():
    labels, f1, f2 = _two_folds()
    agg = aggregate([f1, f2])
    assert f1["ua"] == pytest.approx(0.75) and f2["ua"] == 1.0
    assert agg["ua_mean"] == pytest.approx(0.875)
    assert agg["ua_std"] == pytest.approx(0.125)  # ddof=0
    assert agg["wa_mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert agg["wa_std"] == pytest.approx(0.125)
    for key in ("macro_f1", "weighted_f1"):
        values = [f1[key], f2[key]]
        assert agg[f"{key}_mean"] == pytest.approx(np.mean(values))
        assert agg[f"{key}_std"] == pytest.approx(np.std(values))
    assert agg["n_folds"] == 2 and agg["n"] == 10


def test_aggregate_sums_confusion_and_matches_pooled():
    labels, f1, f2 = _two_folds()
    agg = aggregate([f1, f2])
    assert agg["confusion"] == [[2, 1], [0, 7]]
    pool = pooled([[0, 0, 1, 1], [0, 1, 1, 1, 1, 1]], [[0, 1, 1, 1], [0, 1, 1, 1, 1, 1]], labels)
    assert agg["per_class"] == pool["per_class"]
    assert agg["confusion"] == pool["confusion"]
    assert agg["pooled"]["ua"] == pytest.approx(pool["ua"]) == pytest.approx((2 / 3 + 1) / 2)
    # the pooled UA weighs utterances, not folds: it differs from the fold mean here
    assert agg["pooled"]["ua"] != pytest.approx(agg["ua_mean"])


def test_aggregate_single_fold_has_zero_std():
    _, f1, _ = _two_folds()
    agg = aggregate([f1])
    assert agg["ua_mean"] == pytest.approx(f1["ua"])
    assert all(agg[f"{k}_std"] == 0.0 for k in ("ua", "wa", "macro_f1", "weighted_f1"))


def test_aggregate_rejects_mismatched_or_missing_input():
    _, f1, _ = _two_folds()
    other = compute_metrics([0, 1], [0, 1], ["calm", "sad"])
    with pytest.raises(ValueError, match=r"fold_metrics\[1\] has labels"):
        aggregate([f1, other])
    with pytest.raises(ValueError, match="empty"):
        aggregate([])
    with pytest.raises(ValueError, match=r"lacks \['confusion'\]"):
        aggregate([{k: v for k, v in f1.items() if k != "confusion"}])


def test_pooled_rejects_unpaired_lists():
    with pytest.raises(ValueError, match="one of each per fold"):
        pooled([[0]], [[0], [1]], ["a", "b"])
