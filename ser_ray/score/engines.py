"""Who runs the units: a pool of Ray actors fed by the driver (``actors``), Ray Data
(``ray_data``), or a CPU read pool beside the model actors (``staged``). All give the same rows."""

from __future__ import annotations

import collections
import json
import time
from collections import Counter
from typing import Any

from ser_ray.config import ScoreConfig
from ser_ray.runtime import process_cached, quiet_data_progress, uses_gpus, worker_slots
from ser_ray.schema import error_detail
from ser_ray.score.backlog import largest_first
from ser_ray.score.backlog import Unit
from ser_ray.score.faults import Splitter, TASK_RETRIES, worker_died
from ser_ray.score.read import CallReader
from ser_ray.score.scorer import ScoreActor
from ser_ray.score.settings import WorkerSettings


def pool_size(cfg: ScoreConfig, n_units: int, reserve_cpus: float = 0.0) -> int:
    """Model actors for ``n_units`` units: as many as the cluster holds (``num_workers`` caps
    it), at least one, at most one per unit."""
    slots = worker_slots(cfg.cpus_per_worker, cfg.gpus_per_worker, reserve_cpus)
    if cfg.gpus_per_worker > 0 and slots < 1:
        import ray

        raise ValueError(f"gpus_per_worker={cfg.gpus_per_worker} but the cluster has "
                         f"{ray.cluster_resources().get('GPU', 0)} GPU(s)")
    return max(1, min(cfg.num_workers or max(1, slots), n_units))


class ActorsEngine:
    """Units on a fixed pool of Ray actors, one unit in flight per actor, fed as each finishes.

    The driver keeps the queue itself (``ray.wait``): on a small node this costs a fraction of
    Ray Data's executor, stats and autoscaling actors, which take CPU from the scoring actors
    (README, "Scoring throughput"). The pool lives for the whole run: every wave of the listing
    and both passes of a run with reference statistics use the same actors, so start-up is paid
    once.

    Faults: an actor whose process or node dies is replaced by a new actor, which is fed only
    once it is up (on a lost node it may wait for room elsewhere while the survivors go on), and
    its unit is run again, once; a unit whose worker dies twice is split into its calls
    (:class:`Splitter`). An actor that cannot start (a model it cannot load) fails the run."""

    def __init__(self, resources: dict[str, float], settings: WorkerSettings, model_ref):
        import ray

        self.actor_cls = ray.remote(ScoreActor).options(max_restarts=0, max_task_retries=0,
                                                         **resources)
        self.settings, self.model_ref = settings, model_ref
        self.actors: list[Any] = []
        self.starting: dict[Any, Any] = {}  # ready ref -> a replacement actor not up yet
        self.tries: Counter = Counter()     # unit id -> tries whose worker died
        self.splitter = Splitter(settings)

    def pool(self, cfg: ScoreConfig, n_units: int) -> int:
        return pool_size(cfg, n_units)

    def _grow(self, n: int) -> None:
        """The pool's actors, fed at once (a unit then names an actor that cannot start);
        replacements wait in ``starting`` until they are up (:meth:`_replace`)."""
        while len(self.actors) + len(self.starting) < n:
            self.actors.append(self.actor_cls.remote(self.settings, [self.model_ref]))

    def _replace(self, actor) -> None:
        import ray

        if actor in self.actors:
            self.actors.remove(actor)
        ray.kill(actor, no_restart=True)
        new = self.actor_cls.remote(self.settings, [self.model_ref])
        self.starting[new.ready.remote()] = new

    def _started(self, ref) -> Any:
        """A replacement actor is up: it joins the pool (its creation error fails the run)."""
        import ray

        actor = self.starting.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise RuntimeError("a replacement scoring actor could not start: "
                               + error_detail(exc)) from exc
        self.actors.append(actor)
        return actor

    def run(self, units: list[dict[str, Any]], n: int, on_done) -> None:
        import ray

        self._grow(n)
        queue = collections.deque(units)
        pending: dict[Any, tuple[Any, dict[str, Any]]] = {}
        idle = list(self.actors)
        while queue or pending:
            while idle and queue:
                actor, unit = idle.pop(0), queue.popleft()
                pending[actor.score.remote(unit.to_json())] = (actor, unit)
            # (an actor lost here has a replacement in self.starting: something is awaited)
            [ref], _ = ray.wait(list(pending) + list(self.starting), num_returns=1)
            if ref in self.starting:
                idle.append(self._started(ref))
                continue
            actor, unit = pending.pop(ref)
            if self._settle(ref, actor, unit, queue, on_done):
                idle.append(actor)

    def _settle(self, ref, actor, unit: Unit, queue: collections.deque, on_done) -> bool:
        """A finished unit's stats to ``on_done``. When its worker died: the actor is replaced
        and the unit goes back to ``queue`` (its second time: as its calls, Splitter).
        Returns whether ``actor`` is still in the pool."""
        import ray

        try:
            stats = self._result(ref, unit)
        except RuntimeError as exc:
            if not worker_died(exc.__cause__):
                raise
            # The actor itself, or (staged) the read task its unit waited for.
            lost = isinstance(exc.__cause__, (ray.exceptions.ActorDiedError,
                                              ray.exceptions.ActorUnavailableError))
            if lost:
                self._replace(actor)
            self.tries[unit.unit_id] += 1
            if self.tries[unit.unit_id] <= TASK_RETRIES:
                queue.appendleft(unit)
                return not lost
            calls = self.splitter.failed(unit, exc.__cause__)
            if calls is None:
                raise
            queue.extendleft(reversed(calls))
            if not calls:
                self._done(unit, None, on_done)
            return not lost
        self._done(unit, stats, on_done)
        return True

    def _done(self, unit: Unit, stats: dict[str, Any] | None, on_done) -> None:
        stats = self.splitter.done(unit, stats)
        if stats is not None:
            on_done(stats)

    @staticmethod
    def _result(ref, unit: Unit) -> dict[str, Any]:
        import ray

        try:
            return json.loads(ray.get(ref))
        except ray.exceptions.RayError as exc:
            calls = unit.calls
            named = ", ".join(c.uri for c in calls[:3])
            what = f"{len(calls)} calls: {named}{', ...' if len(calls) > 3 else ''}" if calls else \
                f"{unit.phase} pass"
            raise RuntimeError(f"unit {unit.unit_id} ({what}) could not be scored: "
                               f"{type(exc).__name__}: {exc}\nA worker killed mid-unit is replaced "
                               f"and the unit retried, then its calls one by one. Units already done "
                               "are staged: rerun the same command to resume.") from exc

    def close(self) -> None:
        import ray

        try:  # the model's temp folder; a killed actor's is left in the system temp dir
            ray.get([a.close.remote() for a in self.actors], timeout=30)
        except Exception:
            pass
        for actor in [*self.actors, *self.starting.values()]:
            ray.kill(actor)
        self.actors, self.starting = [], {}


class RayDataEngine:
    """Units through Ray Data: ``map_batches`` over a pool of ``n`` actors, one unit per batch
    (a new pool for each wave: a Ray Data pipeline owns its actors)."""

    def __init__(self, resources: dict[str, float], settings: WorkerSettings, model_ref):
        self.resources, self.settings, self.model_ref = resources, settings, model_ref

    def pool(self, cfg: ScoreConfig, n_units: int) -> int:
        return pool_size(cfg, n_units)

    def run(self, units: list[dict[str, Any]], n: int, on_done) -> None:
        import ray
        from ray.data import ActorPoolStrategy

        quiet_data_progress()
        ds = ray.data.from_items([{"unit": u.to_json()} for u in units], override_num_blocks=len(units))
        ds = ds.map_batches(ScoreActor,
                            fn_constructor_kwargs={"settings": self.settings, "model_ref": [self.model_ref]},
                            # Every actor from the start, one unit each at a time: a unit is minutes of
                            # audio, so queueing a second one on a busy actor only starves the others.
                            compute=ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1), batch_size=1,
                            batch_format="numpy", **self.resources)
        for row in ds.iter_rows():
            on_done(json.loads(row["stats"]))

    def close(self) -> None:
        pass


def _read_unit(settings: WorkerSettings, unit: str) -> tuple:
    """The CPU pool's task (engine ``staged``): one unit as JSON -> (call rows, {call position:
    (signal, spans)}, seconds of work); its signals go to a model actor through the object store."""
    t0 = time.perf_counter()
    rows, calls = _call_reader(settings).read(Unit.from_json(unit))
    return rows, calls, time.perf_counter() - t0


def _call_reader(settings: WorkerSettings) -> CallReader:
    """One reader per worker process and run (the VAD model loads once, not once per unit)."""
    return process_cached("call_reader", settings.key(), lambda: CallReader(settings))


class StagedEngine(ActorsEngine):
    """Two pools with their own resources: Ray tasks on CPUs read, decode, pick the channel,
    resample, run VAD and cut windows (``read_cpus`` each); a fixed pool of model actors
    (``cpus_per_worker``/``gpus_per_worker`` each) computes features, encoder and head over each
    unit's windows, batched across its calls.

    Backpressure: at most ``read_slots`` units are being read and ``read_ahead`` per model actor
    are read and waiting, so memory is bounded by units in flight, not by the backlog; a model
    actor is handed the next read unit the moment it finishes one, so it waits only when the
    CPU pool has nothing ready. Units read first go to the model first (listing order within a
    wave), and a unit's rows are staged by the model actor exactly as in the other engines."""

    def __init__(self, resources: dict[str, float], settings: WorkerSettings, model_ref,
                 read_cpus: float = 1.0, read_ahead: int = 2):
        import ray

        super().__init__(resources, settings, model_ref)
        self.read_task = ray.remote(_read_unit).options(num_cpus=read_cpus, max_retries=TASK_RETRIES)
        self.read_ahead, self.read_slots = read_ahead, 1

    def pool(self, cfg: ScoreConfig, n_units: int) -> int:
        n, self.read_slots = staged_pools(cfg, n_units)
        return n

    def run(self, units: list[dict[str, Any]], n: int, on_done) -> None:
        import ray

        self._grow(n)
        queue = collections.deque(units)
        reading: dict[Any, dict[str, Any]] = {}
        ready: list[tuple[dict[str, Any], Any]] = []
        busy: dict[Any, tuple[Any, dict[str, Any]]] = {}
        idle = list(self.actors)
        settings_ref = ray.put(self.settings)
        while True:
            # (a unit whose worker died comes back to the queue: _settle)
            while queue and len(reading) < self.read_slots and \
                    len(reading) + len(ready) < self.read_slots + self.read_ahead * len(self.actors):
                unit = queue.popleft()
                if unit.phase == "predict":  # reads its staged features, not audio
                    ready.append((unit, None))
                else:
                    reading[self.read_task.remote(settings_ref, unit.to_json())] = unit
            while idle and ready:
                actor = idle.pop(0)
                unit, read_ref = ready.pop(0)
                ref = actor.score.remote(unit.to_json()) if read_ref is None else \
                    actor.score_read.remote(unit.to_json(), read_ref)
                busy[ref] = (actor, unit)
            if not reading and not busy and not ready and not queue:
                break
            done, _ = ray.wait(list(reading) + list(busy) + list(self.starting), num_returns=1)
            ref = done[0]
            if ref in self.starting:
                idle.append(self._started(ref))
                continue
            if ref in reading:
                # The ref, not the audio: the actor fetches it. A read that killed its worker
                # fails the actor's task with the same error, which _settle handles.
                ready.append((reading.pop(ref), ref))
                continue
            actor, unit = busy.pop(ref)
            if self._settle(ref, actor, unit, queue, on_done):
                idle.append(actor)


# Who runs the units (ScoreConfig.engine). All give the same rows; see README.
ENGINES = {"actors": ActorsEngine, "ray_data": RayDataEngine, "staged": StagedEngine}


def engine_for(cfg: ScoreConfig) -> str:
    """``auto``: the staged pools when the model actors have GPUs (the GPU never waits on
    decoding), otherwise one pool of actors that each do it all (on CPUs a separate read pool
    only takes cores from the model; README, "Engines"). Call after Ray is up."""
    if cfg.engine != "auto":
        return cfg.engine
    return "staged" if uses_gpus(cfg.gpus_per_worker) else "actors"


def make_engine(cfg: ScoreConfig, settings: WorkerSettings, model_ref, name: str):
    """The engine ``name``; per-model-actor resources are the same for every engine."""
    resources = {"num_cpus": cfg.cpus_per_worker}
    if cfg.gpus_per_worker:
        resources["num_gpus"] = cfg.gpus_per_worker
    if name == "staged":
        return StagedEngine(resources, settings, model_ref, cfg.read_cpus, cfg.read_ahead)
    return ENGINES[name](resources, settings, model_ref)


def staged_pools(cfg: ScoreConfig, n_units: int) -> tuple[int, int]:
    """(model actors, concurrent read tasks) for the staged engine: model actors as for the
    other engines, but on CPUs alone leaving ``read_cpus`` for at least one read task; the
    read pool gets every CPU the model actors do not hold."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    n = pool_size(cfg, n_units, reserve_cpus=cfg.read_cpus)
    left = cpus - n * cfg.cpus_per_worker
    if left < cfg.read_cpus:
        raise ValueError(f"engine=staged: {n} model actor(s) x cpus_per_worker={cfg.cpus_per_worker} "
                         f"leave {left:g} of {cpus:g} CPUs, less than read_cpus={cfg.read_cpus}; "
                         "lower num_workers, cpus_per_worker or read_cpus")
    return n, max(1, int(left / cfg.read_cpus))


def run_wave(cfg: ScoreConfig, engine, units: list[dict[str, Any]], on_done) -> None:
    """One wave: pool size and unit order are the same for every engine."""
    engine.run(largest_first(units), engine.pool(cfg, len(units)), on_done)
