"""Publishing a night: staged units -> the calls file and segment parts, the reports (Markdown,
chart, HTML page) and the index of nights."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ser_ray.config import ScoreConfig
from ser_ray.schema import SCORED
from ser_ray.score.model import ModelInfo
from ser_ray.score.tables import (SEGMENT_ROWS_PER_PART, calls_schema, parquet_bytes,
                                  published_segments, read_parquet, segments_schema, unit_dir)
from ser_ray.storage import Storage, join
from ser_ray.urgency import rank


def publish(cfg: ScoreConfig, storage: Storage, output: str, staging: str, run_date: str,
            run_id: str, model: ModelInfo, unit_ids: list[str], extra_rows: list[dict[str, Any]],
            metadata: pd.DataFrame | None, versions: dict[str, str], ref_key: str | None = None
            ) -> dict[str, Any]:
    """Staged units -> the run's calls file and segment parts (each written whole)."""
    labels = model.labels
    cschema = calls_schema(labels)
    parts = [read_parquet(storage, join(unit_dir(staging, u, ref_key), "calls.parquet")) for u in unit_ids]
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
    calls_uri = join(output, f"calls/{part_dir}/{run_id}.parquet")
    storage.write_bytes(calls_uri, parquet_bytes(pa.Table.from_pandas(df, preserve_index=False)))

    # Segments: streamed unit by unit into parts of bounded size, in the order units were cut.
    sschema = segments_schema(labels)
    seg_dir = join(output, f"segments/{part_dir}")
    written: list[str] = []
    batch: list[pa.Table] = []
    rows = 0

    def write_part() -> None:
        nonlocal batch, rows
        uri = join(seg_dir, f"{run_id}-part-{len(written):05d}.parquet")
        storage.write_bytes(uri, parquet_bytes(pa.concat_tables(batch) if batch else sschema.empty_table()))
        written.append(uri)
        batch, rows = [], 0

    for u in unit_ids:
        t = read_parquet(storage, join(unit_dir(staging, u, ref_key), "segments.parquet")).cast(sschema)
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


def write_report(storage: Storage, output: str, run: dict[str, Any], calls: pd.DataFrame,
                  labels: list[str], top: int, transcripts: pd.DataFrame | None = None,
                  clips: tuple[dict, dict] | None = None) -> None:
    """The human report: Markdown listing the most urgent calls with a chart beside it, and the
    night's self-contained HTML page (timelines of the top calls, transcripts when made, and
    ``clips`` (``score.clips.make_clips``) beside it with a player per call)."""
    from ser_ray.score.html import render_html
    from ser_ray.score.report import render

    base = f"reports/run_date={run['run_date']}/{run['run_id']}"
    chart, page = f"{run['run_id']}.png", f"{run['run_id']}.html"
    known = set(calls_schema(labels).names) | {"urgency_rank"}
    extra = [c for c in calls.columns if c not in known]
    md, png = render(calls, labels, run, top=top, chart_name=chart, extra_columns=extra,
                     transcripts=transcripts, html_name=page)
    wanted = set(calls.loc[calls["status"] == SCORED].sort_values("urgency_rank")["call_id"].head(top))
    segments = published_segments(storage, run["outputs"]["segments"], wanted)
    hrefs: dict[str, tuple[str, float, float]] = {}
    if clips is not None:
        made, missing = clips
        ranked = list(calls.loc[calls["status"] == SCORED].sort_values("urgency_rank")["call_id"])
        for cid, (data, a, b) in made.items():
            name = f"{run['run_id']}-clips/{ranked.index(cid) + 1:03d}.ogg"
            storage.write_bytes(join(output, f"reports/run_date={run['run_date']}/{name}"), data)
            hrefs[cid] = (name, a, b)
        run["clips"] = {"count": len(made), "missing": missing}
        run["outputs"]["clips"] = join(output, f"{base}-clips")
    doc = render_html(calls, labels, run, segments=segments, transcripts=transcripts, top=top,
                      extra_columns=extra, index_href="../index.html", clips=hrefs)
    storage.write_bytes(join(output, f"{base}.png"), png)
    storage.write_bytes(join(output, f"{base}.md"), md.encode())
    storage.write_bytes(join(output, f"{base}.html"), doc.encode())
    run["outputs"]["report"] = join(output, f"{base}.md")
    run["outputs"]["report_html"] = join(output, f"{base}.html")


def write_index(storage: Storage, output: str) -> str:
    """``reports/index.html``: every night with a page, from the run records in ``runs/``."""
    from ser_ray.score.drift import night_summary
    from ser_ray.score.html import render_index

    nights = []
    runs_dir = join(output, "runs")
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
                       "counts": run.get("counts"), "calls": run.get("calls"), "top_call": top,
                       "drift": night_summary(run)})
    uri = join(output, "reports/index.html")
    storage.write_bytes(uri, render_index(nights).encode())
    return uri
