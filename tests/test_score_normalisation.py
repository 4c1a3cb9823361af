"""How ``score`` normalises for each training mode: a population of calls, never one call alone.

Models are trained on a synthetic corpus of 8 speakers; the backlog's 8 calls (one emotion each,
2 per mood) come from callers never trained on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from ser_ray.config import ScoreConfig, ScoreNormalisation, load
from ser_ray.data import Moments
from ser_ray.score import read_calls, read_segments, reference_table, run_score
from ser_ray.synth import synthesize_backlog, synthesize_corpus

pytestmark = [pytest.mark.slow]
NIGHT = "2026-11-22"
MODES = ("global", "speaker", "corpus")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ser_ray.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """logreg on handcrafted94 trained with each normalisation mode, by ``ser-ray train``."""
    root = tmp_path_factory.mktemp("norm-models")
    synthesize_corpus("ravdess", root / "corpus", n_speakers=8, per_emotion=4,
                      emotions=["neutral", "calm", "sad", "angry"], seed=5)
    r = _cli("prepare", "--input", str(root / "corpus"), "--corpus", "ravdess", "--features",
             "handcrafted94", "--set", "audio.trim=true", "--set", "audio.normalise=rms", "--output",
             str(root / "prepared"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    out = {}
    for mode in MODES:  # no --feature-set: the folder holds one table
        r = _cli("train", "--features", str(root / "prepared"), "--model", "logreg", "--set",
                 f"normalise={mode}", "--output", str(root / mode))
        assert r.returncode == 0, r.stderr[-2000:]
        out[mode] = root / mode
    return out


@pytest.fixture(scope="module")
def backlog(tmp_path_factory):
    root = tmp_path_factory.mktemp("norm-backlog")
    truth = synthesize_backlog(root / "calls", n_calls=8, seed=3, minutes=(1.0, 2.0), bad=False)
    return {"folder": root / "calls", "truth": truth, "metadata": root / "calls-metadata.csv"}


def _config(model, backlog, output, **kw) -> ScoreConfig:
    return load(ScoreConfig, None, [f"normalisation.{k}={v}" for k, v in kw.pop("norm", {}).items()],
                model=str(model), inputs=[str(backlog["folder"])], output=str(output), run_date=NIGHT,
                customer_channel="right", **kw)


def _ranks(out, truth) -> tuple[pd.Series, pd.Series]:
    calls = read_calls(out).set_index("call_id")
    t = truth.set_index("call_id")
    upset = calls.loc[t.index[t["negative"].astype(bool)], "urgency_rank"]
    settled = calls.loc[t.index[~t["negative"].astype(bool)], "urgency_rank"]
    return upset, settled


@pytest.fixture(scope="module")
def runs(ray_session, models, backlog, tmp_path_factory):
    """Each model scored with the run's calls as its reference population (min_calls=4)."""
    root = tmp_path_factory.mktemp("norm-scored")
    return {mode: (root / mode, run_score(_config(models[mode], backlog, root / mode, norm={"min_calls": 4}),
                                          progress=False)) for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_angry_and_sad_rank_first_for_every_training_mode(runs, backlog, mode):
    out, run = runs[mode]
    upset, settled = _ranks(out, backlog["truth"])
    assert upset.max() < settled.min(), read_calls(out)[["call_id", "urgency_score", "urgency_rank"]]
    calls = read_calls(out)
    norm = run["normalisation"]
    assert norm["trained_with"] == mode
    if mode == "global":
        assert norm["reference"] == "model" and (calls["normalised_by"] == "training").all()
    else:
        assert norm["reference"] == "run" and norm["populations"] == {
            "": {"calls": 8, "windows": int(calls["n_segments"].sum()), "statistics": "run"}}
        assert (calls["normalised_by"] == "run").all()
    saved = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert saved["normalisation"] == norm


def test_a_tiny_run_falls_back_to_the_training_population(ray_session, models, backlog, tmp_path):
    """8 calls < the default min_calls=20: the model's stored training statistics are used."""
    run = run_score(_config(models["speaker"], backlog, tmp_path / "out"), progress=False)
    assert run["normalisation"]["populations"][""]["statistics"] == "training"
    calls = read_calls(tmp_path / "out")
    assert (calls["normalised_by"] == "training").all()
    upset, settled = _ranks(tmp_path / "out", backlog["truth"])
    assert upset.max() < settled.min()


def test_populations_per_metadata_group_fall_back_to_the_whole_run(ray_session, runs, models, backlog,
                                                                   tmp_path):
    out = tmp_path / "grouped"
    run = run_score(_config(models["speaker"], backlog, out, metadata=str(backlog["metadata"]),
                            norm={"group_by": "queue", "min_calls": 4}), progress=False)
    meta = pd.read_csv(backlog["metadata"])
    sizes = meta[meta["call_id"].isin(backlog["truth"]["call_id"])]["queue"].value_counts()
    assert sizes.max() >= 4 > sizes.min()  # the seed gives one big queue and smaller ones
    pops = run["normalisation"]["populations"]
    assert {g: p["calls"] for g, p in pops.items()} == sizes.to_dict()
    for g, p in pops.items():
        assert p["statistics"] == (f"run:queue={g}" if sizes[g] >= 4 else "run"), (g, p)
    calls = read_calls(out).set_index("call_id")
    for cid, queue in zip(meta["call_id"], meta["queue"]):
        if cid in calls.index:
            assert calls.loc[cid, "normalised_by"] == pops[queue]["statistics"]
    # Calls of the small queues were standardised with the whole run: their rows equal the
    # ungrouped run's.
    plain = read_segments(runs["speaker"][0]).set_index(["call_id", "segment_index"]).sort_index()
    segs = read_segments(out).set_index(["call_id", "segment_index"]).sort_index()
    small = [c for c, q in zip(meta["call_id"], meta["queue"]) if c in calls.index and sizes[q] < 4]
    probs = [c for c in segs.columns if c.startswith("prob_")]
    pd.testing.assert_frame_equal(segs.loc[small, probs], plain.loc[small, probs])
    big = [c for c in calls.index if c not in small]
    assert not np.allclose(segs.loc[big, probs].to_numpy(), plain.loc[big, probs].to_numpy())


def test_self_normalisation_is_explicit_and_recorded(ray_session, models, backlog, tmp_path):
    run = run_score(_config(models["speaker"], backlog, tmp_path / "self", norm={"reference": "call"}),
                    progress=False)
    assert run["normalisation"]["reference"] == "call"
    assert (read_calls(tmp_path / "self")["normalised_by"] == "call").all()
    assert "groups" not in run["normalisation"] and "populations" not in run["normalisation"]


def test_a_rerun_and_a_killed_run_give_the_same_rows(runs, models, backlog, tmp_path):
    """The two-pass run (extract, then predict with the run's statistics): SIGKILL the whole job
    during the extract pass, rerun, and compare with an undisturbed run; then rerun the night."""
    ref_out = runs["speaker"][0]
    out = tmp_path / "killed"
    args = ["score", "--model", str(models["speaker"]), "--input", str(backlog["folder"]), "--output",
            str(out), "--run-date", NIGHT, "--customer-channel", "right", "--set", "calls_per_task=1",
            "--set", "normalisation.min_calls=4", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "ser_ray.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    staged = out / "_staging"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(staged.rglob("moments.json"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    extracted = len(list(staged.rglob("moments.json")))
    assert 2 <= extracted < 8 and not list(staged.rglob("calls.parquet")), "kill mid extract pass"
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["normalisation"]["key"] == runs["speaker"][1]["normalisation"]["key"]
    sort = ["call_id"]
    pd.testing.assert_frame_equal(read_calls(out).sort_values(sort).reset_index(drop=True),
                                  read_calls(ref_out).sort_values(sort).reset_index(drop=True))
    seg = ["call_id", "start_s"]
    pd.testing.assert_frame_equal(read_segments(out).sort_values(seg).reset_index(drop=True),
                                  read_segments(ref_out).sort_values(seg).reset_index(drop=True))
    # The same night again: the same rows, and nothing left in staging.
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(read_calls(out).sort_values(sort).reset_index(drop=True),
                                  read_calls(ref_out).sort_values(sort).reset_index(drop=True))
    assert not staged.exists() or not list(staged.rglob("*.parquet"))


def _pop(calls: int, value: float) -> dict:
    X = np.full((calls * 3, 2), value, np.float32) + np.arange(2)
    return {"calls": calls, "windows": calls * 3, "moments": Moments.of(X, None)}


def test_reference_table_falls_back_group_then_run_then_training():
    cfg = lambda **kw: ScoreConfig(normalisation=ScoreNormalisation(**kw))  # noqa: E731
    training = (np.full(2, 9, np.float32), np.full(2, 2, np.float32))
    pops = {"a": _pop(5, 1.0), "b": _pop(2, 3.0)}
    table, record = reference_table(pops, cfg(group_by="queue", min_calls=4), training)
    assert [record[g]["statistics"] for g in "ab"] == ["run:queue=a", "run"]
    np.testing.assert_allclose(table["a"]["mean"], [1, 2])
    whole = (pops["a"]["moments"] + pops["b"]["moments"]).mean_std()
    np.testing.assert_allclose(table["b"]["mean"], whole[0])
    table, record = reference_table(pops, cfg(group_by="queue", min_calls=10), training)
    assert [record[g]["statistics"] for g in "ab"] == ["training", "training"]
    np.testing.assert_allclose(table["a"]["mean"], training[0])
    with pytest.raises(ValueError, match="min_calls=10.*reference=call"):
        reference_table(pops, cfg(min_calls=10), None)
    assert reference_table({}, cfg(), None) == ({}, {})


def test_bad_normalisation_settings_are_clear_errors(models, backlog, tmp_path):
    for sets, message in ((["normalisation.reference=speaker"], "choose run, training, call"),
                          (["normalisation.min_calls=0"], "min_calls=0"),
                          (["normalisation.group_by=queue"], "needs --metadata")):
        r = _cli("score", "--model", str(models["speaker"]), "--input", str(backlog["folder"]), "--output",
                 str(tmp_path / "x"), *[a for s in sets for a in ("--set", s)])
        assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
