"""Mono calls: voices found, the agent's voice decided, the customer's windows scored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser_ray import speakers
from ser_ray.config import ScoreConfig, load
from ser_ray.score import read_calls, read_segments, run_score
from ser_ray.synth import synthesize_backlog

NIGHT = "2026-11-22"


class ToneEncoder:
    """A stand-in speaker encoder: a piece's voice is its dominant frequency (low or high)."""

    def embed(self, pieces):
        out = []
        for p in pieces:
            spec = np.abs(np.fft.rfft(p))
            hi = spec[len(spec) // 4:].sum() > spec[:len(spec) // 4].sum()
            v = np.array([0.2, 1.0, 0.3] if hi else [1.0, 0.2, 0.3]) + 0.01 * np.random.default_rng(len(p)).normal(size=3)
            out.append(v / np.linalg.norm(v))
        return np.array(out, np.float32)


def _tone_call(turns, sr=16000):
    """(voice, seconds) turns with 0.4 s pauses -> signal, speech segments, true turns."""
    parts, speech, t = [], [], 0.0
    for v, d in turns:
        n = int(d * sr)
        f = 300.0 if v == "low" else 3000.0
        parts += [0.3 * np.sin(2 * np.pi * f * np.arange(n) / sr), np.zeros(int(0.4 * sr))]
        speech.append((t, t + d))
        t += d + 0.4
    return np.concatenate(parts).astype(np.float32), speech


def test_two_voices_split_into_turns_with_the_first_heard_as_voice_zero():
    y, speech = _tone_call([("high", 3.0), ("low", 4.5), ("high", 3.0), ("low", 6.0)])
    found = speakers.call_voices(y, 16000, speech, ToneEncoder())
    assert len(found["centroids"]) == 2 and found["first"] == 0
    assert [v for _, _, v in found["turns"]] == [0, 1, 0, 1]
    assert found["speech_s"] == pytest.approx([6.0, 10.5], abs=0.01)
    # a segment whose last piece overlaps the one before: its seconds are counted once
    y, speech = _tone_call([("high", 2.0), ("low", 2.0), ("high", 2.0), ("low", 2.0)])
    found = speakers.call_voices(y, 16000, speech, ToneEncoder())
    assert found["speech_s"] == pytest.approx([4.0, 4.0], abs=0.01)
    assert found["separation"] > 0.3
    assert speakers.customer_turns(found, 0) == [tuple(t[:2]) for t in found["turns"] if t[2] == 1]


def test_one_voice_when_the_split_is_not_two_voices():
    y, speech = _tone_call([("low", 3.0), ("low", 4.0), ("low", 2.0)])
    found = speakers.call_voices(y, 16000, speech, ToneEncoder())
    assert len(found["centroids"]) == 1 and {v for *_, v in found["turns"]} == {0}
    assert speakers.decide(found, [0.9], "recurring") == {"agent": None, "method": "one_voice",
                                                         "confidence": None}
    # a voice with less than min_share of the speech is not a second voice
    y, speech = _tone_call([("low", 12.0), ("high", 0.75), ("low", 6.0)])
    assert len(speakers.call_voices(y, 16000, speech, ToneEncoder(),
                                    speakers.DiarizeSettings(min_share=0.1))["centroids"]) == 1


def test_the_agent_is_the_voice_that_recurs_across_the_night():
    rng = np.random.default_rng(0)
    agents = rng.normal(size=(2, 16))
    voices, call_of, truth = [], [], []
    for c in range(8):
        agent = agents[c % 2] + 0.1 * rng.normal(size=16)
        customer = rng.normal(size=16)
        pair = [agent, customer] if c % 3 else [customer, agent]  # the agent is not always first
        truth.append(0 if c % 3 else 1)
        voices += pair
        call_of += [c, c]
    rec = speakers.recurrence(np.array(voices), np.array(call_of), neighbours=3)
    for c in range(8):
        found = {"centroids": [0, 0], "first": 0}
        assert speakers.decide(found, rec[2 * c:2 * c + 2].tolist(), "recurring")["agent"] == truth[c]
    # too few other calls to say: no score, and the first speaker decides, with no confidence
    few = speakers.recurrence(np.array(voices[:4]), np.array(call_of[:4]), neighbours=3)
    assert np.isneginf(few).all()
    assert speakers.decide({"centroids": [0, 0], "first": 1}, few[:2].tolist(), "recurring") == \
        {"agent": 1, "method": "first_speaker", "confidence": None}


def test_enrolled_agents_decide_by_likeness_to_their_prints():
    bank = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    s = speakers.enrolled_scores(np.array([[0.1, 0, 1.0], [0.1, 0.9, 0.1]]), bank)
    d = speakers.decide({"centroids": [0, 0], "first": 0}, s.tolist(), "enrolled")
    assert d["agent"] == 1 and d["method"] == "enrolled" and 0 < d["confidence"] <= 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="same_voice"):
        speakers.DiarizeSettings(same_voice=1.5)
    with pytest.raises(ValueError, match="piece_s"):
        speakers.DiarizeSettings(piece_s=0.2, min_piece_s=0.5)
    with pytest.raises(ValueError, match="neighbours"):
        speakers.DiarizeSettings(neighbours=0)


def test_the_speaker_encoder_ships_its_weights_and_tells_voices_apart():
    """resemblyzer's GE2E loads offline from its wheel; two different synthetic voices are less
    alike than two pieces of one."""
    from ser_ray.synth.voice import synth_utterance, voice

    enc = speakers.SpeakerEncoder("cpu")
    rng = np.random.default_rng(1)
    low = voice("m", "male", np.random.default_rng(2))
    high = voice("f", "female", np.random.default_rng(3))
    E = enc.embed([synth_utterance("neutral", low, rng, 16000, 2.0),
                   synth_utterance("neutral", low, rng, 16000, 2.0),
                   synth_utterance("neutral", high, rng, 16000, 2.0)])
    assert E.shape == (3, 256)
    assert np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-4)
    assert E[0] @ E[1] > E[0] @ E[2]


# ----------------------------------------------------------------------------- the night


@pytest.fixture(scope="module")
def failing_ray():
    """The module's Ray with the diarisation fault switch set: call-0003 (mono) fails diarisation."""
    import ray

    from cli_helpers import patched_environ, start_test_ray

    with patched_environ({"SER_RAY_FAIL_DIARIZE": "call-0003"}):
        start_test_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def night(failing_ray, score_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("diarize")
    truth = synthesize_backlog(root / "in", n_calls=6, seed=4, minutes=(0.5, 0.7), stereo_share=0.34,
                               bad=True, metadata=False)
    out = root / "out"
    cfg = load(ScoreConfig, None, ["customer_channel=auto"], model=str(score_model),
               inputs=[str(root / "in")], output=str(out), run_date=NIGHT)
    run = run_score(cfg, progress=False)
    return {"root": root, "truth": truth, "out": out, "run": run, "cfg": cfg}


def test_auto_diarises_mono_calls_and_takes_the_channel_of_stereo_ones(night):
    calls = read_calls(night["out"]).set_index("call_id")
    truth = night["truth"].set_index("call_id")
    assert sorted(calls.index) == sorted(truth.index)  # every call once, bad files too
    good = truth[truth["kind"].isin(["angry", "sad", "calm", "neutral"])]
    for call_id, t in good.iterrows():
        row = calls.loc[call_id]
        if t["channels"] == 2:
            assert row["channel"] == "right" and pd.isna(row["diarization"])
        else:
            assert row["channel"] == "mono" and row["diarization"] in speakers.METHODS
    failed = calls.loc["call-0003"]
    assert truth.loc["call-0003", "channels"] == 1
    assert failed["diarization"] == "failed" and "injected" in failed["diarization_reason"]
    assert failed["status"] == "scored"  # on the downmix, not dropped
    segs = read_segments(night["out"])
    by_call = segs.groupby("call_id")["speaker"].agg(set)
    assert by_call["call-0003"] == {"mixed"}
    for call_id, row in calls.iterrows():
        if row["status"] == "scored" and row["diarization"] not in (None, "failed") and pd.notna(row["diarization"]):
            assert by_call[call_id] == {"customer"}
            assert row["customer_speech_s"] > 0
            if row["diarization"] in ("recurring", "first_speaker", "enrolled"):
                assert row["agent_speech_s"] > 0
                # only customer windows: none lies wholly in the agent's time
                assert segs[segs["call_id"] == call_id]["end_s"].max() <= row["duration_s"] + 1e-6
    rec = night["run"]["diarization"]
    assert rec["mode"] == "auto" and rec["stereo_channel"] == "right"
    assert rec["calls"] == int(good["channels"].eq(1).sum())  # unreadable files are not diarised
    assert sum(rec["methods"].values()) == rec["calls"]


def test_a_rerun_of_the_night_gives_the_same_rows(night):
    before = read_calls(night["out"]).sort_values("call_id").reset_index(drop=True)
    segs = read_segments(night["out"]).sort_values(["call_id", "segment_index"]).reset_index(drop=True)
    run_score(night["cfg"], progress=False)
    after = read_calls(night["out"]).sort_values("call_id").reset_index(drop=True)
    cols = ["call_id", "status", "diarization", "customer_speech_s", "agent_speech_s", "urgency_score"]
    pd.testing.assert_frame_equal(before[cols], after[cols])
    again = read_segments(night["out"]).sort_values(["call_id", "segment_index"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(segs[["call_id", "start_s", "end_s", "speaker"]],
                                  again[["call_id", "start_s", "end_s", "speaker"]])


def test_enrolled_agents_and_their_errors(night, tmp_path):
    import soundfile as sf

    from ser_ray.synth.voice import seeded, synth_utterance, voice

    agents = tmp_path / "agents"
    (agents / "alice").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(agents / "alice" / "hello.wav",
             synth_utterance("neutral", voice("agent-alice", "female", seeded(0, "backlog/agent/alice")),
                             rng, 8000, 4.0), 8000)
    out = tmp_path / "out"
    cfg = load(ScoreConfig, None, ["customer_channel=diarize"], model=night["cfg"].model,
               inputs=[str(night["root"] / "in")], output=str(out), run_date=NIGHT,
               agents=str(agents))
    run = run_score(cfg, progress=False)
    assert run["diarization"]["agents"] == ["alice"] and run["diarization"]["bank"] == "enrolled"
    methods = set(read_calls(out)["diarization"].dropna())
    assert methods <= {"enrolled", "one_voice", "failed"} and "enrolled" in methods
    (agents / "bob.wav").write_bytes(b"<html>not audio</html>")
    with pytest.raises(ValueError, match="bob.wav is not a recording"):
        run_score(cfg, progress=False)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ValueError, match="no recordings"):
        run_score(load(ScoreConfig, None, ["customer_channel=diarize"], model=night["cfg"].model,
                       inputs=[str(night["root"] / "in")], output=str(out), run_date=NIGHT,
                       agents=str(empty)), progress=False)
    with pytest.raises(ValueError, match="customer_channel=diarize or auto"):
        run_score(load(ScoreConfig, None, ["customer_channel=mono"], model=night["cfg"].model,
                       inputs=["x"], output=str(out), agents=str(agents)), progress=False)
    with pytest.raises(ValueError, match="diarize"):
        run_score(load(ScoreConfig, None, ["customer_channel=diarize", "diarize={same_voic: 0.9}"],
                       model=night["cfg"].model, inputs=["x"], output=str(out)), progress=False)


def test_a_night_killed_in_its_voices_pass_resumes_to_the_same_rows(night, tmp_path):
    """SIGKILL the whole job (driver and its Ray) once the voices pass has staged units; the
    rerun reads them back and publishes what an undisturbed run publishes. The killed run is a
    process of its own with its own Ray, given the module's fault switch (call-0003 fails
    diarisation) as the reruns on the module's Ray have it."""
    from cli_helpers import patched_environ, ser_ray_cli
    from prepare_helpers import kill_cli_once_staged

    def args(out):
        return ["score", "--model", night["cfg"].model, "--input", str(night["root"] / "in"),
                "--output", str(out), "--run-date", NIGHT, "--customer-channel", "diarize",
                "--set", "calls_per_task=1", "--no-progress"]

    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    with patched_environ({"SER_RAY_FAIL_DIARIZE": "call-0003"}):
        done = kill_cli_once_staged(args(resumed), resumed / "_staging", "voices.json", 2)
    assert 2 <= done < len(night["truth"]), "the kill should land mid-pass"
    assert not (resumed / "calls").exists()
    ser_ray_cli(*args(resumed))
    ser_ray_cli(*args(clean))
    cols = ["call_id", "status", "diarization", "customer_speech_s", "agent_speech_s", "urgency_score"]
    a, b = (read_calls(o).sort_values("call_id").reset_index(drop=True)[cols] for o in (resumed, clean))
    pd.testing.assert_frame_equal(a, b)
    # nothing failed but the silent file, which has no speech to split, and the switched call
    failed = a[a["diarization"] == "failed"]
    assert set(failed["status"]) == {"no_speech", "scored"}
    assert set(failed.loc[failed["status"] == "scored", "call_id"]) == {"call-0003"}
    assert "recurring" in set(a["diarization"])
