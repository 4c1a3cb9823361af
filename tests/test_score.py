"""The scoring plane end to end on a real local Ray: backlog -> segments/, calls/, runs/, reports/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ser_ray.config import ScoreConfig, load
from ser_ray.score import (Call, ModelInfo, Unit, WindowFeatures, check_config, iter_calls, iter_units,
                           largest_first, load_metadata, model_window, pick_channel, read_calls,
                           read_segments, resolve_run_date, run_score)
from ser_ray.synth import synthesize_backlog

from cli_helpers import ser_ray_cli
from prepare_helpers import kill_cli_once_staged

REPO = Path(__file__).resolve().parent.parent
NIGHT = "2026-11-22"
SORT = ["call_id"]


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


@pytest.fixture(scope="module")
def backlog(tmp_path_factory):
    """4 good calls of 1-1.5 min (stereo and mono, one per mood) in dated sub-folders, the four
    kinds of broken file, a notes file that is not a call, and metadata beside the folder."""
    root = tmp_path_factory.mktemp("backlog")
    folder = root / "incoming"
    truth = synthesize_backlog(folder, n_calls=4, seed=11, minutes=(1.0, 1.5), sr=8000, stereo_share=0.5,
                               layout="dated")
    (folder / "README.txt").write_text("recordings of 2026-11-22\n")
    return {"folder": folder, "truth": truth, "metadata": root / "incoming-metadata.csv"}


def _config(model, inputs, output, **kw) -> ScoreConfig:
    return load(ScoreConfig, None, model=str(model), inputs=[str(i) for i in inputs], output=str(output),
                run_date=kw.pop("run_date", NIGHT), customer_channel=kw.pop("customer_channel", "right"), **kw)


def _frame(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return df.sort_values(by).reset_index(drop=True)


@pytest.fixture(scope="module")
def scored(ray_session, score_model, backlog, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "reports"
    run = run_score(_config(score_model, [backlog["folder"]], out, metadata=str(backlog["metadata"])),
                    progress=False)
    return {"out": out, "run": run}


# --------------------------------------------------------------------------- end to end

def test_every_call_gets_one_row_with_its_status(scored, backlog):
    calls = read_calls(scored["out"])
    truth = backlog["truth"]
    assert sorted(calls["call_id"]) == sorted(truth["call_id"])  # one row each, README.txt is no call
    status = dict(zip(calls["call_id"], calls["status"]))
    expected = {"empty": "empty", "truncated": "decode_error", "not_audio": "not_audio", "silent": "no_speech"}
    for row in truth.itertuples():
        assert status[row.call_id] == expected.get(row.kind, "scored"), row
    bad = calls[calls["status"] != "scored"]
    assert bad["reason"].notna().all() and bad["urgency_score"].isna().all()
    run = scored["run"]
    assert run["calls"] == len(truth) and run["counts"]["scored"] == int(truth["negative"].notna().sum())
    assert run["ignored_files"] == {".txt": 1}
    assert (calls["run_date"] == NIGHT).all() and (calls["model_hash"] == run["model_hash"]).all()


def test_angry_and_sad_callers_rank_above_calm_and_neutral(scored, backlog):
    calls = read_calls(scored["out"]).set_index("call_id")
    truth = backlog["truth"].set_index("call_id")
    good = truth[truth["negative"].notna()]
    upset = calls.loc[good.index[good["negative"].astype(bool)], "urgency_rank"]
    settled = calls.loc[good.index[~good["negative"].astype(bool)], "urgency_rank"]
    assert upset.max() < settled.min(), calls[["urgency_score", "urgency_rank"]]
    # Ranks are 1..n, scored calls first, unscored last.
    assert sorted(calls["urgency_rank"]) == list(range(1, len(calls) + 1))
    assert calls.loc[calls["status"] == "scored", "urgency_rank"].max() < \
        calls.loc[calls["status"] != "scored", "urgency_rank"].min()


def test_segments_cover_the_customers_speech_only(scored, backlog):
    segs = read_segments(scored["out"])
    calls = read_calls(scored["out"]).set_index("call_id")
    truth = backlog["truth"].set_index("call_id")
    scored_ids = set(calls.index[calls["status"] == "scored"])
    assert set(segs["call_id"]) == scored_ids
    probs = segs.filter(like="prob_")
    assert probs.shape[1] == 4 and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (segs["confidence"] == probs.max(axis=1)).all()
    for cid, g in segs.groupby("call_id"):
        assert (g["start_s"] >= 0).all() and (g["end_s"] <= calls.loc[cid, "duration_s"] + 1e-6).all()
        assert len(g) == calls.loc[cid, "n_segments"]
        spans = json.loads(truth.loc[cid, "spans"])
        customer = [(s["start_s"], s["end_s"]) for s in spans if s["role"] == "customer"]
        inside = sum(max(0.0, min(e, ce) - max(s, cs)) for s, e in zip(g["start_s"], g["end_s"])
                     for cs, ce in customer)
        total = float((g["end_s"] - g["start_s"]).sum())
        if truth.loc[cid, "channels"] == 2:  # the right channel holds the customer alone
            assert (g["channel"] == "right").all() and inside / total > 0.95, cid
        else:
            assert (g["channel"] == "mono").all()


def test_metadata_is_joined_and_run_files_are_written(scored, backlog):
    calls = read_calls(scored["out"])
    meta = pd.read_csv(backlog["metadata"], dtype=str)
    joined = calls.merge(meta, on="call_id", suffixes=("", "_expected"))
    assert len(joined) == len(calls)
    assert (joined["agent"] == joined["agent_expected"]).all() and (joined["queue"] == joined["queue_expected"]).all()
    run = scored["run"]
    assert run["metadata_rows_without_call"] == len(meta) - len(calls) == 1
    saved = json.loads((scored["out"] / "runs" / f"{run['run_id']}.json").read_text())
    assert saved["counts"] == run["counts"] and saved["model_hash"] == run["model_hash"]
    assert saved["config"]["customer_channel"] == "right" and "numpy" in saved["versions"]
    assert saved["labels"] == ["neutral", "calm", "sad", "angry"]
    report = (scored["out"] / "reports" / f"run_date={NIGHT}" / f"{run['run_id']}.md").read_text()
    top = calls.loc[calls["urgency_rank"] == 1, "call_id"].item()
    assert top in report and f"{run['run_id']}.png" in report
    assert (scored["out"] / "reports" / f"run_date={NIGHT}" / f"{run['run_id']}.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((scored["out"] / "_staging").glob("*"))  # staging is gone once published
    # what the night cost: reserved cores x wall time, at the configured prices
    cost = saved["cost"]
    assert cost["cpus"] >= 1 and cost["gpu_hours"] == 0.0 and cost["currency"] == "USD"
    assert cost["audio_hours"] == pytest.approx(run["fresh_audio_s"] / 3600, rel=1e-4)
    assert cost["cpu_core_hours"] == pytest.approx(cost["cpus"] * run["wall_s"] / 3600, rel=1e-3)
    assert cost["total"] == pytest.approx(cost["cpu_core_hours"] * 0.05, rel=1e-3)
    assert cost["per_audio_hour"] == pytest.approx(cost["total"] / cost["audio_hours"], rel=1e-3)
    assert "- Cost: $" in report and "per audio hour" in report
    page = (scored["out"] / "reports" / f"run_date={NIGHT}" / f"{run['run_id']}.html").read_text()
    assert '<li class="cost">Cost: $' in page


def test_rerunning_the_night_gives_the_same_rows(scored, score_model, backlog):
    before_calls, before_segs = read_calls(scored["out"]), read_segments(scored["out"])
    files = sorted(p.relative_to(scored["out"]) for p in scored["out"].rglob("*.parquet"))
    run = run_score(_config(score_model, [backlog["folder"]], scored["out"], metadata=str(backlog["metadata"])),
                    progress=False)
    assert run["skipped_previously_scored"] == 0  # the same night is scored again, not skipped
    assert sorted(p.relative_to(scored["out"]) for p in scored["out"].rglob("*.parquet")) == files
    pd.testing.assert_frame_equal(_frame(read_calls(scored["out"]), SORT), _frame(before_calls, SORT))
    pd.testing.assert_frame_equal(_frame(read_segments(scored["out"]), ["call_id", "start_s"]),
                                  _frame(before_segs, ["call_id", "start_s"]))


def test_next_night_skips_calls_scored_with_the_same_model(scored, score_model, backlog, tmp_path):
    out = tmp_path / "nights"
    shutil.copytree(scored["out"], out)
    folder = tmp_path / "incoming"
    shutil.copytree(backlog["folder"], folder)
    late = next(folder.rglob("*.wav"))
    new = late.with_name("call-late.wav")
    shutil.copy(late, new)
    run = run_score(_config(score_model, [folder], out, run_date="2026-11-23"), progress=False)
    night2 = read_calls(out, "2026-11-23")
    # Only the new recording is scored; every call scored (or settled) on the 22nd is skipped.
    assert list(night2["call_id"]) == ["call-late"]
    assert run["skipped_previously_scored"] == len(backlog["truth"])
    assert len(read_calls(out, NIGHT)) == len(backlog["truth"])  # the 22nd is untouched
    again = run_score(_config(score_model, [folder], out, run_date="2026-11-23", rescore=True), progress=False)
    assert again["calls"] == len(backlog["truth"]) + 1


def test_interrupted_run_resumes_to_the_same_rows(scored, score_model, backlog, tmp_path):
    """SIGKILL the whole job (driver and its Ray) once units are staged; rerun; compare."""
    out = tmp_path / "resumed"
    args = ["score", "--model", str(score_model), "--input", str(backlog["folder"]), "--output", str(out),
            "--run-date", NIGHT, "--customer-channel", "right", "--metadata", str(backlog["metadata"]),
            "--set", "calls_per_task=1", "--no-progress"]
    staged = out / "_staging"
    done_before = kill_cli_once_staged(args, staged, "calls.parquet", 2)
    assert 2 <= done_before < len(backlog["truth"]), "the kill should land mid-run"
    assert not (out / "calls").exists()  # nothing published by a half-finished run
    ser_ray_cli(*args[:-1])
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    # Ray's workers live in their own process group and may finish one more unit as they go down.
    assert done_before <= run["resumed_units"] < run["units"] == len(backlog["truth"])
    pd.testing.assert_frame_equal(_frame(read_calls(out), SORT), _frame(read_calls(scored["out"]), SORT))
    pd.testing.assert_frame_equal(_frame(read_segments(out), ["call_id", "start_s"]),
                                  _frame(read_segments(scored["out"]), ["call_id", "start_s"]))


@pytest.mark.parametrize("engine", ["actors", "staged"])
def test_a_killed_worker_loses_and_duplicates_nothing(scored, score_model, backlog, tmp_path, engine):
    """SIGKILL a scoring actor's process mid-run (and, with the staged pools, a read task's worker
    too): Ray restarts it, the unit is retried, and the published rows equal an undisturbed run's."""
    out = tmp_path / "killed-worker"
    args = ["score", "--model", str(score_model), "--input", str(backlog["folder"]), "--output", str(out),
            "--run-date", NIGHT, "--customer-channel", "right", "--metadata", str(backlog["metadata"]),
            "--set", "calls_per_task=1", "--num-workers", "1", "--set", f"engine={engine}"]
    if engine == "staged":
        args += ["--set", "read_cpus=0.5", "--set", "cpus_per_worker=1"]
    proc = subprocess.Popen([sys.executable, "-m", "ser_ray.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    targets = ["ScoreActor"] + (["_read_unit"] if engine == "staged" else [])
    killed: dict[str, int] = {}
    deadline = time.time() + 300
    while len(killed) < len(targets) and time.time() < deadline and proc.poll() is None:
        staged = bool(list((out / "_staging").rglob("calls.parquet")))
        # Only this job's processes: its Ray is the command's (another test may run its own).
        for p in _descendants(proc.pid):
            line = " ".join(_cmdline(p))
            for t in targets:
                # A read worker as soon as one runs; the model actor once a unit is staged.
                if t not in killed and t in line and (staged or t == "_read_unit"):
                    p.kill()
                    killed[t] = p.pid
        time.sleep(0.02)
    log, _ = proc.communicate(timeout=600)
    assert sorted(killed) == sorted(targets), f"killed {killed}, wanted {targets}"
    assert proc.returncode == 0, log[-3000:]
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["engine"] == engine
    calls = read_calls(out)
    assert calls["call_id"].is_unique and len(calls) == len(backlog["truth"])
    pd.testing.assert_frame_equal(_frame(calls, SORT), _frame(read_calls(scored["out"]), SORT))
    pd.testing.assert_frame_equal(_frame(read_segments(out), ["call_id", "start_s"]),
                                  _frame(read_segments(scored["out"]), ["call_id", "start_s"]))


def test_the_ray_data_engine_publishes_the_same_rows(scored, score_model, backlog, tmp_path):
    """engine=ray_data (map_batches over an actor pool) and the default actor pool: same night,
    same rows, and every scoring actor's model folder is removed at the end."""
    import glob
    import tempfile

    assert scored["run"]["config"]["engine"] == "auto" and scored["run"]["engine"] == "actors"
    # this run's own temp folder (tests/conftest.py), which the module's Ray workers inherit
    assert tempfile.gettempdir().startswith(os.environ["SER_RAY_TEST_TMP"])
    models = lambda: set(glob.glob(os.path.join(tempfile.gettempdir(), "ser-ray-model-*")))  # noqa: E731
    before = models()
    out = tmp_path / "ray-data"
    run = run_score(_config(score_model, [backlog["folder"]], out, metadata=str(backlog["metadata"]),
                            engine="ray_data"), progress=False)
    assert run["engine"] == "ray_data" and run["counts"] == scored["run"]["counts"]
    pd.testing.assert_frame_equal(_frame(read_calls(out), SORT), _frame(read_calls(scored["out"]), SORT))
    pd.testing.assert_frame_equal(_frame(read_segments(out), ["call_id", "start_s"]),
                                  _frame(read_segments(scored["out"]), ["call_id", "start_s"]))
    run_score(_config(score_model, [backlog["folder"]], tmp_path / "actors"), progress=False)
    assert models() <= before


def test_the_staged_engine_publishes_the_same_rows(scored, score_model, backlog, tmp_path):
    """engine=staged (a CPU pool reads and cuts windows, model actors score them) gives the same
    rows as the one-pool default, and its run record splits the work between the two sides."""
    out = tmp_path / "staged"
    run = run_score(_config(score_model, [backlog["folder"]], out, metadata=str(backlog["metadata"]),
                            engine="staged", read_cpus=0.5, cpus_per_worker=0.5, calls_per_task=1,
                            read_ahead=1),
                    progress=False)
    assert run["engine"] == "staged" and run["counts"] == scored["run"]["counts"]
    assert run["read_seconds"] > 0 and run["model_seconds"] > 0
    pd.testing.assert_frame_equal(_frame(read_calls(out), SORT), _frame(read_calls(scored["out"]), SORT))
    pd.testing.assert_frame_equal(_frame(read_segments(out), ["call_id", "start_s"]),
                                  _frame(read_segments(scored["out"]), ["call_id", "start_s"]))


def test_staged_pools_leave_cpus_for_reading(ray_session, score_model, tmp_path):
    """The model pool never takes the CPUs the read pool needs, and a config that leaves none is
    refused with the knobs to turn."""
    from ser_ray.score import staged_pools

    import ray

    cpus = ray.cluster_resources()["CPU"]
    n, slots = staged_pools(_config(score_model, [tmp_path], tmp_path / "o", read_cpus=0.5,
                                    cpus_per_worker=0.5), 100)
    assert n * 0.5 + slots * 0.5 <= cpus and n >= 1 and slots >= 1
    with pytest.raises(ValueError, match="read_cpus"):
        staged_pools(_config(score_model, [tmp_path], tmp_path / "o", num_workers=int(cpus),
                             cpus_per_worker=1.0), 100)


def test_a_model_the_actors_cannot_load_fails_the_run_naming_the_unit(ray_session, score_model, backlog,
                                                                       tmp_path):
    from ser_ray.models.artifact import WEIGHTS

    broken = tmp_path / "broken-model"
    shutil.copytree(score_model, broken)
    weights = [broken / w for w in WEIGHTS.values() if (broken / w).exists()]
    assert weights
    for w in weights:
        w.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match=r"(?s)unit [0-9a-f]{20} \(4 calls: .*\) could not be scored.*rerun"):
        run_score(_config(broken, [backlog["folder"]], tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "calls").exists()  # nothing published for a failed run


# --------------------------------------------------------------------------- faults and limits

def test_caps_and_unreadable_files_get_a_status(ray_session, score_model, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    t = np.arange(8000 * 20) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    sf.write(folder / "long.wav", tone, 8000)                 # 20 s, 320 kB
    sf.write(folder / "big.wav", np.tile(tone, 2), 8000)      # 40 s, 640 kB
    os.symlink(folder / "gone.wav", folder / "dangling.wav")
    sub = folder / "again"
    sub.mkdir()
    sf.write(sub / "long.wav", tone[:8000], 8000)             # same stem as long.wav
    os.mkfifo(folder / "fifo.wav")                            # a plain open() blocks forever
    os.symlink(folder, sub / "loop.wav")                      # a loop: the backlog again
    (tmp_path / "elsewhere.wav").write_bytes((sub / "long.wav").read_bytes())
    os.symlink(tmp_path / "elsewhere.wav", folder / "outside.wav")
    sf.write(folder / "bomb.flac", np.zeros((96000 * 10, 8), np.int16), 96000)  # 29 MB decoded
    # metadata for a stem two files share, with columns named like the call rows' own
    meta = tmp_path / "meta.csv"
    meta.write_text("call_id,status,meta_status,queue\nlong,vip,x,billing\nfifo,,,sales\n")
    run = run_score(_config(score_model, [folder], tmp_path / "out", max_call_s=15.0,
                            max_file_mb=0.5, max_decoded_mb=8, metadata=str(meta)),
                    progress=False)
    calls = read_calls(tmp_path / "out").query("status != 'duplicate_call_id'").set_index("call_id")
    assert calls.loc["long", "status"] == "too_long" and "max_call_s" in calls.loc["long", "reason"]
    assert calls.loc["big", "status"] == "too_large"
    assert calls.loc["dangling", "status"] == "unreadable"
    assert calls.loc["fifo", "status"] == "not_a_file" and "FIFO" in calls.loc["fifo", "reason"]
    assert calls.loc["loop", "status"] == "not_a_file"
    assert calls.loc["outside", "status"] == "outside_root"
    assert calls.loc["bomb", "status"] == "too_large"
    assert "max_decoded_mb" in calls.loc["bomb", "reason"]
    dup = read_calls(tmp_path / "out").query("status == 'duplicate_call_id'")
    assert len(dup) == 1 and "call_id=path" in dup["reason"].item()
    assert run["calls"] == 8
    assert (calls.loc["long", ["meta_status", "meta_meta_status", "queue"]].tolist()
            == ["vip", "x", "billing"]) and dup["queue"].item() == "billing"


def test_bad_arguments_are_clear_errors(ray_session, score_model, tmp_path):
    with pytest.raises(ValueError, match="customer_channel"):
        check_config(_config(score_model, [tmp_path], tmp_path / "o", customer_channel="middle"))
    with pytest.raises(ValueError, match="unknown vad"):
        check_config(_config(score_model, [tmp_path], tmp_path / "o", vad={"name": "webrtc"}))
    with pytest.raises(ValueError, match="engine='spark': choose auto, actors, ray_data, staged"):
        check_config(_config(score_model, [tmp_path], tmp_path / "o", engine="spark"))
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        resolve_run_date("22/11/2026")
    with pytest.raises(FileNotFoundError, match="model"):
        ModelInfo.read(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no such file, folder"):
        list(iter_calls([str(tmp_path / "missing")], __import__("ser_ray.storage").storage.Storage(), {}, []))
    bad = tmp_path / "meta.csv"
    bad.write_text("id,agent\n1,a\n")
    with pytest.raises(ValueError, match="call_id column"):
        load_metadata(str(bad), __import__("ser_ray.storage").storage.Storage())
    bad.write_text("call_id,agent\n1,a\n1,b\n")
    with pytest.raises(ValueError, match="more than once"):
        load_metadata(str(bad), __import__("ser_ray.storage").storage.Storage())
    r = ser_ray_cli("score", "--model", str(score_model), "--input", str(tmp_path), "--output",
                    str(tmp_path / "o"), "--run-date", "yesterday", check=False)
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr


# --------------------------------------------------------------------------- pieces

def test_model_window_follows_what_the_model_saw(score_model):
    fc = ModelInfo.read(score_model).feature_config
    assert model_window(fc) == (pytest.approx(fc["clip_s"]), "median training clip")
    mfcc = {"features": ["mfcc"], "frames": 200, "time_axis": 0, "audio": {"sample_rate": 16000},
            "extractors": {"mfcc": {"name": "mfcc", "hop_length": 160, "block_s": None}}}
    assert model_window(mfcc)[0] == pytest.approx(2.0)
    stft = {"features": ["stft"], "audio": {}, "extractors": {"stft": {"name": "stft", "block_s": 1.0}}}
    assert model_window(stft) == (1.0, "training block length")
    fixed = {**mfcc, "audio": {"sample_rate": 16000, "duration_s": 2.5}}
    assert model_window(fixed)[0] == 2.5


def test_window_features_match_the_models_input(score_model):
    from ser_ray.models.artifact import load_predictor

    pred = load_predictor(score_model)
    feats = WindowFeatures(pred.feature_config)
    rng = np.random.default_rng(0)
    for seconds in (0.3, 2.0, 5.0):
        x = feats(rng.normal(0, 0.1, int(seconds * feats.sr)).astype(np.float32))
        assert x.shape == tuple(pred.input_shape) and np.isfinite(x).all()


def test_a_scoring_window_is_the_training_row_of_the_same_audio(ray_session, tmp_path):
    """Train/serve parity: a call that is one training clip, read and cut the way scoring reads
    and cuts calls, gives exactly the feature row training learnt from (conditioning, extractor,
    the frames a 2-D feature is cropped or padded to), for a 2-D and a vector feature."""
    from ser_ray import audio
    from ser_ray.config import AudioConfig, PrepareConfig
    from ser_ray.learn.data import load_features
    from ser_ray.prepare import run_prepare
    from ser_ray.synth import synthesize_corpus

    synthesize_corpus("emodb", tmp_path / "corpus", n_speakers=2, per_emotion=1,
                      emotions=["angry", "sad", "neutral"], sr=22050, seed=4)
    run_prepare(PrepareConfig(inputs=[str(tmp_path / "corpus")], corpus="emodb",
                              features=["mfcc", "handcrafted94"], output=str(tmp_path / "prepared"),
                              audio=AudioConfig(pre_emphasis=0.97, normalise="rms")),
                progress=False)
    uris = pd.read_parquet(tmp_path / "prepared" / "manifest").set_index("utterance_id")["uri"]
    for feature in ("mfcc", "handcrafted94"):
        data = load_features(tmp_path / "prepared", [feature])
        windows = WindowFeatures(data.feature_config)
        assert len(data) == 6
        for row, utt in enumerate(data.meta["utterance_id"]):
            decoded = audio.decode(Path(uris[utt]).read_bytes())  # as CallReader.load reads a call
            y = audio.resample(pick_channel(decoded.samples, "mono")[0], decoded.sample_rate,
                               windows.sr)
            np.testing.assert_allclose(windows.many([y])[0], data.X[row], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{feature} of {utt}")


def test_pick_channel():
    stereo = np.stack([np.ones(4), -np.ones(4)], axis=1).astype(np.float32)
    assert pick_channel(stereo, "left")[0].tolist() == [1] * 4 and pick_channel(stereo, "left")[1] == "left"
    assert pick_channel(stereo, "right")[0].tolist() == [-1] * 4
    assert pick_channel(stereo, "mono")[0].tolist() == [0] * 4
    y, ch = pick_channel(np.ones((4, 1), np.float32), "right")
    assert ch == "mono" and y.shape == (4,)


def test_units_are_cut_by_count_and_size_with_stable_ids():
    calls = [Call(f"c{i}", f"/x/c{i}.wav", s) for i, s in enumerate([10, 10, 10, 500, 10])]
    units = list(iter_units(iter(calls), 2, 100, "m"))
    assert [[c.call_id for c in u.calls] for u in units] == [["c0", "c1"], ["c2"], ["c3"], ["c4"]]
    assert [u.unit_id for u in units] == [u.unit_id for u in iter_units(iter(calls), 2, 100, "m")]
    assert units[0].unit_id != next(iter_units(iter(calls), 2, 100, "other config")).unit_id
    assert Unit.from_json(units[0].to_json()) == units[0]  # as it crosses to an actor


def test_a_wave_runs_its_largest_units_first():
    calls = [Call(f"c{i}", f"/x/c{i}.wav", s)
             for i, s in enumerate([10, 10, 10, 500, 30, -1, 40])]  # -1: size unknown
    units = list(iter_units(iter(calls), 2, 100, "m"))
    sizes = [sum(max(c.size, 0) for c in u.calls) for u in units]
    assert sizes == [20, 10, 500, 30, 40]  # listing order
    ordered = largest_first(units)
    assert [sum(max(c.size, 0) for c in u.calls) for u in ordered] == [500, 40, 30, 20, 10]
    assert sorted(u.unit_id for u in ordered) == sorted(u.unit_id for u in units)
    assert [u.unit_id for u in units] == [u.unit_id for u in iter_units(iter(calls), 2, 100, "m")]


def test_call_ids_are_paths_below_the_input(tmp_path):
    from collections import Counter

    from ser_ray.storage import Storage

    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/b/c1.wav", "a/c2.FLAC", "a/.hidden.wav", "a/notes.json"):
        (tmp_path / rel).write_bytes(b"x")
    ignored, examples = Counter(), []
    calls = list(iter_calls([str(tmp_path)], Storage(), ignored, examples, "path"))
    assert sorted(c.call_id for c in calls) == ["a/b/c1", "a/c2"]
    assert ignored == Counter({"hidden": 1, ".json": 1}) and examples == [str(tmp_path / "a/notes.json")]
    assert sorted(c.call_id for c in iter_calls([str(tmp_path)], Storage(), Counter(), [])) == ["c1", "c2"]
    single = list(iter_calls([str(tmp_path / "a/c2.FLAC")], Storage(), Counter(), []))
    assert single == [Call("c2", str(tmp_path / "a/c2.FLAC"), 1, str(tmp_path / "a"))]


def test_the_documented_config_is_the_default():
    assert load(ScoreConfig, REPO / "configs" / "score.yaml") == ScoreConfig()
