"""Concurrent first use of librosa's numba kernels must not corrupt their cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ser_ray.warmup import machine_lock
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
    code = ("from ser_ray.warmup import warm_up; from ser_ray.features import get_extractor; "
            "warm_up([get_extractor('handcrafted94')])")
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(env_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    assert any(env_cache.rglob("*.nbi"))
    later = subprocess.run([sys.executable, "-c", code], env=env, timeout=300)
    assert later.returncode == 0
