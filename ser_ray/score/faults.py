"""Units whose worker died: retried once, then split into their calls, and a call that kills its
worker on its own gets a ``worker_died`` row instead of taking the night down."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pyarrow as pa

from ser_ray.console import logger
from ser_ray.score.tables import calls_schema, read_parquet, segments_schema, stage_unit, unit_dir
from ser_ray.score.backlog import Unit
from ser_ray.score.settings import WorkerSettings
from ser_ray.storage import Storage, join

log = logger("score")
# A scoring actor killed mid-unit (OOM killer, a lost node) is replaced and its unit retried
# once: a unit rewrites the same staged files, so a retry adds no rows. A unit that kills its
# worker again is split into its calls (Splitter); a call that kills its worker on its own too
# gets a row with status worker_died, and the night goes on. An actor whose creation fails (a
# model it cannot load) fails the run, which a rerun resumes.
TASK_RETRIES = 1


def worker_died(exc: Exception) -> bool:
    """A unit's task failed because its worker process died (not an error raised in it)."""
    import ray

    if isinstance(exc, ray.exceptions.ActorDiedError):
        return not getattr(exc, "actor_init_failed", False)
    return isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.ActorUnavailableError))


class Splitter:
    """Units whose worker died on every try, split into one unit per call, then put together
    again under the unit's own id, so publishing and resume see the unit as if it had run whole.

    ``failed(unit, exc)`` -> the calls as units to run next, or None when the failure is the
    run's (then the caller raises); ``done(unit, stats)`` -> the stats to report (the parent's
    once its last call is in), or None while calls are outstanding."""

    def __init__(self, settings: WorkerSettings):
        self.s = settings
        self.storage = Storage(settings.s3)
        self.parents: dict[str, dict[str, Any]] = {}

    def failed(self, unit: Unit, exc: Exception) -> list[Unit] | None:
        if not worker_died(exc) or unit.phase != "score":
            return None
        if unit.parent is None and len(unit.calls) > 1:
            self.parents[unit.unit_id] = {"unit": unit, "left": len(unit.calls), "stats": []}
            log(f"unit {unit.unit_id} killed its worker on every try: scoring its "
                f"{len(unit.calls)} calls one by one")
            return [dataclasses.replace(unit, unit_id=f"{unit.unit_id}-{k}", calls=(c,),
                                        parent=unit.unit_id) for k, c in enumerate(unit.calls)]
        # One call that kills its worker on its own: a row saying so, instead of the night.
        call = unit.calls[0]
        row = {"call_id": call.call_id, "uri": call.uri, "size_bytes": call.size,
               "status": "worker_died", "model_id": self.s.model_id,
               "model_hash": self.s.model_hash, "run_id": self.s.run_id,
               "reason": f"reading or scoring this call killed its worker on {TASK_RETRIES + 1} "
                         f"tries ({type(exc).__name__}); too big or malformed for a worker?"}
        log(f"call {call.uri}: {row['reason']}")
        labels = self.s.labels
        stage_unit(self.storage, unit_dir(self.s.staging, unit.unit_id),
                   segments_schema(labels).empty_table(),
                   pa.Table.from_pylist([row], calls_schema(labels)))
        return []

    def done(self, unit: Unit, stats: dict[str, Any] | None) -> dict[str, Any] | None:
        """``stats`` None: ``unit`` (a call) was settled by :meth:`failed`."""
        if stats is None:
            stats = {"unit_id": unit.unit_id, "calls": 1, "status": {"worker_died": 1},
                     "audio_s": 0.0, "seconds": 0.0, "read_s": 0.0, "pid": None}
        parent = unit.parent
        if parent is None:
            return stats
        entry = self.parents[parent]
        entry["stats"].append(stats)
        entry["left"] -= 1
        if entry["left"]:
            return None
        return self._join(entry["unit"], entry["stats"])

    def _join(self, unit: Unit, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """The calls' staged files -> the unit's (segments first: the calls file marks it
        done), in the unit's call order."""
        labels = self.s.labels
        bases = [unit_dir(self.s.staging, f"{unit.unit_id}-{k}") for k in range(len(unit.calls))]
        segs = [read_parquet(self.storage, join(b, "segments.parquet")) for b in bases]
        calls = [read_parquet(self.storage, join(b, "calls.parquet")) for b in bases]
        stage_unit(self.storage, unit_dir(self.s.staging, unit.unit_id),
                   pa.concat_tables([t.cast(segments_schema(labels)) for t in segs]),
                   pa.concat_tables([t.cast(calls_schema(labels)) for t in calls]))
        for b in bases:
            self.storage.delete_tree(b)
        status: Counter = Counter()
        for st in parts:
            status.update(st["status"])
        pids = [st.get("pid") for st in parts if st.get("pid")]
        return {"unit_id": unit.unit_id, "calls": len(unit.calls), "status": dict(status),
                "audio_s": sum(st["audio_s"] for st in parts),
                "seconds": sum(st["seconds"] for st in parts),
                "read_s": sum(st.get("read_s", 0.0) for st in parts),
                "pid": pids[0] if pids else None}
