"""Ray Tune sweeps: space files, trial resources on 2 cores, a real 4-trial sweep, export."""

from __future__ import annotations

import json

import pytest
import yaml

from prepare_helpers import fake_prepared
from ser_ray.learn.tuning import (Resources, concurrent_trials, load_space, trial_config,
                                  with_feature_set)


def _write(tmp_path, data) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_space_file_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="space.model_options.lr: unknown domain 'between'"):
        load_space(_write(tmp_path, {"space": {"model_options.lr": {"between": [0, 1]}}}))
    with pytest.raises(ValueError, match="search=grid needs choice/grid"):
        load_space(_write(tmp_path, {"search": "grid",
                                     "space": {"model_options.lr": {"uniform": [0, 1]}}}))
    with pytest.raises(ValueError, match="unknown key"):
        load_space(_write(tmp_path, {"base": {"modle": "svm"}}))
    with pytest.raises(ValueError, match="search='bayes'"):
        load_space(_write(tmp_path, {"search": "bayes"}))


def test_trial_config_merges_model_dicts_and_dotted_keys(tmp_path):
    space = load_space(_write(tmp_path, {"base": {"protocol": "loso", "model": "svm"}}))
    cfg = trial_config(space, {"model": {"model": "cnn1d", "features": ["mfcc"], "frames": 50},
                               "model_options.lr": 0.01, "normalise": "speaker"})
    assert (cfg.model, cfg.features, cfg.frames, cfg.protocol) == ("cnn1d", ("mfcc",), 50, "loso")
    assert cfg.model_options == {"lr": 0.01} and cfg.normalise == "speaker"


def test_a_sweep_without_features_uses_the_one_table_there_is(tmp_path):
    one, two = fake_prepared(tmp_path / "one", ["egemaps"]), fake_prepared(tmp_path / "two", ["egemaps", "mfcc"])
    space = load_space(_write(tmp_path, {"base": {"model": "logreg"},
                                         "space": {"model_options.C": {"choice": [1, 10]}}}))
    assert with_feature_set(space, [one]).base["features"] == ["egemaps"]
    assert trial_config(with_feature_set(space, [one]), {}).features == ("egemaps",)
    with pytest.raises(ValueError, match=r"2 feature tables \(egemaps, mfcc\)"):
        with_feature_set(space, [two])
    named = load_space(_write(tmp_path, {"space": {"model": {"choice": [
        {"model": "logreg", "features": ["mfcc"]}, {"model": "svm", "features": ["egemaps"]}]}}}))
    assert with_feature_set(named, [two]) is named  # the space names its features itself


def test_concurrent_trials_never_exceed_the_cpus_and_never_reach_zero():
    assert concurrent_trials(Resources(cpus_per_trial=0.5, workers_per_trial=1,
                                       cpus_per_worker=0.5), 2) == 2
    assert concurrent_trials(Resources(cpus_per_trial=1, workers_per_trial=2,
                                       cpus_per_worker=1), 2) == 1  # 3 CPUs > 2: still one
    assert concurrent_trials(Resources(max_concurrent=3), 2) == 3


@pytest.mark.slow
def test_four_trial_sweep_over_two_architectures_exports_a_model_evaluate_loads(
        learn_corpus, tmp_path):
    """Tune with Train on 2 cores: torch trials fit in their own task (the local trainer) or
    start TorchTrainers inside their trial (trainer: ray_train); model dicts carry their own
    normalisation."""
    import ray

    from cli_helpers import start_test_ray
    from ser_ray.cli import main

    cnn = {"model": "cnn1d", "features": ["mfcc"], "frames": 60,
           "model_options": {"channels": [8], "dense": [16], "epochs": 6, "lr": 0.003}}
    space = {
        "base": {"protocol": "speaker-kfold", "folds": 2, "normalise": "global"},
        "space": {
            "model": {"grid": [
                {"model": "logreg", "features": ["handcrafted94"]},
                {"model": "logreg", "features": ["handcrafted94"], "normalise": "speaker"},
                {**cnn, "normalise": "speaker"},
                {**cnn, "trainer": "ray_train"},
            ]},
        },
        "search": "grid", "num_samples": 1, "scheduler": "fifo",
        "resources": {"cpus_per_trial": 0.5, "workers_per_trial": 1, "cpus_per_worker": 0.5},
        "tracking": {"mlflow": True, "tracking_uri": (tmp_path / "mlruns").as_uri(),
                     "tensorboard": True},
    }
    path = _write(tmp_path, space)
    out = tmp_path / "sweep"
    start_test_ray(2)  # four trials of half a CPU side by side
    try:
        assert main(["tune", "--features", str(learn_corpus["prepared"]), "--space", path,
                     "--output", str(out)]) == 0
        table = (out / "results.csv").read_text().splitlines()
        assert len(table) == 1 + 4
        best = json.loads((out / "best.json").read_text())
        assert best["config"]["model"] in ("logreg", "cnn1d")
        assert best["value"] > 0.4
        assert len({line.split(",")[0] for line in table[1:]}) == 4  # distinct trial ids
        ran = [json.loads(f.read_text()) for f in (out / "sweep").glob("*/metrics.json")]
        assert sorted((str(m.get("trainer")), m["model"]) for m in ran) == [
            ("None", "logreg"), ("None", "logreg"), ("local", "cnn1d"), ("ray_train", "cnn1d")]
        # Tracking: one MLflow run per trial (its folds as steps) and one for the sweep.
        from test_tracking import mlflow_runs, tensorboard_scalars

        client, runs = mlflow_runs(tmp_path / "mlruns")
        sweep_runs = [r for r in runs if r.data.tags.get("ser_ray.command") == "tune"]
        trial_runs = [r for r in runs if r.data.tags.get("ser_ray.command") == "tune-trial"]
        assert len(sweep_runs) == 1 and len(trial_runs) == 4
        assert sweep_runs[0].data.metrics["best_ua_mean"] == pytest.approx(best["value"])
        assert {"results.csv", "best.json"} <= {a.path for a in
                                                client.list_artifacts(sweep_runs[0].info.run_id)}
        steps = client.get_metric_history(trial_runs[0].info.run_id, "ua_mean")
        assert len(steps) >= 2  # a report per fold, then the final one
        assert any(tensorboard_scalars(d) for d in (out / "sweep").iterdir() if d.is_dir())
        report = tmp_path / "eval"
        assert main(["evaluate", "--model", str(out / "best_model"), "--features",
                     str(learn_corpus["prepared"]), "--output", str(report)]) == 0
        assert json.loads((report / "metrics.json").read_text())["ua_mean"] > 0.4
        # Rerunning into the same folder resumes the finished sweep instead of starting over.
        before = (out / "results.csv").read_text()
        assert main(["tune", "--features", str(learn_corpus["prepared"]), "--space", path,
                     "--output", str(out)]) == 0
        assert (out / "results.csv").read_text().splitlines()[0] == before.splitlines()[0]
        assert sorted((out / "results.csv").read_text().splitlines()) == sorted(before.splitlines())
    finally:
        ray.shutdown()


def test_optuna_search_is_available(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    from ser_ray.learn.tuning import SEARCHERS

    space = load_space(_write(tmp_path, {"search": "optuna",
                                         "space": {"model_options.C": {"loguniform": [0.1, 10]}}}))
    assert isinstance(SEARCHERS[space.search](space), OptunaSearch)


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_trials(learn_corpus, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = _write(tmp_path, {
        "base": {"protocol": "loso", "features": ["handcrafted94"], "model": "logreg"},
        "space": {"model_options.C": {"grid": [0.1, 0.3, 1.0, 3.0]}},
        "search": "grid", "scheduler": "fifo", "export_best": False,
        "resources": {"cpus_per_trial": 1.0, "max_concurrent": 1}})
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "ser_ray.cli", "tune", "--features",
           str(learn_corpus["prepared"]), "--space", path, "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("sweep/*/metrics.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-sweep
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("sweep/*/metrics.json")}
    assert 1 <= len(done) < 4
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=400)
    except subprocess.TimeoutExpired as exc:  # say where it stopped: the sweep's own log
        logs = sorted((out / "logs").glob("*.log"))
        tail = logs[-1].read_text(errors="replace")[-4000:] if logs else "(no log)"
        states = sorted(p.name for p in (out / "sweep").iterdir())
        raise AssertionError(f"the resumed sweep did not finish: stdout {exc.stdout!r}, "
                             f"stderr {exc.stderr!r}, sweep folder {states}, log tail:\n{tail}")
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all(",True," in r for r in rows)
    for p, mtime in done.items():  # finished trials were not run again
        assert p.stat().st_mtime_ns == mtime
    assert len(list(out.glob("sweep/*/metrics.json"))) == 4
