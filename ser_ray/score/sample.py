"""``ser-ray sample``: choose segments of scored nights for a person to label, and write the
labelling folder.

From the committed nights of a ``score`` output (``--run-date`` to pick some), ``n`` segments are
chosen in three parts (``mix``): the **urgent** part takes the worst moments (highest negative
emotion ``n_t``) of the most urgent calls, nights interleaved by rank; the **uncertain** part the
segments whose calibrated top-2 margin is smallest; the **random** part a sample stratified by
predicted label (round robin over the labels, a seeded shuffle within each). No segment is
chosen twice, no call gives more than ``per_call`` and no night more than ``per_night``. The
same nights, config and seed choose the same segments.

The folder (``--output``, local)::

    sheet.csv      one row per segment: segment_id, run_date, call_id, segment_index, start_s,
                   end_s, clip, clip_start_s (where the segment starts in its clip), predicted,
                   probability, margin, why, prob_<label> per model label, label and note (empty)
    clips/NNNN.flac  the customer channel, ``context_s`` either side, 16 kHz FLAC (from s3://
                   outputs too: the clips are copied here)
    label.html     the labelling page (``score.labelpage``): a player per clip, the label set as
                   buttons with keyboard shortcuts, progress, a button that saves the sheet
    sample.json    what was asked, the choice (ids, reason), counts, seed, versions
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ser_ray.config import SampleConfig, from_dict
from ser_ray.console import logger
from ser_ray.runtime import versions
from ser_ray.schema import SCORED, error_detail
from ser_ray.storage import Storage, is_s3
from ser_ray.urgency import PROB_PREFIX, negative_emotion

log = logger("sample")
CLIP_RATE = 16000
UNCLEAR = "unclear"
SHEET_COLUMNS = ("segment_id", "run_date", "call_id", "segment_index", "start_s", "end_s", "clip",
                 "clip_start_s", "predicted", "probability", "margin", "why")


def _nights(storage: Storage, scored: str, run_dates: tuple[str, ...]) -> list[dict[str, Any]]:
    """The committed run records under ``scored`` (the nights asked for), oldest first."""
    from ser_ray.score.commit import committed_record, committed_runs

    runs = [committed_record(storage, scored, r) for r in sorted(committed_runs(storage, scored))]
    if run_dates:
        missing = sorted(set(run_dates) - {r["run_date"] for r in runs})
        if missing:
            raise ValueError(f"sample: no committed night {missing} under {scored}; it has "
                             f"{sorted({r['run_date'] for r in runs})}")
        runs = [r for r in runs if r["run_date"] in run_dates]
    if not runs:
        raise ValueError(f"sample: no committed night under {scored}; run `ser-ray score` first")
    labels = {tuple(r["labels"]) for r in runs}
    if len(labels) > 1:
        raise ValueError(f"sample: the nights were scored with models of different labels "
                         f"{sorted(labels)}; sample them one model at a time")
    return sorted(runs, key=lambda r: (r["run_date"], r["run_id"]))


def candidates(storage: Storage, runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Every window of every scored call of the nights, with its call's rank and its ``n_t``."""
    from ser_ray.score.tables import read_parquet
    from ser_ray.urgency import UrgencyConfig

    frames = []
    for run in runs:
        labels = list(run["labels"])
        calls = read_parquet(storage, run["outputs"]["calls"]).to_pandas()
        calls = calls[calls["status"] == SCORED][["call_id", "uri", "urgency_rank", "urgency_score"]]
        segs = pd.concat([read_parquet(storage, u).to_pandas() for u in run["outputs"]["segments"]],
                         ignore_index=True)
        segs = segs.merge(calls, on="call_id", how="inner", validate="many_to_one")
        cfg = from_dict(UrgencyConfig, (run.get("config") or {}).get("urgency") or {})
        segs["n_t"] = negative_emotion(segs[[f"{PROB_PREFIX}{lab}" for lab in labels]].to_numpy(),
                                       labels, cfg)
        segs["run_date"] = run["run_date"]
        segs["run_id"] = run["run_id"]
        frames.append(segs)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out["segment_id"] = (out["run_date"] + "/" + out["call_id"].astype(str) + "/"
                         + out["segment_index"].astype(str))
    return out.sort_values(["run_date", "urgency_rank", "segment_index"], kind="mergesort"
                           ).reset_index(drop=True)


class _Picker:
    """The choice so far, with the per-call and per-night caps."""

    def __init__(self, cfg: SampleConfig):
        self.cfg, self.rows, self.why = cfg, [], []
        self.per_call: dict[tuple[str, str], int] = {}
        self.per_night: dict[str, int] = {}
        self.taken: set[str] = set()

    def take(self, row, why: str) -> bool:
        call, night = (row.run_date, row.call_id), row.run_date
        if (row.segment_id in self.taken or self.per_call.get(call, 0) >= self.cfg.per_call
                or (self.cfg.per_night and self.per_night.get(night, 0) >= self.cfg.per_night)):
            return False
        self.taken.add(row.segment_id)
        self.per_call[call] = self.per_call.get(call, 0) + 1
        self.per_night[night] = self.per_night.get(night, 0) + 1
        self.rows.append(row.Index)
        self.why.append(why)
        return True


def choose(pool: pd.DataFrame, cfg: SampleConfig) -> pd.DataFrame:
    """The chosen rows of ``pool`` (:func:`candidates`) with a ``why`` column, in choice order."""
    rng = np.random.default_rng(cfg.seed)
    total = sum(cfg.mix.values())
    quota = {k: int(round(cfg.n * v / total)) for k, v in cfg.mix.items()}
    quota["random"] = cfg.n - quota.get("urgent", 0) - quota.get("uncertain", 0)
    pick = _Picker(cfg)

    def fill(order: pd.DataFrame, why: str, want: int) -> None:
        got = 0
        for row in order.itertuples():
            if got >= want:
                return
            got += pick.take(row, why)

    # urgent: each night's calls by rank, nights interleaved; within a call its worst windows
    worst = pool.sort_values(["urgency_rank", "run_date", "n_t"], ascending=[True, True, False],
                             kind="mergesort")
    fill(worst, "urgent", quota.get("urgent", 0))
    margin = pool["margin"].fillna(1.0)
    fill(pool.assign(_m=margin).sort_values(["_m", "segment_id"], kind="mergesort"), "uncertain",
         quota.get("uncertain", 0))
    # random, stratified by predicted label: a seeded shuffle per label, then round robin
    shuffled = pool.iloc[rng.permutation(len(pool))]
    strata = [g for _, g in sorted(shuffled.groupby("label", sort=True), key=lambda kv: kv[0])]
    turns = pd.concat([g.assign(_turn=np.arange(len(g))) for g in strata]) if strata else shuffled
    if len(turns):
        turns = turns.sort_values(["_turn", "label"], kind="mergesort")
    left = cfg.n - len(pick.rows)
    fill(turns, "random", left)
    out = pool.loc[pick.rows].copy()
    out["why"] = pick.why
    return out.reset_index(drop=True)


def write_clips(storage: Storage, chosen: pd.DataFrame, runs: list[dict[str, Any]], folder: Path,
                cfg: SampleConfig) -> tuple[list[str | None], list[float | None], dict[str, str]]:
    """Each chosen segment's clip (its call read once, as the night read it) -> (clip paths
    relative to ``folder``, where each segment starts in its clip, {segment_id: why no clip})."""
    import soundfile as sf

    from ser_ray.score.backlog import Call
    from ser_ray.score.read import CallReader
    from ser_ray.score.settings import settings_from_record

    by_run = {r["run_id"]: r for r in runs}
    paths: list[str | None] = [None] * len(chosen)
    starts: list[float | None] = [None] * len(chosen)
    missing: dict[str, str] = {}
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    for (run_id, call_id, uri), group in chosen.groupby(["run_id", "call_id", "uri"], sort=False):
        reader = CallReader(settings_from_record(by_run[run_id], cfg.s3), CLIP_RATE)
        got: dict[str, Any] = {}
        try:
            y = reader.load(Call(call_id, uri, -1), got)
        except Exception as exc:  # the sheet keeps the row; the page says there is no clip
            y, got["reason"] = None, error_detail(exc)
        for k, row in group.iterrows():
            if y is None:
                missing[row.segment_id] = f"{got.get('status')}: {got.get('reason')}"
                continue
            a = max(float(row.start_s) - cfg.context_s, 0.0)
            b = min(float(row.end_s) + cfg.context_s, len(y) / CLIP_RATE)
            name = f"clips/{k + 1:04d}.flac"
            sf.write(folder / name, y[int(a * CLIP_RATE):int(b * CLIP_RATE)], CLIP_RATE,
                     format="FLAC", subtype="PCM_16")
            paths[k], starts[k] = name, round(float(row.start_s) - a, 3)
    return paths, starts, missing


def run_sample(cfg: SampleConfig) -> dict[str, Any]:
    """Choose, cut the clips and write the labelling folder; returns what ``sample.json`` says."""
    from ser_ray.score.labelpage import render_label_page
    from ser_ray.storage import write_text_atomic

    if not cfg.scored:
        raise ValueError("sample: give --scored OUTPUT (a `score` output folder or s3:// prefix)")
    if not cfg.output or is_s3(cfg.output):
        raise ValueError("sample: give --output DIR, a local folder (clips are copied into it)")
    storage = Storage(cfg.s3)
    scored = cfg.scored.rstrip("/") if is_s3(cfg.scored) else str(Path(cfg.scored).absolute())
    runs = _nights(storage, scored, cfg.run_dates)
    labels = list(runs[0]["labels"])
    pool = candidates(storage, runs)
    if pool.empty:
        raise ValueError(f"sample: the nights {[r['run_date'] for r in runs]} have no scored segment")
    chosen = choose(pool, cfg)
    folder = Path(cfg.output)
    if (folder / "sheet.csv").exists():
        raise FileExistsError(f"sample: {folder}/sheet.csv exists (labels may be in it); choose "
                              "another --output or move it away")
    folder.mkdir(parents=True, exist_ok=True)
    clips, starts, missing = write_clips(storage, chosen, runs, folder, cfg)
    sheet = pd.DataFrame({
        "segment_id": chosen["segment_id"], "run_date": chosen["run_date"],
        "call_id": chosen["call_id"], "segment_index": chosen["segment_index"],
        "start_s": chosen["start_s"].round(3), "end_s": chosen["end_s"].round(3),
        "clip": clips, "clip_start_s": starts,
        "predicted": chosen["label"], "probability": chosen["confidence"].astype(float).round(4),
        "margin": chosen["margin"].astype(float).round(4), "why": chosen["why"],
        **{f"{PROB_PREFIX}{lab}": chosen[f"{PROB_PREFIX}{lab}"].astype(float).round(4)
           for lab in labels},
        "label": "", "note": ""})
    team = list(cfg.labels) or [*labels, UNCLEAR]
    record = {"scored": scored, "nights": [r["run_date"] for r in runs],
              "runs": [r["run_id"] for r in runs], "model_hash": runs[0]["model_hash"],
              "model_labels": labels, "labels": team, "label_map": dict(cfg.label_map),
              "unclear": UNCLEAR, "n_asked": cfg.n, "n": len(sheet), "candidates": len(pool),
              "counts": {k: int(v) for k, v in sheet["why"].value_counts().items()},
              "clips_missing": missing, "config": dataclasses.asdict(cfg) | {"s3": None},
              "seed": cfg.seed, "versions": versions(),
              "chosen": [[s, w] for s, w in zip(sheet["segment_id"], sheet["why"])]}
    write_text_atomic(sheet.to_csv(index=False), folder / "sheet.csv")
    # the page holds the sheet's cells as written, so what it saves differs only where labelled
    as_written = pd.read_csv(folder / "sheet.csv", dtype=str, keep_default_na=False)
    write_text_atomic(render_label_page(as_written, team), folder / "label.html")
    write_text_atomic(json.dumps(record, indent=2, default=str), folder / "sample.json")
    if len(sheet) < cfg.n:
        log(f"only {len(sheet)} of the {cfg.n} segments asked for could be chosen ({len(pool)} "
            f"candidates; per_call={cfg.per_call}, per_night={cfg.per_night})")
    log(f"{len(sheet)} segments ({', '.join(f'{k} {v}' for k, v in record['counts'].items())}) "
        f"from {len(runs)} night(s) -> {folder}/label.html")
    return record

