"""Shared pytest fixtures for ser-ray."""

from __future__ import annotations

import os

import pytest

import ser_ray  # noqa: F401 - before any test imports transformers (ser_ray.compat)
from s3.server import INSTALL_SCRIPT, S3Server, missing_binaries


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

    with S3Server() as server:
        saved = {k: os.environ.get(k) for k in (*server.env(), *server.conflicting_env)}
        for k in server.conflicting_env:
            os.environ.pop(k, None)
        os.environ.update(server.env())
        try:
            yield server
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# --------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs on 127.0.0.1) per test module: start-up costs seconds."""
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_after_s3(s3_server):
    """A module's Ray started after the S3 server, so its workers inherit the endpoint and
    credentials; yields the server."""
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             log_to_driver=False)
    yield s3_server
    ray.shutdown()


# --------------------------------------------------------------------------- learning plane
LEARN_EMOTIONS = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="session")
def learn_corpus(tmp_path_factory):
    """A small synthetic RAVDESS-layout corpus (6 speakers x 4 emotions x 4 takes), prepared
    once per session with ``ser-ray prepare`` in its own process (its own Ray): MFCC arrays,
    pooled MFCC statistics and handcrafted94 vectors. Returns {"corpus", "prepared"} paths."""
    import subprocess
    import sys

    from ser_ray.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("learn")
    corpus, prepared = root / "corpus", root / "prepared"
    synthesize_corpus("ravdess", corpus, n_speakers=6, per_emotion=4, emotions=LEARN_EMOTIONS,
                      sr=16000, seed=3)
    cmd = [sys.executable, "-m", "ser_ray.cli", "prepare", "--input", str(corpus),
           "--corpus", "ravdess", "--features", "mfcc,handcrafted94", "--output", str(prepared),
           "--set", "audio.trim=true", "--set", "audio.normalise=rms", "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return {"corpus": corpus, "prepared": prepared}


# --------------------------------------------------------------------------- scoring plane
@pytest.fixture(scope="session")
def score_model(tmp_path_factory):
    """A model trained by ``ser-ray train`` on a synthetic corpus of speakers no call uses:
    logistic regression on handcrafted94, classes neutral, calm, sad, angry."""
    import subprocess
    import sys

    from ser_ray.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("score-model")
    synthesize_corpus("ravdess", root / "corpus", n_speakers=4, per_emotion=4,
                      emotions=["neutral", "calm", "sad", "angry"], seed=5)
    for args in (["prepare", "--input", str(root / "corpus"), "--corpus", "ravdess", "--features",
                  "handcrafted94", "--set", "audio.trim=true", "--set", "audio.normalise=rms",
                  "--output", str(root / "prepared"), "--no-progress"],
                 ["train", "--features", str(root / "prepared"), "--feature-set", "handcrafted94",
                  "--model", "logreg", "--output", str(root / "model")]):
        r = subprocess.run([sys.executable, "-m", "ser_ray.cli", *args], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    return root / "model"
