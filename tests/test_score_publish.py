"""A night is published whole or not at all, by one run at a time (ser_ray/score_commit.py;
docs/guide.md, "Guarantees"): a publish that fails at any step leaves nothing readable and
skips nothing the next night, and the next run of the failed night publishes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ser_ray.config import ScoreConfig, load
from ser_ray.score import read_calls, read_segments, run_score
from ser_ray.score.commit import NightLock, NightLocked
from ser_ray.synth import synthesize_backlog
from ser_ray.storage import Storage

NIGHTS = ("2026-12-01", "2026-12-02")


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Two nights of two short calls each, in folders of their own, with distinct call ids."""
    root = tmp_path_factory.mktemp("nights")
    folders = {}
    for i, night in enumerate(NIGHTS):
        folder = root / night
        synthesize_backlog(folder, n_calls=2, seed=i, minutes=(0.25, 0.3), bad=False,
                           metadata=False)
        for p in folder.glob("*.wav"):
            p.rename(p.with_name(f"n{i}-{p.name}"))
        folders[night] = folder
    return folders


@pytest.fixture(scope="module")
def crashing_ray():
    """The module's Ray, started with the fault-injection switch set (its workers inherit it):
    reading a call named ``crash-me`` kills the worker process. Only one test has such a call."""
    import ray

    from cli_helpers import patched_environ, start_test_ray

    with patched_environ({"SER_RAY_CRASH_ON_CALL": "crash-me"}):
        start_test_ray()
    yield
    ray.shutdown()


def _cfg(model, folder, out, night, **kw) -> ScoreConfig:
    return load(ScoreConfig, None, model=str(model), inputs=[str(folder)], output=str(out),
                run_date=night, customer_channel="right", **kw)


def _ids(folder) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.wav"))


# Where the publish steps write, in the order they run: a file in the folder's place fails it.
STEPS = ("calls", "segments", "reports", "runs")


def test_a_publish_that_fails_at_any_step_is_redone_and_loses_nothing(
        crashing_ray, score_model, nights, tmp_path):
    """The first night fails to publish at each step in turn (its reruns resume its staged
    units); the next night runs in between; then the first night's rerun publishes it."""
    out = tmp_path / "out"
    out.mkdir()
    first, second = NIGHTS
    for step in STEPS:
        (out / step).write_text("in the way")
        with pytest.raises(OSError):
            run_score(_cfg(score_model, nights[first], out, first), progress=False)
        (out / step).unlink()
        # Nothing of the failed night is readable, its units stay staged, no temp file is left.
        assert read_calls(out).empty and read_segments(out).empty, step
        assert list((out / "_staging").glob(f"{first}_*/units/*/calls.parquet")), step
        assert not [p for p in out.rglob("*.tmp")], step
    # The next night neither fails nor skips anything; the failed night's rerun publishes it.
    run_score(_cfg(score_model, nights[second], out, second), progress=False)
    run = run_score(_cfg(score_model, nights[first], out, first), progress=False)
    assert run["resumed_units"] == run["units"] >= 1
    calls = read_calls(out)
    for night in NIGHTS:
        assert sorted(calls.loc[calls["run_date"] == night, "call_id"]) == _ids(nights[night])
    assert calls["call_id"].is_unique
    assert set(read_segments(out)["call_id"]) <= set(calls["call_id"])
    assert os.path.exists(run["outputs"]["report"])
    assert os.path.exists(run["outputs"]["report_html"])
    assert not list((out / "_staging").iterdir())  # staging is gone only after the commit


def test_a_same_night_run_over_other_inputs_refuses_to_drop_rows(crashing_ray, score_model,
                                                                 nights, tmp_path):
    out = tmp_path / "out"
    first, second = NIGHTS
    secret = "http://scorer:hunter2@127.0.0.1:9"  # a URL with a password: never written down
    run_score(_cfg(score_model, nights[first], out, first, s3={"endpoint_url": secret}),
              progress=False)
    before = read_calls(out)
    record = next((out / "runs").glob("*.json")).read_text()
    assert "hunter2" not in record and "127.0.0.1:9" in record
    with pytest.raises(ValueError, match=r"(?s)2 call\(s\) this run does not list.*replace_night"):
        run_score(_cfg(score_model, nights[second], out, first), progress=False)
    assert read_calls(out).equals(before)  # the first run's rows are still there, unchanged
    run = run_score(_cfg(score_model, nights[second], out, first, replace_night=True),
                    progress=False)
    assert sorted(read_calls(out)["call_id"]) == _ids(nights[second]) and run["calls"] == 2


def test_one_run_of_a_night_at_a_time(score_model, nights, tmp_path):
    out = str(tmp_path / "out")
    night = NIGHTS[0]
    storage = Storage()
    with NightLock(storage, out, night, ttl_s=3600):
        with pytest.raises(NightLocked, match=r"another run of night 2026-12-01 .*pid \d+"):
            run_score(_cfg(score_model, nights[night], out, night), progress=False)
        with pytest.raises(NightLocked):
            NightLock(storage, out, night, ttl_s=3600).__enter__()
        with NightLock(storage, out, NIGHTS[1], ttl_s=3600):  # another night is free
            pass
    # A lock whose process died is stale and taken over; so is one older than the TTL.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    lock = tmp_path / "out" / "_staging" / f"{night}.lock"
    body = json.loads(json.dumps({"token": "x", "pid": int(dead), "host": os.uname().nodename,
                                  "started": "2026-12-01T00:00:00+00:00"}))
    lock.write_text(json.dumps(body))
    with NightLock(storage, out, night, ttl_s=10 ** 9):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({**body, "pid": os.getpid(), "host": "another-host"}))
    with pytest.raises(NightLocked, match="another-host"):
        NightLock(storage, out, night, ttl_s=10 ** 9).__enter__()
    with NightLock(storage, out, night, ttl_s=60):  # days old: stale whoever holds it
        pass
    shutil.rmtree(tmp_path / "out")


@pytest.mark.parametrize("engine", ["actors", "staged"])
def test_a_call_that_kills_its_worker_gets_a_row_and_the_night_goes_on(
        crashing_ray, score_model, nights, tmp_path, engine):
    """Reading one call kills its worker process every time: after one retry its unit is split
    into its calls, that call gets status worker_died, and every other call is scored."""
    night = NIGHTS[0]
    folder = tmp_path / "calls"
    shutil.copytree(nights[night], folder)
    victim = _ids(folder)[0]
    (folder / f"{victim}.wav").rename(folder / "crash-me.wav")
    out = tmp_path / "out"
    extra = {"read_cpus": 0.5, "cpus_per_worker": 0.5} if engine == "staged" else {}
    run_score(_cfg(score_model, folder, out, night, engine=engine, num_workers=1, **extra),
              progress=False)
    calls = read_calls(out).set_index("call_id")
    assert sorted(calls.index) == _ids(folder)
    assert calls.loc["crash-me", "status"] == "worker_died" and "killed its worker" in \
        calls.loc["crash-me", "reason"]
    assert (calls.drop(index="crash-me")["status"] == "scored").all()
    assert not list((out / "_staging").iterdir())  # the calls' own staged units are gone too
