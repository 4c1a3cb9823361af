"""Your own calls, end to end: a shifted synthetic domain (calls under noise) -> score -> sample
-> a sheet the test fills from the synthetic truth -> evaluate (UA with its interval) -> adapt ->
score again with the adapted model, which is better on held-out labelled calls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow
NIGHTS = {"a": "2026-11-23", "b": "2026-11-24"}


def _noisy_night(root: Path, name: str, seed: int) -> None:
    import soundfile as sf

    from ser_ray.synth import synthesize_backlog

    truth = synthesize_backlog(root / f"{name}-clean", n_calls=6, seed=seed, minutes=(0.8, 1.0),
                               sr=16000, bad=False, speaker_prefix=f"{name}caller")
    (root / name).mkdir()
    rng = np.random.default_rng(seed)
    for f in sorted((root / f"{name}-clean").glob("*.wav")):
        y, sr = sf.read(f, dtype="float32")
        sf.write(root / name / f.name, (y + rng.normal(0, 0.02, y.shape)).astype("float32"), sr)
    truth.to_json(root / f"{name}-truth.json", orient="records")


def _fill(root: Path, name: str, folder: Path) -> pd.DataFrame:
    """The sheet of ``folder`` labelled with the synthetic customer's emotion at each segment."""
    truth = pd.read_json(root / f"{name}-truth.json", orient="records")
    spans = {r.call_id: [t for t in json.loads(r.spans) if t["role"] == "customer"]
             for r in truth.itertuples()}
    sheet = pd.read_csv(folder / "sheet.csv", keep_default_na=False)

    def emotion(r) -> str:
        mid = (r.start_s + r.end_s) / 2
        return min(spans[r.call_id], key=lambda t: 0 if t["start_s"] <= mid <= t["end_s"]
                   else min(abs(mid - t["start_s"]), abs(mid - t["end_s"])))["emotion"]

    sheet["label"] = [emotion(r) for r in sheet.itertuples()]
    sheet.to_csv(folder / "sheet.csv", index=False)
    return sheet


@pytest.fixture(scope="module")
def domain(ray_session, score_model, tmp_path_factory):
    from ser_ray.config import SampleConfig, ScoreConfig
    from ser_ray.score import run_score
    from ser_ray.score.sample import run_sample

    root = tmp_path_factory.mktemp("adapt")
    for k, (name, night) in enumerate(NIGHTS.items()):
        _noisy_night(root, name, 21 + k)
        run_score(ScoreConfig(model=str(score_model), inputs=(str(root / name),),
                              output=str(root / "out"), run_date=night, customer_channel="right"),
                  progress=False)
        run_sample(SampleConfig(scored=str(root / "out"), run_dates=(night,), n=40, per_call=8,
                                output=str(root / f"label-{name}")))
        _fill(root, name, root / f"label-{name}")
    return root


def test_evaluate_adapt_and_score_again_on_a_shifted_domain(domain, score_model, tmp_path):
    from cli_helpers import ser_ray_cli
    from ser_ray.config import SampleConfig, ScoreConfig
    from ser_ray.learn.labelled import evaluate_labels
    from ser_ray.score import run_score
    from ser_ray.score.sample import run_sample

    # evaluate the model on night a's labels, as the command line does
    r = ser_ray_cli("evaluate", "--model", str(score_model), "--labels",
                    str(domain / "label-a" / "sheet.csv"), "--output", str(tmp_path / "ea"))
    before = json.loads(r.stdout[r.stdout.index("{"):])
    assert before["labelled"]["used"] == 40 and before["protocol"] == "labelled"
    lo, hi = before["intervals"]["ua"]
    assert lo <= before["ua"] <= hi
    # adapt on night a's labels
    ser_ray_cli("adapt", "--model", str(score_model), "--labels", str(domain / "label-a" / "sheet.csv"),
                "--output", str(tmp_path / "m2"))
    report = json.loads((tmp_path / "m2" / "adapt.json").read_text())
    assert report["pooled"]["n"] == 40 and len(report["folds"]) == 3
    called = [set(f["calls"]) for f in report["folds"]]
    assert all(not (a & b) for i, a in enumerate(called) for b in called[i + 1:])  # no call on both sides
    assert report["pooled"]["ua_after"] > report["pooled"]["ua_before"]
    cal = json.loads((tmp_path / "m2" / "calibration.json").read_text())
    assert cal["n"] == 40 and report["calibration"]["fitted_on"] == "in-domain rows, out of fold"
    assert json.loads((tmp_path / "m2" / "metrics.json").read_text())["calibration"]["n"] == 40
    extra = json.loads((tmp_path / "m2" / "model.json").read_text())["extra"]["adapted_on"]
    assert extra["in_domain_segments"] == 40 and extra["weight"] == 3 and len(extra["sheet_sha256"]) == 64
    # score night b again with the adapted model; both models on its labelled calls
    run_score(ScoreConfig(model=str(tmp_path / "m2"), inputs=(str(domain / "b"),),
                          output=str(tmp_path / "out2"), run_date=NIGHTS["b"],
                          customer_channel="right"), progress=False)
    run_sample(SampleConfig(scored=str(tmp_path / "out2"), n=40, per_call=8,
                            output=str(tmp_path / "label-b2")))
    _fill(domain, "b", tmp_path / "label-b2")
    old = evaluate_labels(score_model, tmp_path / "label-b2" / "sheet.csv", tmp_path / "eb")
    new = evaluate_labels(tmp_path / "m2", tmp_path / "label-b2" / "sheet.csv", tmp_path / "eb2")
    assert new["ua"] > old["ua"] + 0.2, (old["ua"], new["ua"])


def test_adapt_refuses_too_few_labels(domain, score_model, tmp_path):
    from ser_ray.learn.adapt import adapt_model

    sheet = pd.read_csv(domain / "label-a" / "sheet.csv", keep_default_na=False)
    sheet.loc[4:, "label"] = ""  # four labels left
    (tmp_path / "few").mkdir()
    sheet.to_csv(tmp_path / "few" / "sheet.csv", index=False)
    (tmp_path / "few" / "sample.json").write_text((domain / "label-a" / "sample.json").read_text())
    with pytest.raises(ValueError, match="too few labels"):
        adapt_model(score_model, tmp_path / "few" / "sheet.csv", tmp_path / "m3")
    assert not (tmp_path / "m3").exists()
