"""Compile librosa's numba kernels once per machine, one process at a time.

librosa caches its numba-compiled kernels (``cache=True``) next to its sources. When several Ray
workers of a fresh install reach the same kernel at once, they compile it together and write the
same cache files together; the cache can end up inconsistent, and from then on every process
that loads it dies with a segmentation fault (seen with ``piptrack``, which ``chroma_stft`` and
the handcrafted vectors use). So every worker runs its extractors once on a second of noise
while holding a machine-wide file lock before it does real work: the first compiles and writes
the cache alone, the rest load it (milliseconds). ``make install`` runs ``python -m
ser_ray.features.warmup`` after installing, so a fresh venv starts with a complete cache.

Waiting for the lock is not free: warming up includes importing librosa (its ``guvectorize``
kernels compile or load at import), ~2-3 s per process, so workers starting together queued
behind each other. A process that finishes a warm-up leaves a marker holding a fingerprint of
the cache (names, sizes and times of numba's index files); a later process warming up the same
extractors against an unchanged cache skips the lock (:func:`first_use`). Any change to the
cache (a new kernel, a cleared ``__pycache__``, another librosa) changes the fingerprint, and
the next process takes the lock again.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

LOCK = Path(tempfile.gettempdir()) / "ser-ray-numba-warmup.lock"
MARKERS = Path(tempfile.gettempdir()) / "ser-ray-numba-warm"


@contextmanager
def machine_lock(path: Path = LOCK) -> Iterator[None]:
    """An exclusive lock shared by every process on this machine (``flock`` on ``path``)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_fingerprint() -> str:
    """Hash of numba's cache for librosa: versions, cache location and every index file's name,
    size and modification time (under ``NUMBA_CACHE_DIR`` when set, else librosa's sources)."""
    from importlib.metadata import version

    spec = importlib.util.find_spec("librosa")
    root = os.environ.get("NUMBA_CACHE_DIR") or os.path.dirname(spec.origin if spec else "")
    entries = []
    for p in sorted(Path(root).rglob("*.nbi")) if root and os.path.isdir(root) else []:
        try:
            st = p.stat()
        except OSError:  # removed while we looked: the fingerprint will not match anyway
            continue
        entries.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    text = repr((version("librosa"), version("numba"), root, entries))
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def first_use(key: str, markers: Path | None = None, lock: Path | None = None) -> Iterator[bool]:
    """Run the block under :func:`machine_lock` unless a process already ran a block for ``key``
    to the end against the numba cache as it is now; yields whether the lock is held."""
    markers = markers or MARKERS
    marker = markers / hashlib.sha256(key.encode()).hexdigest()
    try:
        if marker.read_text() == cache_fingerprint():
            yield False
            return
    except OSError:
        pass
    with machine_lock(lock or LOCK):
        yield True
        markers.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(cache_fingerprint())
        os.replace(tmp, marker)


def extractors_key(extractors: Iterable) -> str:
    """A stable key for a set of extractor configs (what their warm-up compiles)."""
    from ser_ray.features import extractor_config

    return repr(sorted(repr(sorted(extractor_config(e).items())) for e in extractors))


def warm_up(extractors: Iterable, seconds: float = 1.0) -> None:
    """Call each extractor once on ``seconds`` of noise at its own rate, under :func:`first_use`."""
    extractors = list(extractors)
    if not extractors:
        return
    with first_use(extractors_key(extractors)):
        for ext in extractors:
            sr = ext.expected_sr or 16000
            n = max(int(seconds * sr), ext.min_samples(sr))
            ext(np.random.default_rng(0).normal(0, 0.05, n).astype(np.float32), sr)


def main() -> int:
    """Compile every registered extractor's kernels (run after installing ser-ray)."""
    from ser_ray.features import available, get_extractor
    from ser_ray.features.base import _REGISTRY

    t0 = time.time()
    names = [n for n in available() if (n != "egemaps" or _has_opensmile())
             and _REGISTRY[n].warm_at_install]
    warm_up(get_extractor(n) for n in names)
    print(f"[ser-ray] warmed up extractors {', '.join(names)} in {time.time() - t0:.1f} s "
          f"(numba cache of librosa in {os.path.dirname(__import__('librosa').__file__)})", file=sys.stderr)
    return 0


def _has_opensmile() -> bool:
    import importlib.util

    return importlib.util.find_spec("opensmile") is not None


if __name__ == "__main__":
    sys.exit(main())
