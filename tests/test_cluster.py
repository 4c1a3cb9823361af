"""prepare, score and tune on a real multi-node Ray cluster on this machine (a head with no CPUs
for work, worker nodes of one CPU each), losing a worker node in the middle of each job: the
job finishes on the node that is left, every input appears exactly once, and a rerun changes
nothing (docs/guide.md, "Guarantees")."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster_helpers import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("cluster-logs"))
    try:
        yield c.start(workers=2)
    finally:
        c.stop()


def _ser_ray(cluster, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ser_ray.cli", *args],
                            env=cluster.job_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_a_node_once(cluster, proc: subprocess.Popen, done, timeout_s: float = 300) -> None:
    """Once ``done()`` says some work is finished (and the job still runs), take the newest
    worker node away; then wait for the job."""
    deadline = time.time() + timeout_s
    while not done() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before a node could be taken away"
    cluster.kill_worker(cluster.nodes[-1])


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_prepare_loses_a_node_and_every_file_appears_once(cluster, tmp_path):
    from ser_ray.synth import synthesize_corpus

    rows = synthesize_corpus("ravdess", tmp_path / "corpus", n_speakers=4, per_emotion=4,
                             emotions=["neutral", "happy", "sad", "angry"], seed=7)
    out = tmp_path / "prepared"
    args = ["prepare", "--input", str(tmp_path / "corpus"), "--corpus", "ravdess", "--features",
            "handcrafted94", "--set", "files_per_task=2", "--output", str(out), "--no-progress"]
    proc = _ser_ray(cluster, *args)
    _kill_a_node_once(cluster, proc, lambda: len(list((out / "_units").glob("*.json"))) >= 3)
    _finish(proc)
    assert cluster.cpus() == 1
    summary = json.loads((out / "summary.json").read_text())
    uris = pq.read_table(out / "manifest").column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == len(rows) == summary["ok"]
    assert summary["quarantined"] == 0
    before = sorted(p.name for p in (out / "features" / "handcrafted94").iterdir())
    proc = _ser_ray(cluster, *args)
    _finish(proc)
    again = json.loads((out / "summary.json").read_text())
    assert again["resumed_units"] == again["units"] == summary["units"]
    assert sorted(p.name for p in (out / "features" / "handcrafted94").iterdir()) == before


def test_score_loses_a_node_and_every_call_appears_once(cluster, score_model, tmp_path):
    from ser_ray.score import read_calls, read_segments
    from ser_ray.synth import synthesize_backlog

    cluster.add_worker()  # two worker nodes again
    truth = synthesize_backlog(tmp_path / "calls", n_calls=8, seed=3, minutes=(0.3, 0.4),
                               bad=False, metadata=False)
    out = tmp_path / "reports"
    args = ["score", "--model", str(score_model), "--input", str(tmp_path / "calls"),
            "--output", str(out), "--run-date", "2026-12-01", "--customer-channel", "right",
            "--set", "calls_per_task=1", "--no-progress"]
    proc = _ser_ray(cluster, *args)
    _kill_a_node_once(cluster, proc,
                      lambda: len(list((out / "_staging").rglob("calls.parquet"))) >= 2)
    _finish(proc)
    calls = read_calls(out)
    assert sorted(calls["call_id"]) == sorted(truth["call_id"]) and calls["call_id"].is_unique
    assert (calls["status"] == "scored").all()
    segments = read_segments(out)
    assert not segments.duplicated(["call_id", "segment_index"]).any()
    proc = _ser_ray(cluster, *args)  # a rerun of the night: the same rows
    _finish(proc)
    again = read_calls(out)
    cols = ["call_id", "status", "urgency_score", "urgency_rank"]
    assert again.sort_values("call_id")[cols].reset_index(drop=True).equals(
        calls.sort_values("call_id")[cols].reset_index(drop=True))


def test_a_sweep_loses_a_node_and_no_trial_is_lost(cluster, learn_corpus, tmp_path):
    cluster.add_worker()
    space = tmp_path / "space.yaml"
    space.write_text("""
base: {protocol: speaker-kfold, folds: 2, features: [handcrafted94], model: logreg}
space:
  model_options.C: {grid: [0.1, 1.0, 10.0, 100.0]}
search: grid
scheduler: fifo
export_best: false
resources: {cpus_per_trial: 1}
""")
    out = tmp_path / "sweep"
    proc = _ser_ray(cluster, "tune", "--features", str(learn_corpus["prepared"]), "--space",
                    str(space), "--output", str(out), "--no-progress")
    _kill_a_node_once(cluster, proc,
                      lambda: len(list(out.glob("sweep/*/result.json"))) >= 1
                      and any(p.stat().st_size for p in out.glob("sweep/*/result.json")))
    _finish(proc)
    import pandas as pd

    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and table["complete"].all()
    assert sorted(table["config/model_options.C"]) == [0.1, 1.0, 10.0, 100.0]
