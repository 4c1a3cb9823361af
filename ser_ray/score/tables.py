"""The night's tables: the schemas of staged and published rows, a unit's staged files, and the
readers of what a night published (committed runs only, ``ser_ray.score.commit``)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser_ray.schema import NO_SPEECH, SCORED
from ser_ray.score.commit import published
from ser_ray.storage import Storage, join
from ser_ray.urgency import PROB_PREFIX


SEGMENT_ROWS_PER_PART = 1_000_000


def segments_schema(labels: Sequence[str]) -> pa.Schema:
    return pa.schema([("call_id", pa.string()), ("channel", pa.string()),
                      ("speaker", pa.string()),  # customer (its channel or voice) | mixed (downmix)
                      ("segment_index", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                      *[(f"{PROB_PREFIX}{lab}", pa.float32()) for lab in labels],
                      ("label", pa.string()), ("confidence", pa.float32()),
                      ("top_label", pa.string()), ("second_label", pa.string()),
                      ("margin", pa.float32()),
                      ("ood_distance", pa.float32()),  # from the training rows (models/drift.py)
                      ("run_id", pa.string())])


SUMMARY_FLOATS = ("speech_s", "negative_peak", "negative_mean", "negative_share", "longest_negative_s",
                  "calm_mean", "peak_start_s", "urgency_score", "uncertain_share")


def calls_schema(labels: Sequence[str]) -> pa.Schema:
    """Columns of a staged call row; publishing adds ``urgency_rank`` and metadata columns."""
    return pa.schema([
        ("call_id", pa.string()), ("uri", pa.string()), ("size_bytes", pa.int64()),
        ("status", pa.string()), ("reason", pa.string()),
        ("duration_s", pa.float64()), ("sample_rate", pa.int32()), ("channels", pa.int32()),
        ("format", pa.string()), ("codec", pa.string()), ("channel", pa.string()),
        # a mono call split into voices (ser_ray.speakers): whose speech, and how it was decided
        ("customer_speech_s", pa.float64()), ("agent_speech_s", pa.float64()),
        ("diarization", pa.string()), ("diarization_confidence", pa.float64()),
        ("diarization_reason", pa.string()),
        ("n_segments", pa.int32()),
        *[(f"share_{lab}", pa.float64()) for lab in labels],
        *[(name, pa.float64()) for name in SUMMARY_FLOATS],
        ("normalised_by", pa.string()),  # the statistics its windows were standardised with
        ("ood_share", pa.float64()),     # share of its windows out of the training distribution
        ("model_id", pa.string()), ("model_hash", pa.string()), ("run_id", pa.string()),
    ])


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def stage_unit(storage: Storage, base: str, segments: pa.Table, calls: pa.Table,
               extra: dict[str, bytes] | None = None) -> None:
    """A unit's staged rows: segments and ``extra`` files first, then the calls file, which
    marks the unit done."""
    storage.write_bytes(join(base, "segments.parquet"), parquet_bytes(segments))
    for name, data in (extra or {}).items():
        storage.write_bytes(join(base, name), data)
    storage.write_bytes(join(base, "calls.parquet"), parquet_bytes(calls))


def read_parquet(storage: Storage, uri: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=columns)


def unit_dir(staging: str, unit_id: str, key: str | None = None) -> str:
    """Where a unit's staged files go: scored rows of a run with reference statistics go in a
    folder named by them, so a rerun whose statistics differ cannot reuse them."""
    base = join(staging, f"units/{unit_id}")
    return join(base, f"ref-{key}") if key else base


def staged_stats(storage: Storage, uri: str) -> dict[str, Any]:
    t = read_parquet(storage, uri, ["status", "duration_s"]).to_pandas()
    ok = t["status"].isin([SCORED, NO_SPEECH])
    return {"status": dict(Counter(t["status"])), "audio_s": float(t.loc[ok, "duration_s"].fillna(0).sum())}


def published_segments(storage: Storage, uris: Sequence[str], call_ids: set[str]) -> pd.DataFrame:
    """The rows of ``call_ids`` in the night's published segment parts (``uris``)."""
    parts = [t[t["call_id"].isin(call_ids)] for t in
             (read_parquet(storage, uri).to_pandas() for uri in uris)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["call_id"])


def read_calls(output: str | os.PathLike, run_date: str | None = None, storage: Storage | None = None) -> pd.DataFrame:
    """Every published call row under ``output`` (one night with ``run_date``), with run_date."""
    return _read_table(output, "calls", run_date, storage)


def read_transcripts(output: str | os.PathLike, run_date: str | None = None,
                     storage: Storage | None = None) -> pd.DataFrame:
    """Every published transcript row under ``output`` (one night with ``run_date``)."""
    return _read_table(output, "transcripts", run_date, storage)


def read_segments(output: str | os.PathLike, run_date: str | None = None,
                  storage: Storage | None = None) -> pd.DataFrame:
    """Every published segment row under ``output`` (one night with ``run_date``), with run_date."""
    return _read_table(output, "segments", run_date, storage)


def _read_table(output: str | os.PathLike, table: str, run_date: str | None, storage: Storage | None) -> pd.DataFrame:
    storage = storage or Storage()
    frames = [read_parquet(storage, uri).to_pandas().assign(run_date=night)
              for night, uri in published(storage, str(output), table) if not run_date or night == run_date]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
