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

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ser_ray import audio, io
from ser_ray.config import PrepareConfig, from_dict, public_dict, to_dict
from ser_ray.schema import (FEATURE_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA,
                            get_label_set)

TABLES = ("manifest", "quarantine", "skipped")
SIDECAR_EXTENSIONS = (".json", ".txt", ".cls", ".cls2", ".id", ".key")
# Fields that change what a run produces: a rerun with other values cannot resume into the output.
CONFIG_STAMP = "_config"  # _units/<this>.json: the config the output was made with
MATERIAL_FIELDS = ("inputs", "corpus", "label_set", "features", "feature_options", "audio")


def log(msg: str) -> None:
    from ser_ray.console import say

    say(msg, 'prepare')


# --------------------------------------------------------------------------------------------
# Planning (driver): resolve each input's corpus and cut it into listing jobs
# --------------------------------------------------------------------------------------------

def resolve_corpus(uri: str, requested: str, storage: io.Storage) -> str:
    """The corpus an input is read as: the requested one, or detected from a sample of names."""
    if io.is_table(uri):
        return "manifest"
    if requested != "auto":
        if requested not in ("sidecar", "manifest"):
            from ser_ray.corpora import get_corpus
            get_corpus(requested)  # unknown names fail here, before any work starts
        return requested
    from ser_ray.corpora import detect_corpus

    sample = io.sample_paths(storage, uri)
    try:
        return detect_corpus(sample)
    except ValueError as exc:
        if io.is_tar(uri) and any(p.endswith(".json") for p in sample):
            return "sidecar"  # WebDataset shard whose labels live in JSON sidecars
        raise ValueError(f"--input {uri}: cannot recognise the corpus layout ({exc}). "
                         f"Pass --corpus NAME, or a manifest (CSV/Parquet with path,label)."
                         ) from None


def plan_inputs(cfg: PrepareConfig, storage: io.Storage) -> list[dict[str, Any]]:
    """Inputs -> sources (a folder, glob, tar shard, table or single file), each with its corpus.

    Nothing is listed here beyond the sample that corpus detection reads: a missing input fails
    before any work starts, and :func:`iter_units` lists each source lazily later.
    """
    sources: list[dict[str, Any]] = []
    for index, given in enumerate(cfg.inputs):
        for uri in io.expand_braces(given):
            uri = uri.rstrip("/") if uri not in ("/",) else uri
            if not io.is_s3(uri):  # workers may run elsewhere: resolve ~ and cwd here
                uri = os.path.abspath(os.path.expanduser(uri))
            base = {"input": index}
            if io.has_glob(uri):
                root, pattern = io.glob_root(uri)
                corpus = resolve_corpus(root, cfg.corpus, storage)
                sources.append({**base, "kind": "glob", "root": root, "uri": root,
                                "pattern": pattern, "corpus": corpus})
            elif io.is_table(uri) or io.is_tar(uri):
                if not storage.exists(uri):
                    raise FileNotFoundError(f"--input {uri}: no such file or object")
                corpus = resolve_corpus(uri, cfg.corpus, storage)
                kind = "table" if io.is_table(uri) else "tar"
                sources.append({**base, "kind": kind, "root": uri, "uri": uri, "corpus": corpus})
            elif storage.exists_dir(uri):
                corpus = resolve_corpus(uri, cfg.corpus, storage)
                sources.append({**base, "kind": "walk", "root": uri, "uri": uri,
                                "corpus": corpus})
            elif storage.exists(uri):  # a single file
                parent = uri.rsplit("/", 1)[0] if io.is_s3(uri) else os.path.dirname(uri)
                corpus = resolve_corpus(uri, cfg.corpus, storage)
                sources.append({**base, "kind": "files", "root": parent, "corpus": corpus,
                                "relpaths": [io.relpath(parent, uri)]})
            else:
                raise FileNotFoundError(f"--input {uri}: no such file, folder or prefix "
                                        f"(check the path, or credentials/endpoint for s3://)")
    return sources


def _unit(kind: str, root: str, corpus: str, **payload: Any) -> dict[str, Any]:
    """A work unit; its id is a hash of what it holds, so every run cuts the same ids."""
    body = {"kind": kind, "root": root, "corpus": corpus, **payload}
    uid = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
    return {**body, "unit_id": uid}


def iter_units(source: dict[str, Any], storage: io.Storage,
               files_per_task: int) -> Iterator[dict[str, Any]]:
    """A source -> work units of at most ``files_per_task`` files (tar shards whole), lazily.

    A folder is walked once, streaming; at most one open chunk per group is held. Files are
    grouped as if each top-level sub-folder were listed on its own and the top-level files
    apart, so chunks (and unit ids) do not depend on what else the input holds: a rerun, or an
    output written by an earlier version, resumes unit by unit.
    """
    root, corpus = source["root"], source["corpus"]
    kind = source["kind"]
    if kind == "tar":
        yield _unit("tar", root, corpus, uri=source["uri"])
        return
    if kind == "table":
        yield from _table_units(source, storage, files_per_task)
        return
    if kind == "files":
        found: Iterator[str] = (io.join(root, r) for r in source["relpaths"])
    elif kind == "glob":
        found = storage.glob(io.join(root, source["pattern"]))
    else:
        found = storage.walk(source["uri"])
    grouped = kind == "walk"
    chunks: dict[str | None, list[str]] = {}  # group (top-level folder; None = root) -> chunk
    for uri in found:
        rel = io.relpath(root, uri)
        if io.is_tar(rel):  # shards found inside a folder are units of their own
            yield _unit("tar", io.join(root, rel), corpus, uri=io.join(root, rel))
            continue
        group = rel.split("/", 1)[0] if grouped and "/" in rel else None
        if group is not None and group not in chunks:
            # A walk lists each sub-folder's files together: the previous one is complete.
            for g in [g for g in chunks if g is not None]:
                yield _unit("files", root, corpus, relpaths=chunks.pop(g))
        chunk = chunks.setdefault(group, [])
        chunk.append(rel)
        if len(chunk) == files_per_task:
            yield _unit("files", root, corpus, relpaths=chunks.pop(group))
    for chunk in chunks.values():
        if chunk:
            yield _unit("files", root, corpus, relpaths=chunk)


def _table_units(source: dict, storage: io.Storage,
                 files_per_task: int) -> Iterator[dict[str, Any]]:
    from ser_ray.corpora.manifest import load_manifest

    uri = source["uri"]
    base = uri.rsplit("/", 1)[0] if io.is_s3(uri) else os.path.dirname(uri)
    entries = []
    seen: dict[str, int] = {}
    for row, (path, utt) in enumerate(load_manifest(io.read_table(uri, storage), base)):
        fields = {"speaker": utt.speaker, "sex": utt.sex, "raw_label": utt.raw_label,
                  "label": utt.label, "extra": utt.extra}
        if path in seen:  # a repeated row: one quarantine row says so, the file is read once
            fields["duplicate_of"] = seen[path]
        seen.setdefault(path, row)
        entries.append([path, fields])
        if len(entries) == files_per_task:
            yield _unit("entries", base, "manifest", entries=entries)
            entries = []
    if entries:
        yield _unit("entries", base, "manifest", entries=entries)


# --------------------------------------------------------------------------------------------
# Processing (Ray tasks): one unit -> part files + marker
# --------------------------------------------------------------------------------------------

class _Rows:
    """Rows of one unit, by table."""

    def __init__(self, features: list[str]):
        self.manifest: list[dict] = []
        self.quarantine: list[dict] = []
        self.skipped: list[dict] = []
        self.features: dict[str, list[dict]] = {f: [] for f in features}
        # batched extractors (encoders) run after the unit's files are decoded, on all of
        # them together: the conditioned blocks wait here, {name: [(row fields, audio)]}
        self.deferred: dict[str, list[tuple[dict, np.ndarray]]] = {}


def _hidden(rel: str) -> bool:
    # ".." is no hidden name: a tar member named ../x.wav is quarantined as outside_root
    return any(p.startswith(".") and p not in (".", "..") for p in rel.split("/"))


class UnitProcessor:
    """Processes units of files; built once per worker process and config (extractors loaded)."""

    def __init__(self, cfg: dict[str, Any], output: str):
        from ser_ray.features import get_extractor
        from ser_ray.warmup import warm_up

        self.cfg = from_dict(PrepareConfig, cfg)
        self.out = Path(output)
        self.storage = io.Storage(self.cfg.s3)
        self.label_set = get_label_set(self.cfg.label_set)
        self.extractors = {name: get_extractor(name, **self.cfg.feature_options.get(name, {}))
                           for name in self.cfg.features}
        # compile librosa's numba kernels one process at a time (encoders load at first use)
        warm_up(e for e in self.extractors.values() if not batched(e))
        self.max_bytes = int(self.cfg.audio.max_file_mb * 2**20)
        self._corpora: dict[tuple[str, str], Any] = {}
        self.batched = [n for n, e in self.extractors.items() if batched(e)]

    def _corpus(self, name: str, root: str):
        if name in ("manifest", "sidecar"):
            return None
        key = (name, root)  # label-file caches belong to one corpus root
        if key not in self._corpora:
            from ser_ray.corpora import get_corpus
            self._corpora[key] = get_corpus(name)
        return self._corpora[key]

    # -- one unit ------------------------------------------------------------------------
    def process(self, unit: dict[str, Any]) -> dict[str, Any]:
        """Decode, extract, write parts and marker: the whole unit in this process."""
        marker = self.out / "_units" / f"{unit['unit_id']}.json"
        if marker.exists():  # done by an earlier run into this output: resume
            return {**json.loads(marker.read_text()), "resumed": True}
        return self.finish(unit, *self.decode(unit))

    def decode(self, unit: dict[str, Any]) -> tuple["_Rows", dict[str, Any]]:
        """A unit's files -> its rows, with batched extractors' blocks left in ``deferred``;
        and the unit's counts so far."""
        t0 = time.perf_counter()
        rows = _Rows(list(self.extractors))
        kind, root = unit["kind"], unit["root"]
        corpus = self._corpus(unit["corpus"], root)
        read_text = lambda rel: self.storage.read_text(io.join(root, rel))  # noqa: E731
        n_files = 0
        if kind == "files":
            for rel in unit["relpaths"]:
                n_files += 1
                uri = io.join(root, rel)
                self._one(rows, uri, rel, unit["corpus"], corpus,
                          lambda u=uri: self.storage.read_bytes(u, self.max_bytes, root=root),
                          lambda r: corpus.parse(r, read_text))
        elif kind == "entries":
            for path, fields in unit["entries"]:
                n_files += 1
                uri = path if (io.is_s3(path) or os.path.isabs(path)) else io.join(root, path)
                self._one(rows, uri, path, "manifest", None,
                          lambda u=uri, f=fields: _manifest_bytes(self.storage, u, f, self.max_bytes),
                          lambda r, f=fields: _utterance(f))
        else:
            n_files = self._tar(rows, unit, corpus)
        return rows, {"files": n_files, "seconds": time.perf_counter() - t0}

    def finish(self, unit: dict[str, Any], rows: "_Rows", counts: dict[str, Any]) -> dict[str, Any]:
        """Run the batched extractors on the unit's blocks, write its parts, then its marker."""
        t0 = time.perf_counter()
        self._run_deferred(rows)
        self._write(unit["unit_id"], rows)
        marker = self.out / "_units" / f"{unit['unit_id']}.json"
        n_files = counts["files"]
        stats = {
            "unit_id": unit["unit_id"], "files": n_files, "ok": len(rows.manifest),
            "quarantined": len(rows.quarantine), "skipped": len(rows.skipped),
            "seconds": round(counts["seconds"] + time.perf_counter() - t0, 3),
            "audio_s": round(sum(r["duration_s"] for r in rows.manifest), 3),
        }
        if stats["ok"] + stats["quarantined"] + stats["skipped"] != n_files:
            raise RuntimeError(f"unit {unit['unit_id']} lost files: {stats}")  # never silently
        io.write_text_atomic(json.dumps(stats), marker)
        return stats

    def _tar(self, rows: _Rows, unit: dict, corpus) -> int:
        """Stream a shard, grouping members by WebDataset key so sidecars meet their audio."""
        shard, n = unit["uri"], 0
        group: list[tuple[str, bytes | None, str | None]] = []

        def flush() -> None:
            sidecar: dict = {}
            for name, data, _ in group:
                if name.lower().endswith(".json") and data is not None:
                    try:
                        sidecar = json.loads(data.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        sidecar = {}
            for name, data, err in group:
                uri = f"{shard}#{name}"
                if name.lower().endswith(SIDECAR_EXTENSIONS):
                    rows.skipped.append({"uri": uri, "reason": "sidecar"})
                    continue

                def get(d=data, e=err):
                    if e:
                        raise audio.AudioError(*e.split(": ", 1))
                    return d

                if unit["corpus"] == "sidecar":
                    resolve = lambda r, s=sidecar: _utterance_from_sidecar(s, r)  # noqa: E731
                else:
                    resolve = lambda r, s=sidecar: _merge_sidecar(corpus.parse(r), s)  # noqa
                self._one(rows, uri, name, unit["corpus"], corpus, get, resolve)
            group.clear()

        try:
            stream = self.storage.open_stream(shard)
        except Exception as exc:
            _quarantine(rows, shard, "", "unreadable", f"{type(exc).__name__}: {exc}")
            return 1
        with stream:
            key = None
            for name, data, err in io.tar_members(stream, self.max_bytes):
                n += 1
                if not name:  # the shard itself broke off: record where, as a row of its own
                    flush()
                    _quarantine(rows, shard, "", "decode_error", f"tar shard unreadable after "
                                f"{n - 1} members: {err}")
                    continue
                base = name.rsplit("/", 1)[-1]
                k = name[:len(name) - len(base)] + base.split(".", 1)[0]
                if k != key:
                    flush()
                    key = k
                group.append((name, data, err))
            flush()
        return n

    def _one(self, rows: _Rows, uri: str, rel: str, corpus_name: str, corpus,
             get_bytes: Callable[[], bytes], resolve: Callable[[str], Any]) -> None:
        """Process one file into exactly one of manifest / quarantine / skipped."""
        if _hidden(rel):
            rows.skipped.append({"uri": uri, "reason": "hidden"})
            return
        if corpus is not None and corpus.is_metadata(rel):
            rows.skipped.append({"uri": uri, "reason": "corpus_metadata"})
            return
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        utt_id = f"{corpus_name}/{stem}"
        try:
            try:
                data = get_bytes()
            except io.TooLarge as exc:
                raise audio.AudioError("too_large", str(exc)) from None
            except (io.NotAFile, io.OutsideRoot) as exc:
                raise audio.AudioError(exc.reason, str(exc)) from None
            except audio.AudioError:
                raise
            except Exception as exc:  # permission denied, missing object, network ...
                raise audio.AudioError("unreadable", f"{type(exc).__name__}: {exc}") from None
            if len(data) == 0:
                raise audio.AudioError("empty", "file has 0 bytes")
            if audio.sniff_format(data[:16]) is None:
                raise audio.AudioError("not_audio", f"first bytes {data[:12]!r} match no "
                                                    f"audio container")
            from ser_ray.corpora import UnrecognisedName
            try:
                utt = resolve(rel)
            except UnrecognisedName as exc:
                raise audio.AudioError("unrecognised_name", str(exc)) from None
            label = self.label_set.apply(utt.label, utt.sex)
            if label is None:
                raise audio.AudioError("label_outside_set", utt.label or utt.raw_label)
            decoded = audio.decode(data, self.cfg.audio.max_duration_s,
                                   int(self.cfg.audio.max_decoded_mb * 2 ** 20))
            y = audio.condition(decoded, self.cfg.audio)
            feats = self._features(y)
        except audio.AudioError as exc:
            _quarantine(rows, uri, utt_id, exc.reason, exc.detail)
            return
        except Exception as exc:  # a bug must not take the job down; keep the evidence
            tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
            _quarantine(rows, uri, utt_id, "internal_error", f"{type(exc).__name__}: {exc} "
                                                             f"({tb})")
            return
        common = {"utterance_id": utt_id, "source_id": utt_id, "corpus": corpus_name,
                  "speaker": utt.speaker, "sex": utt.sex, "label": label}
        rows.manifest.append({
            **common, "uri": uri, "raw_label": utt.raw_label,
            "duration_s": decoded.duration_s, "sample_rate": decoded.sample_rate,
            "channels": decoded.channels, "format": decoded.format,
            "sha256": hashlib.sha256(data).hexdigest(),
            "extra": json.dumps(utt.extra, sort_keys=True, default=str),
        })
        for name, blocks in feats.items():
            if name in self.batched:
                rows.deferred.setdefault(name, []).extend(
                    ({**common, "block_index": i, "start_s": s, "end_s": e}, y)
                    for i, (s, e, y) in enumerate(blocks))
                continue
            rows.features[name] += [{**common, "block_index": i, "start_s": s, "end_s": e,
                                     "array": a} for i, (s, e, a) in enumerate(blocks)]

    def _features(self, y: np.ndarray) -> dict[str, list[tuple[float, float, np.ndarray]]]:
        """Conditioned audio -> per extractor, [(start_s, end_s, array)] over its blocks; a
        batched extractor's entries hold the block's audio, for :meth:`_run_deferred`."""
        a, sr = self.cfg.audio, self.cfg.audio.sample_rate
        out = {}
        for name, ext in self.extractors.items():
            block_s = a.block_s or getattr(ext, "block_s", None)
            hop_s = a.block_hop_s if a.block_s else None
            segs = audio.split_blocks(y, sr, block_s, hop_s) if block_s else [(0, y)]
            try:
                if name in self.batched:
                    out[name] = [(st / sr, (st + len(seg)) / sr, ext.check(seg, sr))
                                 for st, seg in segs]
                    continue
                out[name] = [(st / sr, (st + len(seg)) / sr, np.asarray(ext(seg, sr), np.float32))
                             for st, seg in segs]
            except Exception as exc:
                raise audio.AudioError("feature_error", f"{name}: {type(exc).__name__}: {exc}")
        return out

    def _run_deferred(self, rows: "_Rows") -> None:
        """The batched extractors over every block of the unit at once (grouped by length by
        the extractor). A block that fails alone quarantines its file, as any feature error."""
        for name, items in rows.deferred.items():
            ext, sr = self.extractors[name], self.cfg.audio.sample_rate
            try:
                arrays = ext.many([y for _, y in items], sr)
            except Exception:  # find the culprits one by one; the rest keep their features
                arrays = []
                for fields, y in items:
                    try:
                        arrays.append(ext(y, sr))
                    except Exception as exc:
                        arrays.append(exc)
            failed = {}
            for (fields, _), a in zip(items, arrays):
                if isinstance(a, Exception):
                    failed.setdefault(fields["utterance_id"], f"{name}: {type(a).__name__}: {a}")
                else:
                    rows.features[name].append({**fields, "array": a})
            for utt_id, detail in failed.items():
                self._unlist(rows, utt_id, detail)
        rows.deferred.clear()

    @staticmethod
    def _unlist(rows: "_Rows", utt_id: str, detail: str) -> None:
        """Move a file whose batched feature failed from the manifest to the quarantine."""
        row = next(r for r in rows.manifest if r["utterance_id"] == utt_id)
        rows.manifest.remove(row)
        for frows in rows.features.values():
            frows[:] = [r for r in frows if r["utterance_id"] != utt_id]
        _quarantine(rows, row["uri"], utt_id, "feature_error", detail)

    def _write(self, uid: str, rows: _Rows) -> None:
        from ser_ray.features.arrays import to_arrow_columns

        part = f"part-{uid}.parquet"
        io.write_parquet_atomic(pa.Table.from_pylist(rows.manifest, MANIFEST_SCHEMA),
                                self.out / "manifest" / part)
        io.write_parquet_atomic(pa.Table.from_pylist(rows.quarantine, QUARANTINE_SCHEMA),
                                self.out / "quarantine" / part)
        io.write_parquet_atomic(pa.Table.from_pylist(rows.skipped, SKIPPED_SCHEMA),
                                self.out / "skipped" / part)
        for name, frows in rows.features.items():
            arrays = [r.pop("array") for r in frows]
            meta = pa.Table.from_pylist(frows, _FEATURE_META)
            values, shape = to_arrow_columns(arrays)
            table = meta.append_column("values", values).append_column("shape", shape)
            io.write_parquet_atomic(table.cast(FEATURE_SCHEMA), self.out / "features" / name / part)


_FEATURE_META = pa.schema([f for f in FEATURE_SCHEMA if f.name not in ("values", "shape")])


def batched(extractor) -> bool:
    """Extractors that compute many clips at once (a pretrained encoder): they run on a whole
    unit's blocks, in the encoder stage of the Ray Data engine."""
    from ser_ray.features.base import Extractor

    return type(extractor).compute_many is not Extractor.compute_many


def _quarantine(rows: _Rows, uri: str, utt_id: str, reason: str, detail: str) -> None:
    rows.quarantine.append({"uri": uri, "utterance_id": utt_id, "reason": reason,
                            "detail": detail})


def _manifest_bytes(storage: io.Storage, uri: str, fields: dict, max_bytes: int) -> bytes:
    if "duplicate_of" in fields:
        raise audio.AudioError("duplicate", f"the manifest lists this file again (first in data "
                                            f"row {fields['duplicate_of'] + 1}); it is read once")
    return storage.read_bytes(uri, max_bytes)


def _utterance(fields: dict):
    from ser_ray.corpora import Utterance
    return Utterance(**{k: v for k, v in fields.items() if k != "duplicate_of"})


def _utterance_from_sidecar(sidecar: dict, rel: str):
    from ser_ray.corpora import UnrecognisedName
    from ser_ray.corpora.manifest import utterance_from_fields
    if not sidecar:
        raise UnrecognisedName(f"{rel!r}: no JSON sidecar with a label beside it in the shard")
    return utterance_from_fields(sidecar)


def _merge_sidecar(utt, sidecar: dict):
    """Corpus name wins for labels; sidecar fields are kept as extra fields."""
    if not sidecar:
        return utt
    from dataclasses import replace
    return replace(utt, extra={**{f"sidecar_{k}": v for k, v in sidecar.items()}, **utt.extra})


# Worker side: each Ray worker process keeps the UnitProcessor of the config it last ran (the
# extractors, label set and corpora are built once per process, not once per unit).
_PROCESSORS: dict[str, UnitProcessor] = {}


def _processor(cfg: dict[str, Any], output: str) -> UnitProcessor:
    key = hashlib.sha1(json.dumps([cfg, output], sort_keys=True, default=str).encode()).hexdigest()
    proc = _PROCESSORS.get(key)
    if proc is None:
        _PROCESSORS.clear()  # another run's config: let its extractors go
        proc = _PROCESSORS[key] = UnitProcessor(cfg, output)
    return proc


def process_unit(cfg: dict[str, Any], output: str, unit: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: one unit -> its part files and marker; returns the unit's stats."""
    return _processor(cfg, output).process(unit)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("ser-ray", "ray", "numpy", "librosa", "soundfile", "soxr", "pyarrow",
                "opensmile", "torch", "scikit-learn", "boto3"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


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
    if io.is_s3(cfg.output):
        raise ValueError("prepare: --output must be a local or shared-filesystem folder")
    from ser_ray.features import get_extractor
    for name in cfg.features:  # fail fast on bad names/options, before Ray starts
        get_extractor(name, **cfg.feature_options.get(name, {}))
    get_label_set(cfg.label_set)
    if cfg.engine not in ("auto", "tasks", "data"):  # before Ray starts
        engine_for(cfg)
    out = Path(cfg.output).absolute()
    out.mkdir(parents=True, exist_ok=True)
    material = _check_output(cfg, out, overwrite)
    t0 = time.time()
    storage = io.Storage(cfg.s3)
    sources = plan_inputs(cfg, storage)
    io.write_text_atomic(json.dumps(material, sort_keys=True),
                         out / "_units" / f"{CONFIG_STAMP}.json")
    corpora = sorted({s["corpus"] for s in sources})
    log(f"{len(cfg.inputs)} input(s), corpus {', '.join(corpora)}, {len(sources)} source(s)")

    init_ray()
    engine = engine_for(cfg)
    workers, _ = _parallelism(cfg)
    log(f"units of <= {cfg.files_per_task} files on {workers} worker(s), engine {engine}")
    units = (u for s in sources for u in iter_units(s, storage, cfg.files_per_task))
    unit_ids, totals = _run_units(cfg, out, units, progress)
    summary = finalize(cfg, out, unit_ids, totals, time.time() - t0, corpora)
    log(f"done: {summary['input_files']} input files, {summary['ok']} ok, "
        f"{summary['quarantined']} quarantined, {summary['skipped']} skipped "
        f"({summary['resumed_units']} units resumed) -> {out}")
    return summary


_COUNTED = ("files", "ok", "quarantined", "skipped", "audio_s")


def _parallelism(cfg: PrepareConfig) -> tuple[int, int]:
    """-> (workers, most tasks in flight), from the cluster's CPUs now (it may autoscale).

    Tasks beyond the free CPUs wait in Ray's queue and start the moment one frees, so twice the
    workers in flight keep every worker busy, and show an autoscaler the demand. With
    ``num_workers`` below what the cluster holds, the tasks in flight are what caps it.
    """
    import ray

    slots = int(ray.cluster_resources().get("CPU", 0) / cfg.cpus_per_worker)
    workers = cfg.num_workers or max(1, slots)
    return workers, (workers if workers < slots else 2 * workers)


class _Tally:
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
    import ray

    from ser_ray.features import get_extractor

    exts = [get_extractor(n, **cfg.feature_options.get(n, {})) for n in cfg.features]
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    return "data" if any(batched(e) for e in exts) and cfg.gpus_per_worker > 0 and gpus else "tasks"


def _run_units(cfg: PrepareConfig, out: Path, units: Iterator[dict[str, Any]],
               progress: bool) -> tuple[set[str], Counter]:
    """Submit units as Ray tasks while they are cut, with a bounded number in flight.

    Units already marked done by an earlier run into ``out`` are counted without a task.
    """
    import ray

    if engine_for(cfg) == "data":
        return _run_units_data(cfg, out, units, progress)
    task = ray.remote(process_unit).options(num_cpus=cfg.cpus_per_worker)
    cfg_ref = ray.put(to_dict(cfg))
    tally = _Tally(progress)
    pending: list = []
    sized = time.time()
    max_in_flight = _parallelism(cfg)[1]

    def collect(block: bool) -> None:
        done, rest = ray.wait(pending, num_returns=1 if block else len(pending),
                              timeout=None if block else 0)
        pending[:] = rest
        for st in ray.get(done):
            tally.record(st)

    for unit in tally.new_units(out, units):
        if cfg.num_workers is None and time.time() - sized > 10:
            max_in_flight, sized = _parallelism(cfg)[1], time.time()  # nodes come and go
        while len(pending) >= max_in_flight:
            collect(block=True)
        pending.append(task.remote(cfg_ref, str(out), unit))
        if len(pending) > 1:
            collect(block=False)
    while pending:
        collect(block=True)
    return tally.end()


# --------------------------------------------------------------------------------------------
# Ray Data engine: decoding on CPU tasks, the encoder in an actor pool
# --------------------------------------------------------------------------------------------

DECODE_CPUS = 0.1  # decoding is ~5 % of an encoder's work: it fills the gaps of the actors' CPUs


def encoder_pool(cfg: PrepareConfig) -> dict[str, float]:
    """Encoder actors and the resources of each: one per ``gpus_per_worker`` of the cluster's
    GPUs when it has them and the config asks, else one per CPU slot (``num_workers`` caps it);
    on CPU each actor leaves a tenth of its CPU to the decoding tasks."""
    import ray

    res = ray.cluster_resources()
    gpus = res.get("GPU", 0)
    if cfg.gpus_per_worker > 0 and gpus:
        n = max(1, int(gpus / cfg.gpus_per_worker))
        return {"actors": min(n, cfg.num_workers or n), "num_cpus": cfg.cpus_per_worker,
                "num_gpus": cfg.gpus_per_worker}
    n = max(1, int(res.get("CPU", 1) / cfg.cpus_per_worker))
    return {"actors": min(n, cfg.num_workers or n),
            "num_cpus": cfg.cpus_per_worker * (1 - DECODE_CPUS), "num_gpus": 0}


def _decode_row(row: dict[str, Any], cfg: dict[str, Any], output: str) -> dict[str, Any]:
    """Ray Data map (CPU): a unit -> its decoded rows, batched extractors' audio waiting."""
    import pickle

    unit = json.loads(row["unit"])
    return {"unit": row["unit"], "rows": pickle.dumps(_processor(cfg, output).decode(unit))}


class EncodeUnits:
    """Ray Data actor: loads the encoder once, then finishes units (encoder features over all a
    unit's clips, grouped by length, then the parts and the marker)."""

    def __init__(self, cfg: dict[str, Any], output: str):
        import torch

        self.proc = _processor(cfg, output)
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

    from ser_ray.training import quiet_data_progress

    quiet_data_progress()
    # its memory "issues" are the decoder's imports (~250 MB per worker), every 30 s in the log
    ray.data.DataContext.get_current().issue_detectors_config.detectors = []
    tally = _Tally(progress)
    todo = [json.dumps(u) for u in tally.new_units(out, units)]
    if todo:
        pool = encoder_pool(cfg)
        log(f"Ray Data: decoding on CPU tasks, encoder on {pool['actors']} actor(s) "
            f"({pool['num_cpus']:g} CPU, {pool['num_gpus']:g} GPU each)")
        cfg_d = to_dict(cfg)
        ds = ray.data.from_items([{"unit": u} for u in todo], override_num_blocks=len(todo))
        ds = ds.map(_decode_row, fn_kwargs={"cfg": cfg_d, "output": str(out)},
                    num_cpus=DECODE_CPUS)
        ds = ds.map_batches(EncodeUnits, fn_constructor_kwargs={"cfg": cfg_d, "output": str(out)},
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


def _read(dirpath: Path, schema: pa.Schema, columns: list[str]) -> pa.Table:
    files = sorted(dirpath.glob("part-*.parquet")) if dirpath.exists() else []
    if not files:
        return schema.empty_table().select(columns)
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


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
    io.write_parquet_atomic(pa.table({
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
    io.write_text_atomic(json.dumps(summary, indent=2, default=str), out / "summary.json")
    io.write_text_atomic(json.dumps(label_map, indent=2), out / "label_map.json")
    config_mod.dump(cfg, out / "config.yaml")
    return summary
