"""Hear it (#29, part 6): the report page plays a clip of each top call's worst moment."""

from __future__ import annotations

import re

import pytest

from ser_ray.config import ScoreConfig, load

pytestmark = pytest.mark.usefixtures("ray_session")


def _night(score_model, tmp_path, **kw):
    from ser_ray.score import read_calls, run_score
    from ser_ray.synth import synthesize_backlog

    if not (tmp_path / "calls").exists():
        synthesize_backlog(tmp_path / "calls", n_calls=3, seed=6, bad=False, minutes=(0.4, 0.5),
                           metadata=False)
    out = tmp_path / kw.pop("name", "out")
    run = run_score(load(ScoreConfig, None, model=str(score_model),
                         inputs=[str(tmp_path / "calls")], output=str(out),
                         run_date="2026-12-01", customer_channel="right", **kw), progress=False)
    return run, out, read_calls(out)


def test_each_top_call_gets_a_clip_of_its_worst_moment(score_model, tmp_path):
    from ser_ray import audio

    run, out, calls = _night(score_model, tmp_path, report={"clip_context_s": 2.0})
    night = out / "reports" / "run_date=2026-12-01"
    page = (night / f"{run['run_id']}.html").read_text()
    scored = calls[calls["status"] == "scored"].sort_values("urgency_rank")
    assert run["clips"]["count"] == len(scored) and run["clips"]["missing"] == {}
    srcs = re.findall(r'<audio class="clip" controls preload="none" src="([^"]+)"', page)
    assert len(srcs) == 2 * len(scored)  # in the table and in the call's section
    for rank, row in enumerate(scored.itertuples(), start=1):
        clip = night / f"{run['run_id']}-clips" / f"{rank:03d}.ogg"
        assert f"{run['run_id']}-clips/{rank:03d}.ogg" in srcs
        d = audio.decode(clip.read_bytes())
        assert (d.codec, d.sample_rate, d.channels) == ("opus", 16000, 1)
        want = (min(row.peak_start_s + run["window_s"] + 2.0, row.duration_s)
                - max(row.peak_start_s - 2.0, 0))
        assert d.duration_s == pytest.approx(want, abs=0.1)
        assert clip.stat().st_size < 40_000  # compressed: ~24 kbit/s
    assert "The worst moment" in page


def test_clips_can_be_turned_off(score_model, tmp_path):
    run, out, _ = _night(score_model, tmp_path, report={"clips": False}, name="noclips")
    night = out / "reports" / "run_date=2026-12-01"
    assert "clips" not in run and not list(night.glob("*-clips"))
    assert "<audio" not in (night / f"{run['run_id']}.html").read_text()
