"""The night's transcripts stage (``transcribe`` in a score config), after publishing: the calls
and spans to transcribe are chosen from the published rows; Ray tasks read, decode and pick the
scored channel of each call exactly as scoring did (:meth:`CallReader.load`), cut the spans and
transcribe them with the process's one Whisper (``ser_ray.transcribe.transcriber``)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ser_ray.config import ScoreConfig, TranscribeConfig
from ser_ray.console import logger
from ser_ray.schema import SCORED, error_detail
from ser_ray.score.backlog import Call
from ser_ray.score.model import ModelInfo
from ser_ray.score.read import CallReader
from ser_ray.score.settings import WorkerSettings
from ser_ray.score.tables import parquet_bytes, published_segments
from ser_ray.storage import Storage, join
from ser_ray.transcribe import SAMPLE_RATE, transcriber
from ser_ray.urgency import PROB_PREFIX, negative_emotion

log = logger("score")



@dataclasses.dataclass(frozen=True)
class TranscriptJob:
    """One published call to transcribe: its id, its file, the channel scoring used, and the
    spans (start, end in seconds, in time order) of it to transcribe (:func:`spans`)."""

    call_id: str
    uri: str
    channel: str
    spans: tuple[tuple[float, float], ...]


def spans(start_s: np.ndarray, end_s: np.ndarray, negative: np.ndarray, cfg: TranscribeConfig,
          duration_s: float) -> list[tuple[float, float]]:
    """The spans of one call's scored channel to transcribe, in time order, from its segments
    (start, end, negative emotion ``n_t`` of :func:`ser_ray.urgency.negative_emotion`):
    ``all``: every segment, merged where they touch, cut at ``max_span_s``; ``top``: the
    ``moments_per_call`` segments with the most negative emotion (earliest on ties), each widened
    by ``context_s`` on both sides, merged where they overlap."""
    start_s, end_s = np.asarray(start_s, float), np.asarray(end_s, float)
    if not len(start_s):
        return []
    if cfg.segments == "all":
        raw = list(zip(start_s, end_s))
    else:
        best = np.lexsort((start_s, -np.asarray(negative, float)))[:cfg.moments_per_call]
        raw = [(max(0.0, start_s[k] - cfg.context_s), min(duration_s, end_s[k] + cfg.context_s))
               for k in best]
    merged: list[list[float]] = []
    for a, b in sorted(raw):
        if merged and a <= merged[-1][1] + 1e-6:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out = []
    for a, b in merged:  # cut what is too long for one window
        while b - a > cfg.max_span_s + 1e-6:
            out.append((float(a), float(a + cfg.max_span_s)))
            a += cfg.max_span_s
        out.append((float(a), float(b)))
    return out


def transcribe_group(jobs: list[TranscriptJob], cfg: TranscribeConfig,
                     settings: WorkerSettings) -> list[dict[str, Any]]:
    """One Ray task: calls to transcribe -> transcript rows; a call that cannot be read again
    gets one row with its error in ``error``."""
    import torch

    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    reader = CallReader(settings, SAMPLE_RATE)
    model = transcriber(cfg.model, cfg.device, cfg.dtype, cfg.language, cfg.max_new_tokens,
                        cfg.batch_size)
    from ser_ray.redact import Redactor

    redactor = Redactor(cfg.redact_max_digits, tuple(cfg.phone_regions)) if cfg.redact else None
    rows: list[dict[str, Any]] = []
    for job in jobs:
        base = {"call_id": job.call_id, "channel": job.channel}
        got: dict[str, Any] = {}
        try:
            y = reader.load(Call(job.call_id, job.uri, -1), got)
        except Exception as exc:  # a bug: say what broke, lose nothing
            y, got["reason"] = None, error_detail(exc)
        if y is None:  # changed or gone since scoring: say so
            rows.append({**base, "start_s": None, "end_s": None, "text": None, "language": None,
                         "error": f"{got.get('status') or 'error'}: {got.get('reason')}"})
            continue
        clips = [y[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] for a, b in job.spans]
        for (a, b), (text, lang) in zip(job.spans, model.transcribe(clips)):
            # redacted here, in the task: the words as spoken never leave this process
            found = {}
            if redactor is not None:
                text, found = redactor(text)
            rows.append({**base, "start_s": round(a, 3), "end_s": round(b, 3), "text": text,
                         "language": lang, "error": None, "redactions": sum(found.values()),
                         "_entities": dict(found)})
    return rows


TRANSCRIPT_COLUMNS = ("call_id", "channel", "start_s", "end_s", "text", "language", "error",
                      "redactions", "run_id")


def transcripts_schema():
    import pyarrow as pa

    return pa.schema([("call_id", pa.string()), ("channel", pa.string()), ("start_s", pa.float64()),
                      ("end_s", pa.float64()), ("text", pa.string()), ("language", pa.string()),
                      ("error", pa.string()), ("redactions", pa.int32()), ("run_id", pa.string())])


def chosen_calls(calls, cfg: TranscribeConfig):
    """The calls to transcribe, best-ranked first: ``top``: the ``top_calls`` best-ranked scored
    calls; ``all``: every scored call."""
    scored = calls[calls["status"] == SCORED].sort_values("urgency_rank", kind="mergesort")
    return scored.head(cfg.top_calls) if cfg.segments == "top" else scored


def plan(calls, segments, labels: Sequence[str], cfg: TranscribeConfig, urgency=None
         ) -> list[TranscriptJob]:
    """The published calls (ranked) and their segments -> one job per call to transcribe
    (:func:`chosen_calls`), with its spans (:func:`spans`)."""
    scored = chosen_calls(calls, cfg)
    by_call = {k: g for k, g in segments.groupby("call_id", sort=False)} if len(segments) else {}
    jobs = []
    for row in scored.itertuples(index=False):
        seg = by_call.get(row.call_id)
        if seg is None or seg.empty:
            continue
        seg = seg.sort_values("start_s", kind="mergesort")
        neg = negative_emotion(seg[[f"{PROB_PREFIX}{lab}" for lab in labels]].to_numpy(float),
                               labels, urgency)
        todo = spans(seg["start_s"].to_numpy(), seg["end_s"].to_numpy(), neg, cfg,
                     float(row.duration_s))
        if todo:
            jobs.append(TranscriptJob(row.call_id, row.uri, row.channel, tuple(todo)))
    return jobs


def run_transcripts(cfg: TranscribeConfig, jobs: list[TranscriptJob], settings: WorkerSettings,
                    run_id: str, progress=None):
    """Transcribe ``jobs`` in Ray tasks (``calls_per_task`` calls each, ``cpus_per_worker`` /
    ``gpus_per_worker`` per task) -> a pandas table of :data:`TRANSCRIPT_COLUMNS`, ordered as
    the jobs (rank, then time)."""
    import ray

    task = ray.remote(transcribe_group).options(num_cpus=cfg.cpus_per_worker,
                                                 num_gpus=cfg.gpus_per_worker)
    groups = [jobs[i:i + cfg.calls_per_task] for i in range(0, len(jobs), cfg.calls_per_task)]
    refs = [task.remote(g, cfg, settings) for g in groups]
    index = {r: k for k, r in enumerate(refs)}
    results: list[list[dict[str, Any]] | None] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        k = index[done[0]]
        try:
            results[k] = ray.get(done[0])
        except ray.exceptions.RayError as exc:  # the night's scores are published: keep them,
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"  # say why
            results[k] = [{"call_id": j.call_id, "channel": j.channel, "start_s": None,
                           "end_s": None, "text": None, "language": None, "error": why}
                          for j in groups[k]]
        if progress:
            progress(sum(len(g) for g, r in zip(groups, results) if r is not None), len(jobs))
    rows = [{**r, "run_id": run_id} for part in results for r in part or []]
    entities: Counter = Counter()
    for r in rows:
        entities.update(r.pop("_entities", None) or {})
    df = pd.DataFrame(rows, columns=list(TRANSCRIPT_COLUMNS))
    df.attrs["entities"] = dict(entities)
    return df


def transcribe_night(cfg: ScoreConfig, storage: Storage, output: str, run_date: str, run_id: str,
                model: ModelInfo, published: dict[str, Any], settings: WorkerSettings,
                progress: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The night's transcripts (``cfg.transcribe``), after publishing: the spans chosen from the
    published segments, transcribed in Ray tasks, written whole to
    ``transcripts/run_date=D/<run_id>.parquet``."""
    calls = published["calls_df"]
    wanted = set(chosen_calls(calls, cfg.transcribe)["call_id"])
    segs = published_segments(storage, published["outputs"]["segments"], wanted)
    jobs = plan(calls, segs, model.labels, cfg.transcribe, cfg.urgency)
    log(f"transcribing {sum(len(j.spans) for j in jobs)} span(s) of {len(jobs)} call(s) "
        f"with {cfg.transcribe.model}")

    def show(done: int, total: int) -> None:
        if progress:
            log(f"transcripts: {done}/{total} calls")

    df = run_transcripts(cfg.transcribe, jobs, settings, run_id, show)
    uri = join(output, f"transcripts/run_date={run_date}/{run_id}.parquet")
    storage.write_bytes(uri, parquet_bytes(pa.Table.from_pandas(
        df, schema=transcripts_schema(), preserve_index=False)))
    return df, {"model": cfg.transcribe.model, "segments": cfg.transcribe.segments,
                "calls": len(jobs), "spans": int(df["start_s"].notna().sum()),
                "errors": int(df["error"].notna().sum()),
                "languages": dict(Counter(df["language"].dropna())),
                "redaction": redaction_record(cfg.transcribe, df.attrs.get("entities", {})),
                "uri": uri}


def redaction_record(cfg: TranscribeConfig, entities: dict[str, int]) -> dict[str, Any]:
    """The run record's word on redaction: on or off, what was replaced, and by what."""
    if not cfg.redact:
        return {"on": False}
    from importlib.metadata import version

    return {"on": True, "entities": dict(sorted(entities.items())),
            "max_digits": cfg.redact_max_digits, "phone_regions": list(cfg.phone_regions),
            "libraries": {p: version(p) for p in ("python-stdnum", "phonenumbers")}}
