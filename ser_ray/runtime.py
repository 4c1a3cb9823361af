"""What every job shares at run time: Ray start-up (join a cluster when there is one, else
start a local one), the versions a result records, and one per-process cache of loaded models."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (set by ``ray job submit``) or start local Ray.

    The local default binds to 127.0.0.1 so a laptop or CI box needs no network set-up.
    """
    import ray

    if ray.is_initialized():
        return
    quiet = {"log_to_driver": True, "include_dashboard": False}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster on this machine's loopback: join as 127.0.0.1, not the host's address.
        loopback = address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost")
        ray.init(address=address, log_to_driver=True,
                 **({"_node_ip_address": "127.0.0.1"} if loopback else {}))
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, **quiet)
    from ser_ray.console import hook_ray

    hook_ray()  # a quiet run: what the workers print goes to the log file


# Versions of the packages a result depends on: every run's outputs and every model folder
# record them (``versions.json``, run records, summaries).
VERSIONED = ("ser-ray", "ray", "numpy", "librosa", "soundfile", "soxr", "pyarrow", "opensmile",
             "torch", "scikit-learn", "skops", "safetensors", "transformers", "boto3")


def versions() -> dict[str, str]:
    """Python's and each of :data:`VERSIONED`'s version (``not installed`` where absent)."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def quiet_data_progress() -> None:
    """Ray Data's progress bars drown our own progress lines (folds, units) in the logs."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


# One loaded object per kind per worker process (a unit processor, a call reader, a Whisper
# model): built on first use, kept while the key stays the same, let go when a new run's key
# arrives, so a long-lived Ray worker never holds two runs' models.
_CACHE: dict[str, tuple[str, Any]] = {}


def content_id(content: Any, length: int = 20) -> str:
    """A short, stable id of JSON-able ``content``: units of prepare and score are named by what
    they hold (so every run, a resumed one too, cuts the same ids), a run's reference statistics
    by their values."""
    return hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:length]


def process_cached(kind: str, key: Any, make: Callable[[], T]) -> T:
    """This process's ``kind`` object for ``key`` (JSON-able), made by ``make()`` when absent."""
    digest = content_id(key, 40)
    held = _CACHE.get(kind)
    if held is None or held[0] != digest:
        _CACHE.pop(kind, None)  # the old one goes before the new one loads
        _CACHE[kind] = (digest, make())
    return _CACHE[kind][1]


# Engines and pool sizes of prepare and score: how many workers of a size the cluster holds now
# (it may autoscale), and whether workers that ask for GPUs get them (a GPU engine then).
def worker_slots(cpus_per_worker: float, gpus_per_worker: float = 0.0,
                 reserve_cpus: float = 0.0) -> int:
    """Workers of ``cpus_per_worker`` CPUs (and ``gpus_per_worker`` GPUs, when > 0) that the
    cluster's CPUs less ``reserve_cpus`` (and its GPUs) hold; 0 when none. Call with Ray up."""
    import ray

    res = ray.cluster_resources()
    slots = int(max(0.0, res.get("CPU", 0) - reserve_cpus) / cpus_per_worker)
    if gpus_per_worker > 0:
        slots = min(slots, int(res.get("GPU", 0) / gpus_per_worker))
    return slots


def uses_gpus(gpus_per_worker: float) -> bool:
    """Whether workers asking for ``gpus_per_worker`` GPUs get them: asked for, and the cluster
    (Ray up) has GPUs. The ``auto`` engines of prepare and score pick their GPU pipeline by it."""
    if gpus_per_worker <= 0:
        return False
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
