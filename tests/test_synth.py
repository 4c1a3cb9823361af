"""The synthetic corpus must follow each corpus's naming scheme exactly and carry emotion in ways
features can learn; otherwise every test and demo built on it proves nothing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ser_ray.synth import LAYOUTS, make_speakers, synth_call, synth_utterance, synthesize_corpus

NAME_PATTERNS = {
    "ravdess": r"Actor_(\d\d)/03-01-0[1-8]-0[12]-0[12]-0[12]-\1\.wav",
    "cremad": r"AudioWAV/1\d{3}_[A-Z]{3}_(ANG|DIS|FEA|HAP|NEU|SAD)_(LO|MD|HI|XX)\.wav",
    "tess": r"(OAF|YAF)_(angry|disgust|fear|happy|neutral|ps|sad)/\1_[a-z]+_\2\.wav",
    "savee": r"(DC|JE|JK|KL)_(a|d|f|h|n|sa|su)\d\d\.wav",
    "emodb": r"wav/(03|08|09|10|11|12|13|14|15|16)[ab]\d\d[WLEAFTN][a-z]\.wav",
    "iemocap": r"Session([1-5])/sentences/wav/(Ses0\1[FM]_\w+)/\2_[FM]\d{3}\.wav",
}
RATES = {"ravdess": 48000, "cremad": 16000, "tess": 24414, "savee": 44100, "emodb": 16000, "iemocap": 16000}
LAYOUT_EMOTIONS = {
    "ravdess": {"neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"},
    "cremad": {"neutral", "happy", "sad", "angry", "fearful", "disgust"},
    "tess": {"neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"},
    "savee": {"neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"},
    "emodb": {"neutral", "happy", "sad", "angry", "fearful", "disgust", "boredom"},
    "iemocap": {"neutral", "happy", "excited", "angry", "sad", "frustrated", "surprised", "fearful", "disgust"},
}
SMALL = {"n_speakers": 2, "per_emotion": 1}


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


def _mean_f0(x: np.ndarray, sr: int) -> float:
    f0 = librosa.yin(x, fmin=60, fmax=600, sr=sr, frame_length=1024, hop_length=256)
    rms = librosa.feature.rms(y=x, frame_length=1024, hop_length=256)[0][: len(f0)]
    return float(np.median(f0[rms > 0.2 * rms.max()]))  # voiced frames only: silence gives noise F0s


@pytest.fixture(scope="module")
def speakers():
    return make_speakers(2, np.random.default_rng(7))


def test_utterance_is_bounded_float32_of_requested_length(speakers):
    rng = np.random.default_rng(0)
    x = synth_utterance("angry", speakers[1], rng, 16000, duration_s=3.0)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == 48000
    assert np.abs(x).max() <= 1.0 and _rms_db(x) > -40
    free = synth_utterance("sad", speakers[0], rng)
    assert 1.5 < len(free) / 16000 < 8


@pytest.mark.parametrize("emotion", ["angry", "sad", "calm", "boredom"])
def test_speech_is_framed_by_near_silence(speakers, emotion):
    sr = 16000
    x = synth_utterance(emotion, speakers[0], np.random.default_rng(3), sr)
    edge = int(0.1 * sr)  # every utterance has at least 0.1 s before and after the speech
    # Compare with the loudest 50 ms, as trimming by "top_db below the peak" does.
    frames = librosa.feature.rms(y=x, frame_length=800, hop_length=400)[0]
    loudest = 20 * np.log10(frames.max())
    assert _rms_db(x[:edge]) < loudest - 35
    assert _rms_db(x[-edge:]) < loudest - 35
    assert _rms_db(x[:edge]) > -90  # low-level noise, not digital zero: trimming must use a threshold
    # ...and the silence really is at the ends: trimming at 30 dB below the peak removes 0.1 s or more.
    _, (start, end) = librosa.effects.trim(x, top_db=30, frame_length=800, hop_length=200)
    assert start >= edge - 400 and len(x) - end >= edge - 400


def test_emotion_moves_pitch_and_energy(speakers):
    rng = np.random.default_rng(11)
    for spk in speakers:
        clips = {e: [synth_utterance(e, spk, rng) for _ in range(6)] for e in ("angry", "neutral", "sad")}
        f0 = {e: np.mean([_mean_f0(x, 16000) for x in xs]) for e, xs in clips.items()}
        rms = {e: np.mean([_rms_db(x) for x in xs]) for e, xs in clips.items()}
        assert f0["angry"] > f0["neutral"] > f0["sad"], (spk.sex, f0)
        assert rms["angry"] > rms["neutral"] + 3 > rms["sad"] + 6, (spk.sex, rms)
    # Sex sets the pitch register, as it does in people.
    male, female = (s for s in speakers)
    assert _mean_f0(synth_utterance("neutral", female, rng), 16000) > _mean_f0(
        synth_utterance("neutral", male, rng), 16000)


def test_sanity_classifier_beats_chance_on_unseen_speakers():
    emotions = ("neutral", "happy", "sad", "angry")
    rng = np.random.default_rng(5)
    X, y, groups = [], [], []
    for spk in make_speakers(6, rng):
        for label, emotion in enumerate(emotions):
            for _ in range(4):
                mfcc = librosa.feature.mfcc(y=synth_utterance(emotion, spk, rng), sr=16000, n_mfcc=13)
                X.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
                y.append(label)
                groups.append(spk.id)
    # Folds by speaker (each holds out one male and one female voice): emotion, not voice, must carry.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(model, np.array(X), np.array(y), groups=np.array(groups), cv=GroupKFold(3))
    assert scores.mean() >= 0.6, scores  # chance is 0.25; ~0.8-0.9 measured, so not trivially separable


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_names_rates_and_labels(tmp_path, layout):
    rows = synthesize_corpus(layout, tmp_path, **SMALL)
    assert {r["emotion"] for r in rows} == LAYOUT_EMOTIONS[layout]
    assert len({r["speaker"] for r in rows}) == 2
    assert all(r["speaker"].startswith(f"{layout}:") and r["sex"] in ("female", "male") for r in rows)
    wavs = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wav"))
    assert wavs == sorted(r["path"] for r in rows)
    for rel in wavs:
        assert re.fullmatch(NAME_PATTERNS[layout], rel), rel
        info = sf.info(tmp_path / rel)
        assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 1)
        assert info.samplerate == RATES[layout]
        assert info.duration > 1.0
    x, _ = sf.read(tmp_path / wavs[0])
    assert np.abs(x).max() > 0.01


def test_sample_rate_override(tmp_path):
    rows = synthesize_corpus("ravdess", tmp_path, sr=16000, emotions=["angry"], **SMALL)
    assert {sf.info(tmp_path / r["path"]).samplerate for r in rows} == {16000}


def test_label_files_match_the_audio(tmp_path):
    rows = synthesize_corpus("cremad", tmp_path / "c", **SMALL)
    csv = (tmp_path / "c" / "VideoDemographics.csv").read_text().splitlines()
    assert csv[0].split(",")[:3] == ["ActorID", "Age", "Sex"]
    sexes = {line.split(",")[0]: line.split(",")[2].lower() for line in csv[1:]}
    assert all(sexes[r["speaker"].split(":")[1]] == r["sex"] for r in rows)

    rows = synthesize_corpus("iemocap", tmp_path / "i", n_speakers=4, per_emotion=2)
    labelled = {}
    for txt in (tmp_path / "i").glob("Session*/dialog/EmoEvaluation/*.txt"):
        for line in txt.read_text().splitlines():
            m = re.match(r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(\S+)\t(\w+)\t\[[\d.]+, [\d.]+, [\d.]+\]$", line)
            if m:
                labelled[m[3]] = (float(m[2]) - float(m[1]), m[4])
    codes = {"neutral": "neu", "happy": "hap", "excited": "exc", "angry": "ang", "sad": "sad",
             "frustrated": "fru", "surprised": "sur", "fearful": "fea", "disgust": "dis"}
    assert len(labelled) == len(rows) == 2 * 9 * 4
    for r in rows:
        duration, code = labelled[Path(r["path"]).stem]
        assert code == codes[r["emotion"]]
        assert duration == pytest.approx(sf.info(tmp_path / "i" / r["path"]).duration, abs=1e-3)
        assert r["sex"][0].upper() == Path(r["path"]).stem.split("_")[-1][0]  # sex is in the name


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        synthesize_corpus("cremad", tmp_path / name, seed=seed, **SMALL)
    a, b, c = (_tree_hashes(tmp_path / name) for name in "abc")
    assert a == b and len(a) == 2 * 6 + 1  # 12 WAVs and VideoDemographics.csv
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".wav"))


def test_emotion_filter_keeps_other_files_identical(tmp_path):
    synthesize_corpus("emodb", tmp_path / "f", **SMALL)
    full = _tree_hashes(tmp_path / "f")
    rows = synthesize_corpus("emodb", tmp_path / "s", emotions=["angry", "boredom", "excited"], **SMALL)
    assert {r["emotion"] for r in rows} == {"angry", "boredom"}  # EmoDB has no "excited"
    some = _tree_hashes(tmp_path / "s")
    assert some and all(full[k] == v for k, v in some.items())


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "timit"}, "unknown layout"),
    ({"layout": "ravdess", "emotions": ["furious"]}, "unknown emotions"),
    ({"layout": "cremad", "emotions": ["boredom"]}, "none of"),
    ({"layout": "tess", "n_speakers": 3}, "n_speakers"),
    ({"layout": "iemocap", "n_speakers": 3}, "even"),
    ({"layout": "ravdess", "per_emotion": 9}, "per_emotion"),
])
def test_bad_arguments_say_what_is_allowed(tmp_path, kwargs, message):
    layout = kwargs.pop("layout")
    with pytest.raises(ValueError, match=message):
        synthesize_corpus(layout, tmp_path, **kwargs)
    with pytest.raises(ValueError, match="unknown emotion"):
        synth_utterance("furious", make_speakers(1, np.random.default_rng(0))[0], np.random.default_rng(0))


def test_call_keeps_agent_and_customer_on_their_channels(speakers):
    sr = 8000
    segments = [("angry", 6.0), ("neutral", 2.0), ("sad", 3.0)]
    mono = synth_call(segments, speakers[0], np.random.default_rng(2), sr=sr)
    stereo, spans = synth_call(segments, speakers[0], np.random.default_rng(2), sr=sr, channels=2,
                               return_spans=True)
    assert mono.dtype == stereo.dtype == np.float32
    assert stereo.shape == (len(mono), 2) and np.abs(mono).max() <= 1
    customer = [s for s in spans if s["role"] == "customer"]
    assert [(s["emotion"], round(s["end_s"] - s["start_s"], 3)) for s in customer] == segments
    assert spans[-1]["end_s"] == pytest.approx(len(mono) / sr)
    for s in spans:
        a, b = int(s["start_s"] * sr), int(s["end_s"] * sr)
        speaking, silent = (0, 1) if s["role"] == "agent" else (1, 0)
        assert _rms_db(stereo[a:b, speaking]) > _rms_db(stereo[a:b, silent]) + 30
    # Emotion survives into the call: the angry turn is louder than the sad one.
    loud, soft = (stereo[int(s["start_s"] * sr):int(s["end_s"] * sr), 1] for s in (customer[0], customer[2]))
    assert _rms_db(loud) > _rms_db(soft) + 6


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_file_parses_back_to_what_was_meant(tmp_path, layout):
    from ser_ray.corpora import get_corpus

    corpus = get_corpus(layout)  # every layout synth writes has a parser
    rows = synthesize_corpus(layout, tmp_path, **SMALL)
    for r in rows:
        u = corpus.parse(r["path"], lambda rel: (tmp_path / rel).read_text())
        assert (u.speaker, u.sex, u.label) == (r["speaker"], r["sex"], r["emotion"]), r["path"]


# --- backlog of recorded calls ------------------------------------------------------------------

import json  # noqa: E402

import pandas as pd  # noqa: E402

from ser_ray.synth import synthesize_backlog  # noqa: E402

BACKLOG_MOODS = ("angry", "sad", "calm", "neutral")
BAD_KINDS = ("empty", "truncated", "not_audio", "silent")


@pytest.fixture(scope="module")
def backlog(tmp_path_factory):
    root = tmp_path_factory.mktemp("backlog") / "calls"
    table = synthesize_backlog(root)  # defaults: 8 calls of 1-3 min at 8 kHz, half stereo, bad files
    return root, table, None


def _good(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["kind"].isin(BACKLOG_MOODS)]


def test_backlog_kinds_counts_and_files(backlog):
    root, table, elapsed = backlog
    assert list(table["kind"]) == [*BACKLOG_MOODS, *BACKLOG_MOODS, *BAD_KINDS]
    assert table["call_id"].is_unique and all(re.fullmatch(r"call-\d{4}", c) for c in table["call_id"])
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == sorted(table["path"])
    assert list(table["path"]) == [f"{c}.wav" for c in table["call_id"]]  # flat layout
    # Truth and metadata lie beside the backlog, never in it: a scoring run must see recordings only.
    truth = pd.read_csv(root.parent / "calls-truth.csv")
    assert list(truth.columns) == ["call_id", "path", "kind", "channels", "duration_s", "sr", "speaker",
                                   "negative", "spans"]
    assert list(truth["call_id"]) == list(table["call_id"])
    good = _good(table)
    assert list(good["negative"]) == [k in ("angry", "sad") for k in good["kind"]]
    assert table.loc[table["kind"].isin(BAD_KINDS), "negative"].isna().all()


def test_backlog_audio_rates_channels_and_durations(backlog):
    root, table, _ = backlog
    good = _good(table)
    assert (good["channels"] == 2).sum() == 4 and (good["channels"] == 1).sum() == 4  # stereo_share 0.5
    for r in good.itertuples():
        info = sf.info(root / r.path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 8000, r.channels)
        assert info.frames / 8000 == pytest.approx(r.duration_s) and 60 <= r.duration_s <= 180
        x, _ = sf.read(root / r.path)
        assert np.abs(x).max() > 0.01
        spans = json.loads(r.spans)
        assert spans[0]["start_s"] == 0 and spans[-1]["end_s"] == pytest.approx(r.duration_s)
        assert all(a["end_s"] == pytest.approx(b["start_s"]) for a, b in zip(spans, spans[1:]))


def test_backlog_customer_speaks_mostly_in_the_mood(backlog):
    _, table, _ = backlog
    for r in _good(table).itertuples():
        customer = [s for s in json.loads(r.spans) if s["role"] == "customer"]
        lengths = np.array([s["end_s"] - s["start_s"] for s in customer])
        assert lengths.min() >= 5 - 1e-3 and lengths.max() <= 25 + 1e-3
        assert {s["emotion"] for s in customer} <= {r.kind, "neutral"}
        in_mood = sum(n for n, s in zip(lengths, customer) if s["emotion"] == r.kind) / lengths.sum()
        assert in_mood == 1.0 if r.kind == "neutral" else 0.65 <= in_mood <= 0.85, (r.call_id, in_mood)


def test_backlog_stereo_keeps_the_customer_on_the_right(backlog):
    root, table, _ = backlog
    sr = 8000
    for r in _good(table)[lambda t: t["channels"] == 2].itertuples():
        x, _ = sf.read(root / r.path)
        for s in json.loads(r.spans):
            a, b = int(round(s["start_s"] * sr)), int(round(s["end_s"] * sr))
            if s["role"] == "agent":
                assert np.abs(x[a:b, 1]).max() == 0  # nothing of the agent leaks into the customer channel
                assert _rms_db(x[a:b, 0]) > -60
            else:
                assert _rms_db(x[a:b, 1]) > _rms_db(x[a:b, 0]) + 30


def test_backlog_bad_files_are_what_they_claim(backlog):
    from ser_ray.audio import AudioError, decode

    root, table, _ = backlog
    by_kind = {r.kind: r for r in table.itertuples()}
    raw = {k: (root / by_kind[k].path).read_bytes() for k in BAD_KINDS}
    assert raw["empty"] == b""
    for kind, reason in (("empty", "empty"), ("truncated", "decode_error"), ("not_audio", "not_audio")):
        with pytest.raises(AudioError) as err:
            decode(raw[kind])
        assert err.value.reason == reason, (kind, err.value)
    assert pd.isna(by_kind["empty"].channels) and pd.isna(by_kind["not_audio"].channels)
    assert by_kind["truncated"].channels == 1
    silent = decode(raw["silent"])
    assert (silent.channels, silent.sample_rate, silent.duration_s) == (2, 8000, 60.0)
    assert np.all(silent.samples[: 10 * 8000] == 0)  # dead air, then hiss at -80 dBFS
    assert -83 < _rms_db(silent.samples[10 * 8000:]) < -77
    assert all(pd.isna(by_kind[k].spans) for k in BAD_KINDS)


def test_backlog_metadata_covers_every_call_and_one_without_recording(backlog):
    root, table, _ = backlog
    meta = pd.read_csv(root.parent / "calls-metadata.csv")
    assert list(meta.columns) == ["call_id", "started_at", "agent", "queue"]
    assert meta["call_id"].is_unique and set(table["call_id"]) < set(meta["call_id"])
    (orphan,) = set(meta["call_id"]) - set(table["call_id"])
    assert not list(root.rglob(f"{orphan}*"))
    started = pd.to_datetime(meta["started_at"], format="ISO8601")
    assert (started.dt.date.astype(str) == "2026-11-22").all()
    assert set(meta["queue"]) <= {"billing", "support", "sales"} and 1 < meta["agent"].nunique() <= 4


def test_backlog_callers_are_not_training_speakers(backlog):
    _, table, _ = backlog
    speakers = _good(table)["speaker"]
    assert speakers.is_unique and all(re.fullmatch(r"caller\d{3}", s) for s in speakers)
    assert not any(str(s).startswith("spk") for s in table["speaker"].dropna())
    with pytest.raises(ValueError, match="spk"):
        synthesize_backlog("unused", speaker_prefix="spk")


def test_backlog_same_seed_same_bytes(tmp_path):
    small = {"n_calls": 3, "minutes": (0.5, 0.75), "layout": "dated"}
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        synthesize_backlog(tmp_path / name, seed=seed, **small)
    a, b, c = (_tree_hashes(tmp_path / name) for name in "abc")
    assert a == b and len(a) == 3 + 4
    for suffix in ("truth", "metadata"):
        assert (tmp_path / f"a-{suffix}.csv").read_bytes() == (tmp_path / f"b-{suffix}.csv").read_bytes()
    # Another seed: other audio for every call (the dated folders may differ too, so match by call).
    by_call_a, by_call_c = ({Path(k).stem: v for k, v in h.items()} for h in (a, c))
    assert by_call_a.keys() == by_call_c.keys()
    assert all(by_call_a[k] != by_call_c[k] for k in ("call-0001", "call-0002", "call-0003", "call-0005",
                                                      "call-0007"))  # empty and not_audio are fixed bytes


def test_backlog_dated_layout_nests_folders(tmp_path):
    table = synthesize_backlog(tmp_path / "day", n_calls=4, minutes=(0.25, 0.25), stereo_share=1.0, bad=False,
                               layout="dated", metadata=False)
    assert list(table["kind"]) == list(BACKLOG_MOODS) and (table["channels"] == 2).all()
    assert all(p.startswith("2026-11-22/") and p.count("/") == 2 for p in table["path"])
    assert sorted(p.relative_to(tmp_path / "day").as_posix() for p in (tmp_path / "day").rglob("*.wav")) == \
        sorted(table["path"])
    assert not (tmp_path / "day-metadata.csv").exists() and (tmp_path / "day-truth.csv").exists()
    assert (table["duration_s"] == 15.0).all()  # exact length even when turns barely fit
    assert all(json.loads(s)[-1]["end_s"] == pytest.approx(15.0) for s in table["spans"])


@pytest.mark.parametrize("kwargs, message", [
    ({"moods": ("furious",)}, "moods"),
    ({"layout": "by_month"}, "layout"),
    ({"minutes": (3.0, 1.0)}, "minutes"),
    ({"stereo_share": 1.5}, "stereo_share"),
])
def test_backlog_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize_backlog(tmp_path / "x", **kwargs)


def test_cli_writes_a_backlog(tmp_path):
    from cli_helpers import ser_ray_cli

    ser_ray_cli("synth", "--layout", "backlog", "--calls", "2", "--emotions", "angry,calm",
                "--output", str(tmp_path / "calls"), "--dated", needs_ray=False)
    truth = pd.read_csv(tmp_path / "calls-truth.csv")
    assert sorted(truth["kind"]) == sorted(["angry", "calm", "empty", "truncated", "not_audio", "silent"])
    assert all((tmp_path / "calls" / p).exists() for p in truth["path"]) and "/" in truth["path"][0]
