"""The ``prepare`` job: audio inputs -> manifest, feature tables, quarantine and summary.

Work is cut into *units* of a few files (or one tar shard). Each unit is one Ray task; the worker
reads the unit's files itself (local, shared filesystem or S3), so files are read in parallel on
every worker of the cluster, and writes the unit's rows as deterministic, atomically renamed part
files, then a ``_units/<id>.json`` marker records it as done. A rerun into the same output skips
marked units, so an interrupted run resumes and ends with the same tables as one clean run.

Stages: resolve inputs and their corpora on the driver (no listing) -> walk each input lazily on
the driver, cutting units as names stream in, with at most a few units per worker in flight
(``ray.wait``), so driver memory stays flat however large the prefix -> decode, condition and
extract features in Ray tasks (each worker process builds its extractors once per config) ->
summarise on the driver from the written tables.

Two engines (``engine``, default ``auto``):

* ``tasks``, the default on CPU, pretrained encoders included: one task per unit decodes and
  extracts, and a worker process keeps its extractors (and an encoder's weights) across units
  and runs. A Ray Data pipeline pays a fixed start-up per run (fresh actor processes import
  torch and transformers and load the model, ~10-18 s on 2 cores) and its decoding tasks compete
  with the encoder actors for the same cores: with whisper-base on 2 cores the task engine was
  1.9x faster and scaled 1.9x from one worker to two, Ray Data 1.1x
  (``benchmarks/encoder_throughput.py``).
* ``data``, for pretrained encoders on GPUs (``auto`` picks it when ``gpus_per_worker`` > 0 and
  the cluster has GPUs): decoding and conditioning run as Ray Data CPU tasks, the encoder in a
  ``map_batches`` actor pool (``ActorPoolStrategy``) that loads the model once per actor, with
  ``num_gpus`` per actor; each unit's clips are encoded in batches grouped by length, so the GPU
  is not left waiting on the decoder. Units, parts and markers are the same as the task
  engine's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ser_ray.console import logger
from ser_ray.config import PrepareConfig, public_dict, to_dict
from ser_ray.prepare.engines import engine_for, parallelism, run_units
from ser_ray.prepare.plan import iter_units, plan_inputs
from ser_ray.runtime import versions
from ser_ray.schema import (FEATURE_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA,
                            get_label_set)
from ser_ray.storage import Storage, is_s3, write_parquet_atomic, write_text_atomic

log = logger("prepare")
TABLES = ("manifest", "quarantine", "skipped")
# Fields that change what a run produces: a rerun with other values cannot resume into the output.
CONFIG_STAMP = "_config"  # _units/<this>.json: the config the output was made with
MATERIAL_FIELDS = ("inputs", "corpus", "label_set", "features", "feature_options", "audio")


def _check_output(cfg: PrepareConfig, out: Path, overwrite: bool) -> dict[str, Any]:
    """Refuse to resume into an output made with a different config (or wipe it); returns the
    config's stamp, which :func:`run_prepare` writes once planning has succeeded (a typo in
    ``--input`` must not stamp the output and block the corrected rerun)."""
    stamp = out / "_units" / f"{CONFIG_STAMP}.json"
    material = {k: v for k, v in to_dict(cfg).items() if k in MATERIAL_FIELDS}
    if overwrite:
        for sub in (*TABLES, "features", "_units"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif stamp.exists() and json.loads(stamp.read_text()) != material:
        raise ValueError(f"{out} holds a prepare run with a different config; choose another "
                         f"--output or pass --overwrite")
    return material


def run_prepare(cfg: PrepareConfig, overwrite: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Run the prepare job end to end; returns the summary (also written to summary.json)."""
    from ser_ray.runtime import init_ray

    if not cfg.inputs:
        raise ValueError("prepare: give at least one --input")
    if not cfg.output:
        raise ValueError("prepare: give --output DIR")
    if is_s3(cfg.output):
        raise ValueError("prepare: --output must be a local or shared-filesystem folder")
    from ser_ray.features import get_extractor
    for name in cfg.features:  # fail fast on bad names/options, before Ray starts
        get_extractor(name, **cfg.feature_options.get(name, {}))
    get_label_set(cfg.label_set)
    if cfg.engine not in ("auto", "tasks", "data"):  # before Ray starts
        engine_for(cfg)
    out = Path(cfg.output).absolute()
    out.mkdir(parents=True, exist_ok=True)
    cfg = resolve_precisions(cfg)  # before the stamp: a resume elsewhere cannot mix precisions
    material = _check_output(cfg, out, overwrite)
    t0 = time.time()
    storage = Storage(cfg.s3)
    sources = plan_inputs(cfg, storage)
    write_text_atomic(json.dumps(material, sort_keys=True),
                         out / "_units" / f"{CONFIG_STAMP}.json")
    corpora = sorted({s["corpus"] for s in sources})
    log(f"{len(cfg.inputs)} input(s), corpus {', '.join(corpora)}, {len(sources)} source(s)")

    init_ray()
    engine = engine_for(cfg)
    workers, _ = parallelism(cfg)
    log(f"units of <= {cfg.files_per_task} files on {workers} worker(s), engine {engine}")
    units = (u for s in sources for u in iter_units(s, storage, cfg.files_per_task))
    unit_ids, totals = run_units(cfg, out, units, progress)
    summary = finalize(cfg, out, unit_ids, totals, time.time() - t0, corpora)
    log(f"done: {summary['input_files']} input files, {summary['ok']} ok, "
        f"{summary['quarantined']} quarantined, {summary['skipped']} skipped "
        f"({summary['resumed_units']} units resumed) -> {out}")
    return summary


def _read(dirpath: Path, schema: pa.Schema, columns: list[str]) -> pa.Table:
    files = sorted(dirpath.glob("part-*.parquet")) if dirpath.exists() else []
    if not files:
        return schema.empty_table().select(columns)
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


def resolve_precisions(cfg: PrepareConfig) -> PrepareConfig:
    """``precision: auto`` of an ``encoder`` feature -> what its workers will compute in (int8 on
    CPU workers, the float type on GPU ones), so the config, the stamp and every model trained
    on the output name it. Starts Ray only when there is an ``auto`` to resolve."""
    from ser_ray.features.encoder import resolve_encoder_precision
    from ser_ray.runtime import init_ray, uses_gpus

    options = {k: dict(v) for k, v in cfg.feature_options.items()}
    auto = [n for n in cfg.features if n == "encoder"
            and options.get(n, {}).get("precision") == "auto"]
    if not auto:
        return cfg
    init_ray()
    gpu = uses_gpus(cfg.gpus_per_worker)
    for name in auto:
        options[name]["precision"] = resolve_encoder_precision(options[name], gpu)
        log(f"{name}: precision auto -> {options[name]['precision']}")
    return dataclasses.replace(cfg, feature_options=options)


def finalize(cfg: PrepareConfig, out: Path, unit_ids: set[str], totals: Counter,
             seconds: float, corpora: list[str]) -> dict[str, Any]:
    """Drop parts of units no longer in the plan, then write summary, config and label map."""
    from ser_ray import config as config_mod
    from ser_ray.features import extractor_config, get_extractor

    keep = {f"part-{u}.parquet" for u in unit_ids}
    for d in [out / t for t in TABLES] + [out / "features" / f for f in cfg.features]:
        for f in d.glob("part-*.parquet") if d.exists() else []:
            if f.name not in keep:
                f.unlink()
    for f in (out / "_units").glob("*.json"):
        if f.stem != CONFIG_STAMP and f.stem not in unit_ids:
            f.unlink()

    man = _read(out / "manifest", MANIFEST_SCHEMA, ["utterance_id", "uri", "speaker", "label",
                                                    "sha256", "duration_s", "corpus", "sex"])
    qua = _read(out / "quarantine", QUARANTINE_SCHEMA, ["uri", "reason", "detail"])
    skp = _read(out / "skipped", SKIPPED_SCHEMA, ["uri", "reason"])
    ok, quarantined = man.num_rows, qua.num_rows
    if ok + quarantined + skp.num_rows != totals["files"]:
        raise RuntimeError(f"tables hold {ok + quarantined + skp.num_rows} files but "
                           f"{totals['files']} were listed: a part is missing in {out}")
    labels = Counter(man.column("label").to_pylist())
    reasons = Counter(qua.column("reason").to_pylist())
    dropped = Counter(d for r, d in zip(qua.column("reason").to_pylist(),
                                        qua.column("detail").to_pylist())
                      if r == "label_outside_set")
    by_hash: dict[str, list[str]] = {}
    for h, u in zip(man.column("sha256").to_pylist(), man.column("uri").to_pylist()):
        by_hash.setdefault(h, []).append(u)
    dups = {h: us for h, us in by_hash.items() if len(us) > 1}
    write_parquet_atomic(pa.table({
        "sha256": [h for h, us in dups.items() for _ in us],
        "uri": [u for us in dups.values() for u in us]}), out / "duplicates.parquet")
    label_order = list(get_label_set(cfg.label_set).labels)
    label_map = {lab: i for i, lab in enumerate(x for x in label_order if x in labels)}
    features = {}
    for name in cfg.features:
        ft = _read(out / "features" / name, FEATURE_SCHEMA, ["shape"])
        shapes = Counter(tuple(s) for s in ft.column("shape").to_pylist())
        features[name] = {"rows": ft.num_rows,
                          "config": extractor_config(get_extractor(
                              name, **cfg.feature_options.get(name, {}))),
                          "shapes": {"x".join(map(str, s)): n for s, n in shapes.most_common(5)}}
    summary = {
        "input_files": ok + quarantined,
        "ok": ok,
        "quarantined": quarantined,
        "quarantine_reasons": dict(sorted(reasons.items())),
        "skipped": skp.num_rows,
        "skip_reasons": dict(Counter(skp.column("reason").to_pylist())),
        "dropped_labels": dict(sorted(dropped.items())),
        "corpora": corpora,
        "speakers": len(set(man.column("speaker").to_pylist())),
        "speaker_ids": sorted(set(man.column("speaker").to_pylist())),
        "labels": dict(sorted(labels.items())),
        "label_set": cfg.label_set,
        "label_map": label_map,
        "audio_hours": round(sum(man.column("duration_s").to_pylist()) / 3600, 4),
        "duplicates": {"groups": len(dups), "files": sum(len(v) for v in dups.values()),
                       "table": "duplicates.parquet"},
        "features": features,
        "units": len(unit_ids),
        "resumed_units": totals["resumed"],
        "seconds": round(seconds, 2),
        "seed": cfg.seed,
        "config": public_dict(cfg),
        "versions": versions(),
    }
    write_text_atomic(json.dumps(summary, indent=2, default=str), out / "summary.json")
    write_text_atomic(json.dumps(label_map, indent=2), out / "label_map.json")
    config_mod.dump(cfg, out / "config.yaml")
    return summary
