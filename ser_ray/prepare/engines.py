"""Who runs the units: plain Ray tasks (``tasks``), or Ray Data with the encoder in an actor pool
(``data``, for pretrained encoders on GPUs); both write the same parts and markers."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ser_ray.console import logger
from ser_ray.config import PrepareConfig
from ser_ray.runtime import quiet_data_progress, uses_gpus, worker_slots
from ser_ray.prepare.units import batched, process_unit, processor

log = logger("prepare")
_COUNTED = ("files", "ok", "quarantined", "skipped", "audio_s")


def parallelism(cfg: PrepareConfig) -> tuple[int, int]:
    """-> (workers, most tasks in flight), from the cluster's CPUs now (it may autoscale).

    Tasks beyond the free CPUs wait in Ray's queue and start the moment one frees, so twice the
    workers in flight keep every worker busy, and show an autoscaler the demand. With
    ``num_workers`` below what the cluster holds, the tasks in flight are what caps it.
    """
    slots = worker_slots(cfg.cpus_per_worker)
    workers = cfg.num_workers or max(1, slots)
    return workers, (workers if workers < slots else 2 * workers)


class Tally:
    """Counts of every unit (resumed ones included) and of this run's own (the rate), shown
    by one :class:`~ser_ray.console.Progress`."""

    def __init__(self, progress: bool):
        from ser_ray.console import Progress

        self.unit_ids: set[str] = set()
        self.totals: Counter = Counter()
        self.fresh: Counter = Counter()
        self.listing = True
        self.t0 = time.time()
        self.bar = Progress("prepare", unit="units", enabled=progress, open_total=True)

    def record(self, st: dict[str, Any]) -> None:
        self.totals.update({k: st[k] for k in _COUNTED})
        if st.get("resumed"):
            self.totals["resumed"] += 1
        else:
            self.fresh.update({k: st[k] for k in _COUNTED})
        self.totals["done"] += 1
        self.bar.update(self.totals["done"], len(self.unit_ids), self.detail(),
                        open_total=self.listing)

    def detail(self) -> str:
        return _progress(self.totals, self.fresh, time.time() - self.t0)

    def new_units(self, out: Path, units: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Units not yet done: a unit listed twice (overlapping inputs) runs once, and one an
        earlier run into ``out`` marked done is counted without running."""
        for unit in units:
            uid = unit["unit_id"]
            if uid in self.unit_ids:
                continue
            self.unit_ids.add(uid)
            marker = out / "_units" / f"{uid}.json"
            if marker.exists():
                self.record({**json.loads(marker.read_text()), "resumed": True})
                continue
            yield unit

    def end(self) -> tuple[set[str], Counter]:
        self.listing = False
        self.bar.update(self.totals["done"], len(self.unit_ids), self.detail(), open_total=False)
        self.bar.close()
        return self.unit_ids, self.totals


def engine_for(cfg: PrepareConfig) -> str:
    """``tasks`` or ``data``. ``auto`` runs a pretrained encoder on Ray Data (a CPU decoding
    stage, then an actor pool that loads the model once per actor) when its actors get GPUs
    (``gpus_per_worker`` > 0 on a cluster with GPUs), and everything else as plain tasks: on
    CPU the task engine was the faster one for encoders too (1.9x on 2 cores, see the module
    docstring). Called after ``init_ray`` (it reads the cluster's GPUs)."""
    if cfg.engine not in ("auto", "tasks", "data"):
        raise ValueError(f"prepare: engine={cfg.engine!r} is not one of ['auto', 'tasks', 'data']")
    if cfg.engine != "auto":
        return cfg.engine
    from ser_ray.features import get_extractor

    exts = [get_extractor(n, **cfg.feature_options.get(n, {})) for n in cfg.features]
    return "data" if any(batched(e) for e in exts) and uses_gpus(cfg.gpus_per_worker) else "tasks"


def run_units(cfg: PrepareConfig, out: Path, units: Iterator[dict[str, Any]],
               progress: bool) -> tuple[set[str], Counter]:
    """Submit units as Ray tasks while they are cut, with a bounded number in flight.

    Units already marked done by an earlier run into ``out`` are counted without a task.
    """
    import ray

    if engine_for(cfg) == "data":
        return _run_units_data(cfg, out, units, progress)
    task = ray.remote(process_unit).options(num_cpus=cfg.cpus_per_worker)
    cfg_ref = ray.put(cfg)
    tally = Tally(progress)
    pending: list = []
    sized = time.time()
    max_in_flight = parallelism(cfg)[1]

    def collect(block: bool) -> None:
        done, rest = ray.wait(pending, num_returns=1 if block else len(pending),
                              timeout=None if block else 0)
        pending[:] = rest
        for st in ray.get(done):
            tally.record(st)

    for unit in tally.new_units(out, units):
        if cfg.num_workers is None and time.time() - sized > 10:
            max_in_flight, sized = parallelism(cfg)[1], time.time()  # nodes come and go
        while len(pending) >= max_in_flight:
            collect(block=True)
        pending.append(task.remote(cfg_ref, str(out), unit))
        if len(pending) > 1:
            collect(block=False)
    while pending:
        collect(block=True)
    return tally.end()


DECODE_CPUS = 0.1  # decoding is ~5 % of an encoder's work: it fills the gaps of the actors' CPUs


def encoder_pool(cfg: PrepareConfig) -> dict[str, float]:
    """Encoder actors and the resources of each: one per ``gpus_per_worker`` of the cluster's
    GPUs when it has them and the config asks, else one per CPU slot (``num_workers`` caps it);
    on CPU each actor leaves a tenth of its CPU to the decoding tasks."""
    if uses_gpus(cfg.gpus_per_worker):
        import ray

        n = max(1, int(ray.cluster_resources()["GPU"] / cfg.gpus_per_worker))
        return {"actors": min(n, cfg.num_workers or n), "num_cpus": cfg.cpus_per_worker,
                "num_gpus": cfg.gpus_per_worker}
    n = max(1, worker_slots(cfg.cpus_per_worker))
    return {"actors": min(n, cfg.num_workers or n),
            "num_cpus": cfg.cpus_per_worker * (1 - DECODE_CPUS), "num_gpus": 0}


def _decode_row(row: dict[str, Any], cfg: PrepareConfig, output: str) -> dict[str, Any]:
    """Ray Data map (CPU): a unit -> its decoded rows, batched extractors' audio waiting."""
    import pickle

    unit = json.loads(row["unit"])
    return {"unit": row["unit"], "rows": pickle.dumps(processor(cfg, output).decode(unit))}


class EncodeUnits:
    """Ray Data actor: loads the encoder once, then finishes units (encoder features over all a
    unit's clips, grouped by length, then the parts and the marker)."""

    def __init__(self, cfg: PrepareConfig, output: str):
        import torch

        self.proc = processor(cfg, output)
        torch.set_num_threads(max(1, int(round(self.proc.cfg.cpus_per_worker))))
        for name in self.proc.batched:  # load the weights now, not in the first unit
            self.proc.extractors[name].load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pickle

        stats = []
        for unit, blob in zip(batch["unit"], batch["rows"]):
            rows, counts = pickle.loads(blob)
            stats.append(json.dumps(self.proc.finish(json.loads(unit), rows, counts)))
        return {"stats": np.array(stats, dtype=object)}


def _run_units_data(cfg: PrepareConfig, out: Path, units: Iterator[dict[str, Any]],
                    progress: bool) -> tuple[set[str], Counter]:
    """The units not yet done through a Ray Data pipeline: decode (tasks) -> encode (actor
    pool, ``num_gpus`` per actor on a GPU cluster); Ray Data streams units between the two
    with backpressure, and each unit's marker is written after its parts, so a killed run
    resumes unit by unit as the task engine does."""
    import ray.data
    from ray.data import ActorPoolStrategy

    quiet_data_progress()
    # its memory "issues" are the decoder's imports (~250 MB per worker), every 30 s in the log
    ray.data.DataContext.get_current().issue_detectors_config.detectors = []
    tally = Tally(progress)
    todo = [json.dumps(u) for u in tally.new_units(out, units)]
    if todo:
        pool = encoder_pool(cfg)
        log(f"Ray Data: decoding on CPU tasks, encoder on {pool['actors']} actor(s) "
            f"({pool['num_cpus']:g} CPU, {pool['num_gpus']:g} GPU each)")
        ds = ray.data.from_items([{"unit": u} for u in todo], override_num_blocks=len(todo))
        ds = ds.map(_decode_row, fn_kwargs={"cfg": cfg, "output": str(out)},
                    num_cpus=DECODE_CPUS)
        ds = ds.map_batches(EncodeUnits, fn_constructor_kwargs={"cfg": cfg, "output": str(out)},
                            batch_size=1, compute=ActorPoolStrategy(size=pool["actors"],
                                                    max_tasks_in_flight_per_actor=1),
                            num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"])
        for row in ds.iter_rows():
            tally.record(json.loads(row["stats"]))
    return tally.end()


def _progress(totals: Counter, fresh: Counter, seconds: float) -> str:
    seconds = max(seconds, 1e-3)
    rate = fresh["audio_s"] / seconds
    resumed = f"{totals['resumed']} units resumed, " if totals["resumed"] else ""
    return (f"{resumed}{totals['files']} files ({totals['ok']} ok, {totals['quarantined']} "
            f"quarantined, {totals['skipped']} skipped), {totals['audio_s'] / 3600:.2f} h audio, "
            f"{fresh['files'] / seconds:.1f} files/s, {rate:.0f} audio s/s")
