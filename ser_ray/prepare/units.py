"""Processing in Ray workers: one unit -> its part files (manifest, quarantine, skipped, one per
feature), written atomically, then the ``_units/<id>.json`` marker that records it as done."""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from ser_ray import audio
from ser_ray.config import AudioConfig, PrepareConfig, to_dict
from ser_ray.prepare.plan import SIDECAR_EXTENSIONS, hidden
from ser_ray.runtime import process_cached
from ser_ray.schema import (FEATURE_SCHEMA, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, SKIPPED_SCHEMA,
                            error_detail, get_label_set)
from ser_ray.storage import (NotAFile, OutsideRoot, Storage, TooLarge, is_s3, join, tar_members,
                             write_parquet_atomic, write_text_atomic)


class Rows:
    """Rows of one unit, by table."""

    def __init__(self, features: list[str]):
        self.manifest: list[dict] = []
        self.quarantine: list[dict] = []
        self.skipped: list[dict] = []
        self.features: dict[str, list[dict]] = {f: [] for f in features}
        # batched extractors (encoders) run after the unit's files are decoded, on all of
        # them together: the conditioned blocks wait here, {name: [(row fields, audio)]}
        self.deferred: dict[str, list[tuple[dict, np.ndarray]]] = {}


class UnitProcessor:
    """Processes units of files; built once per worker process and config (extractors loaded)."""

    def __init__(self, cfg: PrepareConfig, output: str):
        from ser_ray.features import get_extractor
        from ser_ray.features.warmup import warm_up

        self.cfg = cfg
        self.out = Path(output)
        self.storage = Storage(self.cfg.s3)
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

    def decode(self, unit: dict[str, Any]) -> tuple["Rows", dict[str, Any]]:
        """A unit's files -> its rows, with batched extractors' blocks left in ``deferred``;
        and the unit's counts so far."""
        t0 = time.perf_counter()
        rows = Rows(list(self.extractors))
        kind, root = unit["kind"], unit["root"]
        corpus = self._corpus(unit["corpus"], root)
        read_text = lambda rel: self.storage.read_text(join(root, rel))  # noqa: E731
        n_files = 0
        if kind == "files":
            for rel in unit["relpaths"]:
                n_files += 1
                uri = join(root, rel)
                self._one(rows, uri, rel, unit["corpus"], corpus,
                          lambda u=uri: self.storage.read_bytes(u, self.max_bytes, root=root),
                          lambda r: corpus.parse(r, read_text))
        elif kind == "entries":
            for path, fields in unit["entries"]:
                n_files += 1
                uri = path if (is_s3(path) or os.path.isabs(path)) else join(root, path)
                self._one(rows, uri, path, "manifest", None,
                          lambda u=uri, f=fields: _manifest_bytes(self.storage, u, f, self.max_bytes),
                          lambda r, f=fields: _utterance(f))
        else:
            n_files = self._tar(rows, unit, corpus)
        return rows, {"files": n_files, "seconds": time.perf_counter() - t0}

    def finish(self, unit: dict[str, Any], rows: "Rows", counts: dict[str, Any]) -> dict[str, Any]:
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
        write_text_atomic(json.dumps(stats), marker)
        return stats

    def _tar(self, rows: Rows, unit: dict, corpus) -> int:
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
            _quarantine(rows, shard, "", "unreadable", error_detail(exc))
            return 1
        with stream:
            key = None
            for name, data, err in tar_members(stream, self.max_bytes):
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

    def _one(self, rows: Rows, uri: str, rel: str, corpus_name: str, corpus,
             get_bytes: Callable[[], bytes], resolve: Callable[[str], Any]) -> None:
        """Process one file into exactly one of manifest / quarantine / skipped."""
        if hidden(rel):
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
            except TooLarge as exc:
                raise audio.AudioError("too_large", str(exc)) from None
            except (NotAFile, OutsideRoot) as exc:
                raise audio.AudioError(exc.reason, str(exc)) from None
            except audio.AudioError:
                raise
            except Exception as exc:  # permission denied, missing object, network ...
                raise audio.AudioError("unreadable", error_detail(exc)) from None
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
            _quarantine(rows, uri, utt_id, "internal_error", f"{error_detail(exc)} "
                                                             f"({tb})")
            return
        common = {"utterance_id": utt_id, "source_id": utt_id, "corpus": corpus_name,
                  "speaker": utt.speaker, "sex": utt.sex, "label": label}
        rows.manifest.append({
            **common, "uri": uri, "raw_label": utt.raw_label,
            "duration_s": decoded.duration_s, "sample_rate": decoded.sample_rate,
            "channels": decoded.channels, "format": decoded.format, "codec": decoded.codec,
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
        return block_features(y, self.cfg.audio, self.extractors, self.batched)

    def _run_deferred(self, rows: "Rows") -> None:
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
    def _unlist(rows: "Rows", utt_id: str, detail: str) -> None:
        """Move a file whose batched feature failed from the manifest to the quarantine."""
        row = next(r for r in rows.manifest if r["utterance_id"] == utt_id)
        rows.manifest.remove(row)
        for frows in rows.features.values():
            frows[:] = [r for r in frows if r["utterance_id"] != utt_id]
        _quarantine(rows, row["uri"], utt_id, "feature_error", detail)

    def _write(self, uid: str, rows: Rows) -> None:
        from ser_ray.features.arrays import to_arrow_columns

        part = f"part-{uid}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(rows.manifest, MANIFEST_SCHEMA),
                                self.out / "manifest" / part)
        write_parquet_atomic(pa.Table.from_pylist(rows.quarantine, QUARANTINE_SCHEMA),
                                self.out / "quarantine" / part)
        write_parquet_atomic(pa.Table.from_pylist(rows.skipped, SKIPPED_SCHEMA),
                                self.out / "skipped" / part)
        for name, frows in rows.features.items():
            arrays = [r.pop("array") for r in frows]
            meta = pa.Table.from_pylist(frows, _FEATURE_META)
            values, shape = to_arrow_columns(arrays)
            table = meta.append_column("values", values).append_column("shape", shape)
            write_parquet_atomic(table.cast(FEATURE_SCHEMA), self.out / "features" / name / part)


_FEATURE_META = pa.schema([f for f in FEATURE_SCHEMA if f.name not in ("values", "shape")])


def batched(extractor) -> bool:
    """Extractors that compute many clips at once (a pretrained encoder): they run on a whole
    unit's blocks, in the encoder stage of the Ray Data engine."""
    from ser_ray.features.base import Extractor

    return type(extractor).compute_many is not Extractor.compute_many


def _quarantine(rows: Rows, uri: str, utt_id: str, reason: str, detail: str) -> None:
    rows.quarantine.append({"uri": uri, "utterance_id": utt_id, "reason": reason,
                            "detail": detail})


def _manifest_bytes(storage: Storage, uri: str, fields: dict, max_bytes: int) -> bytes:
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


def block_features(y: np.ndarray, a: AudioConfig, extractors: dict[str, Any],
                   deferred: Sequence[str] = ()) -> dict[str, list[tuple[float, float, np.ndarray]]]:
    """Conditioned audio -> per extractor, [(start_s, end_s, array)] over its blocks (the
    extractor's own ``block_s`` unless ``audio.block_s`` sets one). A ``deferred`` (batched)
    extractor's entries hold the checked block audio, extracted later for the whole unit. The
    one way prepare, augmented copies and noisy test sets cut and extract a clip."""
    sr = a.sample_rate
    out = {}
    for name, ext in extractors.items():
        block_s = a.block_s or getattr(ext, "block_s", None)
        hop_s = a.block_hop_s if a.block_s else None
        segs = audio.split_blocks(y, sr, block_s, hop_s) if block_s else [(0, y)]
        try:
            if name in deferred:
                out[name] = [(st / sr, (st + len(seg)) / sr, ext.check(seg, sr)) for st, seg in segs]
                continue
            out[name] = [(st / sr, (st + len(seg)) / sr, np.asarray(ext(seg, sr), np.float32))
                         for st, seg in segs]
        except Exception as exc:
            raise audio.AudioError("feature_error", f"{name}: {error_detail(exc)}")
    return out


def processor(cfg: PrepareConfig, output: str) -> UnitProcessor:
    """The worker process's UnitProcessor for this run (extractors, label set and corpora are
    built once per process, not once per unit)."""
    return process_cached("unit_processor", [to_dict(cfg), output],
                          lambda: UnitProcessor(cfg, output))


def process_unit(cfg: PrepareConfig, output: str, unit: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: one unit -> its part files and marker; returns the unit's stats."""
    return processor(cfg, output).process(unit)
