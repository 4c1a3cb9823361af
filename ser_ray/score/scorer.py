"""The model side of scoring: :class:`UnitScorer` (features, encoder and head, batched over a unit's
calls; staged rows) and :class:`ScoreActor`, the Ray actor that holds one."""

from __future__ import annotations

import io as _io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ser_ray.labels import UNCERTAIN
from ser_ray.schema import NO_SPEECH, SCORED, error_detail, internal_error
from ser_ray.score.backlog import Unit
from ser_ray.score.drift import STAGED as STAGED_DRIFT, unit_drift
from ser_ray.features.windows import WindowFeatures
from ser_ray.score.read import CallReader, detect_speech
from ser_ray.score.reference import Reference
from ser_ray.score.tables import SUMMARY_FLOATS, calls_schema, segments_schema, stage_unit, unit_dir
from ser_ray.score.settings import WorkerSettings
from ser_ray.storage import join
from ser_ray.urgency import PROB_PREFIX, call_summary


def _in_one_batch(parts: list, fn, join) -> list | None:
    """``fn`` over every part joined into one batch -> its output cut back into one piece per
    part (row counts as the parts' lengths), or None when it fails (the caller then goes part by
    part, so one bad part cannot take the others down)."""
    if not parts:
        return []
    try:
        out = fn(join(parts))
    except Exception:
        return None
    edges = np.cumsum([0] + [len(p) for p in parts])
    return [out[edges[k]:edges[k + 1]] for k in range(len(parts))]


class UnitScorer:
    """Scores units of calls with one loaded model; used inside each Ray actor.

    The model side (features, encoder and head, batched over a unit's calls) runs here; the read
    side is a :class:`CallReader`, run in this process (engine ``actors``, ``ray_data``) or in a
    CPU pool of its own (``staged``), whose output :meth:`score_unit` then takes as ``read``.
    ``settings``: the run's :class:`~ser_ray.score.settings.WorkerSettings`; ``model_dir`` a local model folder.
    """

    def __init__(self, settings: WorkerSettings, model_dir: str | os.PathLike):
        from ser_ray.models.artifact import load_predictor

        import torch
        try:  # one worker per CPU: torch's inter-op pool would only compete with the next worker
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work already ran in this process
            pass
        device = "cuda" if settings.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        self.s = settings
        self.predictor = load_predictor(model_dir, device=device, trust=settings.trust_model)
        self.predictor.batch_size = settings.batch_size
        self.labels = list(self.predictor.labels)
        self.features = WindowFeatures(settings.feature_config(self.predictor.feature_config))
        self.sr = self.features.sr
        self.reader = CallReader(settings, self.sr)
        self.storage = self.reader.storage
        self.urgency = settings.urgency
        self.reference = Reference(settings.reference, self.predictor)
        self.seg_schema, self.call_schema = segments_schema(self.labels), calls_schema(self.labels)
        self.device = device
        self._speakers = None

    def warm_up(self) -> None:
        """Run one second of noise through VAD, features and model: lazy imports and JIT
        compilation happen at actor start rather than inside the first unit's timing."""
        from ser_ray.features.warmup import extractors_key, first_use

        y = np.random.default_rng(0).normal(0, 0.05, self.sr).astype(np.float32)
        # librosa's numba kernels are compiled and cached one process at a time (ser_ray.features.warmup);
        # silero and the model are torch only, so actors warm those up side by side.
        with first_use(extractors_key(self.features.extractors)):
            x = self.features(y)
        if not self.s.staged:
            detect_speech([y[: self.reader.vad_sr]], self.reader.vad_sr, self.reader.detector)
        self.predictor.predict_proba(x[None])

    # -- one unit -------------------------------------------------------------------------
    def score_unit(self, unit: Unit, read: tuple | None = None) -> dict[str, Any]:
        """Score every call of ``unit``, stage its rows, return counts (status -> n, audio_s,
        seconds of work, of which ``model_s`` on the model side, worker pid).

        ``read`` is the unit's :meth:`CallReader.read` from the CPU pool (engine ``staged``,
        with its seconds of work as a third item); without it the unit is read here.
        ``unit.phase``: ``score`` (default) does it all in one go; a run whose model needs
        the statistics of the run's calls (``Reference``) does ``extract`` first (windows and
        features staged with each call's moments) and ``predict`` once every unit is extracted.
        """
        t0 = time.perf_counter()
        phase = unit.phase
        read_s = 0.0
        if phase == "predict":
            rows, windows = self._read_extract(unit)
        else:
            if read is None:
                read = self.reader.read(unit)
                read_s = time.perf_counter() - t0
            rows, calls = read[0], read[1]
            extra = read[2] if len(read) > 2 else 0.0
            t0 -= extra  # the unit's seconds of work include its read in the CPU pool
            read_s += extra
            if phase == "voices":
                return {**self._stage_voices(unit, rows, calls, t0), "read_s": read_s}
            windows = self._featurise(calls, rows)
            read = calls = None  # the unit's audio is not needed past its features
        if phase == "extract":
            return {**self._stage_extract(unit, rows, windows, t0), "read_s": read_s}
        # A predict unit carries the statistics of its calls' populations.
        reference = Reference(unit.reference, self.predictor) if unit.reference else self.reference
        seg_tables, drift = self._predict(windows, rows, reference, unit.groups or {})
        segs = pa.concat_tables(seg_tables) if seg_tables else self.seg_schema.empty_table()
        calls_t = pa.Table.from_pylist(rows, self.call_schema)
        base = unit_dir(self.s.staging, unit.unit_id, reference.key)
        stage_unit(self.storage, base, segs, calls_t,
                   {STAGED_DRIFT: json.dumps(drift).encode()})
        return {**self._stats(unit, rows, t0), "read_s": read_s}

    def _stats(self, unit: Unit, rows: list[dict[str, Any]], t0: float) -> dict[str, Any]:
        status = Counter(r["status"] for r in rows)
        return {"unit_id": unit.unit_id, "calls": len(rows), "status": dict(status),
                "audio_s": float(sum(r["duration_s"] or 0.0 for r in rows if r["status"] in (SCORED, NO_SPEECH))),
                "seconds": time.perf_counter() - t0, "pid": os.getpid()}

    def _featurise(self, calls: dict[int, tuple], rows: list[dict[str, Any]]) -> dict[int, tuple]:
        """{call position: (signal, spans)} -> {call position: (X, spans)}: every window of the
        unit's calls through the features in one batch (a pretrained encoder batches across
        calls); should that fail, call by call, so one bad call cannot take the others down."""
        order = sorted(calls)
        cuts = [[calls[i][0][round(s * self.sr):round(e * self.sr)] for s, e in calls[i][1]]
                for i in order]
        together = _in_one_batch(cuts, self.features.many, lambda ps: [w for p in ps for w in p])
        if together is not None:
            return {i: (X, calls[i][1]) for i, X in zip(order, together)}
        out = {}
        for i, ws in zip(order, cuts):
            try:
                out[i] = (self.features.many(ws), calls[i][1])
            except Exception as exc:
                internal_error(rows[i], exc)
        return out

    def _predict(self, windows: dict[int, tuple], rows: list[dict[str, Any]],
                 reference: "Reference", groups: dict[str, str]) -> tuple[list[pa.Table], dict]:
        """Every call's windows, standardised per call, through the model in one batch (call by
        call should that fail) -> one segments table per scored call (rows updated) and the
        unit's drift counts (``score.drift.unit_drift``)."""
        order, Xs = [], []
        for i in sorted(windows):
            try:
                X, rows[i]["normalised_by"] = reference.apply(windows[i][0],
                                                              groups.get(rows[i]["call_id"], ""))
            except Exception as exc:
                internal_error(rows[i], exc)
                continue
            order.append(i)
            Xs.append(X)
        together = _in_one_batch(Xs, self.predictor.predict_proba, np.concatenate)
        drift = self.predictor.drift  # the training reference, when the model keeps one
        far = _in_one_batch(Xs, drift.distance, np.concatenate) if drift is not None else None
        tables, seen, dists = [], [], []
        for k, i in enumerate(order):
            try:
                p = together[k] if together is not None else self.predictor.predict_proba(Xs[k])
                dist = far[k] if far is not None else np.full(len(p), np.nan)
                tables.append(self._call_segments(p, windows[i][1], rows[i], dist))
                seen.append(Xs[k])
                dists.append(dist)
            except Exception as exc:
                internal_error(rows[i], exc)
            windows[i] = None
        top = [lab for t in tables for lab in t.column("top_label").to_pylist()]
        return tables, unit_drift(drift, np.concatenate(seen) if seen else None,
                                  np.concatenate(dists) if dists else None, top)

    def _call_segments(self, p: np.ndarray, spans: list[tuple[float, float]],
                       row: dict[str, Any], dist: np.ndarray) -> pa.Table:
        start = np.array([s for s, _ in spans])
        end = np.array([e for _, e in spans])
        ranked = np.argsort(-p, axis=1, kind="stable")
        best, second = ranked[:, 0], ranked[:, min(1, p.shape[1] - 1)]
        rows_ = np.arange(len(p))
        top = [self.labels[k] for k in best]
        cal = self.predictor.calibration  # the model's "not sure" threshold, when it has one
        sure = cal.answered(p) if cal is not None else np.ones(len(p), bool)
        mixed = row["channel"] == "mono" and row["diarization"] in (None, "failed")
        seg = pd.DataFrame({"call_id": row["call_id"], "channel": row["channel"],
                            "speaker": "mixed" if mixed else "customer",
                            "segment_index": np.arange(len(spans), dtype=np.int32),
                            "start_s": start, "end_s": end,
                            **{f"{PROB_PREFIX}{lab}": p[:, k] for k, lab in enumerate(self.labels)},
                            "label": [t if s else UNCERTAIN for t, s in zip(top, sure)],
                            "confidence": p.max(axis=1), "top_label": top,
                            "second_label": [self.labels[k] for k in second],
                            "margin": p[rows_, best] - p[rows_, second],
                            "ood_distance": dist.astype(np.float32), "run_id": self.s.run_id})
        summary = call_summary(seg, self.labels, self.urgency)
        drift = self.predictor.drift
        row["ood_share"] = float((dist > drift.threshold).mean()) if drift is not None and len(dist) \
            else None
        row.update({k: summary[k] for k in SUMMARY_FLOATS},
                   **{f"share_{lab}": summary[f"share_{lab}"] for lab in self.labels},
                   status=SCORED, n_segments=len(spans))
        return pa.Table.from_pandas(seg, self.seg_schema, preserve_index=False)

    # -- the voices pass: who speaks when on each mono call -----------------------------------
    def _stage_voices(self, unit: Unit, rows: list[dict[str, Any]], calls: dict[int, tuple],
                      t0: float) -> dict[str, Any]:
        """Each call to diarise -> its voices (``speakers.call_voices``; a call that fails says
        why), staged as the unit's ``voices.json``, which marks the unit done for this pass."""
        from ser_ray import speakers

        if self._speakers is None:
            self._speakers = speakers.SpeakerEncoder(self.device)
        settings = speakers.DiarizeSettings(**(self.s.diarize or {}))
        found = []
        for i in sorted(calls):
            entry = {"call_id": rows[i]["call_id"]}
            try:
                if os.environ.get("SER_RAY_FAIL_DIARIZE") == entry["call_id"]:  # fault injection (tests)
                    raise RuntimeError("injected diarisation failure")
                entry.update(speakers.call_voices(calls[i][0], self.sr, calls[i][1], self._speakers,
                                                  settings))
            except Exception as exc:  # the call is scored on the downmix, saying why
                entry["failed"] = error_detail(exc)
            found.append(entry)
        stats = {**self._stats(unit, rows, t0), "phase": "voices", "voices": found}
        self.storage.write_bytes(join(unit_dir(self.s.staging, unit.unit_id), "voices.json"),
                                 json.dumps(stats).encode())
        return stats

    # -- two passes: extract, then predict with the run's statistics ------------------------
    def _stage_extract(self, unit: Unit, rows: list[dict[str, Any]],
                       windows: dict[int, tuple], t0: float) -> dict[str, Any]:
        """Stage a unit's features (``extract.npz``) and then, as the marker that the unit is
        extracted, its moments per reference group (``moments.json``)."""
        from ser_ray.normalise import Moments

        groups = unit.groups or {}
        order = sorted(windows)
        X = [windows[i][0] for i in order]
        shape = tuple(self.predictor.input_shape)
        buf = _io.BytesIO()
        np.savez(buf, X=np.concatenate(X) if X else np.zeros((0, *shape), np.float32),
                 call=np.concatenate([np.full(len(windows[i][1]), i, np.int32) for i in order])
                 if order else np.zeros(0, np.int32),
                 start=np.array([s for i in order for s, _ in windows[i][1]], np.float64),
                 end=np.array([e for i in order for _, e in windows[i][1]], np.float64),
                 rows=np.array(json.dumps(rows)))
        base = unit_dir(self.s.staging, unit.unit_id)
        self.storage.write_bytes(join(base, "extract.npz"), buf.getvalue())
        # One entry per call, in the unit's order: the driver adds them up call by call in
        # listing order, so the statistics do not depend on how calls were cut into units.
        per_call = [{"group": groups.get(rows[i]["call_id"], ""), "windows": len(windows[i][0]),
                     **{k: v.tolist() for k, v in
                        Moments.of(windows[i][0], self.features.time_axis).to_arrays().items()}}
                    for i in order]
        stats = {**self._stats(unit, rows, t0), "phase": "extract", "moments": per_call}
        self.storage.write_bytes(join(base, "moments.json"), json.dumps(stats).encode())
        return stats

    def _read_extract(self, unit: Unit) -> tuple[list[dict[str, Any]], dict[int, tuple]]:
        data = np.load(_io.BytesIO(self.storage.read_bytes(
            join(unit_dir(self.s.staging, unit.unit_id), "extract.npz"))))
        rows = json.loads(str(data["rows"]))  # staged by this run's extract pass: its own ids
        call, X = data["call"], data["X"]
        windows = {}
        for i in np.unique(call):
            keep = call == i
            windows[int(i)] = (X[keep], list(zip(data["start"][keep].tolist(), data["end"][keep].tolist())))
        return rows, windows


class ScoreActor:
    """A scoring actor: writes the model folder it was sent to a temp dir and loads it once.

    The same class serves both engines: ``score`` is the method a plain Ray actor is called with,
    ``__call__`` the batch function Ray Data's ``map_batches`` calls.
    """

    def __init__(self, settings: WorkerSettings, model_ref: list):
        import ray

        files = ray.get(model_ref[0])
        self._tmp = tempfile.mkdtemp(prefix="ser-ray-model-")
        for name, data in files.items():
            Path(self._tmp, name).parent.mkdir(parents=True, exist_ok=True)
            Path(self._tmp, name).write_bytes(data)
        self.scorer = UnitScorer(settings, self._tmp)
        self.scorer.warm_up()

    def close(self) -> None:
        shutil.rmtree(getattr(self, "_tmp", ""), ignore_errors=True)

    __del__ = close

    def ready(self) -> bool:
        """Returns once the actor is up (its model loaded and warmed)."""
        return True

    def score(self, unit: str) -> str:
        """One unit as JSON -> its stats as JSON."""
        return json.dumps(self.scorer.score_unit(Unit.from_json(unit)))

    def score_read(self, unit: str, read: tuple) -> str:
        """One unit as JSON and its read from the CPU pool (engine ``staged``) -> stats as JSON."""
        return json.dumps(self.scorer.score_unit(Unit.from_json(unit), read))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"stats": np.array([self.score(u) for u in batch["unit"]], dtype=object)}
