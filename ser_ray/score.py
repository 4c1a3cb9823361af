"""The scoring plane: a nightly backlog of call recordings -> Parquet reports ranked by urgency.

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

import collections
import dataclasses
import datetime as dt
import hashlib
import io as _io
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser_ray import io, vad
from ser_ray.config import AudioConfig, S3Config, ScoreConfig, from_dict, public_dict, to_dict
from ser_ray.schema import AUDIO_EXTENSIONS
from ser_ray.score_commit import NightLock, check_replaces_whole, published, run_record_uri
from ser_ray.urgency import PROB_PREFIX, UrgencyConfig, call_summary, rank

CHANNELS = ("left", "right", "mono")
# Statuses of a call row. Everything but these two says why the call was not scored.
SCORED, NO_SPEECH = "scored", "no_speech"
# Statuses worth another try on a later night (the file may still have been uploading).
RETRY_STATUSES = ("unreadable", "internal_error")
SEGMENT_ROWS_PER_PART = 1_000_000
DEFAULT_WINDOW_S = 3.0


def log(msg: str) -> None:
    from ser_ray.console import say

    say(msg, 'score')


# --------------------------------------------------------------------------------------------
# The model: files, identity, and how it wants its windows
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model dir as the driver sees it: its bytes travel to the actors through Ray."""

    path: str
    files: dict[str, bytes]
    model_id: str
    model_hash: str
    labels: list[str]
    feature_config: dict[str, Any]

    @classmethod
    def read(cls, path: str | os.PathLike, trust: bool = False) -> "ModelInfo":
        from ser_ray.artifact import REQUIRED, check_model_dir

        root = Path(path)
        if io.is_s3(str(path)):
            raise ValueError(f"--model {path}: give a local or shared-filesystem model folder "
                             "(copy it from S3 first); its files are shipped to every worker")
        if not root.is_dir():
            raise FileNotFoundError(f"--model {path}: no such folder; pass a folder written by "
                                    "`ser-ray train` or `ser-ray tune` (best_model/)")
        check_model_dir(root, trust=trust)  # no links, no pickle: before a byte is shipped
        missing = [f for f in ("model.json", *REQUIRED) if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"--model {path}: lacks {missing}; it is not a complete "
                                    "model folder")
        # relative paths: a fine-tuned encoder's backbone/ folder travels too
        files = {p.relative_to(root).as_posix(): p.read_bytes()
                 for p in sorted(root.rglob("*")) if p.is_file()}
        h = hashlib.sha256()
        for name, data in files.items():
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        meta = json.loads(files["model.json"])
        return cls(path=str(root.resolve()), files=files, model_id=f"{meta['name']}:{root.name}",
                   model_hash=h.hexdigest(), labels=json.loads(files["labels.json"]),
                   feature_config=json.loads(files["features.json"]))


def training_block_s(fc: dict[str, Any]) -> float | None:
    """The block length training split clips into (``audio.block_s`` or an extractor's own
    ``block_s``), or None."""
    audio = fc.get("audio") or {}
    return audio.get("block_s") or next(
        (fc["extractors"][n]["block_s"] for n in fc["features"] if fc["extractors"][n].get("block_s")), None)


def model_window(fc: dict[str, Any]) -> tuple[float, str]:
    """The analysis window (seconds) a model was trained on, and where that figure comes from.

    Blocks (``audio.block_s`` or an extractor's ``block_s``) and fixed windows
    (``audio.duration_s``) are what the model saw; a 2-D feature cropped to ``frames`` saw
    ``frames`` hops; otherwise the median training clip (``clip_s``), else 3 s.
    """
    audio = fc.get("audio") or {}
    sr = int(audio.get("sample_rate", 16000))
    extractors = [fc["extractors"][n] for n in fc["features"]]
    block = training_block_s(fc)
    if block:
        return float(block), "training block length"
    if audio.get("duration_s"):
        return float(audio["duration_s"]), "training window (audio.duration_s)"
    if fc.get("frames") and fc.get("time_axis") is not None and extractors[0].get("hop_length"):
        return fc["frames"] * extractors[0]["hop_length"] / sr, "training frames x hop"
    if fc.get("clip_s"):
        return float(fc["clip_s"]), "median training clip"
    return DEFAULT_WINDOW_S, "default"


class WindowFeatures:
    """One analysis window of conditioned audio -> one model input row, as training made them.

    Per window, like per training clip: pre-emphasis, level normalisation, padding or cropping
    to the training window/block, each extractor, crop/pad of the time axis to ``frames``, and
    concatenation of several vector features.
    """

    def __init__(self, fc: dict[str, Any]):
        from ser_ray.data import extractor_from_settings

        self.audio = from_dict(AudioConfig, dict(fc.get("audio") or {}))
        self.sr = self.audio.sample_rate
        self.extractors = [extractor_from_settings(fc["extractors"][n]) for n in fc["features"]]
        self.fc, self.time_axis = fc, fc.get("time_axis")
        block = training_block_s(fc)
        fixed = block or (self.audio.duration_s if self.audio.pad else None)
        self.fixed = int(round(fixed * self.sr)) if fixed else None
        self.min_samples = max(e.min_samples(self.sr) for e in self.extractors)

    def _condition(self, y: np.ndarray) -> np.ndarray:
        from ser_ray import audio

        a = self.audio
        y = audio.normalise(audio.pre_emphasise(y, a.pre_emphasis), a.normalise, a.rms_dbfs)
        if self.fixed:
            y = audio.window(y, self.sr, 0.0, self.fixed / self.sr, pad=True)
        if y.size < self.min_samples:
            y = np.pad(y, (0, self.min_samples - y.size))
        return y.astype(np.float32, copy=False)

    def many(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Windows -> model inputs ``(n, *input_shape)``; extractors that batch (a pretrained
        encoder) run the windows together."""
        from ser_ray.data import conform, select_part

        ys = [self._condition(y) for y in windows]
        parts = [e.many(ys, self.sr) for e in self.extractors]
        if len(parts) > 1:
            parts = [select_part(n, p, self.fc.get("layers"))
                     for n, p in zip(self.fc["features"], parts)]
            return np.stack([np.concatenate(row) for row in zip(*parts)]).astype(np.float32)
        return np.stack([conform(x, self.fc) for x in parts[0]]).astype(np.float32, copy=False)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        return self.many([y])[0]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def segments_schema(labels: Sequence[str]) -> pa.Schema:
    return pa.schema([("call_id", pa.string()), ("channel", pa.string()),
                      ("segment_index", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                      *[(f"{PROB_PREFIX}{lab}", pa.float32()) for lab in labels],
                      ("label", pa.string()), ("confidence", pa.float32()), ("run_id", pa.string())])


SUMMARY_FLOATS = ("speech_s", "negative_peak", "negative_mean", "negative_share", "longest_negative_s",
                  "calm_mean", "peak_start_s", "urgency_score")


def calls_schema(labels: Sequence[str]) -> pa.Schema:
    """Columns of a staged call row; publishing adds ``urgency_rank`` and metadata columns."""
    return pa.schema([
        ("call_id", pa.string()), ("uri", pa.string()), ("size_bytes", pa.int64()),
        ("status", pa.string()), ("reason", pa.string()),
        ("duration_s", pa.float64()), ("sample_rate", pa.int32()), ("channels", pa.int32()),
        ("format", pa.string()), ("channel", pa.string()), ("n_segments", pa.int32()),
        *[(f"share_{lab}", pa.float64()) for lab in labels],
        *[(name, pa.float64()) for name in SUMMARY_FLOATS],
        ("normalised_by", pa.string()),  # the statistics its windows were standardised with
        ("model_id", pa.string()), ("model_hash", pa.string()), ("run_id", pa.string()),
    ])


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def stage_unit(storage: io.Storage, base: str, segments: pa.Table, calls: pa.Table) -> None:
    """A unit's staged rows: segments first, then the calls file, which marks the unit done."""
    storage.write_bytes(io.join(base, "segments.parquet"), _parquet_bytes(segments))
    storage.write_bytes(io.join(base, "calls.parquet"), _parquet_bytes(calls))


def _read_parquet(storage: io.Storage, uri: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=columns)


# --------------------------------------------------------------------------------------------
# Worker side: one unit of calls -> staged segments + calls
# --------------------------------------------------------------------------------------------

class CallReader:
    """The CPU side of scoring: a unit's calls -> call rows and, per readable call, its
    conditioned signal and analysis windows over speech (read, decode, channel, resample, VAD).

    ``settings`` is plain data (see :func:`worker_settings`); ``sample_rate`` the rate the model
    reads (the transcripts stage reads at Whisper's 16 kHz with the same code).
    """

    def __init__(self, settings: dict[str, Any], sample_rate: int | None = None):
        self.s = settings
        self.sr = int(sample_rate or settings["sample_rate"])
        self.labels = list(settings["labels"])
        self.storage = io.Storage(from_dict(S3Config, settings["s3"]))
        self._detector = None

    @property
    def detector(self) -> vad.Detector:
        if self._detector is None:
            self._detector = vad.get_detector(**self.s["vad"])
        return self._detector

    @property
    def vad_sr(self) -> int:
        # silero takes 8 or 16 kHz; the energy detector any rate, so it reads the model-rate signal.
        return self.s["vad_sample_rate"] if self.detector.name == "silero" else self.sr

    def row(self, call: dict[str, Any]) -> dict[str, Any]:
        return {"call_id": call["call_id"], "uri": call["uri"], "size_bytes": call["size"],
                "status": None, "reason": None, "duration_s": None, "sample_rate": None,
                "channels": None, "format": None, "channel": None, "n_segments": 0,
                **{f"share_{lab}": None for lab in self.labels}, **{k: None for k in SUMMARY_FLOATS},
                "normalised_by": None, "model_id": self.s["model_id"],
                "model_hash": self.s["model_hash"], "run_id": self.s["run_id"]}

    def load(self, call: dict[str, Any], row: dict[str, Any]) -> np.ndarray | None:
        """Read, decode and condition one call -> mono float32 at ``self.sr``, or None with
        ``row["status"]`` / ``row["reason"]`` saying why not."""
        from ser_ray import audio

        def fail(status: str, reason: str) -> None:
            row["status"], row["reason"] = status, reason

        if os.environ.get("SER_RAY_CRASH_ON_CALL") == call["call_id"]:  # fault injection (tests)
            os._exit(70)

        try:
            data = self.storage.read_bytes(call["uri"], max_bytes=self.s["max_bytes"],
                                           root=call.get("root"))
        except io.TooLarge as exc:
            return fail("too_large", str(exc))
        except (io.NotAFile, io.OutsideRoot) as exc:
            return fail(exc.reason, str(exc))
        except Exception as exc:  # missing, permission denied, network: the reason says which
            return fail("unreadable", f"{type(exc).__name__}: {exc}")
        row["size_bytes"] = len(data)
        try:
            decoded = audio.decode(data, self.s["max_call_s"], self.s.get("max_decoded_bytes"),
                                   "max_call_s")
        except audio.AudioError as exc:
            return fail(exc.reason, exc.detail)
        del data
        row.update(duration_s=decoded.duration_s, sample_rate=decoded.sample_rate,
                   channels=decoded.channels, format=decoded.format)
        if decoded.duration_s > self.s["max_call_s"]:
            return fail("too_long", f"{decoded.duration_s:.0f} s > max_call_s={self.s['max_call_s']:.0f}")
        y, row["channel"] = pick_channel(decoded.samples, self.s["customer_channel"])
        return audio.resample(y, decoded.sample_rate, self.sr)

    def read(self, unit: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, tuple]]:
        """A unit's calls -> (call rows, {call position: (signal, window spans)}); a call without
        windows has its status set in its row already."""
        from ser_ray import audio

        rows = [self.row(c) for c in unit["calls"]]
        signals: list[np.ndarray | None] = []
        for call, row in zip(unit["calls"], rows):
            try:
                signals.append(self.load(call, row))
            except Exception as exc:  # a bug: keep the call, say what broke, go on
                row["status"], row["reason"] = "internal_error", f"{type(exc).__name__}: {exc}"
                signals.append(None)
        live = [i for i, y in enumerate(signals) if y is not None]
        vad_input = [signals[i] if self.vad_sr == self.sr else audio.resample(signals[i], self.sr, self.vad_sr)
                     for i in live]
        found = dict(zip(live, detect_speech(vad_input, self.vad_sr, self.detector))) if live else {}
        calls: dict[int, tuple] = {}
        for i in live:
            try:
                spans = self._spans(found[i], rows[i])
                if spans:
                    calls[i] = (signals[i], spans)
            except Exception as exc:
                rows[i]["status"], rows[i]["reason"] = "internal_error", f"{type(exc).__name__}: {exc}"
        return rows, calls

    def _spans(self, speech: list[tuple[float, float]], row: dict[str, Any]) -> list[tuple[float, float]]:
        """One call's analysis windows over speech, or none with the row marked ``no_speech``."""
        spans = vad.windows(speech, self.s["window_s"], self.s["hop_s"], self.s["min_window_s"])
        if not spans:
            talk = sum(e - s for s, e in speech)
            row["status"] = NO_SPEECH
            row["reason"] = ("no speech found" if not speech else
                             f"{talk:.2f} s of speech, in stretches shorter than min_window_s="
                             f"{self.s['min_window_s']}")
            row["speech_s"] = 0.0
        return spans


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
    ``settings`` is plain data (see :func:`worker_settings`); ``model_dir`` a local model folder.
    """

    def __init__(self, settings: dict[str, Any], model_dir: str | os.PathLike):
        from ser_ray.artifact import load_predictor

        import torch
        try:  # one worker per CPU: torch's inter-op pool would only compete with the next worker
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work already ran in this process
            pass
        device = "cuda" if settings["gpus_per_worker"] > 0 and torch.cuda.is_available() else "cpu"
        self.s = settings
        self.predictor = load_predictor(model_dir, device=device, trust=settings["trust_model"])
        self.predictor.batch_size = settings["batch_size"]
        self.labels = list(self.predictor.labels)
        self.features = WindowFeatures(self.predictor.feature_config)
        self.sr = self.features.sr
        self.reader = CallReader(settings, self.sr)
        self.storage = self.reader.storage
        self.urgency = from_dict(UrgencyConfig, settings["urgency"])
        self.reference = Reference(settings["reference"], self.predictor)
        self.seg_schema, self.call_schema = segments_schema(self.labels), calls_schema(self.labels)

    def warm_up(self) -> None:
        """Run one second of noise through VAD, features and model: lazy imports and JIT
        compilation happen at actor start rather than inside the first unit's timing."""
        from ser_ray.warmup import extractors_key, first_use

        y = np.random.default_rng(0).normal(0, 0.05, self.sr).astype(np.float32)
        # librosa's numba kernels are compiled and cached one process at a time (ser_ray.warmup);
        # silero and the model are torch only, so actors warm those up side by side.
        with first_use(extractors_key(self.features.extractors)):
            x = self.features(y)
        if not self.s.get("staged"):
            detect_speech([y[: self.reader.vad_sr]], self.reader.vad_sr, self.reader.detector)
        self.predictor.predict_proba(x[None])

    # -- one unit -------------------------------------------------------------------------
    def score_unit(self, unit: dict[str, Any], read: tuple | None = None) -> dict[str, Any]:
        """Score every call of ``unit``, stage its rows, return counts (status -> n, audio_s,
        seconds of work, of which ``model_s`` on the model side, worker pid).

        ``read`` is the unit's :meth:`CallReader.read` from the CPU pool (engine ``staged``,
        with its seconds of work as a third item); without it the unit is read here.
        ``unit["phase"]``: ``score`` (default) does it all in one go; a run whose model needs
        the statistics of the run's calls (``Reference``) does ``extract`` first (windows and
        features staged with each call's moments) and ``predict`` once every unit is extracted.
        """
        t0 = time.perf_counter()
        phase = unit.get("phase", "score")
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
            windows = self._featurise(calls, rows)
            read = calls = None  # the unit's audio is not needed past its features
        if phase == "extract":
            return {**self._stage_extract(unit, rows, windows, t0), "read_s": read_s}
        # A predict unit carries the statistics of its calls' populations.
        reference = Reference(unit["reference"], self.predictor) if "reference" in unit else self.reference
        seg_tables = self._predict(windows, rows, reference, unit.get("groups") or {})
        segs = pa.concat_tables(seg_tables) if seg_tables else self.seg_schema.empty_table()
        calls_t = pa.Table.from_pylist(rows, self.call_schema)
        base = unit_dir(self.s["staging"], unit["unit_id"], reference.key)
        stage_unit(self.storage, base, segs, calls_t)
        return {**self._stats(unit, rows, t0), "read_s": read_s}

    def _stats(self, unit: dict[str, Any], rows: list[dict[str, Any]], t0: float) -> dict[str, Any]:
        status = Counter(r["status"] for r in rows)
        return {"unit_id": unit["unit_id"], "calls": len(rows), "status": dict(status),
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
                rows[i]["status"], rows[i]["reason"] = "internal_error", f"{type(exc).__name__}: {exc}"
        return out

    def _predict(self, windows: dict[int, tuple], rows: list[dict[str, Any]],
                 reference: "Reference", groups: dict[str, str]) -> list[pa.Table]:
        """Every call's windows, standardised per call, through the model in one batch (call by
        call should that fail) -> one segments table per scored call, rows updated."""
        order, Xs = [], []
        for i in sorted(windows):
            try:
                X, rows[i]["normalised_by"] = reference.apply(windows[i][0],
                                                              groups.get(rows[i]["call_id"], ""))
            except Exception as exc:
                rows[i]["status"], rows[i]["reason"] = "internal_error", f"{type(exc).__name__}: {exc}"
                continue
            order.append(i)
            Xs.append(X)
        together = _in_one_batch(Xs, self.predictor.predict_proba, np.concatenate)
        tables = []
        for k, i in enumerate(order):
            try:
                p = together[k] if together is not None else self.predictor.predict_proba(Xs[k])
                tables.append(self._call_segments(p, windows[i][1], rows[i]))
            except Exception as exc:
                rows[i]["status"], rows[i]["reason"] = "internal_error", f"{type(exc).__name__}: {exc}"
            windows[i] = None
        return tables

    def _call_segments(self, p: np.ndarray, spans: list[tuple[float, float]],
                       row: dict[str, Any]) -> pa.Table:
        start = np.array([s for s, _ in spans])
        end = np.array([e for _, e in spans])
        best = p.argmax(axis=1)
        label = [self.labels[k] for k in best]
        seg = pd.DataFrame({"call_id": row["call_id"], "channel": row["channel"],
                            "segment_index": np.arange(len(spans), dtype=np.int32),
                            "start_s": start, "end_s": end,
                            **{f"{PROB_PREFIX}{lab}": p[:, k] for k, lab in enumerate(self.labels)},
                            "label": label, "confidence": p.max(axis=1), "run_id": self.s["run_id"]})
        summary = call_summary(seg, self.labels, self.urgency)
        row.update({k: summary[k] for k in SUMMARY_FLOATS},
                   **{f"share_{lab}": summary[f"share_{lab}"] for lab in self.labels},
                   status=SCORED, n_segments=len(spans))
        return pa.Table.from_pandas(seg, self.seg_schema, preserve_index=False)

    # -- two passes: extract, then predict with the run's statistics ------------------------
    def _stage_extract(self, unit: dict[str, Any], rows: list[dict[str, Any]],
                       windows: dict[int, tuple], t0: float) -> dict[str, Any]:
        """Stage a unit's features (``extract.npz``) and then, as the marker that the unit is
        extracted, its moments per reference group (``moments.json``)."""
        from ser_ray.data import Moments

        groups = unit.get("groups") or {}
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
        base = unit_dir(self.s["staging"], unit["unit_id"])
        self.storage.write_bytes(io.join(base, "extract.npz"), buf.getvalue())
        # One entry per call, in the unit's order: the driver adds them up call by call in
        # listing order, so the statistics do not depend on how calls were cut into units.
        per_call = [{"group": groups.get(rows[i]["call_id"], ""), "windows": len(windows[i][0]),
                     **{k: v.tolist() for k, v in
                        Moments.of(windows[i][0], self.features.time_axis).to_arrays().items()}}
                    for i in order]
        stats = {**self._stats(unit, rows, t0), "phase": "extract", "moments": per_call}
        self.storage.write_bytes(io.join(base, "moments.json"), json.dumps(stats).encode())
        return stats

    def _read_extract(self, unit: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, tuple]]:
        data = np.load(_io.BytesIO(self.storage.read_bytes(
            io.join(unit_dir(self.s["staging"], unit["unit_id"]), "extract.npz"))))
        rows = json.loads(str(data["rows"]))  # staged by this run's extract pass: its own ids
        call, X = data["call"], data["X"]
        windows = {}
        for i in np.unique(call):
            keep = call == i
            windows[int(i)] = (X[keep], list(zip(data["start"][keep].tolist(), data["end"][keep].tolist())))
        return rows, windows


class Reference:
    """The statistics a scoring window is standardised with before the model sees it.

    A model trained with ``global`` (or ``none``) normalisation carries its training statistics
    itself (``Predictor.prepare``, or the scaler inside a classical pipeline): nothing to do here.
    A model trained with ``speaker`` or ``corpus`` normalisation saw each group's rows
    standardised by that group's own statistics; at scoring time ``ScoreNormalisation.reference``
    says what stands in for the group:

    - ``run``: the run's calls (per ``group_by`` value when set), from the moments every unit
      staged in a first pass; a population of fewer than ``min_calls`` calls falls back to the
      whole run, then to the training population;
    - ``training``: the pooled statistics of the model's raw training rows;
    - ``call``: each call by its own statistics. An angry caller who is angry all call long then
      looks like an average call: between-call differences, what the urgency rank is for, are gone.

    ``settings``: ``{"mode": model|run|training|call, "key": str|None, "table": {group: {"mean",
    "std", "source"}}}`` as :func:`reference_settings` and :func:`reference_table` build it.
    """

    def __init__(self, settings: dict[str, Any], predictor):
        self.mode, self.key = settings["mode"], settings.get("key")
        self.time_axis = predictor.feature_config.get("time_axis")
        self.table = {g: (np.asarray(t["mean"], np.float32), np.asarray(t["std"], np.float32), t["source"])
                      for g, t in (settings.get("table") or {}).items()}
        if self.mode == "training":
            n = predictor.normalisation
            self.table = {"": (n["population_mean"], n["population_std"], "training")}

    def apply(self, X: np.ndarray, group: str) -> tuple[np.ndarray, str]:
        """(X standardised for the model, what it was standardised with)."""
        from ser_ray.data import group_standardise, standardise

        if self.mode == "model":
            return X, "training"
        if self.mode == "call":
            return group_standardise(X, np.zeros(len(X)), self.time_axis), "call"
        mean, std, source = self.table[group] if group in self.table else self.table[""]
        return standardise(X, mean, std), source


def pick_channel(samples: np.ndarray, which: str) -> tuple[np.ndarray, str]:
    """(frames, channels) -> (mono signal, channel used). A mono file is used as it is."""
    from ser_ray import audio

    if samples.ndim == 1 or samples.shape[1] == 1 or which == "mono":
        return audio.downmix(samples).astype(np.float32, copy=False), "mono"
    return np.ascontiguousarray(samples[:, 0 if which == "left" else 1]), which


def detect_speech(signals: list[np.ndarray], sr: int, detector: vad.Detector) -> list[list[tuple[float, float]]]:
    """Speech segments of each signal; one batched pass where the detector supports it."""
    return detector.many(signals, sr)


class _ScoreActor:
    """A scoring actor: writes the model folder it was sent to a temp dir and loads it once.

    The same class serves both engines: ``score`` is the method a plain Ray actor is called with,
    ``__call__`` the batch function Ray Data's ``map_batches`` calls.
    """

    def __init__(self, settings: dict[str, Any], model_ref: list):
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
        return json.dumps(self.scorer.score_unit(json.loads(unit)))

    def score_read(self, unit: str, read: tuple) -> str:
        """One unit as JSON and its read from the CPU pool (engine ``staged``) -> stats as JSON."""
        return json.dumps(self.scorer.score_unit(json.loads(unit), read))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"stats": np.array([self.score(u) for u in batch["unit"]], dtype=object)}


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------

def resolve_run_date(value: str | None) -> str:
    if value is None:
        return dt.date.today().isoformat()
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise ValueError(f"--run-date {value!r}: expected YYYY-MM-DD, e.g. 2026-11-23") from None


def check_config(cfg: ScoreConfig) -> None:
    if not cfg.model:
        raise ValueError("score: give --model MODEL_DIR")
    from ser_ray.fusion import is_late_fusion

    if not io.is_s3(cfg.model) and is_late_fusion(cfg.model):
        raise ValueError(f"score: {cfg.model} is a late-fusion folder, which `evaluate` reads; "
                         "score one model (an audio_text model fuses audio and text itself)")
    if not cfg.inputs:
        raise ValueError("score: give --input URI (a folder or s3:// prefix of recordings)")
    if not cfg.output:
        raise ValueError("score: give --output DIR (a folder or s3:// prefix)")
    if cfg.call_id not in ("stem", "path"):
        raise ValueError(f"call_id={cfg.call_id!r}: choose stem or path")
    if cfg.customer_channel not in CHANNELS:
        raise ValueError(f"customer_channel={cfg.customer_channel!r}: choose left, right or mono")
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


def worker_settings(cfg: ScoreConfig, model: ModelInfo, run_id: str, staging: str) -> dict[str, Any]:
    """Everything an actor needs, as plain data (also hashed into unit ids)."""
    window, _ = model_window(model.feature_config)
    window_s = cfg.window_s or window
    opts = dict(cfg.vad)
    detector = vad.get_detector(opts.pop("name", "auto"), **opts)
    return {"model_id": model.model_id, "model_hash": model.model_hash, "run_id": run_id,
            "staging": staging, "window_s": window_s, "hop_s": cfg.hop_s or window_s,
            "min_window_s": min(cfg.min_window_s, window_s), "max_call_s": cfg.max_call_s,
            "max_bytes": int(cfg.max_file_mb * 2 ** 20), "customer_channel": cfg.customer_channel,
            "max_decoded_bytes": int(cfg.max_decoded_mb * 2 ** 20),
            "vad": vad.detector_config(detector), "vad_sample_rate": cfg.vad_sample_rate,
            "batch_size": cfg.batch_size, "labels": list(model.labels),
            "sample_rate": int(from_dict(AudioConfig, dict(model.feature_config.get("audio") or {}))
                               .sample_rate),
            "gpus_per_worker": cfg.gpus_per_worker, "urgency": to_dict(cfg.urgency),
            "trust_model": cfg.trust_model,
            "normalisation": to_dict(cfg.normalisation),
            "reference": reference_settings(cfg, model), "s3": to_dict(cfg.s3)}


# Settings that change what a unit's rows hold (not where they go): a change starts units afresh.
_MATERIAL = ("model_hash", "window_s", "hop_s", "min_window_s", "max_call_s", "max_bytes",
             "max_decoded_bytes",
             "customer_channel", "vad", "vad_sample_rate", "urgency", "normalisation")

REFERENCES = ("run", "training", "call")
# What the run record says a one-pass reference standardised windows with.
ONE_PASS_STATISTICS = {"model": "the model's own training statistics (every call on its own)",
                       "training": "training population (pooled statistics of the training rows)",
                       "call": "each call by itself"}


def trained_normalisation(model: ModelInfo) -> str:
    return model.feature_config.get("normalise", "global")


def training_population(model: ModelInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """The pooled statistics of the model's raw training rows, when it stored them."""
    from safetensors.numpy import load as load_numpy

    norm = load_numpy(model.files["normalisation.safetensors"])
    if "population_mean" not in norm:
        return None
    return norm["population_mean"], norm["population_std"]


def reference_settings(cfg: ScoreConfig, model: ModelInfo) -> dict[str, Any]:
    """How this run standardises windows before the model (see :class:`Reference`); for
    ``run`` the table is filled in after the extract pass (:func:`reference_table`)."""
    from ser_ray.data import NORMALISE_GROUPS

    if NORMALISE_GROUPS.get(trained_normalisation(model)) is None:
        return {"mode": "model"}
    ref = cfg.normalisation.reference
    if ref == "training" and training_population(model) is None:
        raise ValueError(f"--model {model.path}: normalisation.reference=training, but the model "
                         "stores no training population statistics (it was trained before "
                         "ser-ray kept them); retrain it, or use reference=run")
    return {"mode": ref}


def reference_table(populations: dict[str, dict[str, Any]], cfg: ScoreConfig,
                    training: tuple[np.ndarray, np.ndarray] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reference statistics of each population of the run -> (table for the actors, record).

    ``populations``: group value -> {"calls", "windows", "moments"} summed over the run's units
    (one group, ``""``, without ``group_by``; calls without a metadata value form ``""`` too).
    A group of at least ``min_calls`` calls is its own reference; a smaller one uses the whole
    run when that has ``min_calls``, else the training population.
    """
    from functools import reduce

    n = cfg.normalisation
    whole = None
    if populations:
        calls = sum(p["calls"] for p in populations.values())
        whole = {"calls": calls, "windows": sum(p["windows"] for p in populations.values()),
                 "moments": reduce(lambda a, b: a + b, (populations[g]["moments"] for g in sorted(populations)))}
    fallback = None
    if whole is not None and whole["calls"] >= n.min_calls:
        fallback = (*whole["moments"].mean_std(), "run")
    elif training is not None:
        fallback = (*training, "training")
    table, record = {}, {}
    for g in sorted(populations):
        pop = populations[g]
        if n.group_by and pop["calls"] >= n.min_calls:
            entry = (*pop["moments"].mean_std(), f"run:{n.group_by}={g}")
        elif fallback is not None:
            entry = fallback
        else:
            raise ValueError(
                f"normalisation.reference=run: the run has {whole['calls']} call(s) with speech, "
                f"fewer than normalisation.min_calls={n.min_calls}, and the model stores no "
                "training population to fall back to (it was trained before ser-ray kept one); "
                "retrain the model, lower min_calls, or set normalisation.reference=call (each "
                "call by itself: see README)")
        table[g] = {"mean": entry[0].tolist(), "std": entry[1].tolist(), "source": entry[2]}
        record[g] = {"calls": pop["calls"], "windows": pop["windows"], "statistics": entry[2]}
    return table, record


def reference_key(table: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(table, sort_keys=True).encode()).hexdigest()[:12]


def unit_dir(staging: str, unit_id: str, key: str | None = None) -> str:
    """Where a unit's staged files go: scored rows of a run with reference statistics go in a
    folder named by them, so a rerun whose statistics differ cannot reuse them."""
    base = io.join(staging, f"units/{unit_id}")
    return io.join(base, f"ref-{key}") if key else base


def iter_calls(inputs: Sequence[str], storage: io.Storage, ignored: Counter, examples: list[str],
               call_id: str = "stem") -> Iterator[dict[str, Any]]:
    """Recordings under ``inputs`` as {call_id, uri, size}, lazily, in listing order.

    ``call_id``: ``stem`` names a call by its file name without the extension (recorders name
    files by the telephony system's call id, which metadata tables use too); ``path`` by its path
    below the input, without the extension (for backlogs whose file names repeat across folders).
    Files without an audio extension are not calls: counted in ``ignored`` by extension, the
    first few kept in ``examples``.
    """
    if call_id not in ("stem", "path"):
        raise ValueError(f"call_id={call_id!r}: choose stem or path")
    for root in inputs:
        root = root.rstrip("/") if io.is_s3(root) else root
        if io.is_s3(root) or os.path.isdir(root):
            if io.is_s3(root) and not storage.exists_dir(root):
                raise FileNotFoundError(f"--input {root}: no objects under this prefix")
            listing = storage.walk_sized(root)
            base = root
        elif io.has_glob(root):
            listing = ((u, _size(storage, u)) for u in storage.glob(root))
            base = io.glob_root(root)[0]
        elif os.path.exists(root) or os.path.islink(root):
            listing, base = iter([(root, _size(storage, root))]), os.path.dirname(root) or "."
        else:
            raise FileNotFoundError(f"--input {root}: no such file, folder or s3:// prefix")
        for uri, size in listing:
            rel = io.relpath(base, uri)
            name = rel.rsplit("/", 1)[-1]
            if name.startswith("."):
                ignored["hidden"] += 1
                continue
            stem, ext = os.path.splitext(rel)
            if ext.lower() not in AUDIO_EXTENSIONS:
                ignored[ext.lower() or "(none)"] += 1
                if len(examples) < 20:
                    examples.append(uri)
                continue
            yield {"call_id": stem if call_id == "path" else stem.rsplit("/", 1)[-1], "uri": uri,
                   "size": int(size), "root": base}  # a link may not lead out of base


def _size(storage: io.Storage, uri: str) -> int:
    try:
        return storage.size(uri)
    except Exception:
        return -1


def iter_units(calls: Iterator[dict[str, Any]], calls_per_task: int, bytes_per_task: int,
               material: str, groups: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Consecutive calls grouped into units of <= ``calls_per_task`` calls and about
    ``bytes_per_task`` bytes (an hour-long call is a unit of its own); ids hash their content.

    ``groups`` (call_id -> reference group, see ``normalisation.group_by``) rides along in each
    unit and in its id."""
    unit: list[dict[str, Any]] = []
    size = 0

    def cut() -> dict[str, Any]:
        calls = [(c["uri"], c["size"]) for c in unit]
        out = {"calls": list(unit), "bytes": sum(max(c["size"], 0) for c in unit)}
        if groups is not None:
            out["groups"] = {c["call_id"]: groups.get(c["call_id"], "") for c in unit}
            calls = [(*k, out["groups"][c["call_id"]]) for k, c in zip(calls, unit)]
        key = json.dumps([material, calls])
        return {"unit_id": hashlib.sha1(key.encode()).hexdigest()[:20], **out}

    for call in calls:
        if unit and (len(unit) >= calls_per_task or size + max(call["size"], 0) > bytes_per_task):
            yield cut()
            unit, size = [], 0
        unit.append(call)
        size += max(call["size"], 0)
    if unit:
        yield cut()


def previously_scored(storage: io.Storage, output: str, run_date: str, model_hash: str) -> dict[str, int]:
    """call_id -> size of calls earlier nights scored with this model (status not retried)."""
    done: dict[str, int] = {}
    for night, uri in published(storage, output, "calls"):
        if night == run_date:
            continue
        t = _read_parquet(storage, uri, ["call_id", "size_bytes", "status", "model_hash"]).to_pandas()
        t = t[(t["model_hash"] == model_hash) & ~t["status"].isin(RETRY_STATUSES)]
        done.update(zip(t["call_id"], t["size_bytes"].astype("int64")))
    return done


def _pool_size(cfg: ScoreConfig, n_units: int, reserve_cpus: float = 0.0) -> int:
    import ray

    res = ray.cluster_resources()
    slots = int(max(0.0, res.get("CPU", 0) - reserve_cpus) / cfg.cpus_per_worker)
    if cfg.gpus_per_worker > 0:
        slots = min(slots, int(res.get("GPU", 0) / cfg.gpus_per_worker))
        if slots < 1:
            raise ValueError(f"gpus_per_worker={cfg.gpus_per_worker} but the cluster has "
                             f"{res.get('GPU', 0)} GPU(s)")
    return max(1, min(cfg.num_workers or max(1, slots), n_units))


def largest_first(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Units by total bytes, largest first (ties keep listing order): a wave then ends on small
    units, so no actor sits idle while another finishes a long one (longest-processing-time
    order). Unit ids and the published row order do not depend on it."""
    return sorted(units, key=lambda u: -u["bytes"])


# A scoring actor killed mid-unit (OOM killer, a lost node) is replaced and its unit retried
# once: a unit rewrites the same staged files, so a retry adds no rows. A unit that kills its
# worker again is split into its calls (_Splitter); a call that kills its worker on its own too
# gets a row with status worker_died, and the night goes on. An actor whose creation fails (a
# model it cannot load) fails the run, which a rerun resumes.
TASK_RETRIES = 1


def _worker_died(exc: Exception) -> bool:
    """A unit's task failed because its worker process died (not an error raised in it)."""
    import ray

    if isinstance(exc, ray.exceptions.ActorDiedError):
        return not getattr(exc, "actor_init_failed", False)
    return isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.ActorUnavailableError))


class _Splitter:
    """Units whose worker died on every try, split into one unit per call, then put together
    again under the unit's own id, so publishing and resume see the unit as if it had run whole.

    ``failed(unit, exc)`` -> the calls as units to run next, or None when the failure is the
    run's (then the caller raises); ``done(unit, stats)`` -> the stats to report (the parent's
    once its last call is in), or None while calls are outstanding."""

    def __init__(self, settings: dict[str, Any]):
        self.s = settings
        self.storage = io.Storage(from_dict(S3Config, settings["s3"]))
        self.parents: dict[str, dict[str, Any]] = {}

    def failed(self, unit: dict[str, Any], exc: Exception) -> list[dict[str, Any]] | None:
        if not _worker_died(exc) or unit.get("phase", "score") != "score":
            return None
        parent = unit.get("parent")
        if parent is None and len(unit["calls"]) > 1:
            self.parents[unit["unit_id"]] = {"unit": unit, "left": len(unit["calls"]), "stats": []}
            log(f"unit {unit['unit_id']} killed its worker on every try: scoring its "
                f"{len(unit['calls'])} calls one by one")
            return [{**unit, "unit_id": f"{unit['unit_id']}-{k}", "calls": [c],
                     "parent": unit["unit_id"]} for k, c in enumerate(unit["calls"])]
        # One call that kills its worker on its own: a row saying so, instead of the night.
        call = unit["calls"][0]
        row = {"call_id": call["call_id"], "uri": call["uri"], "size_bytes": call["size"],
               "status": "worker_died", "model_id": self.s["model_id"],
               "model_hash": self.s["model_hash"], "run_id": self.s["run_id"],
               "reason": f"reading or scoring this call killed its worker on {TASK_RETRIES + 1} "
                         f"tries ({type(exc).__name__}); too big or malformed for a worker?"}
        log(f"call {call['uri']}: {row['reason']}")
        labels = self.s["labels"]
        stage_unit(self.storage, unit_dir(self.s["staging"], unit["unit_id"]),
                   segments_schema(labels).empty_table(),
                   pa.Table.from_pylist([row], calls_schema(labels)))
        return []

    def done(self, unit: dict[str, Any], stats: dict[str, Any] | None) -> dict[str, Any] | None:
        """``stats`` None: ``unit`` (a call) was settled by :meth:`failed`."""
        if stats is None:
            stats = {"unit_id": unit["unit_id"], "calls": 1, "status": {"worker_died": 1},
                     "audio_s": 0.0, "seconds": 0.0, "read_s": 0.0, "pid": None}
        parent = unit.get("parent")
        if parent is None:
            return stats
        entry = self.parents[parent]
        entry["stats"].append(stats)
        entry["left"] -= 1
        if entry["left"]:
            return None
        return self._join(entry["unit"], entry["stats"])

    def _join(self, unit: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
        """The calls' staged files -> the unit's (segments first: the calls file marks it
        done), in the unit's call order."""
        labels = self.s["labels"]
        bases = [unit_dir(self.s["staging"], f"{unit['unit_id']}-{k}")
                 for k in range(len(unit["calls"]))]
        segs = [_read_parquet(self.storage, io.join(b, "segments.parquet")) for b in bases]
        calls = [_read_parquet(self.storage, io.join(b, "calls.parquet")) for b in bases]
        stage_unit(self.storage, unit_dir(self.s["staging"], unit["unit_id"]),
                   pa.concat_tables([t.cast(segments_schema(labels)) for t in segs]),
                   pa.concat_tables([t.cast(calls_schema(labels)) for t in calls]))
        for b in bases:
            self.storage.delete_tree(b)
        status: Counter = Counter()
        for st in parts:
            status.update(st["status"])
        pids = [st.get("pid") for st in parts if st.get("pid")]
        return {"unit_id": unit["unit_id"], "calls": len(unit["calls"]), "status": dict(status),
                "audio_s": sum(st["audio_s"] for st in parts),
                "seconds": sum(st["seconds"] for st in parts),
                "read_s": sum(st.get("read_s", 0.0) for st in parts),
                "pid": pids[0] if pids else None}


class _ActorsEngine:
    """Units on a fixed pool of Ray actors, one unit in flight per actor, fed as each finishes.

    The driver keeps the queue itself (``ray.wait``): on a small node this costs a fraction of
    Ray Data's executor, stats and autoscaling actors, which take CPU from the scoring actors
    (README, "Scoring throughput"). The pool lives for the whole run: every wave of the listing
    and both passes of a run with reference statistics use the same actors, so start-up is paid
    once.

    Faults: an actor whose process or node dies is replaced by a new actor, which is fed only
    once it is up (on a lost node it may wait for room elsewhere while the survivors go on), and
    its unit is run again, once; a unit whose worker dies twice is split into its calls
    (:class:`_Splitter`). An actor that cannot start (a model it cannot load) fails the run."""

    def __init__(self, resources: dict[str, float], settings: dict[str, Any], model_ref):
        import ray

        self.actor_cls = ray.remote(_ScoreActor).options(max_restarts=0, max_task_retries=0,
                                                         **resources)
        self.settings, self.model_ref = settings, model_ref
        self.actors: list[Any] = []
        self.starting: dict[Any, Any] = {}  # ready ref -> a replacement actor not up yet
        self.tries: Counter = Counter()     # unit id -> tries whose worker died
        self.splitter = _Splitter(settings)

    def pool(self, cfg: ScoreConfig, n_units: int) -> int:
        return _pool_size(cfg, n_units)

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
            raise RuntimeError(f"a replacement scoring actor could not start: "
                               f"{type(exc).__name__}: {exc}") from exc
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
                pending[actor.score.remote(json.dumps(unit))] = (actor, unit)
            # (an actor lost here has a replacement in self.starting: something is awaited)
            [ref], _ = ray.wait(list(pending) + list(self.starting), num_returns=1)
            if ref in self.starting:
                idle.append(self._started(ref))
                continue
            actor, unit = pending.pop(ref)
            if self._settle(ref, actor, unit, queue, on_done):
                idle.append(actor)

    def _settle(self, ref, actor, unit: dict[str, Any], queue: collections.deque, on_done) -> bool:
        """A finished unit's stats to ``on_done``. When its worker died: the actor is replaced
        and the unit goes back to ``queue`` (its second time: as its calls, _Splitter).
        Returns whether ``actor`` is still in the pool."""
        import ray

        try:
            stats = self._result(ref, unit)
        except RuntimeError as exc:
            if not _worker_died(exc.__cause__):
                raise
            # The actor itself, or (staged) the read task its unit waited for.
            lost = isinstance(exc.__cause__, (ray.exceptions.ActorDiedError,
                                              ray.exceptions.ActorUnavailableError))
            if lost:
                self._replace(actor)
            self.tries[unit["unit_id"]] += 1
            if self.tries[unit["unit_id"]] <= TASK_RETRIES:
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

    def _done(self, unit: dict[str, Any], stats: dict[str, Any] | None, on_done) -> None:
        stats = self.splitter.done(unit, stats)
        if stats is not None:
            on_done(stats)

    @staticmethod
    def _result(ref, unit: dict[str, Any]) -> dict[str, Any]:
        import ray

        try:
            return json.loads(ray.get(ref))
        except ray.exceptions.RayError as exc:
            calls = unit.get("calls") or []
            named = ", ".join(c["uri"] for c in calls[:3])
            what = f"{len(calls)} calls: {named}{', ...' if len(calls) > 3 else ''}" if calls else \
                f"{unit.get('phase')} pass"
            raise RuntimeError(f"unit {unit['unit_id']} ({what}) could not be scored: "
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


class _RayDataEngine:
    """Units through Ray Data: ``map_batches`` over a pool of ``n`` actors, one unit per batch
    (a new pool for each wave: a Ray Data pipeline owns its actors)."""

    def __init__(self, resources: dict[str, float], settings: dict[str, Any], model_ref):
        self.resources, self.settings, self.model_ref = resources, settings, model_ref

    def pool(self, cfg: ScoreConfig, n_units: int) -> int:
        return _pool_size(cfg, n_units)

    def run(self, units: list[dict[str, Any]], n: int, on_done) -> None:
        import ray
        from ray.data import ActorPoolStrategy

        from ser_ray.training import quiet_data_progress

        quiet_data_progress()
        ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
        ds = ds.map_batches(_ScoreActor,
                            fn_constructor_kwargs={"settings": self.settings, "model_ref": [self.model_ref]},
                            # Every actor from the start, one unit each at a time: a unit is minutes of
                            # audio, so queueing a second one on a busy actor only starves the others.
                            compute=ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1), batch_size=1,
                            batch_format="numpy", **self.resources)
        for row in ds.iter_rows():
            on_done(json.loads(row["stats"]))

    def close(self) -> None:
        pass


def _read_unit(settings: dict[str, Any], unit: str) -> tuple:
    """The CPU pool's task (engine ``staged``): one unit as JSON -> (call rows, {call position:
    (signal, spans)}, seconds of work); its signals go to a model actor through the object store."""
    t0 = time.perf_counter()
    rows, calls = _call_reader(settings).read(json.loads(unit))
    return rows, calls, time.perf_counter() - t0


_READERS: dict[str, CallReader] = {}


def _call_reader(settings: dict[str, Any]) -> CallReader:
    """One reader per worker process and run (the VAD model loads once, not once per unit)."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    if key not in _READERS:
        _READERS.clear()
        _READERS[key] = CallReader(settings)
    return _READERS[key]


class _StagedEngine(_ActorsEngine):
    """Two pools with their own resources: Ray tasks on CPUs read, decode, pick the channel,
    resample, run VAD and cut windows (``read_cpus`` each); a fixed pool of model actors
    (``cpus_per_worker``/``gpus_per_worker`` each) computes features, encoder and head over each
    unit's windows, batched across its calls.

    Backpressure: at most ``read_slots`` units are being read and ``read_ahead`` per model actor
    are read and waiting, so memory is bounded by units in flight, not by the backlog; a model
    actor is handed the next read unit the moment it finishes one, so it waits only when the
    CPU pool has nothing ready. Units read first go to the model first (listing order within a
    wave), and a unit's rows are staged by the model actor exactly as in the other engines."""

    def __init__(self, resources: dict[str, float], settings: dict[str, Any], model_ref,
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
                if unit.get("phase") == "predict":  # reads its staged features, not audio
                    ready.append((unit, None))
                else:
                    reading[self.read_task.remote(settings_ref, json.dumps(unit))] = unit
            while idle and ready:
                actor = idle.pop(0)
                unit, read_ref = ready.pop(0)
                ref = actor.score.remote(json.dumps(unit)) if read_ref is None else \
                    actor.score_read.remote(json.dumps(unit), read_ref)
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
ENGINES = {"actors": _ActorsEngine, "ray_data": _RayDataEngine, "staged": _StagedEngine}


def engine_for(cfg: ScoreConfig) -> str:
    """``auto``: the staged pools when the model actors have GPUs (the GPU never waits on
    decoding), otherwise one pool of actors that each do it all (on CPUs a separate read pool
    only takes cores from the model; README, "Engines"). Call after Ray is up."""
    if cfg.engine != "auto":
        return cfg.engine
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    return "staged" if cfg.gpus_per_worker > 0 and gpus > 0 else "actors"


def _engine(cfg: ScoreConfig, settings: dict[str, Any], model_ref, name: str):
    """The engine ``name``; per-model-actor resources are the same for every engine."""
    resources = {"num_cpus": cfg.cpus_per_worker}
    if cfg.gpus_per_worker:
        resources["num_gpus"] = cfg.gpus_per_worker
    if name == "staged":
        return _StagedEngine(resources, settings, model_ref, cfg.read_cpus, cfg.read_ahead)
    return ENGINES[name](resources, settings, model_ref)


def staged_pools(cfg: ScoreConfig, n_units: int) -> tuple[int, int]:
    """(model actors, concurrent read tasks) for the staged engine: model actors as for the
    other engines, but on CPUs alone leaving ``read_cpus`` for at least one read task; the
    read pool gets every CPU the model actors do not hold."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    n = _pool_size(cfg, n_units, reserve_cpus=cfg.read_cpus)
    left = cpus - n * cfg.cpus_per_worker
    if left < cfg.read_cpus:
        raise ValueError(f"engine=staged: {n} model actor(s) x cpus_per_worker={cfg.cpus_per_worker} "
                         f"leave {left:g} of {cpus:g} CPUs, less than read_cpus={cfg.read_cpus}; "
                         "lower num_workers, cpus_per_worker or read_cpus")
    return n, max(1, int(left / cfg.read_cpus))


def _run_wave(cfg: ScoreConfig, engine, units: list[dict[str, Any]], on_done) -> None:
    """One wave: pool size and unit order are the same for every engine."""
    engine.run(largest_first(units), engine.pool(cfg, len(units)), on_done)


def _output(cfg: ScoreConfig) -> str:
    return cfg.output.rstrip("/") if io.is_s3(cfg.output) else str(Path(cfg.output).absolute())


def run_score(cfg: ScoreConfig, progress: bool = True) -> dict[str, Any]:
    """Score the backlog and publish the run; returns the run record (also ``runs/<run_id>.json``,
    written last: the night's commit, see ``ser_ray.score_commit``). One run of a night at a
    time: a second one refuses while the first holds the night's lock."""
    check_config(cfg)
    storage = io.Storage(cfg.s3)
    with NightLock(storage, _output(cfg), resolve_run_date(cfg.run_date), cfg.lock_ttl_h * 3600):
        return _run_score(cfg, storage, progress)


def _run_score(cfg: ScoreConfig, storage: io.Storage, progress: bool) -> dict[str, Any]:
    from ser_ray.data import extractor_models
    from ser_ray.prepare import versions
    from ser_ray.runtime import init_ray

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.time()
    run_date = resolve_run_date(cfg.run_date)
    model = ModelInfo.read(cfg.model, trust=cfg.trust_model)
    run_id = f"{run_date}_{model.model_hash[:12]}"
    output = _output(cfg)
    staging = io.join(output, f"_staging/{run_id}")
    settings = worker_settings(cfg, model, run_id, staging)
    material = json.dumps({k: settings[k] for k in _MATERIAL}, sort_keys=True)
    window_s, window_from = model_window(model.feature_config)
    metadata = load_metadata(cfg.metadata, storage, model.labels) if cfg.metadata else None
    log(f"run {run_id}: model {model.model_id}, windows of {settings['window_s']:.2f} s "
        f"({'config' if cfg.window_s else window_from}), vad {settings['vad']['name']}, "
        f"customer channel {cfg.customer_channel}")

    skip = {} if cfg.rescore else previously_scored(storage, output, run_date, model.model_hash)
    ignored: Counter = Counter()
    examples: list[str] = []
    seen: dict[str, str] = {}
    extra_rows: list[dict[str, Any]] = []  # calls the driver settles itself: duplicate ids
    skipped = 0

    def fresh_calls() -> Iterator[dict[str, Any]]:
        nonlocal skipped
        for call in iter_calls(cfg.inputs, storage, ignored, examples, cfg.call_id):
            if call["call_id"] in seen:
                if seen[call["call_id"]] != call["uri"]:
                    extra_rows.append({**call, "status": "duplicate_call_id",
                                       "reason": f"call_id also names {seen[call['call_id']]}; "
                                                 "set call_id=path to tell them apart"})
                continue
            seen[call["call_id"]] = call["uri"]
            if skip.get(call["call_id"]) == call["size"]:
                skipped += 1
                continue
            yield call

    init_ray()
    import ray

    model_ref = ray.put(model.files)
    counts: Counter = Counter()
    unit_ids: list[str] = []
    todo: list[dict[str, Any]] = []
    state = {"done": 0, "resumed": 0, "audio_s": 0.0, "fresh_audio_s": 0.0,
             "t_scoring": time.time(), "unit_s": 0.0, "read_s": 0.0, "workers": set(), "extracted": 0}
    from ser_ray.console import Progress

    bar = Progress("score", unit="units", enabled=progress, open_total=True)
    two_pass = settings["reference"]["mode"] == "run"
    groups = None
    if two_pass and cfg.normalisation.group_by:
        col = cfg.normalisation.group_by
        if col not in metadata.columns:
            raise ValueError(f"normalisation.group_by={col!r}: --metadata {cfg.metadata} has no such "
                             f"column; it has {list(metadata.columns)}")
        groups = {c: ("" if pd.isna(v) else str(v)) for c, v in zip(metadata["call_id"], metadata[col])}
    # Extract pass: each call's moments, added up per group in listing order (the same sums, and
    # so the same statistics, however units are cut, finish or resume).
    order: dict[str, int] = {}
    pending: dict[int, dict[str, Any]] = {}
    populations: dict[str, dict[str, Any]] = {}
    folded = [0]

    def fold(unit_id: str, per_call: list[dict[str, Any]]) -> None:
        from ser_ray.data import Moments

        pending[order[unit_id]] = per_call
        while folded[0] in pending:
            for d in pending.pop(folded[0]):
                m = Moments.from_arrays(d)
                pop = populations.setdefault(d["group"], {"calls": 0, "windows": 0, "moments": None})
                pop["calls"] += 1
                pop["windows"] += d["windows"]
                pop["moments"] = m if pop["moments"] is None else pop["moments"] + m
            folded[0] += 1

    def record(st: dict[str, Any], resumed: bool = False) -> None:
        if not resumed:
            state["unit_s"] += st.get("seconds", 0.0)
            state["read_s"] += st.get("read_s", 0.0)
            state["workers"].add(st.get("pid"))
        if st.get("phase") == "extract":
            state["extracted"] += 1
            fold(st["unit_id"], st["moments"])
        else:
            counts.update(st["status"])
            state["done"] += 1
            state["audio_s"] += st["audio_s"]
            if resumed:
                state["resumed"] += 1
            else:
                state["fresh_audio_s"] += st["audio_s"]
        _progress(bar, state, counts, len(unit_ids))

    engine_name = engine_for(cfg)
    settings["staged"] = engine_name == "staged"  # not material: the rows are the same
    engine = _engine(cfg, settings, model_ref, engine_name)
    try:
        def flush() -> None:
            if todo:
                _run_wave(cfg, engine, todo, record)
                todo.clear()

        units_bytes: list[tuple[str, int, dict[str, str] | None]] = []
        for unit in iter_units(fresh_calls(), cfg.calls_per_task, int(cfg.mb_per_task * 2 ** 20), material,
                               groups):
            order[unit["unit_id"]] = len(unit_ids)
            unit_ids.append(unit["unit_id"])
            units_bytes.append((unit["unit_id"], unit["bytes"], unit.get("groups")))
            if two_pass:
                unit["phase"] = "extract"
                marker = io.join(unit_dir(staging, unit["unit_id"]), "moments.json")
                if storage.exists(marker):  # extracted by an earlier, interrupted run of this night
                    record(json.loads(storage.read_bytes(marker)), resumed=True)
                    continue
            else:
                staged = io.join(unit_dir(staging, unit["unit_id"]), "calls.parquet")
                if storage.exists(staged):  # done by an earlier, interrupted run of this night
                    record(_staged_stats(storage, staged), resumed=True)
                    continue
            todo.append(unit)
            if len(todo) >= cfg.units_per_wave:
                flush()
        flush()
        ref_key = None
        mode = settings["reference"]["mode"]
        norm_record: dict[str, Any] = {"trained_with": trained_normalisation(model), "reference": mode}
        if mode in ONE_PASS_STATISTICS:
            norm_record["statistics"] = ONE_PASS_STATISTICS[mode]
        if two_pass:
            table, pops = reference_table(populations, cfg, training_population(model))
            ref_key = reference_key(table)
            norm_record.update(group_by=cfg.normalisation.group_by, min_calls=cfg.normalisation.min_calls,
                               populations=pops, key=ref_key)
            log("reference statistics: " + (", ".join(
                f"{g or '(all)'}: {p['calls']} calls -> {p['statistics']}" for g, p in pops.items()) or "no calls"))
            for unit_id, size, unit_groups in units_bytes:
                staged = io.join(unit_dir(staging, unit_id, ref_key), "calls.parquet")
                if storage.exists(staged):
                    record(_staged_stats(storage, staged), resumed=True)
                    continue
                needed = set((unit_groups or {}).values()) or {""}
                todo.append({"unit_id": unit_id, "bytes": size, "phase": "predict",
                             "reference": {"mode": "run", "key": ref_key,
                                           "table": {g: table[g] for g in needed if g in table}},
                             **({"groups": unit_groups} if unit_groups else {})})
                if len(todo) >= cfg.units_per_wave:
                    flush()
            flush()
    finally:
        engine.close()
    _progress(bar, state, counts, len(unit_ids))
    bar.close()
    t_scored = time.time()
    check_replaces_whole(storage, output, run_id, set(seen), cfg.replace_night)
    record_ = publish(cfg, storage, output, staging, run_date, run_id, model, unit_ids, extra_rows,
                      metadata, versions(), ref_key)
    timings = {"wall_s": time.time() - t0, "scoring_s": t_scored - state["t_scoring"],
               "publish_s": time.time() - t_scored}
    transcripts, tx_record = None, None
    if cfg.transcribe.model:
        t_tx = time.time()
        transcripts, tx_record = _transcribe(cfg, storage, output, run_date, run_id, model,
                                             record_, settings, progress)
        timings["transcribe_s"] = time.time() - t_tx
        timings["wall_s"] = time.time() - t0
    run = {"run_id": run_id, "run_date": run_date, "model_id": model.model_id,
           "model_hash": model.model_hash, "model_path": model.path,
           # the pretrained models its features come from (an encoder, Whisper, a text encoder)
           "feature_models": extractor_models(model.feature_config),
           "window_s": settings["window_s"], "window_from": "config" if cfg.window_s else window_from,
           "vad": settings["vad"], "normalisation": norm_record, "config": public_dict(cfg),
           "versions": versions(),
           "labels": model.labels, "calls": record_["calls"], "counts": record_["counts"],
           "skipped_previously_scored": skipped, "resumed_units": state["resumed"],
           "units": len(unit_ids), "ignored_files": dict(ignored), "ignored_examples": examples,
           "metadata_rows_without_call": record_["metadata_unmatched"],
           "audio_s": state["audio_s"], "fresh_audio_s": state["fresh_audio_s"],
           "unit_seconds": state["unit_s"], "worker_processes": len(state["workers"] - {None}),
           # Seconds of unit work on the read side (decode, VAD, windows) and on the model side.
           "engine": engine_name, "read_seconds": state["read_s"],
           "model_seconds": state["unit_s"] - state["read_s"],
           "started_at": started.isoformat(timespec="seconds"),
           "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           **timings, "outputs": record_["outputs"]}
    if tx_record:
        run["transcripts"] = tx_record
        run["outputs"]["transcripts"] = tx_record.pop("uri")
    scored = record_["calls_df"]
    scored = scored[scored["status"] == SCORED].head(10)
    run["top_calls"] = [{"urgency_rank": int(r.urgency_rank), "call_id": r.call_id,
                         "urgency_score": float(r.urgency_score)} for r in scored.itertuples()]
    run["real_time_factor"] = run["fresh_audio_s"] / max(timings["scoring_s"], 1e-9)
    # Audio seconds per second of a worker's own unit work: the per-core rate without start-up.
    run["real_time_factor_per_worker"] = run["fresh_audio_s"] / max(state["unit_s"], 1e-9)
    _write_report(storage, output, run, record_["calls_df"], model.labels, cfg.report_top,
                  transcripts)
    run["outputs"]["report_index"] = io.join(output, "reports/index.html")
    # The commit: everything the night published is readable from here on, and only now.
    storage.write_bytes(run_record_uri(output, run_id),
                        (json.dumps(run, indent=2, default=str) + "\n").encode())
    write_index(storage, output)
    storage.delete_tree(staging)
    log(f"done: {run['calls']} calls ({', '.join(f'{k} {v}' for k, v in sorted(run['counts'].items()))}), "
        f"{skipped} skipped as already scored, {run['audio_s'] / 3600:.2f} h audio in "
        f"{timings['wall_s']:.1f} s -> {output}")
    return run


def _staged_stats(storage: io.Storage, uri: str) -> dict[str, Any]:
    t = _read_parquet(storage, uri, ["status", "duration_s"]).to_pandas()
    ok = t["status"].isin([SCORED, NO_SPEECH])
    return {"status": dict(Counter(t["status"])), "audio_s": float(t.loc[ok, "duration_s"].fillna(0).sum())}


def _progress(bar, state: dict[str, Any], counts: Counter, n_units: int) -> None:
    secs = max(time.time() - state["t_scoring"], 1e-3)
    resumed = f"{state['resumed']} units resumed, " if state["resumed"] else ""
    if state.get("extracted") and not state["done"]:
        bar.update(state["extracted"], n_units,
                   "extract pass (reference statistics of the run's calls)")
        return
    bar.update(state["done"], n_units,
               f"{resumed}{sum(counts.values())} calls "
               f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
               f"{state['audio_s'] / 3600:.2f} h audio, "
               f"{state['fresh_audio_s'] / secs:.0f}x real time")


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------

def load_metadata(uri: str, storage: io.Storage, labels: Sequence[str] = ()) -> pd.DataFrame:
    """Call metadata (CSV/TSV/Parquet with a ``call_id`` column), checked before scoring starts.

    A column whose name a call row already uses (``status``, ``share_angry``, ...) is renamed
    ``meta_<name>`` (again, while that is taken too), so publishing cannot collide."""
    if not io.is_table(uri):
        raise ValueError(f"--metadata {uri}: expected a .csv, .tsv or .parquet table")
    try:
        meta = io.read_table(uri, storage).to_pandas()
    except FileNotFoundError:
        raise FileNotFoundError(f"--metadata {uri}: no such file") from None
    if "call_id" not in meta.columns:
        raise ValueError(f"--metadata {uri}: needs a call_id column; it has {list(meta.columns)}")
    meta["call_id"] = meta["call_id"].astype(str)
    dup = meta["call_id"][meta["call_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"--metadata {uri}: {len(dup)} call_id value(s) appear more than once, "
                         f"e.g. {list(dup[:3])}; one row per call")
    taken = set(calls_schema(labels).names) | {"urgency_rank", "run_date"}
    names: dict[str, str] = {}
    for c in meta.columns:
        name = str(c)
        if c != "call_id":
            while name in taken:
                name = f"meta_{name}"
        taken.add(name)
        names[c] = name
    return meta.rename(columns=names)


def publish(cfg: ScoreConfig, storage: io.Storage, output: str, staging: str, run_date: str,
            run_id: str, model: ModelInfo, unit_ids: list[str], extra_rows: list[dict[str, Any]],
            metadata: pd.DataFrame | None, versions: dict[str, str], ref_key: str | None = None
            ) -> dict[str, Any]:
    """Staged units -> the run's calls file and segment parts (each written whole)."""
    labels = model.labels
    cschema = calls_schema(labels)
    parts = [_read_parquet(storage, io.join(unit_dir(staging, u, ref_key), "calls.parquet")) for u in unit_ids]
    for r in extra_rows:
        parts.append(pa.Table.from_pylist([{"call_id": r["call_id"], "uri": r["uri"], "size_bytes": r["size"],
                                            "status": r["status"], "reason": r["reason"],
                                            "model_id": model.model_id, "model_hash": model.model_hash,
                                            "run_id": run_id}], cschema))
    calls = pa.concat_tables([p.cast(cschema) for p in parts]) if parts else cschema.empty_table()
    df = calls.to_pandas()
    df.loc[df["status"] != SCORED, "urgency_score"] = np.nan
    df["urgency_rank"] = rank(df) if len(df) else pd.Series(dtype="int64")
    df = df.sort_values("urgency_rank", kind="mergesort").reset_index(drop=True)
    unmatched = 0
    if metadata is not None:  # its columns were renamed clear of the call rows' at load time
        unmatched = int((~metadata["call_id"].isin(df["call_id"])).sum())
        # many to one: a duplicate_call_id row (a.wav beside a.flac) shares its id's metadata
        df = df.merge(metadata, on="call_id", how="left", validate="many_to_one")
    part_dir = f"run_date={run_date}"
    calls_uri = io.join(output, f"calls/{part_dir}/{run_id}.parquet")
    storage.write_bytes(calls_uri, _parquet_bytes(pa.Table.from_pandas(df, preserve_index=False)))

    # Segments: streamed unit by unit into parts of bounded size, in the order units were cut.
    sschema = segments_schema(labels)
    seg_dir = io.join(output, f"segments/{part_dir}")
    written: list[str] = []
    batch: list[pa.Table] = []
    rows = 0

    def write_part() -> None:
        nonlocal batch, rows
        uri = io.join(seg_dir, f"{run_id}-part-{len(written):05d}.parquet")
        storage.write_bytes(uri, _parquet_bytes(pa.concat_tables(batch) if batch else sschema.empty_table()))
        written.append(uri)
        batch, rows = [], 0

    for u in unit_ids:
        t = _read_parquet(storage, io.join(unit_dir(staging, u, ref_key), "segments.parquet")).cast(sschema)
        if t.num_rows:
            batch.append(t)
            rows += t.num_rows
        if rows >= SEGMENT_ROWS_PER_PART:
            write_part()
    if batch or not written:
        write_part()
    # Parts of an earlier attempt of this run beyond the ones just written would duplicate rows.
    if storage.exists_dir(seg_dir):
        for uri in list(storage.walk(seg_dir)):
            name = uri.rsplit("/", 1)[-1]
            if name.startswith(f"{run_id}-part-") and uri not in written:
                storage.delete(uri)
    counts = dict(Counter(df["status"]))
    return {"calls": len(df), "counts": counts, "calls_df": df, "metadata_unmatched": unmatched,
            "outputs": {"calls": calls_uri, "segments": written}}


def _transcribe(cfg: ScoreConfig, storage: io.Storage, output: str, run_date: str, run_id: str,
                model: ModelInfo, published: dict[str, Any], settings: dict[str, Any],
                progress: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The night's transcripts (``cfg.transcribe``), after publishing: the spans chosen from the
    published segments, transcribed in Ray tasks, written whole to
    ``transcripts/run_date=D/<run_id>.parquet``."""
    from ser_ray import transcribe

    calls = published["calls_df"]
    wanted = set(transcribe.chosen_calls(calls, cfg.transcribe)["call_id"])
    segs = published_segments(storage, published["outputs"]["segments"], wanted)
    jobs = transcribe.plan(calls, segs, model.labels, cfg.transcribe, cfg.urgency)
    log(f"transcribing {sum(len(j['spans']) for j in jobs)} span(s) of {len(jobs)} call(s) "
        f"with {cfg.transcribe.model}")

    def show(done: int, total: int) -> None:
        if progress:
            log(f"transcripts: {done}/{total} calls")

    df = transcribe.run_transcripts(cfg.transcribe, jobs, settings, run_id, show)
    uri = io.join(output, f"transcripts/run_date={run_date}/{run_id}.parquet")
    storage.write_bytes(uri, _parquet_bytes(pa.Table.from_pandas(
        df, schema=transcribe.transcripts_schema(), preserve_index=False)))
    return df, {"model": cfg.transcribe.model, "segments": cfg.transcribe.segments,
                "calls": len(jobs), "spans": int(df["start_s"].notna().sum()),
                "errors": int(df["error"].notna().sum()),
                "languages": dict(Counter(df["language"].dropna())), "uri": uri}


def published_segments(storage: io.Storage, uris: Sequence[str], call_ids: set[str]) -> pd.DataFrame:
    """The rows of ``call_ids`` in the night's published segment parts (``uris``)."""
    parts = [t[t["call_id"].isin(call_ids)] for t in
             (_read_parquet(storage, uri).to_pandas() for uri in uris)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["call_id"])


def _write_report(storage: io.Storage, output: str, run: dict[str, Any], calls: pd.DataFrame,
                  labels: list[str], top: int, transcripts: pd.DataFrame | None = None) -> None:
    """The human report: Markdown listing the most urgent calls with a chart beside it, and the
    night's self-contained HTML page (timelines of the top calls, transcripts when made)."""
    from ser_ray.score_html import render_html
    from ser_ray.score_report import render

    base = f"reports/run_date={run['run_date']}/{run['run_id']}"
    chart, page = f"{run['run_id']}.png", f"{run['run_id']}.html"
    known = set(calls_schema(labels).names) | {"urgency_rank"}
    extra = [c for c in calls.columns if c not in known]
    md, png = render(calls, labels, run, top=top, chart_name=chart, extra_columns=extra,
                     transcripts=transcripts, html_name=page)
    wanted = set(calls.loc[calls["status"] == SCORED].sort_values("urgency_rank")["call_id"].head(top))
    segments = published_segments(storage, run["outputs"]["segments"], wanted)
    doc = render_html(calls, labels, run, segments=segments, transcripts=transcripts, top=top,
                      extra_columns=extra, index_href="../index.html")
    storage.write_bytes(io.join(output, f"{base}.png"), png)
    storage.write_bytes(io.join(output, f"{base}.md"), md.encode())
    storage.write_bytes(io.join(output, f"{base}.html"), doc.encode())
    run["outputs"]["report"] = io.join(output, f"{base}.md")
    run["outputs"]["report_html"] = io.join(output, f"{base}.html")


def write_index(storage: io.Storage, output: str) -> str:
    """``reports/index.html``: every night with a page, from the run records in ``runs/``."""
    from ser_ray.score_html import render_index

    nights = []
    runs_dir = io.join(output, "runs")
    for uri in sorted(storage.walk(runs_dir)) if storage.exists_dir(runs_dir) else []:
        if not uri.endswith(".json"):
            continue
        try:
            run = json.loads(storage.read_bytes(uri))
        except (ValueError, OSError):  # a record being written: listed next night
            continue
        page = (run.get("outputs") or {}).get("report_html")
        if not page:
            continue
        top = (run.get("top_calls") or [{}])[0].get("call_id")
        nights.append({"run_date": run.get("run_date"), "run_id": run.get("run_id"),
                       "href": f"run_date={run.get('run_date')}/{page.rsplit('/', 1)[-1]}",
                       "counts": run.get("counts"), "calls": run.get("calls"), "top_call": top})
    uri = io.join(output, "reports/index.html")
    storage.write_bytes(uri, render_index(nights).encode())
    return uri


def read_calls(output: str | os.PathLike, run_date: str | None = None, storage: io.Storage | None = None) -> pd.DataFrame:
    """Every published call row under ``output`` (one night with ``run_date``), with run_date."""
    return _read_table(output, "calls", run_date, storage)


def read_transcripts(output: str | os.PathLike, run_date: str | None = None,
                     storage: io.Storage | None = None) -> pd.DataFrame:
    """Every published transcript row under ``output`` (one night with ``run_date``)."""
    return _read_table(output, "transcripts", run_date, storage)


def read_segments(output: str | os.PathLike, run_date: str | None = None,
                  storage: io.Storage | None = None) -> pd.DataFrame:
    """Every published segment row under ``output`` (one night with ``run_date``), with run_date."""
    return _read_table(output, "segments", run_date, storage)


def _read_table(output: str | os.PathLike, table: str, run_date: str | None, storage: io.Storage | None) -> pd.DataFrame:
    storage = storage or io.Storage()
    frames = [_read_parquet(storage, uri).to_pandas().assign(run_date=night)
              for night, uri in published(storage, str(output), table) if not run_date or night == run_date]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
