"""Experiment tracking against a real MLflow file store and real TensorBoard event files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest


def mlflow_runs(store: Path, experiment: str = "ser-ray"):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {store}"
    return client, client.search_runs([exp.experiment_id])


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file under ``folder`` (TFRecord framing, tensorboardX protos)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (n,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
            at += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.slow
def test_cv_and_train_log_params_metrics_and_reports(learn_corpus, tmp_path, ray_session):
    from ser_ray.cli import main

    store = tmp_path / "mlruns"
    track = ["--set", "tracking.mlflow=true", "--set", f"tracking.tracking_uri={store.as_uri()}",
             "--set", "tracking.tensorboard=true"]
    cv = tmp_path / "cv"
    assert main(["cv", "--features", str(learn_corpus["prepared"]), "--feature-set",
                 "handcrafted94", "--model", "logreg", "--protocol", "loso", *track,
                 "--output", str(cv)]) == 0
    model = tmp_path / "model"
    assert main(["train", "--features", str(learn_corpus["prepared"]), "--feature-set", "mfcc",
                 "--model", "cnn1d", "--set", "frames=60", "--set", "cpus_per_worker=0.5",
                 "--set", "model_options={channels: [8], dense: [8], epochs: 3, patience: 5}",
                 *track, "--output", str(model)]) == 0
    client, runs = mlflow_runs(store)
    by = {r.data.tags["ser_ray.command"]: r for r in runs}
    assert set(by) == {"cv", "train"}
    metrics = json.loads((cv / "metrics.json").read_text())
    run = by["cv"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "logreg" and run.data.params["protocol"] == "loso"
    assert run.data.tags["ser_ray.protocol"] == "loso"
    assert run.data.metrics["ua_mean"] == pytest.approx(metrics["ua_mean"])
    folds = client.get_metric_history(run.info.run_id, "fold_ua")
    assert sorted(m.step for m in folds) == list(range(1, metrics["n_folds"] + 1))
    assert sorted(m.value for m in folds) == \
        pytest.approx(sorted(f["ua"] for f in metrics["folds"]))
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "summary.md", "config.yaml", "run.json"} <= names
    assert not names & {"mlruns", "tensorboard", "work", "logs"}
    assert [s for s, _ in tensorboard_scalars(cv / "tensorboard")["fold_ua"]] == \
        list(range(1, metrics["n_folds"] + 1))

    train = by["train"]
    history = json.loads((model / "model.json").read_text()).get("history") or \
        json.loads((model / "metrics.json").read_text()).get("history")
    losses = client.get_metric_history(train.info.run_id, "epoch_val_loss")
    assert len(losses) == 3 and (history is None or len(history) == 3)
    assert "validation_ua" in train.data.metrics
    assert "weights.safetensors" in {a.path for a in client.list_artifacts(train.info.run_id)}
    scalars = tensorboard_scalars(tmp_path / "model.work" / "tensorboard")
    assert len(scalars["epoch_train_loss"]) == 3


def test_tracking_is_off_unless_asked(tmp_path, monkeypatch):
    from ser_ray.config import LearnConfig
    from ser_ray.learn.tracking import Tracker, flat_params

    monkeypatch.chdir(tmp_path)
    cfg = LearnConfig(model="logreg")
    t = Tracker(cfg.tracking, tmp_path / "out", "cv", {"model": "logreg"})
    t.step({"ua": 0.5}, 1)
    t.finish({"ua_mean": 0.5}, None)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "out").exists()
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == \
        {"a.b": "1", "a.c": "[1, 2]", "d": "x"}


def test_mlflow_params_carry_no_password(tmp_path):
    """A URL with user:password@ in a run's parameters is logged without them."""
    from ser_ray.config import TrackingConfig
    from ser_ray.learn.tracking import Tracker

    store = tmp_path / "mlruns"
    cfg = TrackingConfig(mlflow=True, tracking_uri=store.as_uri())
    (tmp_path / "out").mkdir()
    t = Tracker(cfg, tmp_path / "out", "cv", {"noise_dir": "s3://b/noise",
                                               "s3": {"endpoint_url": "http://me:hunter2@s3:9"}})
    t.finish({"ua": 0.5}, tmp_path / "out")
    _, (run,) = mlflow_runs(store)
    assert "hunter2" not in json.dumps(run.data.params)
    assert "http://s3:9" in json.dumps(run.data.params)
