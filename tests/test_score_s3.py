"""score with its backlog, metadata and reports on a real S3-compatible server (Swift + s3api)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ser_ray.config import ScoreConfig, load
from ser_ray.storage import Storage
from ser_ray.score import read_calls, read_segments, run_score
from ser_ray.synth import synthesize_backlog

pytestmark = pytest.mark.s3
NIGHT = "2026-11-22"


def _config(model, inputs, output, metadata) -> ScoreConfig:
    return load(ScoreConfig, None, model=str(model), inputs=[str(inputs)], output=str(output), run_date=NIGHT,
                metadata=str(metadata), customer_channel="right")


def test_s3_backlog_and_reports_equal_a_local_run(ray_after_s3, score_model, tmp_path):
    s3 = ray_after_s3
    folder = tmp_path / "incoming"
    truth = synthesize_backlog(folder, n_calls=2, seed=4, minutes=(1.0, 1.2), stereo_share=0.5)
    s3.upload_dir(folder, "calls", "incoming/2026-11-22")
    s3.boto3_client().upload_file(str(tmp_path / "incoming-metadata.csv"), "calls", "meta/2026-11-22.csv")

    local = run_score(_config(score_model, folder, tmp_path / "out", tmp_path / "incoming-metadata.csv"),
                      progress=False)
    remote = run_score(_config(score_model, "s3://calls/incoming/2026-11-22", "s3://calls/reports",
                               "s3://calls/meta/2026-11-22.csv"), progress=False)
    storage = Storage()
    a = read_calls(tmp_path / "out").drop(columns="uri").sort_values("call_id").reset_index(drop=True)
    b = read_calls("s3://calls/reports", storage=storage)
    assert b["uri"].str.startswith("s3://calls/incoming/2026-11-22/").all()
    b = b.drop(columns="uri").sort_values("call_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert len(b) == len(truth) and remote["counts"] == local["counts"]
    sa = read_segments(tmp_path / "out").sort_values(["call_id", "start_s"]).reset_index(drop=True)
    sb = read_segments("s3://calls/reports", storage=storage).sort_values(["call_id", "start_s"])
    pd.testing.assert_frame_equal(sa, sb.reset_index(drop=True))

    keys = {k for k in storage.walk("s3://calls/reports")}
    run_id = remote["run_id"]
    assert f"s3://calls/reports/runs/{run_id}.json" in keys
    assert f"s3://calls/reports/reports/run_date={NIGHT}/{run_id}.md" in keys
    assert f"s3://calls/reports/reports/run_date={NIGHT}/{run_id}.html" in keys
    assert "s3://calls/reports/reports/index.html" in keys
    assert not any("/_staging/" in k or k.endswith(".tmp") for k in keys)
    saved = json.loads(storage.read_bytes(f"s3://calls/reports/runs/{run_id}.json"))
    assert saved["counts"] == remote["counts"]

    # The same night again: the same objects, the same rows, no duplicates.
    again = run_score(_config(score_model, "s3://calls/incoming/2026-11-22", "s3://calls/reports",
                              "s3://calls/meta/2026-11-22.csv"), progress=False)
    assert {k for k in storage.walk("s3://calls/reports")} == keys
    c = read_calls("s3://calls/reports", storage=storage)
    assert c["call_id"].is_unique and len(c) == len(truth) and again["calls"] == len(truth)

    # One run of a night at a time on S3 too (a lock object; this store has no conditional put).
    from ser_ray.score.commit import NightLock, NightLocked

    with NightLock(storage, "s3://calls/reports", NIGHT, ttl_s=3600):
        with pytest.raises(NightLocked, match="another run of night"):
            run_score(_config(score_model, "s3://calls/incoming/2026-11-22", "s3://calls/reports",
                              "s3://calls/meta/2026-11-22.csv"), progress=False)
    assert not storage.exists(f"s3://calls/reports/_staging/{NIGHT}.lock")

    # ser-ray sample from the S3 night: the same sheet as from the local one, the clips copied
    from ser_ray.config import SampleConfig
    from ser_ray.score.sample import run_sample

    sheets = {}
    for name, scored in (("local", tmp_path / "out"), ("s3", "s3://calls/reports")):
        run_sample(SampleConfig(scored=str(scored), n=6, output=str(tmp_path / f"label-{name}")))
        sheets[name] = pd.read_csv(tmp_path / f"label-{name}" / "sheet.csv")
    pd.testing.assert_frame_equal(sheets["local"], sheets["s3"])
    assert len(sheets["s3"]) == 6 and sheets["s3"]["clip"].notna().all()
    for clip in sheets["s3"]["clip"]:
        assert (tmp_path / "label-s3" / clip).read_bytes() == (tmp_path / "label-local" / clip).read_bytes()


def test_an_encoder_feature_model_on_s3_with_the_staged_pools_equals_a_local_run(ray_after_s3, tmp_path):
    """A model on (tiny, random) Whisper encoder features, trained by ``ser-ray train``, scores
    an S3 backlog (stereo and mono, broken files among them) with engine=staged exactly as the
    one-pool engine scores the same files on disk: one row per call, the same rows."""
    import subprocess
    import sys

    from ser_ray.synth import synthesize_corpus

    from encoder_helpers import make_tiny_encoder

    tiny = make_tiny_encoder("whisper", tmp_path / "tiny-whisper")
    synthesize_corpus("ravdess", tmp_path / "corpus", n_speakers=2, per_emotion=2,
                      emotions=["neutral", "angry"], seed=2)
    for args in (["prepare", "--input", str(tmp_path / "corpus"), "--corpus", "ravdess", "--features",
                  "encoder", "--set", f"feature_options.encoder.model={tiny}", "--output",
                  str(tmp_path / "prepared"), "--no-progress"],
                 ["train", "--features", str(tmp_path / "prepared"), "--model", "logreg",
                  "--output", str(tmp_path / "model")]):
        r = subprocess.run([sys.executable, "-m", "ser_ray.cli", *args], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    s3 = ray_after_s3
    folder = tmp_path / "incoming"
    truth = synthesize_backlog(folder, n_calls=3, seed=6, minutes=(1.0, 1.2), stereo_share=0.5)
    s3.upload_dir(folder, "calls", "incoming/enc")
    model = tmp_path / "model"

    def night(inputs, output, **kw):
        return run_score(load(ScoreConfig, None, model=str(model), inputs=[str(inputs)],
                              output=str(output), run_date=NIGHT, customer_channel="right", **kw),
                         progress=False)

    local = night(folder, tmp_path / "out")
    remote = night("s3://calls/incoming/enc", "s3://calls/enc-reports", engine="staged",
                   read_cpus=0.5, cpus_per_worker=0.5, calls_per_task=1)
    assert local["engine"] == "actors" and remote["engine"] == "staged"
    assert remote["calls"] == len(truth) and remote["counts"] == local["counts"]
    assert remote["counts"]["scored"] >= 3
    storage = Storage()
    a = read_calls(tmp_path / "out").drop(columns="uri")
    b = read_calls("s3://calls/enc-reports", storage=storage).drop(columns="uri")
    a, b = (x.sort_values("call_id").reset_index(drop=True) for x in (a, b))
    assert b["call_id"].is_unique
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4)
    sa = read_segments(tmp_path / "out").sort_values(["call_id", "start_s"]).reset_index(drop=True)
    sb = read_segments("s3://calls/enc-reports", storage=storage).sort_values(
        ["call_id", "start_s"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(sa, sb, check_exact=False, rtol=1e-4)
