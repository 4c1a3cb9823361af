"""The nightly guarantees with a real whisper-base-feature model, on local files and on the local
S3 server, checked in one run (the suite checks the same with small models):

    sh docs/emodb-night.sh                       # trains /tmp/emodb-night/model
    .venv/bin/python benchmarks/nightly_check.py [--model DIR] [--engine staged]

Backlog: ``synthesize_backlog`` calls of 2-3 min, stereo and mono, with its broken files (empty,
truncated, not audio, silent). Checks, each printed PASS/FAIL:
  1. a clean local run: exactly one row per file listed;
  2. the same night again: the same rows, no duplicates;
  3. a run SIGKILLed (driver and Ray) once 2 units are staged, then rerun: the clean run's rows;
  4. the backlog on the local S3 server (Swift + s3api, tests/s3/): the clean run's rows.
The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
NIGHT = "2026-11-22"


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from prepare_helpers import kill_cli_once_staged
    from s3.server import S3Server
    from ser_ray.config import ScoreConfig, load
    from ser_ray.storage import Storage
    from ser_ray.score import read_calls, read_segments, run_score
    from ser_ray.synth import synthesize_backlog

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/emodb-night/model"))
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--calls", type=int, default=6)
    args = ap.parse_args(argv)
    if not (args.model / "features.json").is_file():
        ap.error(f"--model {args.model}: no model there; `sh docs/emodb-night.sh` trains one")
    tmp = Path(tempfile.mkdtemp(prefix="ser-ray-nightly-"))
    folder = tmp / "incoming"
    truth = synthesize_backlog(folder, n_calls=args.calls, seed=21, minutes=(2.0, 3.0), sr=8000,
                               stereo_share=0.5)
    results: list[tuple[str, bool, str]] = []

    def calls_of(out, storage=None):
        c = read_calls(out, storage=storage)
        return c.drop(columns="uri").sort_values("call_id").reset_index(drop=True)

    def segs_of(out, storage=None):
        return read_segments(out, storage=storage).sort_values(["call_id", "start_s"]).reset_index(drop=True)

    def same(a, b) -> tuple[bool, str]:
        try:
            pd.testing.assert_frame_equal(a, b)
            return True, f"{len(a)} rows equal"
        except AssertionError as exc:
            return False, str(exc).splitlines()[0]

    def cfg(inputs, output, **kw):
        # Units of one call in every run, the killed one too: a unit's windows are encoded
        # together, so the same units give the same rows bit for bit.
        return load(ScoreConfig, None, model=str(args.model), inputs=[str(inputs)], output=str(output),
                    run_date=NIGHT, customer_channel="right", engine=args.engine, calls_per_task=1,
                    **kw)

    files = len(list(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt"))
    with S3Server() as s3:
        import os

        os.environ.update(s3.env())
        import ray

        from ser_ray.runtime import init_ray

        init_ray()
        clean = tmp / "clean"
        run = run_score(cfg(folder, clean), progress=False)
        c = calls_of(clean)
        results.append(("one row per call", c["call_id"].is_unique and len(c) == files,
                        f"{len(c)} rows for {files} files; {run['counts']}"))
        run_score(cfg(folder, clean), progress=False)
        results.append(("rerun, no duplicates", *same(calls_of(clean), c)))
        ray.shutdown()
        killed = tmp / "killed"
        argv = ["score", "--model", str(args.model), "--input", str(folder), "--output", str(killed),
                "--run-date", NIGHT, "--customer-channel", "right", "--set", f"engine={args.engine}",
                "--set", "calls_per_task=1", "--no-progress"]
        staged = kill_cli_once_staged(argv, killed / "_staging", "calls.parquet", 2, timeout_s=900)
        init_ray()
        run_score(cfg(folder, killed), progress=False)
        ok_c, why_c = same(calls_of(killed), c)
        ok_s, why_s = same(segs_of(killed), segs_of(clean))
        results.append(("killed after 2 units, resumed", ok_c and ok_s and staged >= 2,
                        f"{staged} units staged at the kill; calls: {why_c}; segments: {why_s}"))
        s3.upload_dir(folder, "calls", "incoming/check")
        run_score(cfg("s3://calls/incoming/check", "s3://calls/check-out"), progress=False)
        st = Storage()
        ok_c, why_c = same(calls_of("s3://calls/check-out", st), c)
        ok_s, why_s = same(segs_of("s3://calls/check-out", st), segs_of(clean))
        results.append(("S3 backlog equals local", ok_c and ok_s, f"calls: {why_c}; segments: {why_s}"))
        ray.shutdown()
    print(f"\nmodel {args.model}, engine {args.engine}, {files} files "
          f"({int(truth['negative'].notna().sum())} good calls)")
    for name, ok, why in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {why}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
