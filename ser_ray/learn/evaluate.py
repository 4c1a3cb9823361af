"""Predicting labelled rows and scoring a saved model: :func:`predict_rows` (every prediction of
the learning plane standardises its rows through here), :func:`utterance_level` (block rows ->
one prediction per utterance) and ``ser-ray evaluate`` (:func:`evaluate_model`, late fusion too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ser_ray.config import NORMALISE_GROUPS
from ser_ray.console import logger
from ser_ray.learn.metrics import aggregate, compute_metrics
from ser_ray.normalise import group_standardise

log = logger()


def utterance_level(meta: pd.DataFrame, proba: np.ndarray, y: np.ndarray):
    """Mean class probabilities over each utterance's blocks -> (ids, proba, y)."""
    ids = meta["utterance_id"].to_numpy()
    if len(pd.unique(ids)) == len(ids):
        return ids, proba, y
    frame = pd.DataFrame(proba).assign(_id=ids, _y=y)
    grouped = frame.groupby("_id", sort=True)
    p = grouped[list(range(proba.shape[1]))].mean().to_numpy()
    return np.asarray(grouped.size().index), p, grouped["_y"].first().to_numpy()


def predict_rows(predictor, X: np.ndarray, meta: pd.DataFrame,
                 calibrated: bool = True) -> np.ndarray:
    """Class probabilities (columns in ``predictor.labels`` order) of labelled rows: each
    speaker's or corpus's rows standardised by their own statistics, as the model's training
    rows were, then :meth:`Predictor.predict_proba`. cv folds, noisy test sets, a trained
    model's validation speakers and ``evaluate`` all predict through here. ``calibrated=False``:
    the probabilities before the model's calibration."""
    return predictor.predict_proba(head_input(predictor, X, meta), calibrated=calibrated)


def head_input(predictor, X: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
    """Labelled rows as the model's head takes them: each speaker's or corpus's rows
    standardised by their own statistics when the model was trained that way."""
    fc = predictor.feature_config
    col = NORMALISE_GROUPS[fc.get("normalise", "global")]
    if col is not None and len(X):
        X = group_standardise(X, meta[col].to_numpy(), fc.get("time_axis"))
    return X


def drift_figures(predictor, X: np.ndarray, meta: pd.DataFrame) -> dict[str, Any] | None:
    """How far rows lie from the model's training rows (``models.drift``): the share beyond
    its out-of-distribution threshold and the median feature PSI; None without a reference."""
    ref = predictor.drift
    if ref is None or not len(X):
        return None
    X = head_input(predictor, X, meta)
    return {"rows": int(len(X)), "ood_share": float((ref.distance(X) > ref.threshold).mean()),
            "psi_median": float(np.median(ref.psi(ref.bin_counts(X)))), "threshold": ref.threshold}


def _utterances(pred, roots: Sequence[str]):
    """A saved model on the rows of its own feature table under ``roots`` -> utterance ids,
    their class probabilities (``pred.labels`` order), label indices and the loaded data."""
    from ser_ray.learn.data import load_features

    fc = pred.feature_config
    data = load_features(roots, fc["features"], label_set=fc.get("label_set"),
                         labels=pred.labels, frames=fc.get("frames"), layers=fc.get("layers"))
    if tuple(data.X.shape[1:]) != tuple(pred.input_shape):
        raise ValueError(f"features under {list(roots)} have shape {data.X.shape[1:]} but the "
                         f"model expects {tuple(pred.input_shape)}")
    ids, proba, y = utterance_level(data.meta, predict_rows(pred, data.X, data.meta), data.y)
    return ids, proba, y, data


def evaluate_model(model_dir: str | Path, roots: Sequence[str], out_dir: str | Path,
                   trust: bool = False) -> dict[str, Any]:
    """Score a saved model on the feature tables under ``roots``; write a report folder.
    ``trust``: load a folder that needs pickle (``--trust-model``, see ``ser_ray.models.artifact``)."""
    from ser_ray.models.artifact import load_predictor
    from ser_ray.models.late_fusion import is_late_fusion, load_late_fusion
    from ser_ray.learn.report import write_report

    extra_metrics: dict[str, Any] = {}
    if is_late_fusion(model_dir):
        fusion = load_late_fusion(model_dir, trust=trust)
        per = [_utterances(p, roots) for p in fusion.members]
        common = sorted(set.intersection(*(set(ids) for ids, *_ in per)))
        if not common:
            raise ValueError(f"the late-fusion members share no utterance under {list(roots)}")
        probas, y_true = [], None
        for k, (ids, proba, y, data) in enumerate(per):
            at = pd.Series(np.arange(len(ids)), index=ids)[common].to_numpy()
            probas.append(proba[at][:, fusion.columns(k)])
            names = np.asarray(data.labels)[y[at]]
            y_k = np.array([fusion.labels.index(n) for n in names])
            if y_true is not None and not np.array_equal(y_true, y_k):
                raise ValueError("the late-fusion members' feature tables disagree on labels")
            y_true = y_k
        proba = fusion.combine(probas)
        labels, data = fusion.labels, per[0][3]
        pred = fusion.members[0]
        extra_metrics = {"late_fusion": {"members": fusion.paths, "weights": list(fusion.weights),
                                         "utterances_left_out": int(
                                             len(set().union(*(set(i) for i, *_ in per)))
                                             - len(common))}}
        name, features = "late_fusion", [p.feature_config["features"] for p in fusion.members]
    else:
        pred = load_predictor(model_dir, trust=trust)
        _, proba, y_true, data = _utterances(pred, roots)
        labels, name, features = data.labels, pred.model_name, pred.feature_config["features"]
        # how unlike the training rows these are (per row, not per utterance)
        extra_metrics = {"drift": drift_figures(pred, data.X, data.meta)}
    m = compute_metrics(y_true, proba.argmax(1), labels)
    trained_on = set((pred.extra or {}).get("train_speakers", []))
    test_speakers = sorted(set(data.meta["speaker"]))
    shared = sorted(trained_on & set(test_speakers))
    metrics = {"protocol": "held-out", "shares_speakers": bool(shared),
               "shared_speakers": shared, "model_dir": str(model_dir), "n_folds": 1,
               "labels": labels, "dropped_labels": data.feature_config["dropped_labels"],
               **extra_metrics,
               **aggregate([m]),
               "folds": [{"name": "held-out", "index": 0, "ua": m["ua"], "wa": m["wa"],
                          "macro_f1": m["macro_f1"], "weighted_f1": m["weighted_f1"],
                          "train_speakers": sorted(trained_on), "test_speakers": test_speakers,
                          "n_test": int(len(y_true)), "confusion": m["confusion"]}]}
    if shared:
        log(f"warning: {len(shared)} test speaker(s) were in the training data: {shared[:5]}")
    write_report(out_dir, metrics, labels=labels, seed=(pred.extra or {}).get("seed", 0),
                 config={"model": name, "features": features})
    log(f"UA {m['ua']:.3f} WA {m['wa']:.3f} on {len(y_true)} utterances -> {out_dir}")
    return metrics
