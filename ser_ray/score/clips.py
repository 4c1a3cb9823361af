"""Hear it: a short clip of each top call's worst moment for the report page.

The customer's channel (read again with the scoring code), ``clip_context_s`` either side of the
peak window, at 16 kHz, compressed to Ogg/Opus (libsndfile's encoder, ``audio.encode``). Clips
sit beside the page in ``reports/run_date=D/<run_id>-clips/``, so they share its storage and
whatever retention removes the night's reports removes them too. ``report.clips: false`` makes
none, where policy forbids audio in reports.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ser_ray.config import ReportConfig
from ser_ray.schema import SCORED, error_detail
from ser_ray.score.backlog import Call
from ser_ray.score.read import CallReader
from ser_ray.score.settings import WorkerSettings

CLIP_RATE = 16000


def make_clips(calls: pd.DataFrame, top: int, settings: WorkerSettings, cfg: ReportConfig
               ) -> tuple[dict[str, tuple[bytes, float, float]], dict[str, str]]:
    """The ``top`` best-ranked scored calls -> ({call_id: (Ogg/Opus bytes, start_s, end_s)},
    {call_id: why there is no clip})."""
    from ser_ray import audio

    ranked = calls[calls["status"] == SCORED].sort_values("urgency_rank", kind="mergesort")
    reader = CallReader(settings, CLIP_RATE)
    clips: dict[str, tuple[bytes, float, float]] = {}
    missing: dict[str, str] = {}
    for row in ranked.head(max(int(top), 0)).itertuples(index=False):
        got: dict[str, Any] = {}
        try:
            y = reader.load(Call(row.call_id, row.uri, -1), got)
            if y is None:
                missing[row.call_id] = f"{got.get('status')}: {got.get('reason')}"
                continue
            peak = float(row.peak_start_s) if pd.notna(row.peak_start_s) else 0.0
            a = max(peak - cfg.clip_context_s, 0.0)
            b = min(peak + settings.window_s + cfg.clip_context_s, len(y) / CLIP_RATE)
            piece = y[int(a * CLIP_RATE):int(b * CLIP_RATE)]
            if not len(piece):
                missing[row.call_id] = "no audio at the peak"
                continue
            clips[row.call_id] = (audio.encode(piece, CLIP_RATE, "opus", cfg.clip_kbps), a, b)
        except Exception as exc:  # a clip is a convenience: the night goes on without it
            missing[row.call_id] = error_detail(exc)
    return clips, missing
