"""The night's report page: one self-contained HTML file per scoring run, and an index across
nights.

:func:`render_html` takes the same per-call table as :func:`ser_ray.score.report.render` (and the
same rules: :func:`~ser_ray.score.report._split` ranks, :func:`~ser_ray.score.report.dominant_negative`
names the emotion, :func:`~ser_ray.score.report.explain_urgency` says how the score is made), plus
the run's segments and, when the run made them, its transcripts. The page holds:

- the run (date, model, counts, audio, time) and the urgent calls, ranked, with metadata columns
  and what the caller said at the worst moment;
- per call: an inline SVG timeline of the emotions over the call (one line per emotion, the
  negative emotion ``n_t`` in bold, the peak marked, transcribed spans shaded), the peak moment
  and the transcript;
- the calls that were not scored, with reasons; how urgency is computed.

No script, no external file, no network: it opens from disk, from an e-mail attachment or from
an object store. :func:`render_index` lists the nights' pages, newest first.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import pandas as pd

from ser_ray.labels import UNCERTAIN
from ser_ray.score.cost import cost_line
from ser_ray.score.report import (SCORED, _cell, _clock, _duration, _label_colors, _missing, _num,
                                  _short_hash, _split, _status_counts, _validate, dominant_negative,
                                  explain_urgency, peak_snippet)
from ser_ray.urgency import PROB_PREFIX, UrgencyConfig, negative_emotion

_W, _H, _PAD = 640, 150, 28  # timeline size in px
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1b1f24;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#57606a}.said{font-style:italic;max-width:28rem}
.call{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.call h3{margin:.2rem 0 .4rem}.legend span{margin-right:.9rem;white-space:nowrap}
.sw{display:inline-block;width:.8rem;height:.8rem;margin-right:.25rem;vertical-align:-1px}
.drift{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.alarm td{background:#fff8c5}
"""


def _e(text: Any) -> str:
    return html.escape("" if _missing(text) else str(text), quote=True)


def _hex(color: Any) -> str:
    from matplotlib.colors import to_hex

    return to_hex(color)


def _player(clip: tuple[str, float, float] | None) -> str:
    """An audio player for a clip beside the page (loaded only when played), or a dash."""
    if not clip:
        return "–"
    href, a, b = clip
    return (f'<audio class="clip" controls preload="none" src="{_e(href)}" '
            f'title="{_clock(a)}–{_clock(b)}"></audio>')


def timeline_svg(segments: pd.DataFrame, labels: Sequence[str], duration_s: float,
                 peak_s: Any, cfg: UrgencyConfig, spans: Sequence[tuple[float, float]] = ()) -> str:
    """An inline SVG of one call: each emotion's probability per window over time (lines at
    window centres), the negative emotion ``n_t`` in bold black, the peak as a red line,
    transcribed spans shaded."""
    colors = {k: _hex(v) for k, v in _label_colors(list(labels), cfg).items()}
    dur = max(float(duration_s or 0.0), 1e-6)
    iw, ih = _W - 2 * _PAD, _H - 2 * _PAD

    def x(t: float) -> float:
        return _PAD + iw * min(max(t / dur, 0.0), 1.0)

    def y(p: float) -> float:
        return _PAD + ih * (1 - min(max(p, 0.0), 1.0))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" role="img" aria-label="emotions over the call">',
             f'<rect x="{_PAD}" y="{_PAD}" width="{iw}" height="{ih}" fill="#fbfbfc" stroke="#d0d7de"/>']
    for a, b in spans:
        parts.append(f'<rect class="span" x="{x(a):.1f}" y="{_PAD}" width="{max(x(b) - x(a), 1):.1f}" '
                     f'height="{ih}" fill="#fff3bf"><title>transcribed {_clock(a)}–{_clock(b)}'
                     f'</title></rect>')
    seg = segments.sort_values("start_s", kind="mergesort")
    if "label" in seg:  # "not sure" windows shaded grey: they add neither anger nor calm
        for a, b in seg.loc[seg["label"] == UNCERTAIN, ["start_s", "end_s"]].to_numpy(float):
            parts.append(f'<rect class="uncertain" x="{x(a):.1f}" y="{_PAD}" '
                         f'width="{max(x(b) - x(a), 1):.1f}" height="{ih}" fill="#e4e4e4">'
                         f'<title>not sure {_clock(a)}–{_clock(b)}</title></rect>')
    if not seg.empty:
        mid = ((seg["start_s"] + seg["end_s"]) / 2).to_numpy(float)
        probs = seg[[f"{PROB_PREFIX}{lab}" for lab in labels]].to_numpy(float)
        for j, lab in enumerate(labels):
            if probs[:, j].max() < 0.05:
                continue  # an emotion never present clutters the chart
            pts = " ".join(f"{x(t):.1f},{y(p):.1f}" for t, p in zip(mid, probs[:, j]))
            parts.append(f'<polyline fill="none" stroke="{colors.get(lab, "#888")}" stroke-width="1.3" '
                         f'points="{pts}"><title>{_e(lab)}</title></polyline>')
        neg = negative_emotion(probs, labels, cfg)
        pts = " ".join(f"{x(t):.1f},{y(p):.1f}" for t, p in zip(mid, neg))
        parts.append(f'<polyline class="negative" fill="none" stroke="#111" stroke-width="2.4" '
                     f'points="{pts}"><title>negative emotion</title></polyline>')
    if not _missing(peak_s):
        px = x(float(peak_s))
        parts.append(f'<line class="peak" x1="{px:.1f}" x2="{px:.1f}" y1="{_PAD - 6}" '
                     f'y2="{_PAD + ih}" stroke="#d1242f" stroke-width="2" stroke-dasharray="4 2"/>'
                     f'<text x="{px + 3:.1f}" y="{_PAD - 9}" font-size="11" fill="#d1242f">'
                     f'peak {_clock(peak_s)}</text>')
    for frac in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x(frac * dur):.1f}" y="{_H - 8}" font-size="11" fill="#57606a" '
                     f'text-anchor="middle">{_clock(frac * dur)}</text>')
    parts.append(f'<text x="4" y="{_PAD + 4}" font-size="10" fill="#57606a">1</text>'
                 f'<text x="4" y="{_PAD + ih}" font-size="10" fill="#57606a">0</text></svg>')
    return "".join(parts)


def _legend(labels: Sequence[str], cfg: UrgencyConfig) -> str:
    colors = {k: _hex(v) for k, v in _label_colors(list(labels), cfg).items()}
    items = [f'<span><i class="sw" style="background:{colors.get(lab, "#888")}"></i>{_e(lab)}</span>'
             for lab in labels]
    items.append('<span><i class="sw" style="background:#111"></i>negative emotion</span>')
    items.append('<span><i class="sw" style="background:#d1242f"></i>peak</span>')
    items.append('<span><i class="sw" style="background:#fff3bf"></i>transcribed</span>')
    return f'<p class="legend">{"".join(items)}</p>'


def _urgency_config(run: Mapping[str, Any]) -> UrgencyConfig:
    from ser_ray.config import from_dict

    conf = (run.get("config") or {}).get("urgency")
    return from_dict(UrgencyConfig, conf) if conf else UrgencyConfig()


def render_html(calls: pd.DataFrame, labels: Sequence[str], run: Mapping[str, Any], *,
                segments: pd.DataFrame | None = None, transcripts: pd.DataFrame | None = None,
                top: int = 20, extra_columns: Sequence[str] = (), index_href: str | None = None,
                clips: Mapping[str, tuple[str, float, float]] | None = None) -> str:
    """The night's page as one HTML string (see the module docstring); writes nothing."""
    labels = [str(lab) for lab in labels]
    extra_columns = list(extra_columns)
    _validate(calls, labels, extra_columns)
    cfg = _urgency_config(run)
    ranked, unscored = _split(calls)
    top_calls = ranked.head(max(int(top), 0))
    segments = segments if segments is not None else pd.DataFrame(columns=["call_id"])
    by_call = {k: g for k, g in segments.groupby("call_id", sort=False)} if len(segments) else {}
    date = run.get("run_date", "unknown date")
    counts = _status_counts(calls, run)
    audio_s, wall_s = run.get("audio_s"), run.get("wall_s")
    tx = run.get("transcripts")

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>Urgent calls, {_e(date)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Urgent calls, {_e(date)}</h1>"]
    drift = run.get("drift") or {}
    if drift.get("alarm"):
        out.append(f'<div class="drift" id="drift-banner" role="alert"><strong>Drift:</strong> '
                   f'{_e(drift.get("message"))}. Scores of this night may not be trustworthy; '
                   f'see the run record\'s <code>drift</code> section.</div>')
    if index_href:
        out.append(f'<p><a href="{_e(index_href)}">All nights</a></p>')
    out.append('<ul class="meta">')
    out.append(f"<li>Run <code>{_e(run.get('run_id', '?'))}</code>, started "
               f"{_e(run.get('started_at', '?'))}, finished {_e(run.get('finished_at', '?'))}</li>")
    out.append(f"<li>Model <code>{_e(run.get('model_id', '?'))}</code> (hash "
               f"<code>{_e(_short_hash(run.get('model_hash')))}</code>)</li>")
    per_status = ", ".join(f"{n} {_e(s)}" for s, n in counts.items()) or "none"
    hours = "–" if _missing(audio_s) else f"{float(audio_s) / 3600:.1f} h"
    out.append(f"<li>Calls: {sum(counts.values())} ({per_status}); {hours} of audio in "
               f"{_e(_duration(wall_s))}</li>")
    cost = cost_line(run)
    if cost:
        out.append(f'<li class="cost">Cost: {_e(cost)}</li>')
    if drift and not drift.get("alarm"):
        out.append(f'<li class="drift-line">Drift: {_e(drift.get("message"))}'
                   f'{" (" + _e(drift["note"]) + ")" if drift.get("note") else ""}</li>')
    if tx:
        out.append(f"<li>Transcripts: {int(tx.get('spans', 0))} span(s) of {int(tx.get('calls', 0))} "
                   f"call(s) ({_e(tx.get('segments'))}), model <code>{_e(tx.get('model'))}</code></li>")
    out.append("</ul>")

    out.append("<h2>Most urgent calls</h2>")
    if ranked.empty:
        out.append("<p>No calls in this run.</p>" if calls.empty else
                   f"<p>No call of this run was scored ({len(calls)} calls, all listed under "
                   "“Calls not scored”).</p>")
    else:
        shown = (f"The {len(top_calls)} most urgent of {len(ranked)} scored calls"
                 if len(ranked) > len(top_calls) else f"All {len(ranked)} scored calls")
        out.append(f"<p>{shown}, most urgent first. Click a call for its timeline.</p>")
        head = ["rank", "call", "urgency", "dominant negative emotion", "negative peak",
                "longest negative run (s)", "peak at", "duration", *extra_columns]
        if transcripts is not None:
            head.append("said at the peak")
        clips = clips or {}
        if clips:
            head.append("listen")
        out.append('<table id="urgent"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
                   + "</tr></thead><tbody>")
        for k, (_, row) in enumerate(top_calls.iterrows()):
            label, share = dominant_negative(row, labels, cfg)
            cells = [f'<td class="num">{_e(_num(row["urgency_rank"], ".0f"))}</td>',
                     f'<td class="call-id"><a href="#call-{k}">{_e(row["call_id"])}</a></td>',
                     f'<td class="num">{_num(row["urgency_score"], ".2f")}</td>',
                     f"<td>{'none' if label is None else f'{_e(label)} ({100 * share:.0f}%)'}</td>",
                     f'<td class="num">{_num(row["negative_peak"], ".2f")}</td>',
                     f'<td class="num">{_num(row["longest_negative_s"], ".1f")}</td>',
                     f'<td class="num">{_clock(row["peak_start_s"])}</td>',
                     f'<td class="num">{_clock(row["duration_s"])}</td>',
                     *(f"<td>{_e(_cell(row[c]))}</td>" for c in extra_columns)]
            if transcripts is not None:
                said = peak_snippet(transcripts, row["call_id"], row["peak_start_s"])
                cells.append(f'<td class="said">{_e(said) if said else "–"}</td>')
            if clips:
                cells.append(f"<td>{_player(clips.get(row['call_id']))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")

        out.append("<h2>The calls, one by one</h2>")
        out.append(_legend(labels, cfg))
        for k, (_, row) in enumerate(top_calls.iterrows()):
            cid = row["call_id"]
            mine = (transcripts[transcripts["call_id"] == cid] if transcripts is not None
                    else pd.DataFrame(columns=["start_s", "end_s", "text"]))
            spans = [(float(a), float(b)) for a, b in zip(mine["start_s"], mine["end_s"])
                     if not _missing(a) and not _missing(b)]
            channel = "" if _missing(row.get("channel")) else f", channel {_e(row['channel'])}"
            out.append(f'<section class="call" id="call-{k}"><h3>#{_e(_num(row["urgency_rank"], ".0f"))} '
                       f"{_e(cid)}</h3>")
            out.append(f'<p class="meta">urgency {_num(row["urgency_score"], ".2f")}, '
                       f'negative peak {_num(row["negative_peak"], ".2f")} at '
                       f'{_clock(row["peak_start_s"])}, {_clock(row["duration_s"])} long{channel}</p>')
            out.append(timeline_svg(by_call.get(cid, segments.iloc[0:0]), labels,
                                    float(row["duration_s"]) if not _missing(row["duration_s"]) else 0.0,
                                    row["peak_start_s"], cfg, spans))
            if clips.get(cid):
                _, a, b = clips[cid]
                out.append(f'<p class="clip">The worst moment, {_clock(a)}–{_clock(b)}: '
                           f"{_player(clips[cid])}</p>")
            said = [(a, b, t) for a, b, t in zip(mine["start_s"], mine["end_s"], mine["text"])
                    if not _missing(t) and str(t).strip()]
            if said:
                out.append('<ul class="transcript">' + "".join(
                    f"<li><b>{_clock(a)}–{_clock(b)}</b> “{_e(t)}”</li>" for a, b, t in said)
                    + "</ul>")
            out.append("</section>")

    out.append("<h2>Calls not scored</h2>")
    if unscored.empty:
        out.append("<p>Every call was scored.</p>" if not calls.empty else "<p>None.</p>")
    else:
        out.append('<table id="unscored"><thead><tr><th>call</th><th>status</th><th>reason</th>'
                   "</tr></thead><tbody>")
        for _, row in unscored.iterrows():
            reason = row.get("reason")
            if row["status"] == SCORED:
                reason = "status is scored but urgency_score is missing"
            out.append(f"<tr><td>{_e(row['call_id'])}</td><td>{_e(row['status'])}</td>"
                       f"<td>{_e(reason) if not _missing(reason) else 'no reason recorded'}</td></tr>")
        out.append("</tbody></table>")

    out.append("<h2>How urgency is computed</h2>")
    text = _e(explain_urgency(cfg)).replace("*negative peak*", "<em>negative peak</em>")
    out.append(f"<p>{text}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def drift_chart(rows: Sequence[Mapping[str, Any]]) -> str:
    """An inline SVG of each night's share of windows out of distribution, oldest first, with
    the limit as a dashed line and alarmed nights in red ('' when no night has the figure)."""
    pts = [(str(r.get("run_date")), r["drift"]) for r in rows
           if r.get("drift") and r["drift"].get("ood_share") is not None]
    if not pts:
        return ""
    w, h, pad = 640, 120, 24
    limit = next((d["limit"] for _, d in reversed(pts) if d.get("limit") is not None), None)
    top = max([d["ood_share"] for _, d in pts] + [limit or 0, 0.05])
    step = (w - 2 * pad) / max(len(pts) - 1, 1)

    def xy(k: int, v: float) -> tuple[float, float]:
        return pad + k * step, h - pad - (h - 2 * pad) * v / top

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(k, d["ood_share"]) for k, (_, d) in enumerate(pts)))
    out = [f'<svg id="drift-chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="share of windows out of distribution, night by night">',
           f'<polyline points="{line}" fill="none" stroke="#57606a" stroke-width="1.5"/>']
    if limit is not None:
        y = xy(0, limit)[1]
        out.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#cf222e" '
                   f'stroke-dasharray="4 3"/><text x="{w - pad}" y="{y - 3:.1f}" font-size="10" '
                   f'text-anchor="end" fill="#cf222e">limit {limit:.0%}</text>')
    for k, (night, d) in enumerate(pts):
        x, y = xy(k, d["ood_share"])
        color = "#cf222e" if d.get("alarm") else "#1f6feb"
        out.append(f'<circle class="night" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}">'
                   f'<title>{_e(night)}: {d["ood_share"]:.0%} out of distribution</title></circle>')
    out.append(f'<text x="{pad}" y="{h - 6}" font-size="10" fill="#57606a">{_e(pts[0][0])}</text>'
               f'<text x="{w - pad}" y="{h - 6}" font-size="10" text-anchor="end" '
               f'fill="#57606a">{_e(pts[-1][0])}</text></svg>')
    return "\n".join(out)


def render_index(nights: Sequence[Mapping[str, Any]]) -> str:
    """The index across nights: rows of run_date, run_id, href (relative), calls, counts
    ({status: n}), top_call and drift (``score.drift.night_summary``); newest night first,
    with a chart of the drift figures night by night."""
    rows = sorted(nights, key=lambda r: (str(r.get("run_date")), str(r.get("run_id"))), reverse=True)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>ser-ray nightly reports</title><style>{_CSS}</style></head><body>",
           "<h1>Nightly reports</h1>"]
    if not rows:
        out.append("<p>No nights yet.</p>")
    else:
        chart = drift_chart(rows[::-1])
        if chart:
            out.append("<h2>Drift, night by night</h2><p>Share of analysis windows out of the "
                       "model's training distribution (red: over the limit).</p>" + chart)
        out.append('<table id="nights"><thead><tr><th>night</th><th>run</th><th>calls</th>'
                   "<th>not scored</th><th>out of distribution</th><th>median PSI</th>"
                   "<th>most urgent call</th></tr></thead><tbody>")
        for r in rows:
            counts = r.get("counts") or {}
            total = int(sum(counts.values())) if counts else int(r.get("calls") or 0)
            bad = total - int(counts.get(SCORED, 0))
            top = r.get("top_call")
            d = r.get("drift") or {}
            ood = "–" if d.get("ood_share") is None else f"{d['ood_share']:.0%}"
            psi = "–" if d.get("psi_median") is None else f"{d['psi_median']:.2f}"
            cls = ' class="alarm"' if d.get("alarm") else ""
            out.append(f'<tr{cls}><td><a href="{_e(r["href"])}">{_e(r.get("run_date"))}</a></td>'
                       f'<td><code>{_e(r.get("run_id"))}</code></td><td class="num">{total}</td>'
                       f'<td class="num">{bad}</td><td class="num">{ood}{" ⚠" if d.get("alarm") else ""}'
                       f'</td><td class="num">{psi}</td><td>{_e(top) if top else "–"}</td></tr>')
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out)
