"""The night's driver: a nightly backlog of call recordings -> Parquet reports ranked by urgency.

``run_score(cfg)`` lists the backlog lazily (folders or ``s3://`` prefixes, recursive), cuts it
into units of a few calls, and runs the units on a fixed pool of scoring actors (``engine``:
``actors``, a pool of Ray actors fed by the driver, the default; or ``ray_data``, Ray Data's
``map_batches`` over ``ActorPoolStrategy``). Each actor loads the model once and, per unit,
decodes every call, picks the customer's channel, resamples to the model's rate, finds speech
(VAD, batched over the unit's calls), cuts analysis windows over speech only, extracts the
model's features per window and predicts in batches. A unit's rows go to a staging area
(``_staging/<run_id>/``) as two Parquet files, the calls file last: it marks the unit done, so
a rerun resumes and a retried task (a worker killed mid-run) rewrites the same files rather
than adding rows. When every unit is done the run is published under ``--output``::

    segments/run_date=D/<run_id>-part-00000.parquet   one row per analysis window
    calls/run_date=D/<run_id>.parquet                   one row per call, ranked by urgency
    runs/<run_id>.json                                  model, config, versions, counts, timings
    reports/run_date=D/<run_id>.md (+ .png)             the most urgent calls, for people

``run_id`` is ``<run date>_<model hash>``: scoring the same night again with the same model
replaces that run's files with the same rows. Calls an earlier night scored with the same model
(same call_id and size) are skipped unless ``rescore``. Every file is written whole (temp name
then rename; an S3 PUT), so no reader sees half a file. Every call listed gets exactly one row in
``calls/`` with a ``status``: ``scored``, ``no_speech`` or the reason it could not be used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from ser_ray import vad
from ser_ray.config import CHANNELS, REFERENCES, ScoreConfig, public_dict
from ser_ray.console import Progress, logger
from ser_ray.features.inputs import extractor_models
from ser_ray.runtime import init_ray, versions
from ser_ray.schema import SCORED
from ser_ray.score.backlog import (Listing, Unit, iter_units, load_metadata, previously_scored,
                                   resolve_run_date)
from ser_ray.score.clips import make_clips
from ser_ray.score.cost import night_cost
from ser_ray.score.drift import night_drift, read_units
from ser_ray.score.commit import NightLock, check_replaces_whole, run_record_uri
from ser_ray.score.engines import ENGINES, engine_for, make_engine, run_wave
from ser_ray.features.windows import encoder_depth, model_window
from ser_ray.score.model import ModelInfo
from ser_ray.score.publish import publish, write_index, write_report
from ser_ray.score.reference import (ONE_PASS_STATISTICS, Populations, reference_key,
                                     reference_table, trained_normalisation, training_population)
from ser_ray.score.settings import (WorkerSettings, diarize_settings, encoder_precision,
                                    worker_settings)
from ser_ray.score.voices import Voices, assign, load_agents, with_roles
from ser_ray.score.tables import staged_stats, unit_dir
from ser_ray.score.transcripts import transcribe_night
from ser_ray.storage import Storage, is_s3, join

log = logger("score")


def check_config(cfg: ScoreConfig) -> None:
    """Every score setting checked before any work (a bad transcripts model too)."""
    if not cfg.model:
        raise ValueError("score: give --model MODEL_DIR")
    from ser_ray.models.late_fusion import is_late_fusion

    if not is_s3(cfg.model) and is_late_fusion(cfg.model):
        raise ValueError(f"score: {cfg.model} is a late-fusion folder, which `evaluate` reads; "
                         "score one model (an audio_text model fuses audio and text itself)")
    if not cfg.inputs:
        raise ValueError("score: give --input URI (a folder or s3:// prefix of recordings)")
    if not cfg.output:
        raise ValueError("score: give --output DIR (a folder or s3:// prefix)")
    if cfg.encoder_precision not in (None, "fp32", "int8", "auto"):
        raise ValueError(f"encoder_precision={cfg.encoder_precision!r}: choose fp32, int8 or auto "
                         "(or leave it unset: as the model's features were made)")
    if cfg.call_id not in ("stem", "path"):
        raise ValueError(f"call_id={cfg.call_id!r}: choose stem or path")
    if cfg.customer_channel not in CHANNELS or cfg.stereo_channel not in ("left", "right"):
        raise ValueError(f"customer_channel={cfg.customer_channel!r}: choose {', '.join(CHANNELS)}; "
                         f"stereo_channel={cfg.stereo_channel!r}: choose left or right")
    if cfg.agents and cfg.customer_channel not in ("diarize", "auto"):
        raise ValueError(f"agents={cfg.agents!r} enrols agent voices for diarisation: set "
                         "customer_channel=diarize or auto")
    diarize_settings(cfg)  # unknown or out-of-range diarize options fail now
    for name in ("calls_per_task", "batch_size", "units_per_wave", "report_top"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    if not (cfg.min_window_s >= 0 and cfg.max_call_s > 0 and cfg.max_file_mb > 0 and cfg.mb_per_task > 0):
        raise ValueError("score: need min_window_s >= 0 and max_call_s, max_file_mb, mb_per_task > 0")
    for name in ("window_s", "hop_s"):
        v = getattr(cfg, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name}={v} must be a positive number of seconds")
    if cfg.vad_sample_rate not in (8000, 16000):
        raise ValueError(f"vad_sample_rate={cfg.vad_sample_rate}: silero runs at 8000 or 16000 Hz")
    if cfg.engine not in ("auto", *ENGINES):
        raise ValueError(f"engine={cfg.engine!r}: choose auto, {', '.join(ENGINES)}")
    if cfg.read_cpus <= 0 or cfg.read_ahead < 1:
        raise ValueError(f"score: read_cpus must be > 0 (got {cfg.read_cpus}) and read_ahead >= 1 "
                         f"(got {cfg.read_ahead})")
    if cfg.cpus_per_worker <= 0 or cfg.gpus_per_worker < 0:
        raise ValueError("score: cpus_per_worker must be > 0 and gpus_per_worker >= 0")
    opts = dict(cfg.vad)
    vad.get_detector(opts.pop("name", "auto"), **opts)  # unknown detector or option: fail now
    n = cfg.normalisation
    if n.reference not in REFERENCES:
        raise ValueError(f"normalisation.reference={n.reference!r}: choose {', '.join(REFERENCES)}")
    if n.min_calls < 1:
        raise ValueError(f"normalisation.min_calls={n.min_calls} must be >= 1")
    if n.group_by and not cfg.metadata:
        raise ValueError(f"normalisation.group_by={n.group_by!r} needs --metadata (a table with "
                         f"call_id and {n.group_by} columns)")
    if cfg.transcribe.model:  # a bad transcripts model fails now, not after the night's scoring
        from ser_ray import transcribe

        transcribe.check(cfg.transcribe)
        transcribe.whisper_checkpoint(cfg.transcribe.model)


def _output(cfg: ScoreConfig) -> str:
    return cfg.output.rstrip("/") if is_s3(cfg.output) else str(Path(cfg.output).absolute())


def run_score(cfg: ScoreConfig, progress: bool = True) -> dict[str, Any]:
    """Score the backlog and publish the run; returns the run record (also ``runs/<run_id>.json``,
    written last: the night's commit, see ``ser_ray.score.commit``). One run of a night at a
    time: a second one refuses while the first holds the night's lock."""
    check_config(cfg)
    storage = Storage(cfg.s3)
    with NightLock(storage, _output(cfg), resolve_run_date(cfg.run_date), cfg.lock_ttl_h * 3600):
        return _run_score(cfg, storage, progress)


@dataclasses.dataclass
class Night:
    """One run of a night as the driver planned it, before any unit runs."""

    cfg: ScoreConfig
    storage: Storage
    output: str
    run_date: str
    run_id: str
    staging: str
    model: ModelInfo
    settings: WorkerSettings
    window_from: str                       # where the window length came from
    metadata: pd.DataFrame | None
    groups: dict[str, str] | None          # call id -> reference group (normalisation.group_by)
    precision: dict[str, Any] | None = None  # the encoder's precision, trained and scoring

    @property
    def two_pass(self) -> bool:
        """Whether windows wait for the run's own statistics (an extract pass, then predict)."""
        return self.settings.reference["mode"] == "run"

    def staged(self, unit_id: str, name: str, key: str | None = None) -> str:
        """Where a unit's staged file ``name`` is (``key``: the run's reference statistics)."""
        return join(unit_dir(self.staging, unit_id, key), name)


def plan_night(cfg: ScoreConfig, storage: Storage) -> Night:
    """The model read and checked, the run's id and staging folder, the workers' settings, the
    metadata and the reference groups: everything the night needs before its first unit."""
    run_date = resolve_run_date(cfg.run_date)
    model = ModelInfo.read(cfg.model, trust=cfg.trust_model)
    run_id = f"{run_date}_{model.model_hash[:12]}"
    output = _output(cfg)
    staging = join(output, f"_staging/{run_id}")
    precision = encoder_precision(cfg, model)
    settings = worker_settings(cfg, model, run_id, staging, precision)
    metadata = load_metadata(cfg.metadata, storage, model.labels) if cfg.metadata else None
    night = Night(cfg, storage, output, run_date, run_id, staging, model, settings,
                  "config" if cfg.window_s else model_window(model.feature_config)[1], metadata,
                  groups=None, precision=precision)
    if night.two_pass and cfg.normalisation.group_by:
        col = cfg.normalisation.group_by
        if col not in metadata.columns:
            raise ValueError(f"normalisation.group_by={col!r}: --metadata {cfg.metadata} has no such "
                             f"column; it has {list(metadata.columns)}")
        night.groups = {c: ("" if pd.isna(v) else str(v))
                        for c, v in zip(metadata["call_id"], metadata[col])}
    log(f"run {run_id}: model {model.model_id}, windows of {settings.window_s:.2f} s "
        f"({night.window_from}), vad {settings.vad['name']}, customer channel {cfg.customer_channel}")
    return night


@dataclasses.dataclass
class Tally:
    """What the driver adds up as units finish (or are found done by an earlier attempt)."""

    bar: Progress
    unit_ids: list[str] = dataclasses.field(default_factory=list)  # in listing order
    position: dict[str, int] = dataclasses.field(default_factory=dict)  # unit id -> its index
    units: list[Unit] = dataclasses.field(default_factory=list)  # as listed (first pass)
    counts: Counter = dataclasses.field(default_factory=Counter)  # call status -> calls
    populations: Populations = dataclasses.field(default_factory=Populations)
    done: int = 0
    resumed: int = 0
    extracted: int = 0
    voices: Voices = dataclasses.field(default_factory=Voices)  # the voices pass (diarising)
    audio_s: float = 0.0
    fresh_audio_s: float = 0.0
    unit_s: float = 0.0                   # seconds of unit work, of which read_s on the read side
    read_s: float = 0.0
    workers: set = dataclasses.field(default_factory=set)
    t_scoring: float = dataclasses.field(default_factory=time.time)

    def listed(self, unit: Unit) -> None:
        self.position[unit.unit_id] = len(self.unit_ids)
        self.unit_ids.append(unit.unit_id)
        self.units.append(dataclasses.replace(unit, calls=()))  # its calls are staged by then

    def record(self, st: dict[str, Any], resumed: bool = False) -> None:
        """A unit's stats (``UnitScorer.score_unit``): counts, audio, seconds of work."""
        if not resumed:
            self.unit_s += st.get("seconds", 0.0)
            self.read_s += st.get("read_s", 0.0)
            self.workers.add(st.get("pid"))
        if st.get("phase") == "voices":
            self.voices.add(st)
        elif st.get("phase") == "extract":
            self.extracted += 1
            self.populations.add(self.position[st["unit_id"]], st["moments"])
        else:
            self.counts.update(st["status"])
            self.done += 1
            self.audio_s += st["audio_s"]
            self.resumed += resumed
            self.fresh_audio_s += 0.0 if resumed else st["audio_s"]
        self.show()

    def show(self) -> None:
        n = len(self.unit_ids)
        if self.voices.units and not self.done and not self.extracted:
            self.bar.update(self.voices.units, max(n, self.voices.units),
                            "voices pass (who speaks when on mono calls)")
            return
        if self.extracted and not self.done:
            self.bar.update(self.extracted, n, "extract pass (reference statistics of the run's calls)")
            return
        secs = max(time.time() - self.t_scoring, 1e-3)
        resumed = f"{self.resumed} units resumed, " if self.resumed else ""
        self.bar.update(self.done, n, f"{resumed}{sum(self.counts.values())} calls "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items()))}), "
                        f"{self.audio_s / 3600:.2f} h audio, {self.fresh_audio_s / secs:.0f}x real time")


class Waves:
    """Units handed to the engine a wave (``units_per_wave``) at a time."""

    def __init__(self, night: Night, engine, tally: Tally):
        self.night, self.engine, self.tally, self.todo = night, engine, tally, []

    def add(self, unit: Unit) -> None:
        self.todo.append(unit)
        if len(self.todo) >= self.night.cfg.units_per_wave:
            self.flush()

    def flush(self) -> None:
        if self.todo:
            run_wave(self.night.cfg, self.engine, self.todo, self.tally.record)
            self.todo = []


def backlog_units(night: Night, listing: Listing):
    """The night's units of work, lazily, in listing order."""
    cfg = night.cfg
    return iter_units(listing.calls(), cfg.calls_per_task, int(cfg.mb_per_task * 2 ** 20),
                      night.settings.material(), night.groups)


def voices_pass(night: Night, units, waves: Waves, tally: Tally,
                bank: tuple[list[str], Any] | None) -> tuple[list[Unit], dict[str, Any]]:
    """Diarising: every unit's mono calls split into voices (a unit an earlier, interrupted run
    finished is read back, not run again), then each call's agent decided (``score.voices``).
    Returns the units with their calls' roles and what the run record says."""
    listed, seconds = [], tally.unit_s
    for unit in units:
        listed.append(unit)
        marker = night.staged(unit.unit_id, "voices.json")
        if night.storage.exists(marker):
            tally.record(json.loads(night.storage.read_bytes(marker)), resumed=True)
            continue
        waves.add(dataclasses.replace(unit, phase="voices"))
    waves.flush()
    neighbours = int(night.settings.diarize["neighbours"])
    roles, record = assign(tally.voices, bank[1] if bank else None, neighbours)
    record = {"mode": night.cfg.customer_channel, **record, "seconds": tally.unit_s - seconds,
              **({"stereo_channel": night.cfg.stereo_channel} if night.cfg.customer_channel == "auto" else {}),
              **({"agents": bank[0]} if bank else {}), "settings": night.settings.diarize}
    log("diarisation: " + (", ".join(f"{m} {n}" for m, n in sorted(record["methods"].items()))
                           or "no mono calls"))
    return list(with_roles(listed, roles)), record


def first_pass(night: Night, units, waves: Waves, tally: Tally) -> None:
    """Every unit of the backlog: scored (one pass), or extracted (two passes); a unit an
    earlier, interrupted run of this night finished is counted, not run again."""
    for unit in units:
        tally.listed(unit)
        if night.two_pass:
            unit = dataclasses.replace(unit, phase="extract")
            marker = night.staged(unit.unit_id, "moments.json")
            if night.storage.exists(marker):
                tally.record(json.loads(night.storage.read_bytes(marker)), resumed=True)
                continue
        else:
            staged = night.staged(unit.unit_id, "calls.parquet")
            if night.storage.exists(staged):
                tally.record(staged_stats(night.storage, staged), resumed=True)
                continue
        waves.add(unit)
    waves.flush()


def second_pass(night: Night, waves: Waves, tally: Tally) -> tuple[str | None, dict[str, Any]]:
    """With the run's statistics (two passes): every unit predicted with them. Returns the
    statistics' key and what the run record says of normalisation."""
    mode = night.settings.reference["mode"]
    record: dict[str, Any] = {"trained_with": trained_normalisation(night.model), "reference": mode}
    if mode in ONE_PASS_STATISTICS:
        record["statistics"] = ONE_PASS_STATISTICS[mode]
    if not night.two_pass:
        return None, record
    n = night.cfg.normalisation
    table, pops = reference_table(tally.populations.groups, night.cfg, training_population(night.model))
    key = reference_key(table)
    record.update(group_by=n.group_by, min_calls=n.min_calls, populations=pops, key=key)
    log("reference statistics: " + (", ".join(
        f"{g or '(all)'}: {p['calls']} calls -> {p['statistics']}" for g, p in pops.items()) or "no calls"))
    for unit in tally.units:
        staged = night.staged(unit.unit_id, "calls.parquet", key)
        if night.storage.exists(staged):
            tally.record(staged_stats(night.storage, staged), resumed=True)
            continue
        needed = set((unit.groups or {}).values()) or {""}
        waves.add(dataclasses.replace(unit, phase="predict", reference={
            "mode": "run", "key": key, "table": {g: table[g] for g in needed if g in table}}))
    waves.flush()
    return key, record


def _drift(night: Night, tally: Tally, ref_key: str | None, calls: pd.DataFrame) -> dict[str, Any]:
    """The night's ``drift`` section, from its units' staged counts (``score.drift``)."""
    from ser_ray.models.drift import DriftReference

    units = read_units(night.storage, [unit_dir(night.staging, u, ref_key) for u in tally.unit_ids])
    rate = (night.model.feature_config.get("audio") or {}).get("sample_rate")
    return night_drift(units, calls, DriftReference.from_files(night.model.files),
                       night.model.labels, night.cfg.drift, rate)


def _run_score(cfg: ScoreConfig, storage: Storage, progress: bool) -> dict[str, Any]:
    started, t0 = dt.datetime.now(dt.timezone.utc), time.time()
    night = plan_night(cfg, storage)
    skip = {} if cfg.rescore else previously_scored(storage, night.output, night.run_date,
                                                    night.model.model_hash)
    listing = Listing(cfg, storage, skip)
    bank = load_agents(cfg, storage) if night.settings.diarising else None
    init_ray()
    import ray

    model_ref = ray.put(night.model.files)
    tally = Tally(Progress("score", unit="units", enabled=progress, open_total=True))
    engine_name = engine_for(cfg)
    # The staged engine runs VAD in its read pool; not material: the rows are the same.
    settings = dataclasses.replace(night.settings, staged=engine_name == "staged")
    engine = make_engine(cfg, settings, model_ref, engine_name)
    try:
        waves = Waves(night, engine, tally)
        units, diarization = backlog_units(night, listing), None
        if night.settings.diarising:
            units, diarization = voices_pass(night, units, waves, tally, bank)
        first_pass(night, units, waves, tally)
        ref_key, norm_record = second_pass(night, waves, tally)
    finally:
        engine.close()
    tally.show()
    tally.bar.close()
    t_scored = time.time()
    output, run_id = night.output, night.run_id
    check_replaces_whole(storage, output, run_id, set(listing.seen), cfg.replace_night)
    published = publish(cfg, storage, output, night.staging, night.run_date, run_id, night.model,
                        tally.unit_ids, listing.extra_rows, night.metadata, versions(), ref_key)
    timings = {"wall_s": time.time() - t0, "scoring_s": t_scored - tally.t_scoring,
               "publish_s": time.time() - t_scored}
    transcripts, tx_record = None, None
    if cfg.transcribe.model:
        t_tx = time.time()
        transcripts, tx_record = transcribe_night(cfg, storage, output, night.run_date, run_id,
                                                  night.model, published, settings, progress)
        timings["transcribe_s"] = time.time() - t_tx
        timings["wall_s"] = time.time() - t0
    model = night.model
    run = {"run_id": run_id, "run_date": night.run_date, "model_id": model.model_id,
           "model_hash": model.model_hash, "model_path": model.path,
           # the pretrained models its features come from (an encoder, Whisper, a text encoder)
           "feature_models": extractor_models(model.feature_config),
           "encoder_precision": night.precision,
           # the encoder layers each window runs: up to the deepest state the head reads
           "encoder_layers": encoder_depth(model.feature_config),
           "window_s": settings.window_s, "window_from": night.window_from,
           "vad": settings.vad, "normalisation": norm_record, "diarization": diarization,
           "config": public_dict(cfg),
           "versions": versions(),
           "labels": model.labels, "calls": published["calls"], "counts": published["counts"],
           "skipped_previously_scored": listing.skipped, "resumed_units": tally.resumed,
           "units": len(tally.unit_ids), "ignored_files": dict(listing.ignored),
           "ignored_examples": listing.examples,
           "metadata_rows_without_call": published["metadata_unmatched"],
           "audio_s": tally.audio_s, "fresh_audio_s": tally.fresh_audio_s,
           "unit_seconds": tally.unit_s, "worker_processes": len(tally.workers - {None}),
           # Seconds of unit work on the read side (decode, VAD, windows) and on the model side.
           "engine": engine_name, "read_seconds": tally.read_s,
           "model_seconds": tally.unit_s - tally.read_s,
           "started_at": started.isoformat(timespec="seconds"),
           "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           **timings, "outputs": published["outputs"]}
    if tx_record:
        run["transcripts"] = tx_record
        run["outputs"]["transcripts"] = tx_record.pop("uri")
    scored = published["calls_df"]
    scored = scored[scored["status"] == SCORED].head(10)
    run["top_calls"] = [{"urgency_rank": int(r.urgency_rank), "call_id": r.call_id,
                         "urgency_score": float(r.urgency_score)} for r in scored.itertuples()]
    resources = ray.cluster_resources()
    run["cost"] = night_cost(run["fresh_audio_s"], timings["wall_s"], resources.get("CPU", 0.0),
                             resources.get("GPU", 0.0), cfg.cost)
    run["drift"] = _drift(night, tally, ref_key, published["calls_df"])
    run["real_time_factor"] = run["fresh_audio_s"] / max(timings["scoring_s"], 1e-9)
    # Audio seconds per second of a worker's own unit work: the per-core rate without start-up.
    run["real_time_factor_per_worker"] = run["fresh_audio_s"] / max(tally.unit_s, 1e-9)
    clips = (make_clips(published["calls_df"], cfg.report_top, settings, cfg.report)
             if cfg.report.clips else None)
    write_report(storage, output, run, published["calls_df"], model.labels, cfg.report_top,
                 transcripts, clips)
    run["outputs"]["report_index"] = join(output, "reports/index.html")
    # The commit: everything the night published is readable from here on, and only now.
    storage.write_bytes(run_record_uri(output, run_id),
                        (json.dumps(run, indent=2, default=str) + "\n").encode())
    write_index(storage, output)
    storage.delete_tree(night.staging)
    if run["drift"]["alarm"]:
        log(f"WARNING: {run['drift']['message']} (run record: drift)")
    log(f"done: {run['calls']} calls ({', '.join(f'{k} {v}' for k, v in sorted(run['counts'].items()))}), "
        f"{listing.skipped} skipped as already scored, {run['audio_s'] / 3600:.2f} h audio in "
        f"{timings['wall_s']:.1f} s -> {output}")
    return run
