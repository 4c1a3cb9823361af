"""VAD must find the speech the scoring plane scores and nothing else: segments land on the true
spans, silence gives none, and analysis windows stay inside speech."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_ray import vad
from ser_ray.synth import make_speakers, synth_call, synth_utterance

SR = 16000
NOISE_STD = 10 ** (-70 / 20)  # synth's background floor
needs_silero = pytest.mark.skipif(not vad.silero_installed(), reason="silero-vad not installed")
EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"


def _noise(rng, seconds, dbfs=-70.0):
    return rng.normal(0, 10 ** (dbfs / 20), int(round(seconds * SR))).astype(np.float32)


def _speech_span(u: np.ndarray) -> tuple[float, float]:
    """Where synth put speech: samples 10x above its noise floor (noise never gets there)."""
    idx = np.flatnonzero(np.abs(u) > 10 * NOISE_STD)
    return idx[0] / SR, (idx[-1] + 1) / SR


@pytest.fixture(scope="module")
def utterances():
    """Loud angry, quiet sad, calm and neutral utterances between 1-1.5 s of background noise,
    with the true speech spans."""
    rng = np.random.default_rng(7)
    speakers = make_speakers(2, rng)
    parts, truth, t = [_noise(rng, 1.0)], [], 1.0
    for i, emotion in enumerate(["angry", "sad", "calm", "neutral"]):
        u = synth_utterance(emotion, speakers[i % 2], rng, SR)
        a, b = _speech_span(u)
        truth.append((t + a, t + b))
        gap = rng.uniform(1.0, 1.5)
        parts += [u, _noise(rng, gap)]
        t += u.size / SR + gap
    return np.concatenate(parts), truth


def _assert_matches(found, truth, tol):
    assert len(found) == len(truth), f"found {found}, expected {truth}"
    for (s, e), (ts, te) in zip(found, truth):
        assert abs(s - ts) <= tol and abs(e - te) <= tol, f"segment {(s, e)} vs true {(ts, te)}"


def test_energy_segments_match_true_speech(utterances):
    y, truth = utterances
    _assert_matches(vad.detect(y, SR, "energy"), truth, 0.1)


def test_energy_tone_bursts_exact_spans():
    rng = np.random.default_rng(0)
    y = _noise(rng, 7.0, dbfs=-60)
    spans = [(0.5, 1.5), (2.5, 3.0), (4.0, 6.0)]
    t = np.arange(y.size) / SR
    for s, e in spans:
        on = (t >= s) & (t < e)
        y[on] += 0.1 * np.sin(2 * np.pi * 220 * t[on]).astype(np.float32)
    _assert_matches(vad.detect(y, SR, "energy"), spans, 0.1)


def test_energy_on_customer_channel_of_a_call():
    rng = np.random.default_rng(3)
    spk = make_speakers(1, rng)[0]
    x, spans = synth_call([("angry", 2.5), ("sad", 2.0), ("calm", 3.0)], spk, rng, sr=SR, channels=2,
                          return_spans=True)
    found = vad.detect(np.ascontiguousarray(x[:, 1]), SR, "energy")
    turns = [(d["start_s"], d["end_s"]) for d in spans if d["role"] == "customer"]
    truth = [(s + _speech_span(x[int(s * SR):int(e * SR), 1])[0], s + _speech_span(x[int(s * SR):int(e * SR), 1])[1])
             for s, e in turns]
    _assert_matches(found, truth, 0.1)


@pytest.mark.parametrize("name", ["energy", pytest.param("silero", marks=needs_silero)])
def test_silence_and_empty_give_no_segments(name):
    rng = np.random.default_rng(1)
    assert vad.detect(_noise(rng, 3.0), SR, name) == []
    assert vad.detect(np.zeros(SR, np.float32), SR, name) == []
    assert vad.detect(np.zeros(0, np.float32), SR, name) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_audio_is_named(bad):
    y = np.zeros(SR, np.float32)
    y[100] = bad
    with pytest.raises(ValueError, match="NaN" if np.isnan(bad) else "inf"):
        vad.detect(y, SR, "energy")


def test_bad_inputs_and_names_say_what_to_do():
    with pytest.raises(ValueError, match="downmix"):
        vad.detect(np.zeros((SR, 2), np.float32), SR, "energy")
    with pytest.raises(ValueError, match="float"):
        vad.detect(np.zeros(SR, np.int16), SR, "energy")
    with pytest.raises(ValueError, match="energy"):
        vad.detect(np.zeros(SR, np.float32), SR, "webrtc")
    with pytest.raises(ValueError, match="rel_db"):
        vad.get_detector("energy", rel_dB=30)
    with pytest.raises(ValueError, match="hop_s"):
        vad.get_detector("energy", hop_s=0.0)


def test_registry_auto_and_config_record():
    assert {"energy", "silero"} <= set(vad.available())
    assert vad.resolve("auto") == ("silero" if vad.silero_installed() else "energy")
    d = vad.get_detector("energy", rel_db=30.0)
    recorded = vad.detector_config(d)
    assert recorded["name"] == "energy" and recorded["rel_db"] == 30.0
    assert vad.get_detector(**recorded) == d   # the recorded config rebuilds the same detector
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.rel_db = 10.0


def test_min_silence_bridges_pauses_and_min_speech_drops_clicks():
    y = np.zeros(3 * SR, np.float32)
    y[int(0.5 * SR):int(1.0 * SR)] = 0.1
    y[int(1.2 * SR):int(1.7 * SR)] = 0.1    # 0.2 s pause: same turn
    y[int(2.5 * SR):int(2.55 * SR)] = 0.1   # 50 ms click
    _assert_matches(vad.detect(y, SR, "energy"), [(0.5, 1.7)], 0.1)
    split = vad.detect(y, SR, "energy", min_silence_s=0.1, min_speech_s=0.0)
    assert len(split) == 3


@needs_silero
def test_silero_segments_match_true_speech(utterances):
    # silero keeps a segment open ~0.2 s after speech ends, so the tolerance is wider than energy's.
    y, truth = utterances
    found = vad.detect(y, SR, "silero", piece_s=1000.0)
    assert all(any(ts - 0.3 <= s and e <= te + 0.3 for ts, te in truth) for s, e in found), found
    covered = sum(min(e, te) - max(s, ts) for s, e in found for ts, te in truth if s < te and ts < e)
    assert covered >= 0.8 * sum(te - ts for ts, te in truth)


@needs_silero
@pytest.mark.skipif(not EMODB.exists(), reason="../shared/data/emodb not present")
def test_silero_batched_pieces_agree_with_one_pass_on_real_speech():
    rng = np.random.default_rng(0)
    parts = []
    for f in sorted((EMODB / "wav").glob("*.wav"))[:15:3]:
        x, sr = sf.read(f, dtype="float32")
        assert sr == SR
        parts += [_noise(rng, rng.uniform(0.5, 1.5), dbfs=-60), x]
    y = np.concatenate(parts)
    one = vad.detect(y, SR, "silero", piece_s=1000.0)
    batched = vad.detect(y, SR, "silero", piece_s=4.0)

    def mask(segs):
        m = np.zeros(int(y.size / SR * 100) + 1, bool)
        for s, e in segs:
            m[int(s * 100):int(e * 100)] = True
        return m

    a, b = mask(one), mask(batched)
    assert (a & b).sum() / (a | b).sum() >= 0.97


def _close(got, want) -> bool:
    return len(got) == len(want) and np.allclose(got, want)


def test_windows_stay_inside_speech_and_respect_length_and_hop():
    segments = [(1.0, 4.2), (5.0, 5.8), (7.0, 7.1), (8.0, 10.0)]
    w = vad.windows(segments, length_s=1.0, hop_s=0.5, min_s=0.5)
    assert all(any(s <= ws and we <= e for s, e in segments) for ws, we in w)
    full = [x for x in w if x[0] >= 1.0 and x[1] <= 4.2]
    assert all(abs((e - s) - 1.0) < 1e-9 for s, e in full)
    starts = [s for s, _ in full]
    assert np.allclose(np.diff(starts[:-1]), 0.5)          # regular hop ...
    assert _close(full[-1:], [(3.2, 4.2)])           # ... plus one window ending at the segment end
    assert (5.0, 5.8) in w                                 # short segment: one window of its own length
    assert not any(s >= 7.0 and e <= 7.1 for s, e in w)    # shorter than min_s: none
    assert _close([x for x in w if x[0] >= 8.0], [(8.0, 9.0), (8.5, 9.5), (9.0, 10.0)])
    assert w == sorted(w)


def test_windows_without_end_alignment_and_default_hop():
    assert _close(vad.windows([(0.0, 2.5)], 1.0), [(0.0, 1.0), (1.0, 2.0), (1.5, 2.5)])
    assert _close(vad.windows([(0.0, 2.5)], 1.0, align_end=False), [(0.0, 1.0), (1.0, 2.0)])
    assert vad.windows([], 1.0, 0.5) == []


def test_windows_reject_bad_arguments():
    with pytest.raises(ValueError, match="hop_s"):
        vad.windows([(0.0, 1.0)], 1.0, 0.0)
    with pytest.raises(ValueError, match="segment"):
        vad.windows([(2.0, 1.0)], 1.0, 0.5)
    with pytest.raises(ValueError, match="segment"):
        vad.windows([(0.0, float("nan"))], 1.0, 0.5)


def test_detect_then_windows_cover_only_speech(utterances):
    y, truth = utterances
    w = vad.windows(vad.detect(y, SR, "energy"), 1.0, 0.5, 0.3)
    assert w
    assert all(any(ts - 0.1 <= s and e <= te + 0.1 for ts, te in truth) for s, e in w)


# --- many signals at once -------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_signals():
    """A 1.4 s utterance, ~60 s of call with 15 s of digital silence and 10 s of -80 dBFS noise in
    it (so silero skips pieces), and an empty signal."""
    rng = np.random.default_rng(11)
    spk = make_speakers(1, rng)[0]
    short = synth_utterance("angry", spk, rng, SR, 1.4)
    call = synth_call([("angry", 10.0), ("sad", 10.0), ("calm", 10.0)], spk, rng, sr=SR)
    half = call.size // 2
    long = np.concatenate([call[:half], np.zeros(15 * SR, np.float32), _noise(rng, 10.0, dbfs=-80), call[half:]])
    return [short, long, np.zeros(0, np.float32)]


@pytest.mark.parametrize("name", ["energy", pytest.param("silero", marks=needs_silero)])
def test_detect_many_of_nothing_empty_and_silence(name):
    rng = np.random.default_rng(2)
    assert vad.detect_many([], SR, name) == []
    signals = [np.zeros(0, np.float32), np.zeros(SR, np.float32), _noise(rng, 3.0)]
    assert vad.detect_many(signals, SR, name) == [[], [], []]


@pytest.mark.parametrize("name", ["energy", pytest.param("silero", marks=needs_silero)])
def test_detect_many_equals_detect_of_each(name, mixed_signals):
    many = vad.detect_many(mixed_signals, SR, name)
    assert many == [vad.detect(y, SR, name) for y in mixed_signals]
    assert many[0] and len(many[1]) >= 3 and many[2] == []


@needs_silero
@pytest.mark.parametrize("max_batch_s", [600.0, 60.0, 5.0])  # one batch; several of >= 16 rows; one row each
def test_silero_batching_across_signals_changes_no_bit(mixed_signals, max_batch_s):
    d = vad.get_detector("silero", piece_s=2.0, max_batch_s=max_batch_s)
    assert d.many(mixed_signals, SR) == [d(y, SR) for y in mixed_signals]
    # The probabilities themselves, not just the segments, do not depend on the batch.
    model, _ = vad._silero()
    ys = [y for y in mixed_signals if y.size]
    args = (SR, 512, 62, 16, d.silence_dbfs, round(max_batch_s * SR / 512))
    together = vad._silero_probs(model, ys, *args)
    for y, p in zip(ys, together):
        assert np.array_equal(p, vad._silero_probs(model, [y], *args)[0])


def test_detect_many_names_the_bad_signal():
    ok = np.zeros(SR, np.float32)
    bad = ok.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match=r"signals\[1\].*NaN"):
        vad.detect_many([ok, bad], SR, "energy")
    with pytest.raises(ValueError, match=r"signals\[2\].*downmix"):
        vad.detect_many([ok, ok, np.zeros((SR, 2), np.float32)], SR, "energy")
    with pytest.raises(ValueError, match="max_batch_s"):
        vad.get_detector("silero", max_batch_s=0.0)


class _CountingModel:
    """Wraps the silero model and counts the batch rows it is asked to run."""

    def __init__(self, model):
        self.model, self.rows = model, 0

    def audio_forward(self, x, sr):
        self.rows += x.shape[0]
        return self.model.audio_forward(x, sr)


@needs_silero
def test_silero_skips_silent_pieces_without_changing_segments(utterances, monkeypatch):
    y, _ = utterances
    third = y.size // 3
    rng = np.random.default_rng(4)
    y = np.concatenate([y[:third], np.zeros(20 * SR, np.float32), y[third:2 * third], _noise(rng, 20.0, dbfs=-80),
                        y[2 * third:]])
    model, from_probs = vad._silero()
    counting = _CountingModel(model)
    monkeypatch.setattr(vad, "_silero", lambda: (counting, from_probs))
    found, rows = {}, {}
    for silence in (None, -60.0):
        counting.rows = 0
        found[silence] = vad.detect(y, SR, "silero", piece_s=1.0, silence_dbfs=silence)
        rows[silence] = counting.rows
    full, skipped = found[None], found[-60.0]
    assert len(full) == len(skipped) >= 4
    assert all(abs(a - b) <= 0.032 for s, t in zip(full, skipped) for a, b in zip(s, t)), (full, skipped)
    assert rows[-60.0] <= rows[None] - 30, rows   # ~40 of ~55 one-second pieces are silent
