"""Shared pytest fixtures for ser-ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ser_ray  # noqa: F401 - before any test imports transformers (ser_ray.compat)
from cli_helpers import patched_environ, start_test_ray
from s3.server import INSTALL_SCRIPT, S3Server, missing_binaries

# Ray Train's controller polls its workers every 2 s by default, and a TorchTrainer waits on
# those polls to start and to finish: about 10 s of every fit on 2 cores. Set before any Ray
# starts, so every Ray and every ``ser-ray`` subprocess of the run inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


# --------------------------------------------------------------------------- temp folders
def pytest_configure(config):
    """Every test run its own temp folder, and every xdist worker one inside it: TMPDIR (which
    Ray, its workers and subprocesses inherit) and ``tempfile.tempdir``. A test that looks at
    "the temp folder" sees only what its own run left there, never another process's. Names
    stay short: Ray puts its session's sockets below TMPDIR (a 107-byte limit)."""
    import tempfile

    parent = os.environ.get("SER_RAY_TEST_TMP")  # the controller's, inherited by its workers
    mine = tempfile.mkdtemp(prefix=os.environ.get("PYTEST_XDIST_WORKER", "srt"), dir=parent)
    if parent is None:
        os.environ["SER_RAY_TEST_TMP"] = mine
        config._ser_ray_tmp = mine
    os.environ["TMPDIR"] = tempfile.tempdir = mine


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "_ser_ray_tmp", None):
        shutil.rmtree(config._ser_ray_tmp, ignore_errors=True)


# --------------------------------------------------------------------------- xdist
# `make test` runs the suite on two pytest-xdist workers, a module per worker at a time
# (--dist loadscope): a module's fixtures are built once, and the session fixtures below once
# for the whole run (the first worker to need one builds it under a file lock, the other waits
# and reads it). The heaviest modules go first so the two workers finish together; any module
# not named here follows in file order.
HEAVY_FIRST = (
    "test_encoder_pipeline", "test_score", "test_score_normalisation", "test_fusion",
    "test_cluster", "test_score_publish",
    "test_tuning", "test_learning", "test_jobs", "test_imagenet", "test_score_s3",
    "test_readme", "test_transcribe", "test_synth", "test_console", "test_warmup",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))


def shared_once(tmp_path_factory, name: str, build):
    """``build(root) -> dict`` of paths, run once per test run under every xdist worker.

    The result is stored as JSON beside the folder; a worker that finds it reads it. Without
    xdist this is ``build(tmp_path_factory.mktemp(name))``.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp().parent  # the run's folder, above every worker's
    done = base / f"{name}.json"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            root = base / name
            if root.exists():  # a build that failed on the other worker
                import shutil

                shutil.rmtree(root)
            root.mkdir()
            done.write_text(json.dumps({k: str(v) for k, v in build(root).items()}))
    return {k: Path(v) for k, v in json.loads(done.read_text()).items()}


# --------------------------------------------------------------------------- S3
@pytest.fixture(scope="session")
def s3_server():
    """A running local S3 server (Swift + s3api) for the whole session; see tests/s3/server.py.

    While it runs, its ``env()`` is applied to ``os.environ`` (and conflicting AWS_* variables are
    removed), so boto3, pyarrow and child processes started afterwards (Ray workers included)
    reach it without arguments; the previous environment is restored at the end. Start Ray after
    requesting this fixture. Skips when Swift/memcached are absent, but fails under ``CI=true``
    so that CI cannot silently stop testing S3.
    """
    missing = missing_binaries()
    if missing:
        reason = (
            f"local S3 server unavailable: missing {', '.join(missing)}; "
            f"install with `sudo {INSTALL_SCRIPT}`"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: S3 tests must run)", pytrace=False)
        pytest.skip(reason)

    with S3Server() as server, patched_environ(server.env(), server.conflicting_env):
        yield server


# --------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_session():
    """One local Ray per test module (``start_test_ray``: 1 CPU): start-up costs seconds."""
    import ray

    start_test_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_after_s3(s3_server):
    """A module's Ray started after the S3 server, so its workers inherit the endpoint and
    credentials; yields the server."""
    import ray

    start_test_ray()
    yield s3_server
    ray.shutdown()


# --------------------------------------------------------------------------- learning plane
LEARN_EMOTIONS = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="session")
def learn_corpus(tmp_path_factory):
    """A small synthetic RAVDESS-layout corpus (6 speakers x 4 emotions x 4 takes), prepared
    once per run with ``ser-ray prepare``: MFCC arrays,
    pooled MFCC statistics and handcrafted94 vectors. Returns {"corpus", "prepared"} paths."""
    return shared_once(tmp_path_factory, "learn", _build_learn_corpus)


def _run_cli(*args: str) -> None:
    """``ser-ray ARGS`` in a process of its own: session fixtures are built before any module's
    Ray starts (pytest sets up wider scopes first)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ser_ray.cli", *args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _build_learn_corpus(root: Path) -> dict:
    from ser_ray.synth import synthesize_corpus

    corpus, prepared = root / "corpus", root / "prepared"
    synthesize_corpus("ravdess", corpus, n_speakers=6, per_emotion=4, emotions=LEARN_EMOTIONS,
                      sr=16000, seed=3)
    _run_cli("prepare", "--input", str(corpus), "--corpus", "ravdess", "--features",
             "mfcc,handcrafted94", "--output", str(prepared), "--set", "audio.trim=true",
             "--set", "audio.normalise=rms", "--no-progress")
    return {"corpus": corpus, "prepared": prepared}


# --------------------------------------------------------------------------- scoring plane
@pytest.fixture(scope="session")
def score_model(tmp_path_factory):
    """A model trained by ``ser-ray train`` on a synthetic corpus of speakers no call uses:
    logistic regression on handcrafted94, classes neutral, calm, sad, angry."""
    return shared_once(tmp_path_factory, "score-model", _build_score_model)["model"]


def _build_score_model(root: Path) -> dict:
    from ser_ray.synth import synthesize_corpus

    synthesize_corpus("ravdess", root / "corpus", n_speakers=4, per_emotion=4,
                      emotions=["neutral", "calm", "sad", "angry"], seed=5)
    for args in (["prepare", "--input", str(root / "corpus"), "--corpus", "ravdess", "--features",
                  "handcrafted94", "--set", "audio.trim=true", "--set", "audio.normalise=rms",
                  "--output", str(root / "prepared"), "--no-progress"],
                 ["train", "--features", str(root / "prepared"), "--feature-set", "handcrafted94",
                  "--model", "logreg", "--output", str(root / "model")]):
        _run_cli(*args)
    return {"model": root / "model"}
