"""Concurrent first use of librosa's numba kernels must not corrupt their cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ser_ray.features.warmup import machine_lock
    with machine_lock(Path(sys.argv[1])):
        Path(sys.argv[2]).write_text(str(time.time()))
        time.sleep(0.5)
        Path(sys.argv[3]).write_text(str(time.time()))
""")


def test_machine_lock_serialises_processes(tmp_path):
    lock = tmp_path / "lock"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(lock), str(tmp_path / f"in{i}"),
                               str(tmp_path / f"out{i}")]) for i in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    spans = sorted((float((tmp_path / f"in{i}").read_text()), float((tmp_path / f"out{i}").read_text()))
                   for i in range(3))
    # Each holder leaves before the next one enters: no two spans overlap.
    assert all(prev_out <= nxt_in for (_, prev_out), (nxt_in, _) in zip(spans, spans[1:]))


def test_numba_cache_survives_workers_starting_together(tmp_path):
    """Four processes warm up handcrafted94 (librosa piptrack, numba cache=True) at once against an
    empty cache dir; a fifth process then uses the cache. Without the lock (extractors called
    directly), about one run in three here ended in segmentation faults."""
    env_cache = tmp_path / "numba-cache"
    code = ("from ser_ray.features.warmup import warm_up; from ser_ray.features import get_extractor; "
            "warm_up([get_extractor('handcrafted94')])")
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(env_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    assert any(env_cache.rglob("*.nbi"))
    later = subprocess.run([sys.executable, "-c", code], env=env, timeout=300)
    assert later.returncode == 0


def _enter(key, markers, lock, out: list):
    from ser_ray.features.warmup import first_use

    with first_use(key, markers, lock) as held:
        out.append(held)


def test_first_use_skips_the_lock_only_for_a_warmed_key_and_unchanged_cache(tmp_path, monkeypatch):
    """A marker lets later processes skip the queue; a new key or any change to numba's cache
    files sends them through the lock again."""
    import threading

    from ser_ray.features.warmup import machine_lock

    cache, markers, lock = tmp_path / "numba-cache", tmp_path / "markers", tmp_path / "lock"
    (cache / "librosa").mkdir(parents=True)
    (cache / "librosa" / "utils.localmax-1035.py311.nbi").write_bytes(b"index")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))

    def attempt(key: str, hold: bool) -> tuple[list, threading.Thread]:
        out: list = []
        t = threading.Thread(target=_enter, args=(key, markers, lock, out), daemon=True)
        if not hold:
            t.start()
            return out, t
        with machine_lock(lock):  # another process warming up right now
            t.start()
            t.join(0.5)
            blocked = t.is_alive()
        t.join(10)
        out.append(("blocked", blocked))
        return out, t

    out, _ = attempt("mfcc", hold=True)  # never warmed: waits for the lock, then holds it
    assert out == [True, ("blocked", True)]
    assert len(list(markers.iterdir())) == 1

    out, _ = attempt("mfcc", hold=True)  # warmed, cache unchanged: goes straight in
    assert out == [False, ("blocked", False)]

    out, _ = attempt("handcrafted94", hold=True)  # another extractor set: its own first time
    assert out == [True, ("blocked", True)]

    (cache / "librosa" / "spectrum.new-629.py311.nbi").write_bytes(b"index")  # the cache changed
    out, _ = attempt("mfcc", hold=True)
    assert out == [True, ("blocked", True)]
    out, _ = attempt("mfcc", hold=True)  # ... and that run left a fresh marker
    assert out == [False, ("blocked", False)]


def test_first_use_leaves_no_marker_when_the_warm_up_fails(tmp_path, monkeypatch):
    import pytest

    from ser_ray.features.warmup import first_use

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="boom"):
        with first_use("k", tmp_path / "markers", tmp_path / "lock"):
            raise RuntimeError("boom")
    assert not (tmp_path / "markers").exists() or not any((tmp_path / "markers").iterdir())
    with first_use("k", tmp_path / "markers", tmp_path / "lock") as held:
        assert held
