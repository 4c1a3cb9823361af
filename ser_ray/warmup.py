"""Compile librosa's numba kernels once per machine, one process at a time.

librosa caches its numba-compiled kernels (``cache=True``) next to its sources. When several Ray
workers of a fresh install reach the same kernel at once, they compile it together and write the
same cache files together; the cache can end up inconsistent, and from then on every process
that loads it dies with a segmentation fault (seen with ``piptrack``, which ``chroma_stft`` and
the handcrafted vectors use). So every worker runs its extractors once on a second of noise
while holding a machine-wide file lock before it does real work: the first compiles and writes
the cache alone, the rest load it (milliseconds). ``make install`` runs ``python -m
ser_ray.warmup`` after installing, so a fresh venv starts with a complete cache.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

LOCK = Path(tempfile.gettempdir()) / "ser-ray-numba-warmup.lock"


@contextmanager
def machine_lock(path: Path = LOCK) -> Iterator[None]:
    """An exclusive lock shared by every process on this machine (``flock`` on ``path``)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def warm_up(extractors: Iterable, seconds: float = 1.0) -> None:
    """Call each extractor once on ``seconds`` of noise at its own rate, under :func:`machine_lock`."""
    extractors = list(extractors)
    if not extractors:
        return
    with machine_lock():
        for ext in extractors:
            sr = ext.expected_sr or 16000
            n = max(int(seconds * sr), ext.min_samples(sr))
            ext(np.random.default_rng(0).normal(0, 0.05, n).astype(np.float32), sr)


def main() -> int:
    """Compile every registered extractor's kernels (run after installing ser-ray)."""
    from ser_ray.features import available, get_extractor

    t0 = time.time()
    names = [n for n in available() if n != "egemaps" or _has_opensmile()]
    warm_up(get_extractor(n) for n in names)
    print(f"[ser-ray] warmed up extractors {', '.join(names)} in {time.time() - t0:.1f} s "
          f"(numba cache of librosa in {os.path.dirname(__import__('librosa').__file__)})", file=sys.stderr)
    return 0


def _has_opensmile() -> bool:
    import importlib.util

    return importlib.util.find_spec("opensmile") is not None


if __name__ == "__main__":
    sys.exit(main())
