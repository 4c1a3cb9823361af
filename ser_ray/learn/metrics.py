"""Evaluation metrics: UA, WA, macro/weighted F1, per-class P/R/F1 and the confusion matrix.

Pure functions over integer class indices into ``labels``. scikit-learn counts the confusion
matrix; every score is then derived from that matrix by one function
(:func:`scores_from_confusion`), so per-fold scores, pooled scores and the per-class table of an
aggregate (a sum of fold matrices) can never disagree about a definition.

Classes missing from an evaluation set are common (a LOSO test speaker who never sounds
disgusted, a cross-corpus test set without "calm"), so their treatment is part of the definition:

- ``ua`` (unweighted accuracy, balanced accuracy) is the mean recall over classes **present in
  y_true**. A class that is only predicted has no recall; it is not averaged in (its false
  positives already lower the recall of the true classes). This is ``balanced_accuracy_score``.
- ``wa`` (weighted accuracy) is plain accuracy.
- ``macro_f1`` averages F1 over classes present in y_true **or** y_pred (scikit-learn's default
  label set): a class that is predicted but never true scores F1 = 0 and counts; a class neither
  true nor predicted is left out.
- ``weighted_f1`` weights F1 by support, so classes absent from y_true weigh nothing.
- ``per_class`` lists every label in order. An undefined ratio (precision of a class never
  predicted, recall of a class with no support) is 0.0, as scikit-learn's ``zero_division=0``;
  ``support`` tells the two cases apart.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

SCALAR_METRICS: tuple[str, ...] = ("ua", "wa", "macro_f1", "weighted_f1")


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels is empty: pass the experiment's class names, in index order")
    if len(set(labels)) != len(labels):
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"labels has duplicates {dupes}: each class name must appear once")
    return labels


def _check_indices(name: str, y: Any, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} has shape {y.shape}: pass a 1-D array of class indices "
                         "(e.g. logits.argmax(axis=1))")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} has dtype {y.dtype}: pass integer class indices into labels, "
                         "not scores or label names")
    bad = np.unique(y[(y < 0) | (y >= n_classes)])
    if bad.size:
        raise ValueError(f"{name} holds class indices {bad[:10].tolist()} outside "
                         f"[0, {n_classes}): labels has {n_classes} entries")
    return y.astype(np.int64, copy=False)


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[str]) -> np.ndarray:
    """Counts, int64 (C, C): rows are true classes, columns predicted, in ``labels`` order."""
    labels = _check_labels(labels)
    y_true = _check_indices("y_true", y_true, len(labels))
    y_pred = _check_indices("y_pred", y_pred, len(labels))
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}: "
                         "they must be aligned row by row")
    if not len(y_true):
        raise ValueError("y_true is empty: there is nothing to evaluate")
    cm = _sk_confusion_matrix(y_true, y_pred, labels=np.arange(len(labels)))
    return cm.astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_confusion(confusion: Any, labels: Sequence[str]) -> dict[str, Any]:
    """All metrics of this module from a (C, C) count matrix (rows true, columns predicted).

    Returns ``{ua, wa, macro_f1, weighted_f1, per_class, confusion, n}`` as plain Python
    types (JSON-ready); see the module docstring for how absent classes are treated.
    """
    labels = _check_labels(labels)
    cm = np.asarray(confusion)
    c = len(labels)
    if cm.shape != (c, c):
        raise ValueError(f"confusion has shape {cm.shape} but labels has {c} entries: "
                         f"expected ({c}, {c})")
    if not np.issubdtype(cm.dtype, np.integer):
        if not np.all(np.isfinite(cm)) or not np.all(cm == np.round(cm)):
            raise ValueError("confusion must hold whole-number counts")
        cm = cm.astype(np.int64)
    if (cm < 0).any():
        raise ValueError("confusion holds negative counts")
    n = int(cm.sum())
    if n == 0:
        raise ValueError("confusion is all zeros: there is nothing to evaluate")

    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    # 2TP / (2TP + FP + FN) equals 2PR / (P + R) wherever that is defined, and is 0 otherwise.
    f1 = _ratio(2 * tp, support + predicted)
    present = support > 0
    evaluated = present | (predicted > 0)
    return {
        "ua": float(recall[present].mean()),
        "wa": float(tp.sum() / n),
        "macro_f1": float(f1[evaluated].mean()),
        "weighted_f1": float((f1 * support).sum() / n),
        "per_class": [
            {"label": label, "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        ],
        "confusion": cm.tolist(),
        "n": n,
    }


def compute_metrics(y_true: Any, y_pred: Any, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of one evaluation set.

    y_true, y_pred: int (n,) class indices into ``labels``. Returns ``{ua, wa, macro_f1,
    weighted_f1, per_class: [{label, precision, recall, f1, support}] (every label, in order),
    confusion: [[int]] (C, C) rows true / columns predicted, n}``; scores are fractions in [0, 1].
    """
    return scores_from_confusion(confusion_matrix(y_true, y_pred, labels), labels)


def pooled(y_true_list: Sequence[Any], y_pred_list: Sequence[Any],
           labels: Sequence[str]) -> dict[str, Any]:
    """Metrics over the concatenation of several folds' predictions (same keys as compute_metrics).

    Unlike the fold mean, every utterance weighs the same, and a class missing from one fold's
    test set still counts through the others (useful for LOSO, where one speaker rarely covers
    every class).
    """
    if len(y_true_list) != len(y_pred_list):
        raise ValueError(f"{len(y_true_list)} y_true arrays but {len(y_pred_list)} y_pred arrays: "
                         "pass one of each per fold")
    if not len(y_true_list):
        raise ValueError("no folds given: pass at least one (y_true, y_pred) pair")
    labels = _check_labels(labels)
    cm = sum(confusion_matrix(t, p, labels) for t, p in zip(y_true_list, y_pred_list))
    return scores_from_confusion(cm, labels)


def aggregate(fold_metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary over folds of :func:`compute_metrics` results.

    ``<metric>_mean`` / ``<metric>_std`` for ua, wa, macro_f1 and weighted_f1: the mean and the
    population standard deviation (ddof=0, so a single fold has std 0) of the per-fold values,
    each fold weighing the same. ``confusion`` is the sum of the fold matrices; ``per_class`` and
    ``pooled`` ({ua, wa, macro_f1, weighted_f1}) are computed from that sum, i.e. they equal
    :func:`pooled` over all folds' predictions. Also ``n_folds`` and ``n`` (total test rows).
    """
    if not len(fold_metrics):
        raise ValueError("fold_metrics is empty: pass one compute_metrics() result per fold")
    labels: list[str] | None = None
    for i, fold in enumerate(fold_metrics):
        missing = [k for k in (*SCALAR_METRICS, "confusion", "per_class") if k not in fold]
        if missing:
            raise ValueError(f"fold_metrics[{i}] lacks {missing}: pass compute_metrics() results")
        fold_labels = [row["label"] for row in fold["per_class"]]
        if labels is None:
            labels = fold_labels
        elif fold_labels != labels:
            raise ValueError(f"fold_metrics[{i}] has labels {fold_labels} but fold 0 has "
                             f"{labels}: evaluate every fold with the same label list")
        if np.shape(fold["confusion"]) != (len(labels), len(labels)):
            raise ValueError(f"fold_metrics[{i}]['confusion'] has shape "
                             f"{np.shape(fold['confusion'])}; expected ({len(labels)}, "
                             f"{len(labels)}) to match its per_class labels")
    assert labels is not None

    out: dict[str, Any] = {}
    for key in SCALAR_METRICS:
        values = np.array([float(fold[key]) for fold in fold_metrics], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=0))
    cm = sum(np.asarray(fold["confusion"], dtype=np.int64) for fold in fold_metrics)
    total = scores_from_confusion(cm, labels)
    out["n_folds"] = len(fold_metrics)
    out["n"] = total["n"]
    out["confusion"] = total["confusion"]
    out["per_class"] = total["per_class"]
    out["pooled"] = {key: total[key] for key in SCALAR_METRICS}
    return out


# --------------------------------------------------------------------------------------------
# Calibration: how far the probabilities can be taken at their word
# --------------------------------------------------------------------------------------------

CALIBRATION_BINS = 15


def reliability(y_true: Any, proba: Any, bins: int = CALIBRATION_BINS) -> dict[str, list]:
    """Top-label reliability over ``bins`` equal-width confidence bins: per bin the mean
    confidence (the highest probability of each row), the accuracy of those rows and their
    count; empty bins hold None."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=int)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        m = which == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(hit[m].mean()) if m.any() else None)
    return out


def calibration_metrics(y_true: Any, proba: Any, bins: int = CALIBRATION_BINS
                        ) -> dict[str, float]:
    """``ece``: expected calibration error (top label, ``bins`` equal-width bins: the
    count-weighted mean of |accuracy - confidence|); ``brier``: the multi-class Brier score (mean
    over rows of the squared distance between the probabilities and the one-hot truth); ``nll``:
    mean negative log-likelihood of the true class (probabilities floored at 1e-12). Lower is
    better for all three."""
    from ser_ray.models.calibration import nll

    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=int)
    if not len(y):
        return {"ece": float("nan"), "brier": float("nan"), "nll": float("nan")}
    r = reliability(y, p, bins)
    ece = sum(n * abs(a - c) for n, a, c in zip(r["count"], r["accuracy"], r["confidence"])
              if n) / len(y)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return {"ece": float(ece), "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
            "nll": nll(p, y)}


COVERAGES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


def risk_coverage(y_true: Any, proba: Any, labels: Sequence[str],
                  coverages: Sequence[float] = COVERAGES) -> list[dict[str, Any]]:
    """UA and WA of the most confident predictions: for each coverage c, the c share of rows
    with the highest top probability is answered and the rest is "not sure". Each point has
    ``coverage`` (the share answered), ``threshold`` (the lowest top probability answered),
    ``ua``, ``wa`` and ``n``."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if not len(y):
        return []
    top = p.max(axis=1)
    order = np.argsort(-top, kind="stable")
    out = []
    for c in coverages:
        k = max(1, int(round(c * len(y))))
        idx = order[:k]
        m = compute_metrics(y[idx], p[idx].argmax(axis=1), labels)
        out.append({"coverage": k / len(y), "threshold": float(top[order[k - 1]]),
                    "ua": m["ua"], "wa": m["wa"], "n": int(k)})
    return out
