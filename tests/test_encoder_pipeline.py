"""Pretrained encoders end to end through the CLI, with a tiny random Whisper loaded by path:
prepare on Ray Data (and the task engine, the CPU default: same features; resume) -> cv with
a classical head on a chosen layer -> train the layer-weighted head and a fine-tuned encoder
(killed, resumed) -> evaluate -> score a backlog with each."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import ser_ray_cli
from encoder_helpers import make_tiny_encoder

pytestmark = pytest.mark.slow
EMOTIONS = ["neutral", "happy", "sad", "angry"]


def _cli(*args: str, env: dict | None = None):
    return ser_ray_cli(*args, env=env, check=False)


def _ok(*args: str, **kw):
    return ser_ray_cli(*args, **kw)


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    from ser_ray.synth import synthesize_backlog, synthesize_corpus

    root = tmp_path_factory.mktemp("encpipe")
    whisper = make_tiny_encoder("whisper", root / "whisper")
    synthesize_corpus("ravdess", root / "corpus", n_speakers=4, per_emotion=3, emotions=EMOTIONS,
                      sr=16000, seed=3)
    synthesize_backlog(root / "calls", n_calls=2, seed=4, minutes=(0.4, 0.5), sr=8000,
                       stereo_share=0.5, bad=False)
    prep = ["prepare", "--input", str(root / "corpus"), "--corpus", "ravdess",
            "--features", "encoder,waveform", "--set", f"feature_options.encoder.model={whisper}",
            "--set", "files_per_task=12", "--set", "audio.trim=true", "--no-progress"]
    r = _ok(*prep, "--set", "engine=data", "--output", str(root / "prepared"))
    return {"root": root, "whisper": whisper, "prepared": root / "prepared", "prep": prep,
            "log": r.stderr}


def test_prepare_runs_the_encoder_on_ray_data_and_matches_the_task_engine(world):
    from ser_ray.learn.data import load_features

    assert "engine data" in world["log"] and "encoder on" in world["log"]
    summary = json.loads((world["prepared"] / "summary.json").read_text())
    assert summary["ok"] == 48 and summary["features"]["encoder"]["shapes"] == {"3x64": 48}
    tasks = world["root"] / "prepared-tasks"
    r = _ok(*world["prep"], "--output", str(tasks))  # auto, on a CPU-only Ray: the task engine
    assert "engine tasks" in r.stderr
    a, b = (load_features(p, ["encoder"]) for p in (world["prepared"], tasks))
    a_order, b_order = np.argsort(a.meta["utterance_id"]), np.argsort(b.meta["utterance_id"])
    np.testing.assert_allclose(a.X[a_order], b.X[b_order], rtol=1e-5, atol=1e-5)
    # a rerun into the same output resumes every unit and changes nothing
    before = sorted(p.name for p in (world["prepared"] / "features" / "encoder").iterdir())
    _ok(*world["prep"], "--set", "engine=data", "--output", str(world["prepared"]))
    again = json.loads((world["prepared"] / "summary.json").read_text())
    assert again["resumed_units"] == again["units"] == summary["units"]
    assert sorted(p.name for p in (world["prepared"] / "features" / "encoder").iterdir()) == before


def test_classical_heads_pick_layers_at_learn_time(world, tmp_path):
    out = {}
    for layers in ("1", "0-2"):
        _ok("cv", "--features", str(world["prepared"]), "--feature-set", "encoder",
                "--model", "logreg", "--protocol", "loso", "--set", f"layers={layers}",
                "--output", str(tmp_path / layers))
        out[layers] = json.loads((tmp_path / layers / "metrics.json").read_text())
        assert out[layers]["protocol"] == "loso" and out[layers]["n_folds"] == 4
    # different selections of the same table (one extraction): different model inputs, and
    # different probabilities (UA alone can tie on 48 tiny rows)
    runs = {k: json.loads((tmp_path / k / "run.json").read_text()) for k in out}
    assert runs["1"]["feature_config"]["layers"]["index"] == [1]
    assert runs["0-2"]["feature_config"]["layers"]["index"] == [0, 1, 2]
    assert out["1"]["nll_raw"] != pytest.approx(out["0-2"]["nll_raw"], abs=1e-6)
    r = _cli("cv", "--features", str(world["prepared"]), "--feature-set", "encoder",
             "--model", "logreg", "--set", "layers=7", "--output", str(tmp_path / "bad"))
    assert r.returncode != 0 and "layers='7'" in r.stderr


def test_layer_weighted_head_trains_evaluates_and_scores(world, tmp_path):
    from ser_ray.models.artifact import load_predictor

    model = tmp_path / "lw"
    _ok("train", "--features", str(world["prepared"]), "--feature-set", "encoder",
        "--model", "layer_weighted", "--set", "cpus_per_worker=0.5",
        "--set", "model_options={epochs: 4, hidden: [16]}", "--output", str(model))
    pred = load_predictor(model)
    assert pred.input_shape == (3, 64)
    assert pred.feature_config["layers"]["index"] == [0, 1, 2]
    weights = pred.model.layer_weights()
    assert weights.shape == (3,) and abs(weights.sum() - 1) < 1e-5
    _ok("evaluate", "--model", str(model), "--features", str(world["prepared"]),
        "--output", str(tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["shares_speakers"] is True
    _score(world, model, tmp_path / "reports")


def test_finetuned_encoder_resumes_after_a_failure_and_scores(world, tmp_path):
    from ser_ray.models.artifact import BACKBONE, load_predictor

    model = tmp_path / "ft"
    args = ["train", "--features", str(world["prepared"]), "--feature-set", "waveform",
            "--model", "encoder_finetune", "--set", "cpus_per_worker=0.5",
            "--set", f"model_options={{model: {world['whisper']}, epochs: 2, batch_size: 8, "
                     f"grad_accum: 2, warmup_steps: 4, lr: 0.001}}",
            "--output", str(model)]
    r = _cli(*args, env={"SER_RAY_FAIL_AT_EPOCH": "0"})
    assert r.returncode != 0 and not (model / "model.json").exists()
    _ok(*args)
    history = json.loads((model / "model.json").read_text())["extra"]["history"]
    assert [h["epoch"] for h in history] == [0, 1]  # epoch 0 came from the checkpoint
    assert (model / BACKBONE / "config.json").exists()
    pred = load_predictor(model)
    assert pred.input_shape[0] > 16000 * 1.0 and "mean" not in pred.normalisation
    _score(world, model, tmp_path / "reports")


def _score(world, model, out) -> None:
    from ser_ray.score import read_calls

    _ok("score", "--model", str(model), "--input", str(world["root"] / "calls"),
        "--output", str(out), "--run-date", "2026-12-01", "--no-progress")
    calls = read_calls(out)
    assert len(calls) == 2 and calls["call_id"].is_unique
    assert (calls["status"] == "scored").all()
    probs = [c for c in calls.columns if c.startswith("share_")]
    assert probs and np.allclose(calls[probs].sum(axis=1), 1.0, atol=1e-6)


def test_int8_precision_is_recorded_and_mixing_it_with_float_is_refused(world, tmp_path):
    from ser_ray.models.artifact import load_predictor

    def read_runs(out):
        return [json.loads(p.read_text()) for p in sorted((out / "runs").rglob("*.json"))]

    prepared = tmp_path / "int8"
    r = _ok("prepare", "--input", str(world["root"] / "corpus"), "--corpus", "ravdess",
            "--features", "encoder", "--set", f"feature_options.encoder.model={world['whisper']}",
            "--set", "feature_options.encoder.precision=auto", "--set", "audio.trim=true",
            "--set", "files_per_task=24", "--no-progress", "--output", str(prepared))
    assert "precision auto -> int8" in r.stderr  # a CPU-only Ray: the int8 path
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["features"]["encoder"]["config"]["precision"] == "int8"
    assert summary["config"]["feature_options"]["encoder"]["precision"] == "int8"
    model = tmp_path / "model"
    _ok("train", "--features", str(prepared), "--feature-set", "encoder", "--model", "logreg",
        "--output", str(model))
    assert load_predictor(model).feature_config["extractors"]["encoder"]["precision"] == "int8"
    score = ["score", "--model", str(model), "--input", str(world["root"] / "calls"),
             "--run-date", "2026-12-01", "--no-progress"]
    _ok(*score, "--output", str(tmp_path / "reports"))
    assert read_runs(tmp_path / "reports")[-1]["encoder_precision"] == {
        "trained": "int8", "scoring": "int8", "mixed": False}
    # the head reads the middle state (1 of 0..2): the encoder's top layer is not run
    assert read_runs(tmp_path / "reports")[-1]["encoder_layers"] == {"run": 1, "of": 2}
    score += ["--output", str(tmp_path / "mixed"), "--set", "encoder_precision=fp32"]
    r = _cli(*score)
    assert r.returncode != 0 and "trained on int8 encoder features" in r.stderr
    assert "allow_mixed_precision" in r.stderr and not (tmp_path / "mixed" / "runs").exists()
    _ok(*score, "--set", "allow_mixed_precision=true")
    assert read_runs(tmp_path / "mixed")[-1]["encoder_precision"] == {
        "trained": "int8", "scoring": "fp32", "mixed": True}
    # a float-trained model (the module's folder, made before this setting): fp32 by default
    r = _cli("score", "--model", str(model), "--input", str(world["root"] / "calls"),
             "--output", str(tmp_path / "bad"), "--set", "encoder_precision=int4")
    assert r.returncode != 0 and "encoder_precision='int4'" in r.stderr


def test_nested_selection_chooses_layers_and_c_on_training_speakers_only(world, tmp_path):
    from ser_ray.config import LearnConfig
    from ser_ray.learn.data import load_learn_features
    from ser_ray.learn.experiment import cross_validate

    cfg = LearnConfig(features=("encoder",), model="logreg", protocol="loso",
                      select={"layers": [0, 2], "model_options.C": [0.01, 10.0]}, select_folds=3)
    data = load_learn_features(world["prepared"], cfg)
    assert data.X.shape[1:] == (3, 64)  # every state kept for the choice
    m = cross_validate(data, cfg, tmp_path / "a", progress=False)
    assert m["n_folds"] == 4 and m["selection"]["candidates"] == 4
    for row in m["folds"]:
        sel = row["selected"]
        assert set(sel["speakers"]) == set(row["train_speakers"])  # never the test speaker
        assert not set(sel["speakers"]) & set(row["test_speakers"])
        assert len(sel["table"]) == 4 and sel["choice"] in [t["choice"] for t in sel["table"]]
        assert max(t["ua"] for t in sel["table"]) == next(
            t["ua"] for t in sel["table"] if t["choice"] == sel["choice"])
    # the held-out speaker's rows replaced by noise: that fold's choice and inner scores are the
    # same (they were never read), while its test UA moves
    first = m["folds"][0]
    spk = first["test_speakers"][0]
    noisy = data.X.copy()
    rows = (data.meta["speaker"] == spk).to_numpy()
    noisy[rows] = np.random.default_rng(0).normal(0, 5, noisy[rows].shape)
    import dataclasses

    m2 = cross_validate(dataclasses.replace(data, X=noisy), cfg, tmp_path / "b", progress=False)
    again = next(r for r in m2["folds"] if r["test_speakers"] == [spk])
    assert again["selected"]["table"] == first["selected"]["table"]
    assert again["ua"] != first["ua"] or again["confusion"] != first["confusion"]
    # train chooses over every speaker and stores the chosen layers with the model
    from ser_ray.models.artifact import load_predictor

    out = tmp_path / "model"
    _ok("train", "--features", str(world["prepared"]), "--feature-set", "encoder",
        "--model", "logreg", "--set", "select={layers: [0, 2], model_options.C: [0.01, 10.0]}",
        "--output", str(out))
    meta = json.loads((out / "model.json").read_text())
    chosen = meta["extra"]["selected"]["choice"]
    assert load_predictor(out).feature_config["layers"]["index"] == [chosen["layers"]]
    assert meta["extra"]["config"]["model_options"]["C"] == chosen["model_options.C"]
    summary = (tmp_path / "a").parent
    # the telephone test sets keep every state too; each fold's model and its twin read theirs
    _ok("cv", "--features", str(world["prepared"]), "--feature-set", "encoder",
        "--model", "logreg", "--protocol", "loso", "--set", "select={layers: [0, 2]}",
        "--set", "channel_protocol.codecs=[mulaw]", "--output", str(summary / "tel"))
    tel = json.loads((summary / "tel" / "metrics.json").read_text())
    assert set(tel["channel"]["modes"]) == {"clean", "telephone"}
    assert all(r["selected"]["choice"]["layers"] in (0, 2) for r in tel["folds"])
    assert "Chosen on training speakers only" in (summary / "tel" / "summary.md").read_text()
    r = _cli("cv", "--features", str(world["prepared"]), "--feature-set", "encoder",
             "--model", "logreg", "--protocol", "leave-one-corpus-out",
             "--set", "select={layers: [0, 2]}", "--output", str(summary / "bad"))
    assert r.returncode != 0 and "select.layers cannot be combined" in r.stderr
    # augmented copies keep every state and are picked as the fold's rows are
    aug = dataclasses.replace(cfg, select={"layers": [0, 2]}, augment=dataclasses.replace(
        cfg.augment, variant="merged", steps=({"name": "gain"},)))
    m3 = cross_validate(data, aug, tmp_path / "c", progress=False)
    for row in m3["folds"]:
        assert row["n_train"] == 2 * row["n_train_clean"]
        assert row["selected"]["choice"]["layers"] in (0, 2)
