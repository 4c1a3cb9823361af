"""Drift: the training reference a model folder keeps (ser_ray.models.drift), the night's drift
section (ser_ray.score.drift), and a scored night that is out of domain: the record, the columns,
the warning, ``--fail-on-drift`` and the pages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ser_ray.config import DriftConfig
from ser_ray.models.drift import DriftReference, pool
from ser_ray.score.drift import night_drift, unit_drift


def _population(n_speakers=6, per=40, d=12, shift=0.0, seed=0):
    mix = np.random.default_rng(123).normal(size=(d, d)) / np.sqrt(d)  # one population's correlations
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(per, d)) @ mix + rng.normal(0, 0.3, d) + shift
                        for _ in range(n_speakers)]).astype(np.float32)
    spk = np.repeat([f"s{k}" for k in range(n_speakers)], per)
    y = np.arange(len(X)) % 3
    return X, spk, y


def test_new_speakers_of_the_domain_are_in_and_a_shifted_domain_is_out():
    X, spk, y = _population()
    ref = DriftReference.fit(X, spk, y, ["a", "b", "c"], None)
    assert ref.folds == 5 and ref.n == len(X)
    new, _, _ = _population(n_speakers=3, seed=1)  # other speakers, same population
    far, _, _ = _population(n_speakers=3, seed=1, shift=2.0)
    in_share = (ref.distance(new) > ref.threshold).mean()
    out_share = (ref.distance(far) > ref.threshold).mean()
    assert in_share < 0.1 and out_share > 0.9, (in_share, out_share)
    # held-out speakers set the threshold: above the fitted rows' own 99th percentile
    assert ref.threshold > np.percentile(ref.distance(X), 99)
    psi_in, psi_out = ref.psi(ref.bin_counts(new)), ref.psi(ref.bin_counts(far))
    assert np.median(psi_out) > 1.0 > 0.25 > np.median(psi_in)
    assert ref.class_shares == {"a": pytest.approx(1 / 3, abs=0.01), "b": pytest.approx(1 / 3, abs=0.01),
                                "c": pytest.approx(1 / 3, abs=0.01)}


def test_features_over_time_are_pooled_to_mean_and_std_per_channel():
    X = np.random.default_rng(0).normal(size=(5, 7, 3))  # (rows, frames, channels), time axis 0
    V = pool(X, 0)
    assert V.shape == (5, 6)
    np.testing.assert_allclose(V[:, :3], X.mean(1))
    np.testing.assert_allclose(V[:, 3:], X.std(1))
    assert pool(X.reshape(5, -1), None).shape == (5, 21)


def test_the_reference_round_trips_through_a_model_folder_without_pickle(tmp_path):
    X, spk, y = _population()
    ref = DriftReference.fit(X, spk, y, ["a", "b", "c"], None, {"sample_rate": {"16000": 1.0}})
    ref.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drift.json", "drift.safetensors"]
    back = DriftReference.load(tmp_path)
    np.testing.assert_allclose(back.distance(X[:20]), ref.distance(X[:20]), rtol=1e-3)
    assert (back.bin_counts(X) == ref.bin_counts(X)).all()
    assert back.inputs == {"sample_rate": {"16000": 1.0}}
    assert DriftReference.load(tmp_path / "nothing-here") is None


def test_train_keeps_a_reference_of_its_training_rows(tmp_path):
    from ser_ray.config import LearnConfig
    from ser_ray.learn.data import FeatureData
    from ser_ray.learn.experiment import train_model
    from ser_ray.models.artifact import load_predictor

    X, spk, y = _population(n_speakers=4, per=20)
    meta = pd.DataFrame({"utterance_id": [f"u{i}" for i in range(len(X))], "speaker": spk,
                         "source_id": [f"u{i}" for i in range(len(X))], "block_index": 0,
                         "corpus": "c", "sex": "f", "label": np.array(["a", "b", "c"])[y]})
    data = FeatureData(X=X, y=y, labels=["a", "b", "c"], meta=meta,
                       feature_config={"features": ["f"], "extractors": {}})
    train_model(data, LearnConfig(features=("f",), model="logreg"), tmp_path / "m")
    p = load_predictor(tmp_path / "m")
    assert p.drift is not None and p.drift.n == len(X) and p.drift.folds == 4
    assert json.loads((tmp_path / "m" / "drift.json").read_text())["class_shares"]["a"] == \
        pytest.approx(float((y == 0).mean()))
    # evaluate's figures: how unlike the training rows other rows are
    from ser_ray.learn.evaluate import drift_figures

    new, spk2, _ = _population(n_speakers=2, per=20, seed=3)
    far = new + 2.0
    meta2 = meta.iloc[: len(new)].assign(speaker=spk2)
    near, away = drift_figures(p, new, meta2), drift_figures(p, far, meta2)
    assert near["rows"] == len(new) and near["ood_share"] < 0.2 < 0.8 < away["ood_share"]
    assert away["psi_median"] > near["psi_median"]


def _units(ref, X, labels):
    return [unit_drift(ref, X[i:i + 50], ref.distance(X[i:i + 50]), labels[i:i + 50])
            for i in range(0, len(X), 50)]


def test_the_night_section_judges_against_the_limits():
    X, spk, y = _population()
    ref = DriftReference.fit(X, spk, y, ["a", "b", "c"], None)
    calls = pd.DataFrame({"status": ["scored"] * 3, "sample_rate": [8000, 8000, 16000],
                          "channels": [1, 2, 1], "codec": ["mulaw", "mulaw", "pcm16"],
                          "duration_s": [60.0, 60.0, 60.0], "speech_s": [30.0, 30.0, 30.0]})
    new, _, _ = _population(n_speakers=3, seed=1)
    far, _, _ = _population(n_speakers=3, seed=1, shift=2.0)
    labels = np.array(["a", "b", "c"])[np.arange(len(new)) % 3]
    quiet = night_drift(_units(ref, new, labels), calls, ref, ["a", "b", "c"], DriftConfig(), 16000)
    assert not quiet["alarm"] and quiet["alarms"] == [] and quiet["windows"] == len(new)
    assert quiet["ood_share"] < 0.1 and quiet["speech_share"] == pytest.approx(0.5)
    assert quiet["inputs"]["sample_rate"] == {"8000": pytest.approx(2 / 3, abs=1e-3),
                                              "16000": pytest.approx(1 / 3, abs=1e-3)}
    assert quiet["labels"]["total_variation"] < 0.05
    loud = night_drift(_units(ref, far, labels), calls, ref, ["a", "b", "c"], DriftConfig(), 16000)
    assert loud["alarm"] and {a["figure"] for a in loud["alarms"]} == {"ood_share", "psi_median_excess"}
    assert loud["message"].startswith("tonight's audio differs from training: ")
    assert "out of distribution" in loud["message"] and "mostly 8 kHz mulaw (67% of calls)" in loud["message"]
    # limits are configurable, null is off; too few windows: reported, no alarm
    off = night_drift(_units(ref, far, labels), calls, ref, ["a", "b", "c"],
                      DriftConfig(max_ood_share=None, max_psi=None), 16000)
    assert not off["alarm"] and off["ood_share"] > 0.9
    few = night_drift(_units(ref, far[:20], labels[:20]), calls, ref, ["a", "b", "c"], DriftConfig(), 16000)
    assert not few["alarm"] and "min_windows" in few["note"]
    # every window predicted "a": a label shift, an alarm only where a limit is set
    shifted = night_drift(_units(ref, new, np.full(len(new), "a")), calls, ref, ["a", "b", "c"],
                          DriftConfig(max_label_shift=0.3), 16000)
    assert shifted["labels"]["total_variation"] == pytest.approx(2 / 3, abs=0.01)
    assert [a["figure"] for a in shifted["alarms"]] == ["label_shift"]


def test_a_model_without_a_reference_reports_counts_and_says_so():
    calls = pd.DataFrame({"status": ["scored"], "sample_rate": [8000], "channels": [1],
                          "codec": ["pcm16"], "duration_s": [10.0], "speech_s": [5.0]})
    rec = night_drift([unit_drift(None, np.zeros((60, 4)), None, ["a"] * 60), None], calls, None,
                      ["a", "b"], DriftConfig(), 16000)
    assert rec["ood_share"] is None and not rec["alarm"] and "retrain" in rec["note"]
    assert rec["windows"] == 60 and rec["units_without_counts"] == 1
    assert rec["labels"]["tonight"] == {"a": 1.0, "b": 0.0}


def test_drift_limits_are_checked():
    for bad in ({"max_ood_share": 1.5}, {"max_psi": -1}, {"min_windows": -1}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.* must be"):
            DriftConfig(**bad)
    assert DriftConfig(max_ood_share=None, max_psi=None).max_psi is None  # null: off


# -- a scored night out of domain -------------------------------------------------------------

def _noisy_copy(src: Path, dst: Path) -> None:
    import soundfile as sf

    dst.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in sorted(src.glob("*.wav")):
        y, sr = sf.read(f, dtype="float32")
        sf.write(dst / f"noisy-{f.name}", (y + rng.normal(0, 0.05, y.shape)).astype("float32"), sr)


@pytest.fixture(scope="module")
def drift_nights(ray_session, score_model, tmp_path_factory):
    """Two nights into one output: the synthetic backlog as it is (in domain: the score model
    was trained on the same synthesiser's voices), then the same calls under loud noise, scored
    by the command with --fail-on-drift."""
    from cli_helpers import ser_ray_cli
    from ser_ray.config import ScoreConfig
    from ser_ray.score import run_score
    from ser_ray.synth import synthesize_backlog

    root = tmp_path_factory.mktemp("drift")
    synthesize_backlog(root / "calls", n_calls=6, seed=2, minutes=(1.0, 1.5), sr=16000, bad=False)
    _noisy_copy(root / "calls", root / "noisy")
    out = root / "out"
    quiet = run_score(ScoreConfig(model=str(score_model), inputs=(str(root / "calls"),),
                                  output=str(out), run_date="2026-11-21", customer_channel="right"),
                      progress=False)
    proc = ser_ray_cli("score", "--model", str(score_model), "--input", str(root / "noisy"),
                       "--output", str(out), "--run-date", "2026-11-22", "--customer-channel",
                       "right", "--fail-on-drift", "--no-progress", check=False)
    loud = json.loads(next((out / "runs").glob("2026-11-22_*.json")).read_text())
    return {"quiet": quiet, "loud": loud, "proc": proc, "out": out}


@pytest.mark.slow
def test_an_out_of_domain_night_alarms_and_fails_after_publishing(drift_nights):
    from ser_ray.score import read_calls, read_segments

    quiet, loud, proc = drift_nights["quiet"]["drift"], drift_nights["loud"]["drift"], drift_nights["proc"]
    assert not quiet["alarm"] and quiet["ood_share"] < 0.1, quiet
    assert loud["alarm"] and loud["ood_share"] > 0.5, loud
    assert loud["windows_checked"] == loud["windows"] > 0
    assert loud["inputs"]["sample_rate"] == {"16000": 1.0} and loud["reference"]["threshold"] > 0
    # the scheduler's signal: exit 4, the warning, and the night published all the same
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "WARNING: tonight's audio differs from training" in proc.stderr
    assert "--fail-on-drift" in proc.stderr
    calls = read_calls(drift_nights["out"], "2026-11-22")
    assert len(calls) == 6 and (calls["status"] == "scored").all()
    assert (calls["ood_share"] > 0.5).mean() > 0.5
    segs = read_segments(drift_nights["out"], "2026-11-22")
    far = (segs["ood_distance"] > loud["reference"]["threshold"]).mean()
    assert far == pytest.approx(loud["ood_share"])


@pytest.mark.slow
@pytest.mark.browser
def test_the_pages_show_the_banner_and_the_nights_chart(drift_nights):
    from browser_helpers import chrome
    from selenium.webdriver.common.by import By

    b = chrome()
    try:
        loud, quiet = drift_nights["loud"], drift_nights["quiet"]
        b.get(Path(loud["outputs"]["report_html"]).as_uri())
        banner = b.find_element(By.ID, "drift-banner").text
        assert "tonight's audio differs from training" in banner and "out of distribution" in banner
        b.get(Path(quiet["outputs"]["report_html"]).as_uri())
        assert not b.find_elements(By.ID, "drift-banner")
        assert "out of distribution" in b.find_element(By.CSS_SELECTOR, "li.drift-line").text
        b.get(Path(loud["outputs"]["report_index"]).as_uri())
        points = b.find_elements(By.CSS_SELECTOR, "svg#drift-chart circle.night")
        assert len(points) == 2
        assert [p.get_attribute("fill") for p in points] == ["#1f6feb", "#cf222e"]  # oldest first
        rows = b.find_elements(By.CSS_SELECTOR, "table#nights tbody tr")
        assert "alarm" in rows[0].get_attribute("class") and "⚠" in rows[0].text
        assert "alarm" not in (rows[1].get_attribute("class") or "")
    finally:
        b.quit()


def test_a_unit_whose_distances_failed_is_not_counted_as_checked():
    X, spk, y = _population()
    ref = DriftReference.fit(X, spk, y, ["a", "b", "c"], None)
    broken = unit_drift(ref, X[:60], np.full(60, np.nan), ["a"] * 60)
    assert "ood" not in broken and "distance" in broken["error"]
    calls = pd.DataFrame({"status": ["scored"], "sample_rate": [16000], "channels": [1],
                          "codec": ["pcm16"], "duration_s": [10.0], "speech_s": [5.0]})
    rec = night_drift([broken, unit_drift(ref, X[60:120], ref.distance(X[60:120]), ["a"] * 60)],
                      calls, ref, ["a", "b", "c"], DriftConfig(), 16000)
    assert rec["windows"] == 120 and rec["windows_checked"] == 60
