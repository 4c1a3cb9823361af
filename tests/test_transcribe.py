"""Transcripts: the Whisper loader and clip handling (tiny random Whisper), span choice, the
scoring stage end to end (transcripts/ table, report snippets), and real German from whisper-base
on EmoDB when ../shared is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ser_ray.config import ScoreConfig, TranscribeConfig, load
from ser_ray.score.transcripts import TranscriptJob, spans, transcribe_group
from ser_ray.transcribe import SAMPLE_RATE, Transcriber, check

from encoder_helpers import WHISPER_BASE, make_tiny_encoder, make_tiny_whisper_asr

EMODB = WHISPER_BASE.parent.parent / "data" / "emodb" / "wav"
NIGHT = "2026-11-22"


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return make_tiny_whisper_asr(tmp_path_factory.mktemp("tiny-whisper"))


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * SAMPLE_RATE)).astype(np.float32)


# ------------------------------------------------------------------------------ the model

def test_clips_come_back_in_order_with_a_language(tiny_whisper):
    tr = Transcriber(str(tiny_whisper), max_new_tokens=4, batch_size=2)
    out = tr.transcribe([_noise(2), np.zeros(100, np.float32), _noise(1, 1), _noise(3, 2)])
    assert len(out) == 4
    assert out[1] == ("", None)  # under 0.1 s: not sent to the model
    for k in (0, 2, 3):
        text, lang = out[k]
        assert isinstance(text, str) and lang in ("en", "de")


def test_a_given_language_is_used_and_long_clips_are_cut_into_30s_pieces(tiny_whisper, monkeypatch):
    tr = Transcriber(str(tiny_whisper), language="de", max_new_tokens=4)
    seen = []
    real = tr.model.generate

    def spy(feats, **kw):
        seen.append((feats.shape[0], kw["language"]))
        return real(feats, **kw)

    monkeypatch.setattr(tr.model, "generate", spy)
    [(text, lang)] = tr.transcribe([_noise(65)])  # 30 + 30 + 5 s
    assert lang == "de" and seen == [(3, "de")]
    assert [len(p) for p in tr._pieces(_noise(65))] == [30 * SAMPLE_RATE, 30 * SAMPLE_RATE, 5 * SAMPLE_RATE]


def test_a_model_that_is_not_whisper_or_missing_is_a_clear_error(tmp_path):
    hubert = make_tiny_encoder("hubert", tmp_path / "hubert")
    with pytest.raises(ValueError, match="transcripts need a Whisper checkpoint"):
        Transcriber(str(hubert))
    with pytest.raises((ValueError, FileNotFoundError, OSError), match="no-such-folder"):
        Transcriber(str(tmp_path / "no-such-folder"))


def test_bad_transcribe_settings_are_refused():
    for bad, match in [({"segments": "some"}, "choose top or all"), ({"top_calls": 0}, "top_calls"),
                       ({"max_span_s": 45}, "max_span_s"), ({"context_s": -1}, "context_s")]:
        with pytest.raises(ValueError, match=match):
            check(TranscribeConfig(model="m", **bad))


# ------------------------------------------------------------------------------ which spans

def test_top_spans_are_the_most_negative_moments_with_context_merged():
    start = np.array([0.0, 2.0, 4.0, 6.0, 20.0])
    end = start + 2.0
    neg = np.array([0.1, 0.9, 0.2, 0.8, 0.85])
    cfg = TranscribeConfig(model="m", moments_per_call=3, context_s=1.0)
    # Moments 2-4 s and 6-8 s widen to 1-5 and 5-9 (touching: one span); 20-22 to 19-22.5.
    assert spans(start, end, neg, cfg, duration_s=22.5) == [(1.0, 9.0), (19.0, 22.5)]
    one = TranscribeConfig(model="m", moments_per_call=1, context_s=0.0)
    assert spans(start, end, neg, one, duration_s=30) == [(2.0, 4.0)]
    tie = np.array([0.5, 0.5, 0.1, 0.1, 0.1])
    assert spans(start, end, tie, one, duration_s=30) == [(0.0, 2.0)]  # earliest on ties


def test_all_spans_cover_every_segment_cut_at_max_span():
    start = np.arange(0, 40, 2.0)
    end = start + 2.0
    cfg = TranscribeConfig(model="m", segments="all", max_span_s=15)
    got = spans(start, end, np.zeros(len(start)), cfg, duration_s=40)
    assert got == [(0.0, 15.0), (15.0, 30.0), (30.0, 40.0)]
    assert spans(np.array([]), np.array([]), np.array([]), cfg, 10) == []


# ------------------------------------------------------------------------------ the stage

def _settings(**given):
    """A scoring worker's settings for a mono call read at 16 kHz."""
    from ser_ray.config import S3Config, ScoreNormalisation
    from ser_ray.score.settings import WorkerSettings
    from ser_ray.urgency import UrgencyConfig

    return WorkerSettings(**{
        "model_id": "m", "model_hash": "h", "run_id": "r", "staging": "", "window_s": 3.0,
        "hop_s": 3.0, "min_window_s": 1.0, "max_call_s": 60.0, "max_bytes": 2 ** 20,
        "max_decoded_bytes": 2 ** 31, "customer_channel": "mono", "vad": {"name": "energy"},
        "vad_sample_rate": 16000, "batch_size": 8, "labels": ("angry",), "sample_rate": 16000,
        "gpus_per_worker": 0, "trust_model": False, "urgency": UrgencyConfig(),
        "normalisation": ScoreNormalisation(), "reference": {"mode": "model"}, "s3": S3Config(),
        **given})

def test_a_call_that_cannot_be_read_again_gets_an_error_row(tiny_whisper, tmp_path):
    import soundfile as sf

    ok = tmp_path / "ok.wav"
    sf.write(ok, _noise(3), SAMPLE_RATE)
    settings = _settings(max_bytes=2 ** 30, max_call_s=3600.0, labels=("angry", "neutral"))
    cfg = TranscribeConfig(model=str(tiny_whisper), max_new_tokens=4)
    jobs = [TranscriptJob("gone", str(tmp_path / "gone.wav"), "mono", ((0, 1),)),
            TranscriptJob("ok", str(ok), "mono", ((0.0, 1.0), (1.5, 3.0)))]
    rows = transcribe_group(jobs, cfg, settings)
    assert [r["call_id"] for r in rows] == ["gone", "ok", "ok"]
    assert rows[0]["error"].startswith("unreadable") and rows[0]["text"] is None
    assert [(r["start_s"], r["end_s"]) for r in rows[1:]] == [(0.0, 1.0), (1.5, 3.0)]
    assert all(r["error"] is None and isinstance(r["text"], str) for r in rows[1:])


@pytest.fixture(scope="module")
def night(ray_session, score_model, tiny_whisper, tmp_path_factory):
    from ser_ray.score import run_score
    from ser_ray.synth import synthesize_backlog

    root = tmp_path_factory.mktemp("tx-night")
    synthesize_backlog(root / "in", n_calls=3, seed=3, minutes=(0.3, 0.5), sr=8000, stereo_share=0.5)
    cfg = load(ScoreConfig, None, model=str(score_model), inputs=[str(root / "in")],
               output=str(root / "out"), run_date=NIGHT, customer_channel="right",
               transcribe={"model": str(tiny_whisper), "top_calls": 2, "moments_per_call": 1,
                           "context_s": 1.0, "max_new_tokens": 4})
    return {"run": run_score(cfg, progress=False), "out": root / "out"}


def test_score_writes_the_top_calls_transcripts_and_the_report_shows_them(night):
    from ser_ray.score import read_calls, read_transcripts

    run, out = night["run"], night["out"]
    calls = read_calls(out, NIGHT)
    tx = read_transcripts(out, NIGHT)
    top2 = list(calls[calls["status"] == "scored"].sort_values("urgency_rank")["call_id"].head(2))
    assert list(tx["call_id"]) == top2  # one moment per call, best-ranked first
    assert list(tx.columns[:6]) == ["call_id", "channel", "start_s", "end_s", "text", "language"]
    merged = tx.merge(calls[["call_id", "duration_s", "channel"]], on="call_id", suffixes=("", "_call"))
    assert (merged["start_s"] < merged["end_s"]).all()
    assert (merged["end_s"] <= merged["duration_s"] + 1e-6).all()
    assert (merged["channel"] == merged["channel_call"]).all() and tx["error"].isna().all()
    assert set(tx["language"]) <= {"en", "de"}
    assert run["transcripts"]["calls"] == 2 and run["transcripts"]["spans"] == 2
    assert run["transcripts"]["redaction"]["on"] and (tx["redactions"] >= 0).all()
    assert Path(run["outputs"]["transcripts"]).is_file()
    md = Path(run["outputs"]["report"]).read_text()
    assert "said at the peak" in md
    html = Path(run["outputs"]["report_html"]).read_text()
    assert html.count('class="transcript"') == 2


def test_a_night_without_transcripts_writes_none(ray_session, score_model, tmp_path):
    from ser_ray.score import run_score
    from ser_ray.synth import synthesize_backlog

    synthesize_backlog(tmp_path / "in", n_calls=1, seed=4, minutes=(0.25, 0.25), sr=8000)
    run = run_score(load(ScoreConfig, None, model=str(score_model), inputs=[str(tmp_path / "in")],
                         output=str(tmp_path / "out"), run_date=NIGHT), progress=False)
    assert "transcripts" not in run and not (tmp_path / "out" / "transcripts").exists()
    assert "said at the peak" not in Path(run["outputs"]["report"]).read_text()


# ------------------------------------------------------------------------------ real weights

@pytest.mark.skipif(not (WHISPER_BASE.is_dir() and EMODB.is_dir()),
                    reason="../shared/models/whisper-base or ../shared/data/emodb is absent")
def test_whisper_base_transcribes_emodb_in_german():
    import soundfile as sf

    from ser_ray import audio

    clips = []
    for name in ("03a01Fa.wav", "08a02Ab.wav"):
        y, sr = sf.read(EMODB / name, dtype="float32")
        clips.append(audio.resample(y, sr, SAMPLE_RATE))
    (t1, l1), (t2, l2) = Transcriber(str(WHISPER_BASE)).transcribe(clips)
    assert l1 == l2 == "de"
    # a01: "Der Lappen liegt auf dem Eisschrank."  a02: "Das will sie am Mittwoch abgeben."
    # (whisper-base hears a02 as "Das will sie ja mit doch abgeben.")
    assert "lappen" in t1.lower() and "abgeben" in t2.lower(), (t1, t2)


def test_score_refuses_a_transcripts_model_that_is_not_whisper_before_scoring(score_model, tmp_path):
    from ser_ray.score import check_config

    hubert = make_tiny_encoder("hubert", tmp_path / "hubert")
    cfg = load(ScoreConfig, None, model=str(score_model), inputs=[str(tmp_path)],
               output=str(tmp_path / "out"), transcribe={"model": str(hubert)})
    with pytest.raises(ValueError, match="transcripts need a Whisper checkpoint"):
        check_config(cfg)


def test_a_transcripts_task_that_fails_leaves_error_rows_not_a_failed_night(ray_session, tmp_path):
    """A worker that cannot transcribe (here: its model folder vanished after the check) gives
    each of its calls a row naming the error; the run goes on to its report."""
    from ser_ray.score.transcripts import run_transcripts

    cfg = TranscribeConfig(model=str(tmp_path / "gone"), calls_per_task=2)
    jobs = [TranscriptJob(f"c{i}", "x.wav", "mono", ((0.0, 1.0),)) for i in range(3)]
    settings = _settings(max_bytes=2 ** 20, max_call_s=60.0, labels=("angry",))
    df = run_transcripts(cfg, jobs, settings, "r")
    assert list(df["call_id"]) == ["c0", "c1", "c2"] and df["text"].isna().all()
    assert df["error"].str.contains("gone").all()
