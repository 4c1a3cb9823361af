"""Morning report of one nightly scoring run: the most urgent calls, as Markdown and a bar chart.

:func:`render` turns the per-call table of a run (one row per call, the columns of
:func:`ser_ray.urgency.call_summary` plus status, rank and metadata) into the text a supervisor
reads first: what ran, the calls to return first with why they rank high, the calls that could not
be scored and why, and how the score is made. It writes nothing; the caller stores both outputs.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ser_ray.markdown import esc, table
from ser_ray.score.cost import cost_line
from ser_ray.schema import SCORED
from ser_ray.urgency import UrgencyConfig

MAX_UNSCORED_LINES = 50
_REQUIRED = ("call_id", "status", "urgency_score", "urgency_rank", "duration_s", "negative_peak",
             "longest_negative_s", "peak_start_s")
_MAX_CHART_NAME = 28  # characters of a call_id on the chart's axis; the table has the full id
_PNG_DPI = 100


# ----------------------------------------------------------------------------- formatting
def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, (float, np.floating)) and math.isnan(value))
    except TypeError:
        return False


def _clock(seconds: Any) -> str:
    """``m:ss`` (``h:mm:ss`` from one hour), rounded to the second; "–" when unknown."""
    if _missing(seconds) or not math.isfinite(float(seconds)):
        return "–"
    total = int(round(float(seconds)))
    sign, total = ("-" if total < 0 else ""), abs(total)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{sign}{h}:{m:02d}:{s:02d}" if h else f"{sign}{m}:{s:02d}"


def _num(value: Any, fmt: str) -> str:
    if _missing(value):
        return "–"
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def _cell(value: Any) -> str:
    """A metadata value as table text: missing -> "–", floats compact, the rest as str."""
    if _missing(value):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _duration(seconds: Any) -> str:
    """Wall time in words: "45 s", "12 min 05 s", "2 h 03 min"."""
    if _missing(seconds):
        return "unknown time"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _short_hash(model_hash: Any, n: int = 12) -> str:
    if _missing(model_hash) or not str(model_hash):
        return "unknown hash"
    text = str(model_hash)
    return text.split(":", 1)[1][:n] if ":" in text else text[:n]  # "sha256:ab12..." -> "ab12..."


def _oneline(text: Any) -> str:
    return " ".join(str(text).split())


def _code(text: Any) -> str:
    """``text`` as an inline code span, fenced with more backticks than it contains."""
    text = _oneline(text)
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _link_target(name: str) -> str:
    # CommonMark takes a destination with spaces or parentheses only between angle brackets.
    return f"<{name}>" if any(ch in name for ch in " ()<>") else name


# ----------------------------------------------------------------------------- the call table
def _validate(calls: pd.DataFrame, labels: Sequence[str], extra_columns: Sequence[str]) -> None:
    if calls.empty and len(calls.columns) == 0:
        return  # an empty run may come as a frame without columns
    needed = [*_REQUIRED, *(f"share_{label}" for label in labels), *extra_columns]
    missing = [c for c in needed if c not in calls.columns]
    if missing:
        raise ValueError(f"score_report.render: calls lack columns {missing}; they have "
                         f"{list(calls.columns)}. Pass the per-call table of the scoring run, and "
                         "list in extra_columns only metadata columns it has")


def _split(calls: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranked, unscored): ranked rows have status "scored" and a finite score, ordered most
    urgent first by urgency_rank (then score, then call_id should ranks be missing)."""
    if calls.empty:
        return calls.iloc[0:0], calls.iloc[0:0]
    calls = calls.reset_index(drop=True)  # a repeated index label would select rows twice
    status = calls["status"].astype(object).where(calls["status"].notna(), "unknown").astype(str)
    score = pd.to_numeric(calls["urgency_score"], errors="coerce").astype(float)
    ranked_mask = (status == SCORED) & np.isfinite(score)
    keys = pd.DataFrame({
        "_rank": pd.to_numeric(calls["urgency_rank"], errors="coerce").astype(float),
        "_neg": -score, "_id": calls["call_id"].astype(str),
    }, index=calls.index)
    order = keys[ranked_mask].sort_values(["_rank", "_neg", "_id"], kind="mergesort",
                                          na_position="last").index
    ranked = calls.loc[order]
    unscored = calls[~ranked_mask].assign(status=status[~ranked_mask])
    unscored = unscored.iloc[np.lexsort((unscored["call_id"].astype(str).to_numpy(),
                                         unscored["status"].to_numpy()))]
    return ranked, unscored


def dominant_negative(row: Mapping[str, Any], labels: Sequence[str],
                      cfg: UrgencyConfig | None = None) -> tuple[str | None, float]:
    """(label, share) of the negative label (weight > 0) with the largest ``share_<label>`` of
    a call; the first such label in ``labels`` wins ties; (None, 0.0) when no negative label has
    any time in the call."""
    cfg = UrgencyConfig() if cfg is None else cfg
    best, best_share = None, 0.0
    for label in labels:
        if cfg.weight(label) <= 0:
            continue
        share = row.get(f"share_{label}")
        share = 0.0 if _missing(share) else float(share)
        if share > best_share:
            best, best_share = label, share
    return best, best_share


def peak_snippet(transcripts: pd.DataFrame | None, call_id: str, peak_s: Any) -> str | None:
    """What was said at a call's worst moment: the text of its transcribed span that holds
    ``peak_s`` (else the nearest one); None without a transcript."""
    if transcripts is None or transcripts.empty:
        return None
    rows = transcripts[(transcripts["call_id"] == call_id) & transcripts["text"].notna()]
    rows = rows[rows["text"].astype(str).str.strip() != ""]
    if rows.empty:
        return None
    if _missing(peak_s):
        return str(rows.iloc[0]["text"])
    p = float(peak_s)
    dist = np.maximum(rows["start_s"].to_numpy(float) - p, 0) + np.maximum(
        p - rows["end_s"].to_numpy(float), 0)
    return str(rows.iloc[int(np.argmin(dist))]["text"])


def _status_counts(calls: pd.DataFrame, run: Mapping[str, Any]) -> dict[str, int]:
    counts = run.get("counts")
    if counts is None:
        counts = calls["status"].fillna("unknown").astype(str).value_counts().to_dict() \
            if "status" in calls.columns else {}
    counts = {str(k): int(v) for k, v in counts.items()}
    # "scored" first, then the rest by how many calls they took
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] != SCORED, -kv[1], kv[0])))


def _header(calls: pd.DataFrame, run: Mapping[str, Any]) -> list[str]:
    lines = [f"# Urgent calls, {esc(run.get('run_date', 'unknown date'))}", ""]
    lines.append(f"- Run: {_code(run.get('run_id', '?'))}, started "
                 f"{esc(run.get('started_at', '?'))}, finished {esc(run.get('finished_at', '?'))}")
    lines.append(f"- Model: {_code(run.get('model_id', '?'))} "
                 f"(hash {_code(_short_hash(run.get('model_hash')))})")

    counts = _status_counts(calls, run)
    total = sum(counts.values())
    per_status = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none"
    audio_s, wall_s = run.get("audio_s"), run.get("wall_s")
    hours = "–" if _missing(audio_s) else f"{float(audio_s) / 3600:.1f} h"
    rtf = ("–" if _missing(audio_s) or _missing(wall_s) or not float(wall_s) > 0
           else f"{float(audio_s) / float(wall_s):,.0f}× real time")
    lines.append(f"- Calls: {total} ({per_status}); {hours} of audio scored in "
                 f"{_duration(wall_s)} ({rtf})")
    skipped = run.get("skipped_previously_scored")
    if skipped:
        lines.append(f"- Skipped {int(skipped)} calls already scored by an earlier run")
    cost = cost_line(run)
    if cost:
        lines.append(f"- Cost: {esc(cost)}")
    drift = run.get("drift") or {}
    if drift.get("message"):
        lines.append(f"- {'**Drift alarm:**' if drift.get('alarm') else 'Drift:'} "
                     f"{esc(drift['message'])}")
    lines.append("")
    return lines


def _top_table(top_calls: pd.DataFrame, labels: Sequence[str], extra_columns: Sequence[str],
               cfg: UrgencyConfig, transcripts: pd.DataFrame | None = None) -> list[str]:
    header = ["rank", "call", "urgency", "dominant negative emotion", "negative peak",
              "longest negative run (s)", "peak at", "duration", *map(esc, extra_columns)]
    if transcripts is not None:
        header.append("said at the peak")
    rows = []
    for _, row in top_calls.iterrows():
        label, share = dominant_negative(row, labels, cfg)
        rank = row["urgency_rank"]
        rows.append([
            "–" if _missing(rank) else int(rank), row["call_id"],
            _num(row["urgency_score"], ".2f"),
            "none" if label is None else f"{label} ({100 * share:.0f}%)",
            _num(row["negative_peak"], ".2f"), _num(row["longest_negative_s"], ".1f"),
            _clock(row["peak_start_s"]), _clock(row["duration_s"]),
            *(_cell(row[c]) for c in extra_columns),
        ])
        if transcripts is not None:
            said = peak_snippet(transcripts, row["call_id"], row["peak_start_s"])
            rows[-1].append(f"“{_oneline(said)}”" if said else "–")
    return table(header, rows)


def _unscored_lines(unscored: pd.DataFrame, cap: int) -> list[str]:
    lines = []
    for _, row in unscored.head(cap).iterrows():
        reason = row.get("reason")
        if row["status"] == SCORED:  # scored but no usable score: say so rather than hide it
            reason = "status is scored but urgency_score is missing" + (
                "" if _missing(reason) else f"; {reason}")
        text = "no reason recorded" if _missing(reason) else str(reason)
        # Every value inert: the call id as a code span, status and reason escaped (esc).
        lines.append(f"- {_code(row['call_id'])}: **{esc(row['status'])}**, {esc(text)}")
    if len(unscored) > cap:
        lines.append(f"- … and {len(unscored) - cap} more not listed here (see the run's call "
                     "table, status column)")
    return lines


def explain_urgency(cfg: UrgencyConfig | None = None) -> str:
    """One plain-words paragraph on how the urgency score is made, with ``cfg``'s weights."""
    cfg = UrgencyConfig() if cfg is None else cfg
    negative = sorted(((w, k) for k, w in cfg.weights.items() if w > 0),
                      key=lambda wk: (-wk[0], wk[1]))
    calming = sorted(((w, k) for k, w in cfg.weights.items() if w < 0))
    top_w = negative[0][0] if negative else 0.0
    lo = -cfg.calm * (-calming[0][0] if calming else 0.0)
    hi = (cfg.intensity + cfg.share) * top_w + cfg.sustain
    weights = ", ".join(f"{k} {w:g}" for w, k in negative) or "none"
    calm = ", ".join(f"{k} {-w:g}" for w, k in calming) or "none"
    return (
        "The model listens to each call in short overlapping windows and "
        "gives each window a probability per emotion. Negative emotions count by severity "
        f"({weights}). The score adds three parts and subtracts one: how upset the caller "
        "sounded at the worst moment (the *negative peak*), the share of the speech spent in a "
        "negative emotion, and how long the longest unbroken stretch of negative emotion lasted "
        f"(a stretch of {cfg.sustain_ref_s:g} s or more counts in full), minus how calm the call "
        f"sounded on average ({calm}). With these weights the score runs from {lo:g} to {hi:g}; "
        "a call with no speech scores 0, like an all-neutral call, and equal scores are ordered "
        "by call id so a rerun gives the same ranks. The table assumes the run used the default "
        "weights. The formula is in `ser_ray/urgency.py` (module docstring) and README, section "
        "\"Urgency\"."
    )


# ----------------------------------------------------------------------------- chart
def _label_colors(labels: Sequence[str], cfg: UrgencyConfig) -> dict[str, Any]:
    """Negative emotions in reds (darker = more severe), calming ones in blues, the rest greys."""
    from matplotlib import colormaps

    colors: dict[str, Any] = {}
    groups = {"neg": [], "calm": [], "zero": []}
    for label in labels:
        w = cfg.weight(label)
        groups["neg" if w > 0 else "calm" if w < 0 else "zero"].append((abs(w), label))
    for group, cmap, hi, lo in (("neg", "OrRd", 0.9, 0.45), ("calm", "Blues", 0.8, 0.45),
                                ("zero", "Greys", 0.55, 0.25)):
        members = sorted(groups[group], key=lambda wl: (-wl[0], labels.index(wl[1])))
        for i, (_, label) in enumerate(members):
            colors[label] = colormaps[cmap](hi - (hi - lo) * i / max(len(members) - 1, 1))
    return colors


def plot_urgent_calls(top_calls: pd.DataFrame, labels: Sequence[str], *, title: str,
                      cfg: UrgencyConfig | None = None,
                      empty_text: str = "no scored calls in this run") -> bytes:
    """PNG bytes: one row per call (most urgent at the top). Left, the urgency score as a bar
    with its value; right, the call's speech time split by predicted emotion (share_<label>).
    The image is ``1000 x (140 + 32 * rows)`` pixels; with no rows, one row's height holding
    ``empty_text``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("score_report: matplotlib draws the urgent-calls chart; install it "
                          "with `pip install matplotlib`") from e

    cfg = UrgencyConfig() if cfg is None else cfg
    n = len(top_calls)
    # Fixed pixel size for a given number of rows: no bbox_inches="tight", which would crop
    # differently with every set of call ids.
    fig = Figure(figsize=(10.0, (140 + 32 * max(n, 1)) / _PNG_DPI), dpi=_PNG_DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)  # pyplot-free: no global figure registry, nothing left open
    fig.suptitle(title)
    if n == 0:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=12)
        return _png(fig)

    ax_score, ax_share = fig.subplots(1, 2, sharey=True, width_ratios=[1, 1.4])
    y = np.arange(n)
    names = []
    for rank, call_id in zip(top_calls["urgency_rank"], top_calls["call_id"].astype(str)):
        short = (call_id if len(call_id) <= _MAX_CHART_NAME
                 else call_id[:_MAX_CHART_NAME - 1] + "…")
        names.append(f"{'–' if _missing(rank) else int(rank)}. {short}")
    scores = top_calls["urgency_score"].to_numpy(float)
    ax_score.barh(y, scores, color="#4d4d4d", height=0.7)
    for yi, s in zip(y, scores):
        ax_score.text(s, yi, f" {s:.2f}", va="center", ha="left" if s >= 0 else "right",
                      fontsize=8)
    ax_score.set_xlim(min(0.0, scores.min() * 1.15), max(scores.max(), 0.0) * 1.18 + 0.05)
    ax_score.axvline(0, color="black", linewidth=0.6)
    ax_score.set_yticks(y, labels=names, fontsize=8)
    ax_score.invert_yaxis()  # rank 1 at the top
    ax_score.set_xlabel("urgency score")

    colors = _label_colors(list(labels), cfg)
    left = np.zeros(n)
    # negative emotions first (left), most severe first, then neutral ones, then calming ones
    for label in sorted(labels, key=lambda lb: -cfg.weight(lb)):
        share = pd.to_numeric(top_calls[f"share_{label}"], errors="coerce").fillna(0.0)
        share = share.clip(lower=0.0).to_numpy(float)
        if not share.any():
            continue  # keep the legend to emotions that occur in these calls
        ax_share.barh(y, share, left=left, height=0.7, color=colors[label], label=label,
                      edgecolor="white", linewidth=0.4)
        for yi, x0, w in zip(y, left, share):
            if w >= 0.15:  # only label segments wide enough to hold the text
                r, g, b, _ = colors[label]
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax_share.text(x0 + w / 2, yi, f"{100 * w:.0f}%", ha="center", va="center",
                              fontsize=7, color="white" if dark else "black")
        left += share
    if "uncertain_share" in top_calls:  # "not sure" windows, in light grey, last
        share = pd.to_numeric(top_calls["uncertain_share"], errors="coerce").fillna(0.0)
        share = share.clip(lower=0.0).to_numpy(float)
        if share.any():
            ax_share.barh(y, share, left=left, height=0.7, color="#d9d9d9", label="not sure",
                          edgecolor="white", linewidth=0.4, hatch="//")
    ax_share.set_xlim(0, 1)
    ax_share.set_xticks([0, 0.25, 0.5, 0.75, 1], labels=["0", "25%", "50%", "75%", "100%"])
    ax_share.set_xlabel("share of speech time by predicted emotion")
    ax_share.tick_params(axis="y", left=False)
    if ax_share.get_legend_handles_labels()[0]:
        ax_share.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------- entry point
def render(calls: pd.DataFrame, labels: list[str], run: dict, *, top: int = 20,
           chart_name: str = "urgent_calls.png", extra_columns: Sequence[str] = (),
           transcripts: pd.DataFrame | None = None, html_name: str | None = None
           ) -> tuple[str, bytes]:
    """(Markdown text, PNG bytes) of the morning report of one scoring run; writes no files.

    ``calls``: one row per call with call_id, status, reason, duration_s, speech_s,
    share_<label> per entry of ``labels``, negative_peak, negative_mean, negative_share,
    longest_negative_s, peak_start_s (seconds), urgency_score (NaN when not scored),
    urgency_rank (1 = most urgent) and metadata; ``extra_columns`` names the metadata shown in
    the table. ``run``: run_id, run_date, model_id, model_hash, counts ({status: n}),
    started_at, finished_at, wall_s, audio_s (seconds scored), optionally
    skipped_previously_scored. The table lists the ``top`` ranked calls (status "scored" with a
    finite score) by urgency_rank; every other call is listed below it with its reason. The
    Markdown links the chart as ``chart_name``, which the caller writes next to it, and the
    night's page as ``html_name`` when given. With ``transcripts`` (the run's transcripts
    table) the table says what the caller said at the worst moment (:func:`peak_snippet`).
    """
    if top < 0:
        raise ValueError(f"score_report.render: top must be >= 0, got {top}")
    extra_columns = list(extra_columns)
    labels = [str(label) for label in labels]
    _validate(calls, labels, extra_columns)
    cfg = UrgencyConfig()
    ranked, unscored = _split(calls)
    top_calls = ranked.head(top)

    lines = _header(calls, run)
    lines += ["## Most urgent calls", ""]
    if calls.empty:
        lines += ["No calls in this run.", ""]
    elif ranked.empty:
        lines += [f"No call of this run was scored ({len(calls)} calls, all listed under "
                  "\"Calls not scored\").", ""]
    else:
        shown = (f"The {len(top_calls)} most urgent of {len(ranked)} scored calls"
                 if len(ranked) > len(top_calls) else f"All {len(ranked)} scored calls")
        lines += [f"{shown}, most urgent first. *Dominant negative emotion*: the negative "
                  "emotion predicted for the largest share of the call's speech; *negative "
                  "peak*: how upset the caller sounded at the worst moment (0 to 1); *peak at*: "
                  "where that moment starts in the call (m:ss).", ""]
        lines += _top_table(top_calls, labels, extra_columns, cfg, transcripts)
        lines.append("")
    lines += [f"![urgency score and emotion shares of the most urgent calls]"
              f"({_link_target(chart_name)})", ""]
    if html_name:
        lines += [f"Timelines of each call: [the night's page]({_link_target(html_name)}).", ""]

    lines += ["## Calls not scored", ""]
    if unscored.empty:
        lines += ["Every call was scored." if not calls.empty else "None.", ""]
    else:
        lines += [f"{len(unscored)} call{'s' if len(unscored) != 1 else ''} without an urgency "
                  "score (status, reason):", ""]
        lines += _unscored_lines(unscored, MAX_UNSCORED_LINES)
        lines.append("")

    lines += ["## How urgency is computed", "", explain_urgency(cfg), ""]

    png = plot_urgent_calls(top_calls, labels, cfg=cfg,
                            title=f"Most urgent calls, {run.get('run_date', 'unknown date')}",
                            empty_text=("no scored calls in this run" if ranked.empty
                                        else f"top={top}: no calls charted"))
    return "\n".join(lines), png
