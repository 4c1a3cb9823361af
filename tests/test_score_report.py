"""score_report.render: the most urgent scored calls in rank order, every other call with its
reason, escaped cells, and a chart that is a real PNG of a predictable size."""

from __future__ import annotations

import io
import math
import re
import struct

import numpy as np
import pandas as pd
import pytest

from ser_ray.score import report as score_report
from ser_ray.score.report import dominant_negative, render

LABELS = ["angry", "happy", "neutral", "sad", "calm"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN = {"run_id": "night-0412", "run_date": "2025-04-12", "model_id": "wav2vec2-ser",
       "model_hash": "sha256:0123456789abcdef0123", "counts": {"scored": 4, "no_speech": 1},
       "started_at": "2025-04-12T01:00:00Z", "finished_at": "2025-04-12T01:10:00Z",
       "wall_s": 600.0, "audio_s": 36000.0}


def _call(call_id: str, score: float, rank: int, *, status: str = "scored", reason=None,
          shares: dict | None = None, **extra) -> dict:
    shares = shares or {"neutral": 1.0}
    row = {"call_id": call_id, "status": status, "reason": reason, "duration_s": 125.0,
           "speech_s": 100.0, **{f"share_{label}": shares.get(label, 0.0) for label in LABELS},
           "negative_peak": 0.5, "negative_mean": 0.3, "negative_share": 0.2,
           "longest_negative_s": 12.25, "peak_start_s": 61.4, "urgency_score": score,
           "urgency_rank": rank, "agent": "ann", "queue": "billing"}
    row.update(extra)
    return row


def _calls(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:] if end < 0 else md[start:end]


def _table_ids(md: str) -> list[str]:
    """call_id column of the top table, in order (cells unescaped)."""
    ids = []
    for line in _section(md, "Most urgent calls").splitlines():
        if line.startswith("| ") and not line.startswith("| rank"):
            cells = [c.strip().replace("\\|", "|")
                     for c in line.strip("|").replace("\\|", "\x00").split("|")]
            ids.append(cells[1].replace("\x00", "|"))
    return ids


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def _decode(png: bytes) -> np.ndarray:
    try:
        from PIL import Image
        return np.asarray(Image.open(io.BytesIO(png)))
    except ImportError:
        import matplotlib.image
        return matplotlib.image.imread(io.BytesIO(png), format="png")


# ----------------------------------------------------------------------------- table
def test_top_table_follows_urgency_rank_not_row_order():
    rows = [_call("c", 1.1, 3), _call("a", 2.5, 1), _call("silent", math.nan, 5,
                                                           status="no_speech", reason="VAD: 0 s"),
            _call("b", 1.9, 2), _call("d", 0.2, 4)]
    md, png = render(_calls(rows), LABELS, RUN)
    assert _table_ids(md) == ["a", "b", "c", "d"]
    assert "| 1 | a | 2.50 |" in md
    assert "2:05" in md and "1:01" in md  # duration 125 s, peak at 61.4 s
    assert "12.2" in md or "12.3" in md
    _png_size(png)


def test_unscored_calls_listed_with_reason_and_never_ranked():
    rows = [_call("ok", 1.0, 1),
            _call("quiet", math.nan, 2, status="no_speech", reason="no speech found by VAD"),
            _call("broken", math.nan, 3, status="decode_error", reason="ffmpeg: invalid data"),
            _call("odd", 0.7, 4, status="too_long", reason="longer than 2 h"),
            _call("lost", math.nan, 5, status="unreadable", reason=None)]
    md, _ = render(_calls(rows), LABELS, RUN)
    assert _table_ids(md) == ["ok"]  # a finite score with another status is not ranked either
    section = _section(md, "Calls not scored")
    assert "`quiet`: **no_speech**, no speech found by VAD" in section
    assert "`broken`: **decode_error**, ffmpeg: invalid data" in section
    assert "`odd`: **too_long**, longer than 2 h" in section
    assert "`lost`: **unreadable**, no reason recorded" in section
    assert "4 calls without an urgency score" in section


def test_top_cap_and_unscored_cap():
    rows = [_call(f"s{i:02d}", 3.0 - i / 10, i + 1) for i in range(8)]
    rows += [_call(f"u{i:03d}", math.nan, 9 + i, status="empty", reason="0 bytes")
             for i in range(score_report.MAX_UNSCORED_LINES + 7)]
    md, png = render(_calls(rows), LABELS, RUN, top=3)
    assert _table_ids(md) == ["s00", "s01", "s02"]
    assert "The 3 most urgent of 8 scored calls" in md
    section = _section(md, "Calls not scored")
    assert section.count("**empty**") == score_report.MAX_UNSCORED_LINES
    assert "and 7 more" in section
    width, height = _png_size(png)
    assert (width, height) == (1000, 140 + 32 * 3)


def test_pipe_in_values_is_escaped():
    rows = [_call("a|b", 2.0, 1, agent="x|y"), _call("c|d", math.nan, 2, status="not_audio",
                                                     reason="mime text|plain")]
    md, _ = render(_calls(rows), LABELS, RUN, extra_columns=["agent"])
    assert "| a\\|b |" in md and "x\\|y" in md
    # the not-scored list escapes its values too; a CommonMark reader shows "text|plain"
    assert "- `c|d`: **not_audio**, mime text\\|plain" in _section(md, "Calls not scored")
    table = [line for line in _section(md, "Most urgent calls").splitlines()
             if line.startswith("|")]
    widths = {len(line.replace("\\|", "").split("|")) for line in table}
    assert len(widths) == 1  # header, rule and rows all have the same number of cells
    assert _table_ids(md) == ["a|b"]


def test_extra_columns_shown_and_missing_ones_named():
    rows = [_call("a", 2.0, 1, agent="ann", queue="billing", started_at="2025-04-11T22:03")]
    md, _ = render(_calls(rows), LABELS, RUN, extra_columns=["agent", "queue", "started_at"])
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    assert header.endswith("| agent | queue | started_at |")
    assert "| ann | billing | 2025-04-11T22:03 |" in md
    md_default, _ = render(_calls(rows), LABELS, RUN)
    assert "billing" not in md_default
    with pytest.raises(ValueError, match="supervisor"):
        render(_calls(rows), LABELS, RUN, extra_columns=["supervisor"])


def test_dominant_negative_emotion():
    # happy has the largest share but is calming; sad beats angry on share; neutral weighs 0
    row = {"share_angry": 0.2, "share_happy": 0.5, "share_neutral": 0.0, "share_sad": 0.3,
           "share_calm": 0.0}
    assert dominant_negative(row, LABELS) == ("sad", 0.3)
    assert dominant_negative({"share_neutral": 1.0, "share_calm": 0.0}, LABELS) == (None, 0.0)
    # tie: the first negative label in label order; sex-prefixed labels use the base weight
    assert dominant_negative({"share_angry": 0.4, "share_sad": 0.4}, LABELS)[0] == "angry"
    sexed = ["female_neutral", "male_angry"]
    assert dominant_negative({"share_female_neutral": 0.6, "share_male_angry": 0.4},
                             sexed) == ("male_angry", 0.4)

    rows = [_call("a", 2.0, 1, shares={"happy": 0.6, "angry": 0.15, "sad": 0.25}),
            _call("b", 1.0, 2, shares={"neutral": 0.9, "calm": 0.1})]
    md, _ = render(_calls(rows), LABELS, RUN)
    assert "| 1 | a | 2.00 | sad (25%) |" in md
    assert "| 2 | b | 1.00 | none |" in md


def test_png_decodes_and_size_is_deterministic():
    rows = [_call(f"call-{i}" + "x" * 40 * (i % 2), 2.0 - i / 5, i + 1,
                  shares={"angry": 0.5, "sad": 0.2, "neutral": 0.3}) for i in range(5)]
    _, png = render(_calls(rows), LABELS, RUN)
    pixels = _decode(png)
    assert pixels.shape[:2] == (140 + 32 * 5, 1000)
    assert pixels.std() > 0  # something was drawn
    shorter = [dict(r, call_id=f"c{i}") for i, r in enumerate(rows)]
    _, png2 = render(_calls(shorter), LABELS, RUN)
    assert _png_size(png2) == _png_size(png)
    assert render(_calls(rows), LABELS, RUN)[1] == png  # same input, same bytes


def test_repeated_index_does_not_duplicate_rows():
    calls = _calls([_call("a", 2.0, 1), _call("b", 1.0, 2),
                    _call("q", math.nan, 3, status="empty", reason="0 bytes")])
    calls.index = [0, 0, 0]
    md, _ = render(calls, LABELS, RUN)
    assert _table_ids(md) == ["a", "b"]
    assert _section(md, "Calls not scored").count("`q`") == 1


def test_header_model_counts_and_explanation():
    rows = [_call("a", 2.0, 1)]
    run = dict(RUN, skipped_previously_scored=12)
    md, _ = render(_calls(rows), LABELS, run)
    assert md.startswith("# Urgent calls, 2025-04-12\n")
    assert "`wav2vec2-ser` (hash `0123456789ab`)" in md
    assert "5 (4 scored, 1 no_speech)" in md
    assert "10.0 h of audio scored in 10 min 00 s (60× real time)" in md
    assert "Skipped 12 calls" in md
    assert "![urgency score and emotion shares of the most urgent calls](urgent_calls.png)" in md
    explanation = _section(md, "How urgency is computed")
    assert "ser_ray/urgency.py" in explanation and '"Urgency"' in explanation
    assert "angry 1" in explanation
    assert explanation.index("angry 1") < explanation.index("frustrated 0.8") \
        < explanation.index("sad 0.8")
    md2, _ = render(_calls(rows), LABELS, RUN, chart_name="night 0412.png")
    assert "(<night 0412.png>)" in md2


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("calls", [pd.DataFrame(), _calls([_call("a", 1.0, 1)]).iloc[0:0]],
                         ids=["no-columns", "typed-empty"])
def test_empty_run(calls):
    run = dict(RUN, counts={}, audio_s=0.0, wall_s=3.0)
    md, png = render(calls, LABELS, run)
    assert "No calls in this run." in md
    assert "0 (none)" in md
    assert _table_ids(md) == []
    assert "## Calls not scored" in md and "How urgency is computed" in md
    assert _decode(png).shape[:2] == (172, 1000)


def test_run_with_no_scored_calls():
    rows = [_call("q1", math.nan, 1, status="no_speech", reason="silence"),
            _call("q2", math.nan, 2, status="decode_error", reason="truncated file")]
    run = dict(RUN, counts={"no_speech": 1, "decode_error": 1}, audio_s=0.0, wall_s=0.0)
    md, png = render(_calls(rows), LABELS, run)
    assert "No call of this run was scored (2 calls" in md
    assert _table_ids(md) == []
    assert "`q1`: **no_speech**, silence" in md and "`q2`: **decode_error**, truncated file" in md
    assert "(–)" in md  # no real-time factor without wall time
    assert png[:8] == PNG_SIGNATURE and _decode(png).ndim == 3


def test_nan_values_render_as_dashes():
    rows = [_call("a", 2.0, 1, negative_peak=math.nan, longest_negative_s=math.nan,
                  peak_start_s=math.nan, duration_s=math.nan, agent=None,
                  shares={"angry": math.nan, "sad": 0.1}),
            _call("b", 1.0, 2, shares={"angry": math.nan}),
            # scored in name but without a score: listed below, not hidden and not ranked
            _call("c", math.nan, 3, reason=None),
            _call("d", 0.5, math.nan, status=None)]
    md, png = render(_calls(rows), LABELS, RUN, extra_columns=["agent"])
    assert "| 1 | a | 2.00 | sad (10%) | – | – | – | – | – |" in md
    assert "| 2 | b | 1.00 | none |" in md
    assert not re.search(r"\bnan\b", md, flags=re.IGNORECASE)
    section = _section(md, "Calls not scored")
    assert "`c`: **scored**, status is scored but urgency_score is missing" in section
    assert "`d`: **unknown**" in section
    assert score_report._code("a`b") == "``a`b``"
    assert _table_ids(md) == ["a", "b"]
    _decode(png)


def test_missing_rank_falls_back_to_score_order():
    rows = [_call("low", 0.5, math.nan), _call("high", 2.0, math.nan), _call("top", 3.0, 1)]
    md, _ = render(_calls(rows), LABELS, RUN)
    assert _table_ids(md) == ["top", "high", "low"]


def test_missing_required_column_is_named():
    calls = _calls([_call("a", 1.0, 1)]).drop(columns=["share_sad"])
    with pytest.raises(ValueError, match="share_sad"):
        render(calls, LABELS, RUN)
    with pytest.raises(ValueError, match="top"):
        render(_calls([_call("a", 1.0, 1)]), LABELS, RUN, top=-1)


def test_top_zero_lists_no_rows_but_renders():
    md, png = render(_calls([_call("a", 1.0, 1)]), LABELS, RUN, top=0)
    assert _table_ids(md) == []
    assert _png_size(png) == (1000, 172)


def test_hostile_values_stay_text_in_the_rendered_markdown():
    """Call ids, metadata, reasons and run fields carrying HTML, links and a carriage return
    render as text with a CommonMark+GFM reader: no element, no link, one table row per call."""
    from markdown_it import MarkdownIt

    evil = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
            "[click](javascript:alert(1))", "<javascript:alert(1)>", "a\r| b | c", "`code`|x"]
    rows = [_call(e, 3.0 - i / 10, i + 1, agent=e) for i, e in enumerate(evil)]
    rows.append(_call("bad", math.nan, len(evil) + 1, status="<b>x</b>", reason=evil[0] + evil[2]))
    run = {**RUN, "model_id": "m:<script>x</script>`", "run_id": "[r](javascript:x)"}
    md, _ = render(_calls(rows), LABELS, run, extra_columns=["agent"])
    html = MarkdownIt("commonmark").enable("table").render(md)
    for tag in ("<script", "<img src=\"x", "<img src=x", "<b>", 'href="javascript', "<javascript"):
        assert tag not in html, tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    table = html.split("<tbody>")[1].split("</tbody>")[0]
    assert table.count("<tr>") == len(evil)  # the \r and the pipes split no row
    assert all(row.count("<td>") == table.split("<tr>")[1].count("<td>")
               for row in table.split("<tr>")[1:])
