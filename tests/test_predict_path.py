"""One predict path: class columns follow the run's labels whatever classes a fold trained on.

In-memory feature tables (no audio): each label has its own mean, each speaker an offset, so a
speaker-independent model scores far above chance and a column shift scores far below it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from ser_ray.learn import splits
from ser_ray.models.artifact import Predictor, load_predictor, save_predictor
from ser_ray.config import LearnConfig
from ser_ray.learn.data import FeatureData, resolve_feature_set
from ser_ray.normalise import Moments, group_standardise, moments
from ser_ray.learn.evaluate import predict_rows
from ser_ray.learn.experiment import cross_validate, fit, prepare_fold
from ser_ray.learn.metrics import compute_metrics

from prepare_helpers import fake_prepared

pytestmark = pytest.mark.filterwarnings("ignore:cross-corpus a->b")

LABELS = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]


def _corpus_pair(seed: int = 0) -> FeatureData:
    """Corpus A: neutral, happy, sad, angry (happy only here); corpus B: neutral, sad, angry,
    fearful, disgust (fearful and disgust only here): 3 shared labels, 3 unshared."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(0, 2.5, (len(LABELS), 12))
    rows, X = [], []
    for corpus, labels, speakers in (("a", ["neutral", "happy", "sad", "angry"], 6),
                                     ("b", ["neutral", "sad", "angry", "fearful", "disgust"], 3)):
        level = rng.normal(0, 5, 12)  # corpora differ in recording level
        for s in range(speakers):
            offset = rng.normal(0, 0.5, 12)
            for lab in labels:
                for k in range(6):
                    uid = f"{corpus}-{s}-{lab}-{k}"
                    rows.append({"utterance_id": uid, "source_id": uid, "block_index": 0,
                                 "corpus": corpus, "speaker": f"{corpus}:{s}", "sex": "f",
                                 "label": lab})
                    X.append(level + offset + centre[LABELS.index(lab)] + rng.normal(0, 1, 12))
    meta = pd.DataFrame(rows)
    y = meta["label"].map({lab: i for i, lab in enumerate(LABELS)}).to_numpy(np.int64)
    return FeatureData(X=np.asarray(X, np.float32), y=y, labels=list(LABELS), meta=meta,
                       feature_config={"features": ["vec"], "time_axis": None, "frames": None,
                                       "extractors": {}, "audio": {}})


def _cross(**kw) -> LearnConfig:
    return LearnConfig(features=("vec",), model="logreg", protocol="cross-corpus",
                       train_corpora=("a",), test_corpus="b", normalise="corpus", **kw)


def test_cross_corpus_with_unshared_labels_scores_well_above_chance(tmp_path):
    data = _corpus_pair()
    with pytest.warns(UserWarning, match="dropped rows"):
        m = cross_validate(data, _cross(), tmp_path, keep_folds=True)
    (fold,) = m["folds"]
    trained = {LABELS[c] for c in fold["_fitted"].predictor.trained_classes}
    assert trained == {"neutral", "sad", "angry"}  # happy is dropped: the test corpus lacks it
    # 3 classes are tested; a shifted column mapping scored ~0.1 here.
    assert fold["ua"] > 0.8, fold["confusion"]
    confusion = np.asarray(fold["confusion"])
    for k, lab in enumerate(LABELS):
        if lab not in trained:
            assert confusion[:, k].sum() == 0, f"predictions in {lab}, absent from training"


def test_a_class_missing_from_training_gets_zero_probability():
    data = _corpus_pair()
    (fold,) = splits.make_folds(data.meta, "cross-corpus", train_corpora=["a"], test_corpus="b")
    for model in ("logreg", "svm", "random_forest"):
        cfg = dataclasses.replace(_cross(), model=model)
        p = prepare_fold(data, fold.train, np.zeros(0, np.int64), cfg, None, classical=True)
        fitted = fit(data, p, cfg, storage_path=None, run_name="x")
        proba = predict_rows(fitted.predictor, data.X[fold.test], data.meta.iloc[fold.test])
        assert proba.shape == (len(fold.test), len(LABELS))
        np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
        for lab in ("happy", "fearful", "disgust"):
            assert (proba[:, LABELS.index(lab)] == 0).all(), (model, lab)


def test_fold_metrics_equal_the_saved_artifacts(tmp_path):
    """cv's per-class metrics of a fold lacking classes == those from the model dir it saves."""
    data = _corpus_pair(seed=1)
    with pytest.warns(UserWarning):
        m = cross_validate(data, _cross(), tmp_path / "cv", keep_folds=True)
    (fold,) = m["folds"]
    (split,) = splits.make_folds(data.meta, "cross-corpus", train_corpora=["a"], test_corpus="b")
    save_predictor(tmp_path / "model", fold["_fitted"].predictor)
    loaded = load_predictor(tmp_path / "model")
    assert loaded.trained_classes == fold["_fitted"].predictor.trained_classes
    test_meta = data.meta.iloc[split.test].reset_index(drop=True)
    proba = predict_rows(loaded, data.X[split.test], test_meta)
    again = compute_metrics(data.y[split.test], proba.argmax(1), data.labels)
    assert again["confusion"] == fold["confusion"]
    assert again["ua"] == pytest.approx(fold["ua"]) and again["wa"] == pytest.approx(fold["wa"])
    assert again["per_class"] == m["per_class"]  # one fold: the report's per-class table is its own


def test_torch_outputs_for_unseen_classes_are_masked():
    from ser_ray.models import build_model

    torch.manual_seed(0)
    net = build_model("cnn1d", (10, 3), 4, channels=(4,), dense=(4,)).eval()
    X = np.random.default_rng(0).normal(size=(5, 10, 3)).astype(np.float32)
    full = Predictor("cnn1d", "torch", net, ["a", "b", "c", "d"], (10, 3)).predict_proba(X)
    part = Predictor("cnn1d", "torch", net, ["a", "b", "c", "d"], (10, 3),
                     trained_classes=(0, 2)).predict_proba(X)
    assert (part[:, [1, 3]] == 0).all() and np.allclose(part.sum(1), 1, atol=1e-6)
    # The seen classes keep their relative odds.
    np.testing.assert_allclose(part[:, 0] / part[:, 2], full[:, 0] / full[:, 2], rtol=1e-4)


def test_moments_of_parts_add_up_to_the_moments_of_the_whole():
    rng = np.random.default_rng(0)
    X = (rng.normal(3, 2, (50, 40, 6)) * [1, 10, 100, 1, 1, 1]).astype(np.float32)
    whole = moments(X, time_axis=0)
    parts = Moments.of(X[:7], 0) + Moments.of(X[7:30], 0) + Moments.of(X[30:], 0)
    for a, b in zip(whole, parts.mean_std()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert whole[0].shape == (1, 6)
    np.testing.assert_allclose(whole[0][0], X.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(whole[1][0], X.std(axis=(0, 1)), rtol=1e-4)
    # Group standardisation: every group centred and scaled by its own moments.
    groups = np.repeat(["a", "b"], 25)
    Z = group_standardise(X, groups, 0)
    for g in ("a", "b"):
        np.testing.assert_allclose(Z[groups == g].mean(axis=(0, 1)), 0, atol=1e-4)


def test_the_feature_set_defaults_to_the_one_table_there_is(tmp_path):
    one, two = fake_prepared(tmp_path / "one", ["handcrafted173"]), fake_prepared(tmp_path / "two", ["mfcc", "egemaps"])
    assert resolve_feature_set([one], None) == ("handcrafted173",)
    assert resolve_feature_set([two], ["mfcc"]) == ("mfcc",)
    with pytest.raises(ValueError, match=r"2 feature tables \(egemaps, mfcc\).*--feature-set"):
        resolve_feature_set([two], None)
    with pytest.raises(ValueError, match="no feature table is in every"):
        resolve_feature_set([one, two], None)
    with pytest.raises(FileNotFoundError, match="ser-ray prepare"):
        resolve_feature_set([tmp_path / "nothing"], None)
