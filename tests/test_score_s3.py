"""score with its backlog, metadata and reports on a real S3-compatible server (Swift + s3api)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ser_ray.config import ScoreConfig, load
from ser_ray.io import Storage
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
    assert not any("/_staging/" in k or k.endswith(".tmp") for k in keys)
    saved = json.loads(storage.read_bytes(f"s3://calls/reports/runs/{run_id}.json"))
    assert saved["counts"] == remote["counts"]

    # The same night again: the same objects, the same rows, no duplicates.
    again = run_score(_config(score_model, "s3://calls/incoming/2026-11-22", "s3://calls/reports",
                              "s3://calls/meta/2026-11-22.csv"), progress=False)
    assert {k for k in storage.walk("s3://calls/reports")} == keys
    c = read_calls("s3://calls/reports", storage=storage)
    assert c["call_id"].is_unique and len(c) == len(truth) and again["calls"] == len(truth)
