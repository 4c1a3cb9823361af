"""Urgency decides who supervisors call back first: it must order calls the way the formula in
ser_ray/urgency.py says, react to its config, and rank ties the same way on every rerun."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ser_ray.urgency import DEFAULT_WEIGHTS, UrgencyConfig, call_summary, rank

LABELS = ["angry", "calm", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]


def _call(turns, labels=LABELS, window_s=3.0, hop_s=3.0, p=0.85, gap_s=0.0) -> pd.DataFrame:
    """Windows for a call that says each ``(label, n_windows)`` in turn: ``p`` on the label, the
    rest spread evenly over the other classes; ``gap_s`` of silence between turns."""
    rows, t = [], 0.0
    for label, n in turns:
        for _ in range(n):
            probs = np.full(len(labels), (1 - p) / (len(labels) - 1))
            probs[labels.index(label)] = p
            rows.append({"start_s": t, "end_s": t + window_s, "label": label, "confidence": p,
                         **{f"prob_{c}": q for c, q in zip(labels, probs)}})
            t += hop_s
        t += gap_s - hop_s + window_s
    cols = ["start_s", "end_s", "label", "confidence", *(f"prob_{c}" for c in labels)]
    return pd.DataFrame(rows, columns=cols)


def score(turns, cfg=None, **kw) -> float:
    return call_summary(_call(turns, **kw), LABELS, cfg)["urgency_score"]


def test_sustained_anger_beats_brief_anger_beats_neutral():
    sustained = score([("neutral", 5), ("angry", 15), ("neutral", 5)])
    brief = score([("neutral", 12), ("angry", 1), ("neutral", 12)])
    neutral = score([("neutral", 25)])
    assert sustained > brief > neutral


def test_sad_beats_calm_and_calm_lowers_the_score():
    assert score([("sad", 10)]) > score([("calm", 10)])
    assert score([("calm", 10)]) < score([("neutral", 10)])
    assert score([("angry", 2), ("calm", 8)]) < score([("angry", 2), ("neutral", 8)])


def test_summary_fields_follow_the_documented_formula():
    s = call_summary(_call([("neutral", 2), ("angry", 3), ("sad", 1), ("neutral", 4)]), LABELS)
    assert s["speech_s"] == pytest.approx(30.0)
    assert s["share_angry"] == pytest.approx(0.3) and s["share_neutral"] == pytest.approx(0.6)
    assert sum(s[f"share_{c}"] for c in LABELS) == pytest.approx(1.0)
    q = 0.15 / 7  # each other class
    angry_window = 1.0 * 0.85 + (0.8 + 0.6 + 0.4) * q
    assert s["negative_peak"] == pytest.approx(angry_window)
    assert s["peak_start_s"] == 6.0                                 # the first angry window
    assert s["longest_negative_s"] == pytest.approx(12.0)          # 3 angry + 1 sad window
    assert s["negative_share"] == pytest.approx((9 * 1.0 + 3 * 0.8) / 30)
    calm = (0.3 * q + 0.1 * q)
    assert s["calm_mean"] == pytest.approx(calm)
    expected = angry_window + s["negative_share"] + 12.0 / 30.0 - calm
    assert s["urgency_score"] == pytest.approx(expected)


def test_overlapping_windows_count_speech_once_and_gaps_end_runs():
    s = call_summary(_call([("angry", 9)], window_s=2.0, hop_s=1.0), LABELS)
    assert s["speech_s"] == pytest.approx(10.0)
    assert s["longest_negative_s"] == pytest.approx(10.0)
    # Two angry turns 5 s apart: two runs, not one (default max_gap_s = 1 s).
    split = call_summary(_call([("angry", 2), ("angry", 2)], gap_s=5.0), LABELS)
    assert split["longest_negative_s"] == pytest.approx(6.0)
    bridged = call_summary(_call([("angry", 2), ("angry", 2)], gap_s=5.0), LABELS, UrgencyConfig(max_gap_s=10.0))
    assert bridged["longest_negative_s"] == pytest.approx(17.0)


def test_empty_call_scores_zero_without_crashing():
    s = call_summary(_call([]), LABELS)
    assert s["urgency_score"] == 0.0 and s["speech_s"] == 0.0 and s["negative_peak"] == 0.0
    assert math.isnan(s["peak_start_s"])
    assert all(s[f"share_{c}"] == 0.0 for c in LABELS)


def test_config_weights_change_the_order():
    sad, fearful = [("sad", 10)], [("fearful", 10)]
    assert score(sad) > score(fearful)
    fear_first = UrgencyConfig(weights={**DEFAULT_WEIGHTS, "fearful": 1.0, "sad": 0.2})
    assert score(sad, fear_first) < score(fearful, fear_first)
    # Only the intensity term: one angry flash equals a whole angry call.
    peak_only = UrgencyConfig(share=0.0, sustain=0.0, calm=0.0)
    assert score([("angry", 1), ("neutral", 9)], peak_only) == pytest.approx(score([("angry", 10)], peak_only))


def test_unlisted_labels_weigh_zero_and_sexed_labels_fall_back():
    cfg = UrgencyConfig()
    assert cfg.weight("surprised") == 0.0 and cfg.weight("laughing") == 0.0
    assert cfg.weight("female_angry") == cfg.weight("male_angry") == 1.0
    assert UrgencyConfig(weights={"angry": 2.0}).weight("calm") == DEFAULT_WEIGHTS["calm"]  # merged
    assert UrgencyConfig(weights={"calm": 0}).weight("calm") == 0.0
    labels = ["female_angry", "female_neutral", "male_angry", "male_neutral"]
    angry = call_summary(_call([("male_angry", 5)], labels=labels), labels)
    neutral = call_summary(_call([("male_neutral", 5)], labels=labels), labels)
    assert angry["urgency_score"] > neutral["urgency_score"]


def test_bad_segments_are_named():
    with pytest.raises(ValueError, match="prob_sad"):
        call_summary(_call([("angry", 2)]).drop(columns="prob_sad"), LABELS)
    bad = _call([("angry", 2)])
    bad.loc[0, "prob_angry"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        call_summary(bad, LABELS)
    with pytest.raises(ValueError, match="start_s < end_s"):
        call_summary(_call([("angry", 2)]).assign(end_s=0.0), LABELS)
    with pytest.raises(ValueError, match="sustain_ref_s"):
        UrgencyConfig(sustain_ref_s=0.0)


def test_rank_orders_by_score_and_breaks_ties_by_call_id():
    calls = pd.DataFrame({"call_id": ["c", "a", "d", "b", "e"],
                          "urgency_score": [0.5, 2.0, 0.5, 0.5, np.nan]}, index=[10, 11, 12, 13, 14])
    r = rank(calls)
    assert r.name == "urgency_rank" and list(r.index) == list(calls.index)
    assert dict(zip(calls["call_id"], r)) == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    shuffled = calls.sample(frac=1.0, random_state=3)
    assert dict(zip(shuffled["call_id"], rank(shuffled))) == dict(zip(calls["call_id"], r))


def test_rank_of_identical_calls_is_deterministic_and_by_columns_work():
    s = score([("angry", 3), ("neutral", 3)])
    calls = pd.DataFrame({"call_id": ["z", "m", "m"], "channel": ["right", "right", "left"],
                          "urgency_score": [s, s, s]})
    assert list(rank(calls, by=["call_id", "channel"])) == [3, 2, 1]
    assert list(rank(calls.iloc[::-1], by=["call_id", "channel"])) == [1, 2, 3]
    with pytest.raises(ValueError, match="call_id"):
        rank(calls.drop(columns="call_id"))
    assert rank(calls.iloc[:0]).empty
