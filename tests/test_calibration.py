"""Calibrated probabilities (#29, part 1): temperature scaling fitted on out-of-fold predictions
of the training speakers, ECE / Brier / NLL before and after in cv's report with a reliability
diagram, and the calibrator kept in the model folder as plain JSON and applied on every
prediction (evaluate, score)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ser_ray.learn.metrics import calibration_metrics, reliability
from ser_ray.models.calibration import Temperature, fit_temperature, nll


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n=4000, classes=4, factor=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports softmax(factor * z): too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.2, size=(n, classes))
    truth = _softmax(z)
    y = np.array([rng.choice(classes, p=p) for p in truth])
    return _softmax(factor * z), y, truth


def test_temperature_keeps_the_arg_max_and_unseen_classes():
    p, _, _ = _overconfident(200)
    p[:, 3] = 0.0
    p /= p.sum(axis=1, keepdims=True)
    for t in (0.5, 1.0, 3.0):
        q = Temperature(t).apply(p)
        np.testing.assert_array_equal(q.argmax(1), p.argmax(1))
        assert (q[:, 3] == 0).all()
        np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
    assert Temperature(3.0).apply(p).max(1).mean() < p.max(1).mean()  # softer
    with pytest.raises(ValueError, match="must be > 0"):
        Temperature(0.0)
    with pytest.raises(ValueError, match="method"):
        Temperature.from_json({"method": "isotonic", "temperature": 1})
    assert Temperature.from_json(Temperature(2.5, 10).to_json()) == Temperature(2.5, 10)


def test_fit_temperature_recovers_the_overconfidence_and_lowers_ece():
    p, y, truth = _overconfident()
    t = fit_temperature(p[:2000], y[:2000])
    assert 2.5 < t.temperature < 3.5, t  # the reported logits were 3x the true ones
    before = calibration_metrics(y[2000:], p[2000:])
    after = calibration_metrics(y[2000:], t.apply(p[2000:]))
    ideal = calibration_metrics(y[2000:], truth[2000:])
    assert after["ece"] < before["ece"] / 2 and after["nll"] < before["nll"]
    assert after["brier"] < before["brier"]
    assert abs(after["ece"] - ideal["ece"]) < 0.03
    assert fit_temperature(p[:10], np.zeros(10, int)).temperature == 1.0  # one class: as it is


def test_calibration_metrics_match_their_definitions():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 1])
    m = calibration_metrics(y, p, bins=10)
    # bins: 0.9 -> bin 9 (hit), 0.6 -> bin 6 (miss), 0.8 -> bin 8 (hit)
    assert m["ece"] == pytest.approx((abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.8)) / 3)
    assert m["brier"] == pytest.approx(((0.1 ** 2 + 0.1 ** 2) + (0.6 ** 2 + 0.6 ** 2)
                                        + (0.2 ** 2 + 0.2 ** 2)) / 3)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8])))
    assert nll(p, y) == m["nll"]
    r = reliability(y, p, bins=10)
    assert r["count"][9] == 1 and r["accuracy"][6] == 0.0 and r["confidence"][0] is None


@pytest.mark.usefixtures("ray_session")
def test_cv_reports_raw_and_calibrated_figures_fitted_on_training_speakers(learn_corpus,
                                                                          tmp_path):
    from ser_ray.config import LearnConfig
    from ser_ray.learn import splits
    from ser_ray.learn.data import load_features
    from ser_ray.learn.experiment import calibrate, run_cv

    data = load_features(learn_corpus["prepared"], ["handcrafted94"])
    cfg = LearnConfig(features=("handcrafted94",), model="logreg", protocol="speaker-kfold",
                      folds=3)
    m = run_cv(data, cfg, tmp_path / "cv")
    off = run_cv(data, LearnConfig(features=("handcrafted94",), model="logreg",
                                   protocol="speaker-kfold", folds=3, calibration="none"),
                 tmp_path / "raw")
    for key in ("ece", "brier", "nll"):
        assert 0 <= m[f"{key}_raw"] and 0 <= m[f"{key}_calibrated"]
        assert m[f"{key}_raw"] == pytest.approx(off[f"{key}_raw"])
    assert m["ua_mean"] == off["ua_mean"] and m["wa_mean"] == off["wa_mean"]  # arg-max kept
    assert m["calibration"]["method"] == "temperature" and off["calibration"]["method"] == "none"
    assert len(m["calibration"]["temperatures"]) == 3
    assert all(f["calibration"]["temperature"] > 0 for f in m["folds"])
    assert (tmp_path / "cv" / "reliability.png").stat().st_size > 1000
    summary = (tmp_path / "cv" / "summary.md").read_text()
    assert "## Calibration" in summary and "inner speaker folds" in summary
    saved = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert saved["ece_calibrated"] == pytest.approx(m["ece_calibrated"])

    # the test speakers never reach the calibrator: poisoning them changes nothing
    fold = splits.make_folds(data.meta, "speaker-kfold", folds=3)[0]
    t = calibrate(data, fold.train, cfg, None, storage_path=tmp_path / "w", run_name="a")
    poisoned = data.subset(np.arange(len(data)))
    poisoned.X[fold.test] = 1000.0
    poisoned.y[fold.test] = 0
    u = calibrate(poisoned, fold.train, cfg, None, storage_path=tmp_path / "w", run_name="b")
    assert t == u


@pytest.mark.usefixtures("ray_session")
def test_a_trained_model_keeps_its_calibrator_and_applies_it(learn_corpus, tmp_path):
    from ser_ray.config import LearnConfig
    from ser_ray.learn.data import load_features
    from ser_ray.learn.experiment import train_model
    from ser_ray.models.artifact import load_predictor

    data = load_features(learn_corpus["prepared"], ["handcrafted94"])
    metrics = train_model(data, LearnConfig(features=("handcrafted94",), model="logreg"),
                          tmp_path / "model")
    stored = json.loads((tmp_path / "model" / "calibration.json").read_text())
    assert stored["method"] == "temperature" and stored["n"] == len(data)
    assert metrics["calibration"]["temperature"] == pytest.approx(stored["temperature"])
    pred = load_predictor(tmp_path / "model")
    raw = pred.predict_proba(data.X[:20], calibrated=False)
    cal = pred.predict_proba(data.X[:20])
    np.testing.assert_allclose(cal, Temperature(stored["temperature"]).apply(raw), atol=1e-6)
    assert not np.allclose(cal, raw)
    np.testing.assert_array_equal(cal.argmax(1), raw.argmax(1))
    # a torch model under `auto` is left as fitted; a bad setting is a clear error
    from ser_ray.learn.folds import calibration_method

    assert calibration_method(LearnConfig(model="cnn1d")) == "none"
    assert calibration_method(LearnConfig(model="cnn1d", calibration="temperature")) == \
        "temperature"
    with pytest.raises(ValueError, match="calibration="):
        LearnConfig(model="logreg", calibration="isotonic")


# --------------------------------------------------------------------------- "not sure"

def test_the_not_sure_threshold_answers_the_asked_share_of_held_out_rows():
    from ser_ray.models.calibration import threshold_for

    p, y, _ = _overconfident(1000)
    t = fit_temperature(p, y, coverage=0.8)
    assert t.coverage == 0.8 and 0 < t.uncertain_below < 1
    assert t.answered(t.apply(p)).mean() == pytest.approx(0.8, abs=0.01)
    assert Temperature.from_json(t.to_json()) == t
    assert threshold_for(p, 1.0) == 0.0
    with pytest.raises(ValueError, match="coverage"):
        threshold_for(p, 0.0)


def test_risk_coverage_answers_the_most_confident_first():
    from ser_ray.learn.metrics import risk_coverage

    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45]])
    y = np.array([0, 0, 0, 1])  # the two least confident rows are wrong
    curve = risk_coverage(y, p, ["a", "b"], coverages=(1.0, 0.5))
    assert [c["n"] for c in curve] == [4, 2]
    assert curve[0]["wa"] == 0.5 and curve[1]["wa"] == 1.0
    assert curve[1]["threshold"] == 0.8


def test_not_sure_windows_add_neither_anger_nor_calm():
    import pandas as pd

    from ser_ray.urgency import call_summary

    labels = ["neutral", "calm", "sad", "angry"]

    def seg(rows):
        return pd.DataFrame([{"start_s": 3.0 * i, "end_s": 3.0 * i + 3, "label": lab,
                              **{f"prob_{c}": v for c, v in zip(labels, probs)}}
                             for i, (lab, probs) in enumerate(rows)])

    angry_unsure = ("uncertain", (0.1, 0.0, 0.1, 0.8))  # angry-looking, but below the threshold
    calm_unsure = ("uncertain", (0.1, 0.8, 0.1, 0.0))
    neutral = ("neutral", (0.9, 0.05, 0.05, 0.0))
    s = call_summary(seg([neutral, angry_unsure, calm_unsure, neutral]), labels)
    assert s["negative_peak"] == pytest.approx(0.05 * 0.8)  # the neutral windows' sad share only
    assert s["calm_mean"] == pytest.approx(2 * 3 * 0.05 * 0.3 / 12)
    assert s["uncertain_share"] == pytest.approx(0.5)
    assert s["share_neutral"] == pytest.approx(0.5) and s["share_angry"] == 0.0
    sure = call_summary(seg([neutral, ("angry", angry_unsure[1]), neutral]), labels)
    assert sure["urgency_score"] > s["urgency_score"] and sure["uncertain_share"] == 0.0
    none = call_summary(seg([angry_unsure, calm_unsure]), labels)
    assert none["urgency_score"] == 0.0 and np.isnan(none["peak_start_s"])


@pytest.mark.usefixtures("ray_session")
def test_cv_reports_risk_and_coverage_and_score_marks_unsure_windows(learn_corpus,
                                                                     score_model, tmp_path):
    from ser_ray.config import LearnConfig, ScoreConfig, load
    from ser_ray.learn.data import load_features
    from ser_ray.learn.experiment import run_cv
    from ser_ray.models.artifact import load_predictor
    from ser_ray.score import read_calls, read_segments, run_score
    from ser_ray.synth import synthesize_backlog

    data = load_features(learn_corpus["prepared"], ["handcrafted94"])
    m = run_cv(data, LearnConfig(features=("handcrafted94",), model="logreg",
                                 protocol="speaker-kfold", folds=3, uncertain_coverage=0.8),
               tmp_path / "cv")
    curve = m["risk_coverage"]
    assert curve[0]["coverage"] == 1.0 and curve[0]["n"] == m["calibration"]["n"]
    assert [c["n"] for c in curve] == sorted((c["n"] for c in curve), reverse=True)
    assert m["uncertain"]["target"] == 0.8 and 0.5 < m["uncertain"]["answered"] <= 1.0
    assert "## Not sure: risk and coverage" in (tmp_path / "cv" / "summary.md").read_text()

    pred = load_predictor(score_model)  # `ser-ray train` calibrated it, threshold included
    thr = pred.calibration.uncertain_below
    assert thr is not None and pred.calibration.coverage == 0.9
    synthesize_backlog(tmp_path / "calls", n_calls=3, seed=4, bad=False, minutes=(0.5, 0.6),
                       metadata=False)
    run_score(load(ScoreConfig, None, model=str(score_model), inputs=[str(tmp_path / "calls")],
                   output=str(tmp_path / "out"), run_date="2026-12-01",
                   customer_channel="right"), progress=False)
    seg = read_segments(tmp_path / "out")
    unsure = seg["label"] == "uncertain"
    assert (unsure == (seg["confidence"] < thr)).all()
    assert (seg.loc[~unsure, "label"] == seg.loc[~unsure, "top_label"]).all()
    assert (seg["margin"] >= 0).all() and (seg["top_label"] != seg["second_label"]).all()
    calls = read_calls(tmp_path / "out").set_index("call_id")
    for cid, g in seg.groupby("call_id"):
        share = (g["end_s"] - g["start_s"])[g["label"] == "uncertain"].sum()
        assert 0 <= calls.loc[cid, "uncertain_share"] <= 1
        assert (share > 0) == (calls.loc[cid, "uncertain_share"] > 0)
